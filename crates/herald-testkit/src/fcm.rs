//! A local FCM: Google's OAuth2 token endpoint for service accounts and the
//! HTTP v1 `messages:send` route, over TLS (HTTP/2 and HTTP/1.1), answering
//! in Google's error shapes, with canned errors per device token.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use hyper::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::tls::{self, Recorded, Reply, TlsServer, Versions};

/// A throwaway 2048-bit RSA key, committed because generating one in a debug
/// build takes seconds. It signs nothing but test assertions.
const SERVICE_ACCOUNT_KEY: &str = include_str!("fixtures/fcm-test-key.pem");
/// The public half of [`SERVICE_ACCOUNT_KEY`].
const SERVICE_ACCOUNT_PUBLIC_KEY: &str = include_str!("fixtures/fcm-test-key.pub.pem");
/// The service account's identity in the files [`MockFcm::write_service_account`] writes.
pub const CLIENT_EMAIL: &str = "herald-test@herald-test.iam.gserviceaccount.com";
/// The scope FCM's v1 API needs.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type for a signed JWT assertion (RFC 7523).
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The `@type` of FCM's own error detail.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// A canned FCM v1 error for one device token.
#[derive(Debug, Clone)]
pub struct FcmError {
    /// HTTP status (404 for UNREGISTERED, 429 for QUOTA_EXCEEDED, …).
    pub status: u16,
    /// The FcmError `errorCode` in `details`.
    pub error_code: String,
    /// Google's human-readable `message`.
    pub message: String,
    /// A `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

impl FcmError {
    /// An error without `Retry-After`.
    pub fn new(status: u16, error_code: &str, message: &str) -> FcmError {
        FcmError {
            status,
            error_code: error_code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, with a `Retry-After: secs` header.
    pub fn retry_after(self, secs: u64) -> FcmError {
        FcmError {
            retry_after: Some(secs),
            ..self
        }
    }
}

/// One `messages:send` request the mock received.
#[derive(Debug, Clone)]
pub struct FcmRequest {
    /// The project from the path.
    pub project: String,
    /// `message.token`, empty when missing.
    pub token: String,
    /// The whole JSON body (`message`, `validate_only`), `Null` if not JSON.
    pub body: Value,
    /// What the mock answered.
    pub status: u16,
}

/// A running mock FCM; stops when dropped.
pub struct MockFcm {
    /// Serves the mock over TLS until dropped; also holds its service-account files.
    server: TlsServer,
    /// Shared with the handler: tokens, canned errors, requests.
    state: Arc<State>,
}

#[derive(Default)]
struct Inner {
    /// Access tokens handed out and not revoked.
    issued: HashSet<String>,
    /// Calls to the token endpoint, successful or not.
    token_requests: usize,
    /// While set, the token endpoint answers every request with this status.
    token_failure: Option<u16>,
    /// Device token → the error every valid send to it gets.
    canned: HashMap<String, FcmError>,
}

struct State {
    /// Written into service-account files, and the `aud` every assertion must name.
    token_url: String,
    /// The fixture account's public key, which checks the assertions' signatures.
    key: DecodingKey,
    /// The tokens issued, the failures and the canned errors the tests set.
    inner: Mutex<Inner>,
    /// The `messages:send` requests.
    requests: Recorded<FcmRequest>,
}

#[derive(Deserialize)]
struct Assertion {
    scope: String,
    iat: u64,
    exp: u64,
}

impl MockFcm {
    /// Starts the server on a free loopback port, on the current runtime.
    pub async fn start() -> MockFcm {
        let (listener, addr) = tls::bind().await;
        let state = Arc::new(State {
            token_url: format!("https://{addr}/token"),
            key: DecodingKey::from_rsa_pem(SERVICE_ACCOUNT_PUBLIC_KEY.as_bytes())
                .expect("the fixture public key"),
            inner: Mutex::default(),
            requests: Recorded::new(),
        });
        let handler = state.clone();
        let server = tls::serve(listener, Versions::H2AndHttp1, move |parts, body| {
            (handler.handle(parts, body), Duration::ZERO)
        });
        MockFcm { server, state }
    }

    /// The base URL, for the client's `endpoint`.
    pub fn url(&self) -> String {
        self.server.url.clone()
    }

    /// The OAuth2 token endpoint, as written into service-account files.
    pub fn token_url(&self) -> String {
        self.state.token_url.clone()
    }

    /// The server's self-signed certificate, for the client's `ca_file`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.server.ca_path.clone()
    }

    /// Writes a service-account JSON file (as Google's console exports it)
    /// whose key this mock trusts and whose `token_uri` is this mock;
    /// deleted with the mock.
    pub fn write_service_account(&self, project_id: &str) -> PathBuf {
        let account = json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": SERVICE_ACCOUNT_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url(),
        });
        let path = self
            .server
            .dir()
            .join(format!("{project_id}-service-account.json"));
        std::fs::write(&path, account.to_string()).expect("write the service account");
        path
    }

