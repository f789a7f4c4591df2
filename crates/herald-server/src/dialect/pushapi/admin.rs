//! push-api's admin app for publishers: `/` redirects to `/admin`, a static
//! page (`admin.html`, `admin.js`, `admin.css`, compiled in) that logs in
//! with the basic-auth credentials and drives the `/api/v1/…` routes with
//! them. These routes need no auth; the page's API calls do.

use axum::extract::{NestedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("admin.html");
const SCRIPT: &str = include_str!("admin.js");
const STYLE: &str = include_str!("admin.css");

/// Only the page's own script, styles and API calls (push-stream included,
/// same origin); no inline code, no framing, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'self'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The static reply with its content type and the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `GET /` → 301 to `admin` under the prefix, as a relative reference made
/// from the request's own path, so it holds behind any outer prefix too:
/// `…/push-api` → `./push-api/admin`, `…/push-api/` → `admin`.
#[utoipa::path(get, path = "/", tag = "push-api",
    operation_id = "pushapi_admin_redirect", summary = "Redirects to the admin page",
    description = "The prefix itself (`/push-api`) redirects too.",
    responses((status = 301, description = "`Location`: the admin page, relative")))]
pub(crate) async fn redirect(req: Request) -> Response {
    // Nested, the path arrives stripped of the prefix (`/push-api` as `/`).
    let path = match req.extensions().get::<NestedPath>() {
        Some(nested) if req.uri().path() == "/" => nested.as_str(),
        _ => req.uri().path(),
    };
    let location = match path.rsplit_once('/') {
        Some((_, "")) | None => "admin".to_owned(),
        Some((_, last)) => format!("./{last}/admin"),
    };
    moved(&location)
}

/// `GET /admin/` → 301 to `/admin`, whose relative URLs the page uses.
#[utoipa::path(get, path = "/admin/", tag = "push-api",
    operation_id = "pushapi_admin_slash", summary = "Redirects to the admin page",
    responses((status = 301, description = "`Location: ../admin`")))]
pub(crate) async fn redirect_slash() -> Response {
    moved("../admin")
}

fn moved(location: &str) -> Response {
    let mut res = StatusCode::MOVED_PERMANENTLY.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, value);
    }
    res
}

/// `GET /admin`: the page.
#[utoipa::path(get, path = "/admin", tag = "push-api",
    operation_id = "pushapi_admin", summary = "The admin page",
    description = "Open; it logs in with the basic-auth credentials and calls `/api/v1/…` \
        with them.",
    responses((status = 200, description = "`text/html`")))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /admin/app.js`.
#[utoipa::path(get, path = "/admin/app.js", tag = "push-api",
    operation_id = "pushapi_admin_script", summary = "The admin page's script",
    responses((status = 200, description = "`application/javascript`")))]
pub(crate) async fn script() -> Response {
    asset("application/javascript; charset=utf-8", SCRIPT)
}

/// `GET /admin/app.css`.
#[utoipa::path(get, path = "/admin/app.css", tag = "push-api",
    operation_id = "pushapi_admin_style", summary = "The admin page's styles",
    responses((status = 200, description = "`text/css`")))]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_no_inline_code() {
        assert!(PAGE.contains("src=\"admin/app.js\""));
        assert!(!PAGE.contains("<script>") && !PAGE.contains("<style"));
        assert!(!PAGE.contains("style=") && !PAGE.contains("onclick="));
    }
}
