//! Which web origins may use Herald from a browser (`server.allowed_origins`),
//! and the CORS answers that tell browsers so.
//!
//! A browser request carries `Origin`; one from an origin the list does not
//! name (nor Herald's own) is refused with 403, WebSocket handshakes
//! included, so a page elsewhere can neither read nor cause anything. Allowed
//! ones get `Access-Control-Allow-Origin`, and preflights are answered here.
//! Requests without `Origin` (servers, CLIs) pass untouched. Credentials are
//! never allowed: Herald's keys and tokens travel in headers and URLs, not
//! cookies. The push-stream mounts answer CORS their own way
//! (`pushstream.allowed_origins`, as the module does) and are left alone.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::error::ApiError;

/// The parsed `server.allowed_origins`.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    /// `*` was listed: every origin.
    any: bool,
    /// Whole origins (`https://app.example.com`), lowercase.
    exact: Vec<String>,
    /// `https://*.example.com` as (`https://`, `.example.com`): any subdomain.
    subdomains: Vec<(String, String)>,
}

impl Origins {
    /// Reads the list: `*`, or origins `scheme://host[:port]` with an
    /// optional leading `*.` on the host for its subdomains.
    pub(crate) fn parse(list: &[String]) -> Result<Self, String> {
        let mut origins = Self::default();
        for entry in list {
            if entry == "*" {
                origins.any = true;
                continue;
            }
            let bad = || {
                format!(
                    "server.allowed_origins: {entry:?} is not `*` or an origin \
                     like https://app.example.com (no path, no trailing slash)"
                )
            };
            let lower = entry.to_ascii_lowercase();
            let (scheme, host) = lower.split_once("://").ok_or_else(bad)?;
            if !matches!(scheme, "http" | "https")
                || host.is_empty()
                || host.contains(['/', '?', '#', '@', ' '])
            {
                return Err(bad());
            }
            match host.strip_prefix('*') {
                Some(rest) if rest.starts_with('.') && rest.len() > 1 && !rest.contains('*') => {
                    origins
                        .subdomains
                        .push((format!("{scheme}://"), rest.to_owned()));
                }
                Some(_) => return Err(bad()),
                None if host.contains('*') => return Err(bad()),
                None => origins.exact.push(lower),
            }
        }
        Ok(origins)
    }

    /// The `Access-Control-Allow-Origin` a request from `origin` to `host`
    /// gets, or `None` when it is refused. Herald's own origin (its
    /// authority is the request's `Host`) is always allowed.
    pub(crate) fn allow(&self, origin: &[u8], host: Option<&[u8]>) -> Option<Allowed> {
        if self.any {
            return Some(Allowed::Any);
        }
        let origin = std::str::from_utf8(origin).ok()?;
        let (scheme, authority) = origin.split_once("://")?;
        let listed = self.exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
            || self.subdomains.iter().any(|(s, suffix)| {
                // Bytes, not `str` slices: an index may fall inside a character.
                let o = origin.as_bytes();
                o.len() > s.len() + suffix.len()
                    && o[..s.len()].eq_ignore_ascii_case(s.as_bytes())
                    && o[o.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            });
        let own = matches!(scheme, "http" | "https")
            && host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_bytes()));
        (listed || own).then_some(Allowed::Origin)
    }

    /// The header value a request allowed as `allowed` gets.
    pub(crate) fn header(allowed: Allowed, origin: &HeaderValue) -> HeaderValue {
        match allowed {
            Allowed::Any => HeaderValue::from_static("*"),
            Allowed::Origin => origin.clone(),
        }
    }
}

/// How an allowed request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// The request's own origin, with `Vary: Origin` for caches.
    Origin,
}

/// The refusal of a request from an origin that is not allowed.
pub(crate) fn refused(origin: &HeaderValue) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "origin {} is not in server.allowed_origins",
            String::from_utf8_lossy(origin.as_bytes())
        ),
    )
}

/// Applies [`Origins`] to every route but those under `skip`.
#[derive(Clone)]
pub(crate) struct CorsLayer {
    /// Shared by every service the layer makes.
    policy: Arc<Policy>,
}