    /// Answers every valid send to `token` with `error`.
    pub fn respond(&self, token: &str, error: FcmError) {
        self.lock().canned.insert(token.into(), error);
    }

    /// Forgets every access token handed out, as if they expired early:
    /// the next send with one gets 401 UNAUTHENTICATED.
    pub fn revoke_access_tokens(&self) {
        self.lock().issued.clear();
    }

    /// Makes the token endpoint answer every request with `status` (an
    /// OAuth2 error body) until called again with `None`.
    pub fn fail_token_requests(&self, status: Option<u16>) {
        self.lock().token_failure = status;
    }

    /// How many times the token endpoint was called, successfully or not.
    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    /// Every `messages:send` request so far, in arrival order.
    pub fn requests(&self) -> Vec<FcmRequest> {
        self.state.requests.all()
    }

    /// Waits until at least `n` sends arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<FcmRequest> {
        self.state.requests.wait_for(n, timeout, "mock FCM").await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock()
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mock FCM state")
    }

    fn handle(&self, parts: Parts, body: Bytes) -> Reply {
        let path = parts.uri.path();
        if parts.method != Method::POST {
            return google_error(405, "Method not allowed.", None);
        }
        if path == "/token" {
            return self.token(&body);
        }
        match path
            .strip_prefix("/v1/projects/")
            .and_then(|p| p.strip_suffix("/messages:send"))
        {
            Some(project) if !project.is_empty() && !project.contains('/') => {
                let project = project.to_owned();
                self.send(&parts, project, &body)
            }
            _ => google_error(404, "Requested entity was not found.", None),
        }
    }

    /// The OAuth2 token endpoint: a JWT-bearer grant signed by the service account.
    fn token(&self, body: &[u8]) -> Reply {
        let failure = {
            let mut inner = self.lock();
            inner.token_requests += 1;
            inner.token_failure
        };
        if let Some(status) = failure {
            return tls::json(
                status,
                &json!({"error": "internal_failure", "error_description": "Try again later."}),
            );
        }
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
            return tls::json(
                400,
                &json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}),
            );
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.token_url]);
        validation.set_issuer(&[CLIENT_EMAIL]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        let assertion = form
            .get("assertion")
            .map(String::as_str)
            .unwrap_or_default();
        let claims = match jsonwebtoken::decode::<Assertion>(assertion, &self.key, &validation) {
            Ok(data) => data.claims,
            Err(e) => return invalid_grant(&format!("Invalid JWT: {e}")),
        };
        if claims.exp.saturating_sub(claims.iat) > 3600 {
            return invalid_grant("Invalid JWT: exp more than an hour after iat.");
        }
        if !claims.scope.split(' ').any(|s| s == SCOPE) {
            return invalid_grant("Invalid JWT: the scope does not include firebase.messaging.");
        }
        let access_token = format!("ya29.mock-{}", uuid::Uuid::now_v7().simple());
        self.lock().issued.insert(access_token.clone());
        tls::json(
            200,
            &json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}),
        )
    }

    /// `POST /v1/projects/{project}/messages:send`.
    fn send(&self, parts: &Parts, project: String, body: &[u8]) -> Reply {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let token = body["message"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let authorized = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(tls::bearer)
            .is_some_and(|t| self.lock().issued.contains(t));
        let canned = self.lock().canned.get(&token).cloned();
        let reply = if !authorized {
            google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                None,
            )
        } else if body.is_null() {
            google_error(400, "Invalid JSON payload received.", None)
        } else if token.is_empty() {
            google_error(
                400,
                "Recipient of the message is not set.",
                Some("INVALID_ARGUMENT"),
            )
        } else if let Some(error) = canned {
            let mut reply = google_error(error.status, &error.message, Some(&error.error_code));
            if let Some(secs) = error.retry_after {
                reply.headers_mut().insert("retry-after", secs.into());
            }
            reply
        } else {
            let id = uuid::Uuid::now_v7().as_u128() as u64;
            tls::json(
                200,
                &json!({ "name": format!("projects/{project}/messages/0:{id}") }),
            )
        };
        let status = reply.status().as_u16();
        self.requests.push(FcmRequest {
            project,
            token,
            body,
            status,
        });
        reply
    }
}

/// An answer in Google's API error shape, with an FcmError detail when
/// `error_code` is given.
fn google_error(status: u16, message: &str, error_code: Option<&str>) -> Reply {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let mut error = json!({"code": status, "message": message, "status": name});
    if let Some(code) = error_code {
        error["details"] = json!([{ "@type": FCM_ERROR_TYPE, "errorCode": code }]);
    }
    tls::json(status, &json!({ "error": error }))
}

fn invalid_grant(description: &str) -> Reply {
    tls::json(
        400,
        &json!({"error": "invalid_grant", "error_description": description}),
    )
}
