//! HTTP basic auth on every `/api` route, as gin's `BasicAuth` does it:
//! the `Authorization` header must equal `Basic base64(user:password)`,
//! else 401 with `WWW-Authenticate: Basic realm="Authorization Required"`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;

/// The `Authorization` value that passes.
pub(crate) fn expected(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Equal without an early exit, so the comparison time does not tell how
/// much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: passes authorized requests (or all, with `enable_auth` off).
pub(crate) async fn require(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match &state.authorization {
        Some(wanted) if !presents(req.headers(), wanted) => unauthorized(),
        _ => next.run(req).await,
    }
}

/// Whether `headers` carry exactly the `Authorization` value `wanted`.
pub(crate) fn presents(headers: &HeaderMap, wanted: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    same(given, wanted.as_bytes())
}

/// gin's 401, with the realm it names.
pub(crate) fn unauthorized() -> Response {
    let mut res = StatusCode::UNAUTHORIZED.into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Authorization Required\""),
    );
    res
}

/// `GET /api/v1/auth`: 200 when the credentials pass.
#[utoipa::path(get, path = "/api/v1/auth", tag = "push-api",
    operation_id = "pushapi_auth", summary = "Checks the credentials",
    security(("push_api_basic" = [])),
    responses((status = 200, description = "The credentials pass"),
        (status = 401, description = super::DOC_UNAUTHORIZED)))]
pub(crate) async fn check() -> StatusCode {
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_rfc_4648() {
        assert_eq!(base64(b"app:abc123"), "YXBwOmFiYzEyMw==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert!(same(b"x", b"x") && !same(b"x", b"y") && !same(b"x", b"xx"));
    }
}