struct Policy {
    /// What `server.allowed_origins` allows; the WebSocket handshake checks it too.
    origins: Arc<Origins>,
    /// Path prefixes that answer CORS themselves (push-stream's).
    skip: Vec<String>,
}

impl CorsLayer {
    pub(crate) fn new(origins: Arc<Origins>, skip: Vec<String>) -> Self {
        Self {
            policy: Arc::new(Policy { origins, skip }),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`CorsLayer`].
#[derive(Clone)]
pub(crate) struct Cors<S> {
    /// The routes, called for every request not refused or preflighted here.
    inner: S,
    /// Which origins are allowed, and which paths are left alone.
    policy: Arc<Policy>,
}

impl<S> Service<Request> for Cors<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, Decorated<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let policy = &self.policy;
        let origin = match req.headers().get(header::ORIGIN) {
            Some(origin)
                if !policy
                    .skip
                    .iter()
                    .any(|p| req.uri().path().starts_with(&**p)) =>
            {
                origin.clone()
            }
            _ => return Either::Right(Decorated::new(self.inner.call(req), None)),
        };
        let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
        let Some(allowed) = policy.origins.allow(origin.as_bytes(), host) else {
            return Either::Left(ready(Ok(refused(&origin).into_response())));
        };
        let allow = (Origins::header(allowed, &origin), allowed);
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Either::Left(ready(Ok(preflight(req.headers(), allow))));
        }
        Either::Right(Decorated::new(self.inner.call(req), Some(allow)))
    }
}

/// The answer to a preflight: any of Herald's methods, the headers asked
/// for, cached for two hours (Chromium's cap).
fn preflight(asked: &HeaderMap, allow: (HeaderValue, Allowed)) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    add_allow(h, allow);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    if let Some(headers) = asked.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    res
}

fn add_allow(h: &mut HeaderMap, (value, allowed): (HeaderValue, Allowed)) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if allowed == Allowed::Origin {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

pin_project_lite::pin_project! {
    /// The inner response, with `Access-Control-Allow-Origin` added when the
    /// request was allowed.
    // (pin-project-lite takes no doc comments on fields.)
    pub(crate) struct Decorated<F> {
        // The routes' answer.
        #[pin]
        inner: F,
        // The header to add, and how; `None` when the request had no `Origin` to answer.
        allow: Option<(HeaderValue, Allowed)>,
    }
}

impl<F> Decorated<F> {
    fn new(inner: F, allow: Option<(HeaderValue, Allowed)>) -> Self {
        Self { inner, allow }
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Decorated<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.poll(cx));
        if let Some(allow) = this.allow.take() {
            add_allow(res.headers_mut(), allow);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Origins {
        Origins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn listed_origins_and_subdomains_are_allowed_and_others_refused() {
        let o = origins(&[
            "https://App.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        let allow = |origin: &str| o.allow(origin.as_bytes(), Some(b"push.example.net"));
        assert_eq!(allow("https://app.example.com"), Some(Allowed::Origin));
        assert_eq!(allow("https://a.b.example.org"), Some(Allowed::Origin));
        assert_eq!(allow("http://localhost:3000"), Some(Allowed::Origin));
        for refused in [
            "http://app.example.com",
            "https://example.org",
            "https://evil-example.org",
            "http://a.example.org",
            "http://localhost:3001",
            "null",
            "https:/é://x.example.org",
            "https://é.example.orgé",
        ] {
            assert_eq!(allow(refused), None, "{refused}");
        }
        // Herald's own origin needs no listing.
        assert_eq!(
            o.allow(b"https://push.example.net", Some(b"push.example.net")),
            Some(Allowed::Origin)
        );
        assert_eq!(origins(&["*"]).allow(b"null", None), Some(Allowed::Any));
        assert_eq!(origins(&[]).allow(b"https://a.example", None), None);
    }

    #[test]
    fn entries_that_are_not_origins_are_refused() {
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://*",
            "https://*.",
            "https://a.*.example.com",
            "https://*example.com",
        ] {
            assert!(Origins::parse(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }
}
