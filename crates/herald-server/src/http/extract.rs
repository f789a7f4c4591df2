//! axum's `Query` and `Path`, refusing bad input with Herald's JSON error
//! (`{"error": {"code", "message"}}`) instead of axum's plain-text answer.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The query string, deserialized; 400 `bad_request` when it does not fit.
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if !query_is_utf8(parts.uri.query().unwrap_or("")) {
            return Err(ApiError::bad_request(
                "the query string is not UTF-8 once percent-decoded",
            ));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// Whether every name and value of `query` is UTF-8 once percent-decoded:
/// the decoder would replace what is not, and a channel or cursor quietly
/// become another.
pub(crate) fn query_is_utf8(query: &str) -> bool {
    query.split(['&', '=', ';']).all(|part| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .is_ok()
    })
}

/// The route's path parameters, deserialized; 400 `bad_request` when they
/// do not fit (a segment that is not UTF-8 once percent-decoded).
pub(crate) struct Path<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_must_decode_to_utf8() {
        assert!(query_is_utf8(""));
        assert!(query_is_utf8("channels=a,b&since=a:e:1"));
        assert!(query_is_utf8("c=%C3%A9&d=%2F"));
        assert!(!query_is_utf8("channels=%FF"));
        assert!(!query_is_utf8("%C3=x"));
    }
}
