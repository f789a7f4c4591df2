//! Protected channels (`auth.protected_channels`): channels of the native
//! namespace that only a connection whose token grants them may read, on
//! every route that reads (streams, polling, history), and that WebSocket
//! clients may publish to only with the same grant. A token grants channels
//! in its `channels` claim. Routes that carry no Herald token (the seeds'
//! streams, push-stream) cannot read protected channels at all.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use herald_core::ChannelKey;
use herald_core::channel::{DEFAULT_APP, pattern_matches};

use crate::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::state::AppState;

/// Channel names, or patterns with one `*` standing for any run of
/// characters (`user:alice`, `private-*`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Patterns(Arc<[String]>);

/// The protected channels a token grants.
pub(crate) type Grants = Patterns;

impl Patterns {
    pub(crate) fn new(list: Vec<String>) -> Result<Self, String> {
        match list
            .iter()
            .find(|p| p.is_empty() || p.matches('*').count() > 1)
        {
            Some(bad) => Err(format!(
                "{bad:?} is neither a channel name nor a pattern with one '*'"
            )),
            None => Ok(Self(list.into())),
        }
    }

    /// Every channel: a publisher's grants.
    pub(crate) fn all() -> Self {
        Self(Arc::from(["*".to_owned()]))
    }

    /// Whether any pattern matches `name`.
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| pattern_matches(p, name))
    }
}

/// Which channels are protected.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// Channel names and patterns only a token that grants them may read; empty: none.
    protected: Patterns,
}

impl Access {
    pub(crate) fn new(protected: Patterns) -> Self {
        Self { protected }
    }

    /// Whether any channel is protected.
    pub(crate) fn protects(&self) -> bool {
        !self.protected.0.is_empty()
    }

    /// Whether `grants` may read `key`: it is not protected, or they name it.
    pub(crate) fn may_read(&self, key: &ChannelKey, grants: &Grants) -> bool {
        !self.protects()
            || key.app() != DEFAULT_APP
            || !self.protected.matches(key.name())
            || grants.matches(key.name())
    }

    /// Refuses `key` (403 `forbidden`) when it is protected and `grants`
    /// does not name it.
    pub(crate) fn check(&self, key: &ChannelKey, grants: &Grants) -> Result<(), ApiError> {
        if self.may_read(key, grants) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "channel {} is protected: it takes a token that grants it",
                key.name()
            ),
        ))
    }

    /// [`Access::check`] for each of `keys`.
    pub(crate) fn check_all(&self, keys: &[ChannelKey], grants: &Grants) -> Result<(), ApiError> {
        keys.iter().try_for_each(|key| self.check(key, grants))
    }
}

/// The grants of a request that is not a stream (polling, history, counts)
/// for reading `keys`: every channel with a publisher key, else its token's
/// (`token` from the query, or `Authorization: Bearer`). The token is looked
/// at only when one of `keys` is protected.
pub(crate) fn request_grants(
    state: &AppState,
    keys: &[ChannelKey],
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Grants, ApiError> {
    if state.access.check_all(keys, &Grants::default()).is_ok() {
        return Ok(Grants::default());
    }
    grants_of(state, token, headers)
}

/// What a request that is not a stream may read: every channel with a
/// publisher key, else what its token grants; no protected channel without
/// either.
pub(crate) fn grants_of(
    state: &AppState,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Grants, ApiError> {
    if crate::publisher_auth::presents_key(state, headers) {
        return Ok(Grants::all());
    }
    let token = crate::auth::request_token(token, headers);
    Ok(crate::auth::verify(state, token)?.map_or_else(Grants::default, |v| v.grants))
}

/// Refuses a request that is not a stream unless it may read `key`.
pub(crate) fn check_request(
    state: &AppState,
    key: &ChannelKey,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let keys = std::slice::from_ref(key);
    let grants = request_grants(state, keys, token, headers)?;
    state.access.check_all(keys, &grants)
}

/// The channel a route's path names, that the request may read: a
/// protected one only with a grant (`?token=` or `Authorization: Bearer`)
/// or a publisher key.
pub(crate) struct Readable(pub(crate) ChannelKey);

impl FromRequestParts<AppState> for Readable {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
        }
        let Path(name) = Path::<String>::from_request_parts(parts, state).await?;
        let Query(q) = Query::<Token>::from_request_parts(parts, state).await?;
        let key = state.channel(&name)?;
        check_request(state, &key, q.token.as_deref(), &parts.headers)?;
        Ok(Self(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Patterns {
        Patterns::new(list.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn protected_channels_need_a_grant_and_others_do_not() {
        let access = Access::new(patterns(&["private-*", "user:alice"]));
        let app = Arc::from(DEFAULT_APP);
        let key = |name: &str| ChannelKey::new(&app, name).unwrap();
        let none = Grants::default();
        access.check(&key("news"), &none).unwrap();
        assert_eq!(
            access.check(&key("private-x"), &none).unwrap_err().status,
            403
        );
        assert!(access.check(&key("user:alice"), &none).is_err());
        let alice = patterns(&["user:alice", "private-a*"]);
        access.check(&key("user:alice"), &alice).unwrap();
        access.check(&key("private-abc"), &alice).unwrap();
        assert!(access.check(&key("private-b"), &alice).is_err());
        // Other namespaces (PushaaS instances) are their own.
        let other = ChannelKey::new(&Arc::from("instance"), "private-x").unwrap();
        access.check(&other, &none).unwrap();
    }

    #[test]
    fn a_pattern_has_at_most_one_star() {
        assert!(Patterns::new(vec!["a*b*".into()]).is_err());
        assert!(Patterns::new(vec![String::new()]).is_err());
        assert!(Patterns::new(vec!["*".into(), "a:*".into()]).is_ok());
    }
}
