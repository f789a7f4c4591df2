//! FCM HTTP v1 (the seed's "gcm" platform), authenticated with a Google
//! service account through OAuth2's JWT-bearer grant.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::debug;

use super::{
    Answer, Platform, Provider, ProviderError, Push, Rejection, Sent, answer, app_of,
    default_timeout, excerpt, https_url, join, load_apps, read, refuse,
};
use crate::message::now_secs;

const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// The OAuth2 scope that FCM's v1 API requires.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// RFC 7523's grant type for a signed JWT assertion.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's upper bound on an assertion's lifetime.
const ASSERTION_LIFETIME: u64 = 3600;
/// Access tokens are replaced this long before Google says they expire, so
/// none expires in flight.
const EXPIRY_MARGIN: u64 = 60;
/// The `@type` of FCM's own error detail, which carries the precise code.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// One app's FCM credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service-account JSON from the Firebase console (`client_email`,
    /// `private_key`, `token_uri`, `project_id`).
    #[serde(default)]
    pub service_account_file: PathBuf,
    /// The same JSON given inline instead of as a file (the Pusher seed's
    /// `gcm.firebaseCredentials.<app>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_json: Option<String>,
    /// The Firebase project to send through, when not the account's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Base URL instead of `https://fcm.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// An extra trusted root (PEM) for a private or test endpoint; trusted by
    /// the shared client, so for every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Bound on one request (a send, or a token exchange).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Sends to FCM for every configured app over one pooled HTTP/2 client.
pub struct Fcm {
    /// One pooled HTTP/2 client for every app, trusting every app's extra root.
    client: Client,
    /// Every configured app, by the name pushes give.
    apps: HashMap<String, App>,
}

/// The fields of a service-account file that matter here.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    token_uri: String,
    project_id: Option<String>,
}

/// One app, ready to send.
struct App {
    /// The project's `messages:send` endpoint.
    send_url: Url,
    /// The account's `token_uri`: where assertions buy access tokens, and their `aud`.
    token_url: Url,
    /// The service account, the assertions' `iss`.
    client_email: String,
    /// The account's private key, which signs the assertions.
    key: EncodingKey,
    /// Bound on one request: a send, or a token exchange.
    timeout: Duration,
    /// The access token; the async lock makes concurrent sends wait for one
    /// exchange instead of each starting its own.
    access: tokio::sync::Mutex<Exchange>,
    /// Failed exchanges so far: a send that saw this change while it waited
    /// for the lock takes the failure it waited for instead of trying again.
    failures: AtomicU64,
}

/// What the last exchange gave.
#[derive(Default)]
struct Exchange {
    /// The access token, while there is one.
    current: Option<Access>,
    /// Why the last exchange failed, for the sends that waited on it.
    failed: Option<Rejection>,
}

/// An OAuth2 access token and when to replace it.
struct Access {
    /// Sent as the bearer credential of every push.
    token: String,
    /// When to exchange for a new one: a margin before Google says it expires.
    refresh_at: Instant,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl Fcm {
    /// Loads every app's service account (failing on the first unusable
    /// one, named) and builds the client.
    pub fn new(apps: &BTreeMap<String, FcmConfig>) -> Result<Fcm, ProviderError> {
        let (client, apps) = load_apps(apps, |c| c.ca_file.as_deref(), App::new)?;
        Ok(Fcm { client, apps })
    }
}

#[async_trait]
impl Provider for Fcm {
    fn platform(&self) -> Platform {
        Platform::Gcm
    }

    fn serves(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    async fn send(&self, push: &Push) -> Result<Sent, Rejection> {
        let app = app_of(&self.apps, push, "FCM")?;
        let mut body = json!({ "message": message(push, now_secs())? });
        if push.dry_run {
            body["validate_only"] = true.into();
        }
        let access = app.access_token(&self.client).await?;
        let request = self
            .client
            .post(app.send_url.clone())
            .timeout(app.timeout)
            .bearer_auth(&access)
            .json(&body);
        let Answer {
            status,
            retry_after: retry,
            text,
            ..
        } = answer(request, "").await?;
        if status.is_success() {
            let id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_owned));
            debug!(app = %push.app, %status, "FCM accepted the push.");
            return Ok(Sent { id });
        }
        if status == StatusCode::UNAUTHORIZED {
            app.forget(&access).await;
        }
        let rejection = rejection(status, &text, retry);
        debug!(app = %push.app, %status, reason = %rejection.reason, "FCM refused the push.");
        Err(rejection)
    }
}

/// The longest `android.ttl` FCM takes: 28 days.
const MAX_TTL_SECS: u64 = 28 * 24 * 3600;

/// The v1 `message`: the payload with the device token, and the push's
/// expiry, collapse id and priority as `android` options the payload did
/// not set itself. An expired push is refused here.
fn message(push: &Push, now: u64) -> Result<Value, Rejection> {
    let Value::Object(mut message) = push.payload.clone() else {
        return Err(refuse(
            "InvalidPayload",
            "an FCM message must be a JSON object".into(),
        ));
    };
    message.insert("token".into(), push.token.clone().into());
    let mut android = Map::new();
    if let Some(expires_at) = push.expires_at {
        let Some(ttl) = expires_at.checked_sub(now) else {
            return Err(refuse(
                "Expired",
                format!("expired {}s ago", now - expires_at),
            ));
        };
        // FCM keeps a message four weeks at most and refuses a longer TTL.
        let ttl = ttl.min(MAX_TTL_SECS);
        android.insert("ttl".into(), format!("{ttl}s").into());
    }
    if let Some(collapse_id) = &push.collapse_id {
        android.insert("collapse_key".into(), collapse_id.clone().into());
    }
    if let Some(high) = push.high_priority {
        android.insert(
            "priority".into(),
            if high { "high" } else { "normal" }.into(),
        );
    }
    if !android.is_empty() {
        // A non-object `android` from the payload is left for FCM to judge.
        if let Value::Object(own) = message
            .entry("android")
            .or_insert_with(|| Value::Object(Map::new()))
        {
            for (key, value) in android {
                own.entry(key).or_insert(value);
            }
        }
    }
    Ok(Value::Object(message))
}

/// Reads an FCM error answer (Google's `{"error": {…}}`).
///
/// The reason is FCM's own `errorCode` when given, else the API status.
/// The token is dead on UNREGISTERED, and on INVALID_ARGUMENT only when the
/// message blames the registration token: that code also covers bad
/// payloads, which say nothing about the token. SENDER_ID_MISMATCH is kept
/// out: it also follows from a wrong project, which would condemn every
/// token. Retryable: 429 (with its Retry-After), 5xx, UNAVAILABLE,
/// INTERNAL, and 401 (the next try gets a new access token).
fn rejection(status: StatusCode, text: &str, retry: Duration) -> Rejection {
    let error = serde_json::from_str::<ErrorBody>(text)
        .ok()
        .map(|b| b.error);
    let code = error.as_ref().and_then(|e| {
        e.details
            .iter()
            .find(|d| d["@type"] == FCM_ERROR_TYPE)
            .and_then(|d| d["errorCode"].as_str())
            .or_else(|| Some(e.status.as_str()).filter(|s| !s.is_empty()))
    });
    let reason = code.map_or_else(|| format!("HTTP{}", status.as_u16()), str::to_owned);
    let message = error.as_ref().map_or(text, |e| e.message.as_str());
    let invalid_token = reason == "UNREGISTERED"
        || (reason == "INVALID_ARGUMENT"
            && message
                .to_ascii_lowercase()
                .contains("registration token is not a valid"));
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::UNAUTHORIZED
        || status.is_server_error()
        || matches!(reason.as_str(), "UNAVAILABLE" | "INTERNAL");
    Rejection {
        status: Some(status.as_u16()),
        reason,
        description: excerpt(message),
        invalid_token,
        unless_misconfigured: false,
        retry_after: retryable.then_some(retry),
    }
}

impl App {
    fn new(name: &str, config: &FcmConfig) -> Result<App, ProviderError> {
        let path = &config.service_account_file;
        let invalid = |problem: String| ProviderError::Invalid {
            app: name.into(),
            problem: match &config.credentials_json {
                Some(_) => format!("credentials_json: {problem}"),
                None => format!("{}: {problem}", path.display()),
            },
        };
        let json = match &config.credentials_json {
            Some(json) => json.as_bytes().to_vec(),
            None => read(name, path)?,
        };
        let account: ServiceAccount = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("not a service-account file: {e}")))?;
        let project = config
            .project_id
            .as_deref()
            .or(account.project_id.as_deref())
            .ok_or_else(|| invalid("no project_id, here or in the app's config".into()))?;
        let base = https_url(name, config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT))?;
        let app = App {
            send_url: join(&base, &["v1", "projects", project, "messages:send"]),
            token_url: https_url(name, &account.token_uri)?,
            key: EncodingKey::from_rsa_pem(account.private_key.as_bytes())
                .map_err(|e| invalid(format!("private_key is not an RSA PEM key: {e}")))?,
            client_email: account.client_email,
            timeout: config.timeout,
            access: tokio::sync::Mutex::new(Exchange::default()),
            failures: AtomicU64::new(0),
        };
        // The key is only parsed when signing: sign now, so a bad key fails
        // here rather than on every push.
        app.assertion(now_secs())
            .map_err(|e| invalid(format!("private_key cannot sign: {e}")))?;
        Ok(app)
    }

    /// The signed JWT that buys an access token.
    fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: self.token_url.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }

    /// The current access token, exchanged for a new one when due. Holding
    /// the lock across the exchange makes it single-flight, failures
    /// included: the sends that waited for an exchange share its result,
    /// so a failing token endpoint sees one request, not one per send.
    async fn access_token(&self, client: &Client) -> Result<String, Rejection> {
        let failures = self.failures.load(Ordering::SeqCst);
        let mut exchange = self.access.lock().await;
        if let Some(current) = exchange
            .current
            .as_ref()
            .filter(|a| Instant::now() < a.refresh_at)
        {
            return Ok(current.token.clone());
        }
        if self.failures.load(Ordering::SeqCst) != failures
            && let Some(failed) = &exchange.failed
        {
            return Err(failed.clone());
        }
        match self.exchange(client).await {
            Ok(access) => {
                let token = access.token.clone();
                *exchange = Exchange {
                    current: Some(access),
                    failed: None,
                };
                Ok(token)
            }
            Err(rejection) => {
                exchange.failed = Some(rejection.clone());
                self.failures.fetch_add(1, Ordering::SeqCst);
                Err(rejection)
            }
        }
    }

    /// One OAuth2 exchange of a fresh assertion for an access token.
    async fn exchange(&self, client: &Client) -> Result<Access, Rejection> {
        let assertion = self.assertion(now_secs()).map_err(|e| {
            refuse(
                "AuthError",
                format!("cannot sign the OAuth2 assertion: {e}"),
            )
        })?;
        let request = client
            .post(self.token_url.clone())
            .timeout(self.timeout)
            .form(&[("grant_type", GRANT_TYPE), ("assertion", &assertion)]);
        let Answer {
            status,
            retry_after: retry,
            text,
            ..
        } = answer(request, "").await?;
        let granted = serde_json::from_str::<Granted>(&text)
            .ok()
            .filter(|_| status.is_success());
        let Some(granted) = granted else {
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            return Err(Rejection {
                status: Some(status.as_u16()),
                reason: "AuthError".into(),
                description: excerpt(&format!("the token endpoint answered {status}: {text}")),
                invalid_token: false,
                unless_misconfigured: false,
                retry_after: retryable.then_some(retry),
            });
        };
        debug!(expires_in = granted.expires_in, "Got an FCM access token.");
        let lifetime = Duration::from_secs(granted.expires_in.saturating_sub(EXPIRY_MARGIN));
        Ok(Access {
            token: granted.access_token,
            refresh_at: Instant::now() + lifetime,
        })
    }

    /// Drops `token` if it is still the cached one, so the next send
    /// exchanges for a new one.
    async fn forget(&self, token: &str) {
        let mut exchange = self.access.lock().await;
        if exchange.current.as_ref().is_some_and(|a| a.token == token) {
            exchange.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(payload: Value) -> Push {
        Push {
            app: "a".into(),
            token: "tok".into(),
            payload,
            expires_at: None,
            collapse_id: None,
            high_priority: None,
            dry_run: false,
        }
    }

    #[test]
    fn message_adds_token_and_android_options() {
        let mut p = push(json!({"notification": {"title": "hi"}}));
        p.expires_at = Some(1_100);
        p.collapse_id = Some("score".into());
        p.high_priority = Some(false);
        let m = message(&p, 1_000).unwrap();
        assert_eq!(m["token"], "tok");
        assert_eq!(m["notification"]["title"], "hi");
        assert_eq!(
            m["android"],
            json!({"ttl": "100s", "collapse_key": "score", "priority": "normal"})
        );

        p.high_priority = Some(true);
        assert_eq!(message(&p, 1_000).unwrap()["android"]["priority"], "high");
        // Six weeks ahead: FCM's four weeks at most.
        p.expires_at = Some(1_000 + 42 * 24 * 3600);
        assert_eq!(message(&p, 1_000).unwrap()["android"]["ttl"], "2419200s");
        assert!(
            message(&push(json!({})), 0)
                .unwrap()
                .get("android")
                .is_none()
        );
    }

    #[test]
    fn time_to_live_zero_goes_as_0s_on_every_try() {
        let route = crate::topic::Route {
            app: "a".into(),
            platform: Platform::Gcm,
        };
        let body = br#"{"to":"t","time_to_live":0,"notification":{"sound":"s"}}"#;
        let n = crate::message::parse(&route, body).unwrap();
        assert_eq!(n.push.expires_at, None);
        // A retry seconds later still sends it, for FCM to deliver now or never.
        let later = message(&n.push, now_secs() + 5).unwrap();
        assert_eq!(
            later["android"],
            json!({"ttl": "0s", "notification": {"sound": "s"}})
        );
    }

    #[test]
    fn message_keeps_the_payloads_own_android_keys() {
        let mut p = push(
            json!({"android": {"priority": "high", "ttl": "5s", "restricted_package_name": "x"}}),
        );
        p.expires_at = Some(1_100);
        p.collapse_id = Some("c".into());
        p.high_priority = Some(false);
        let android = &message(&p, 1_000).unwrap()["android"];
        assert_eq!(
            android,
            &json!({"priority": "high", "ttl": "5s", "restricted_package_name": "x", "collapse_key": "c"})
        );
    }

    #[test]
    fn message_refuses_expired_pushes_and_non_objects() {
        let mut p = push(json!({}));
        p.expires_at = Some(999);
        let r = message(&p, 1_000).unwrap_err();
        assert_eq!(
            (r.reason.as_str(), r.retry_after, r.status),
            ("Expired", None, None)
        );
        p.expires_at = Some(1_000);
        assert_eq!(message(&p, 1_000).unwrap()["android"]["ttl"], "0s");
        assert_eq!(
            message(&push(json!([1])), 0).unwrap_err().reason,
            "InvalidPayload"
        );
    }

    fn google(status: u16, state: &str, code: Option<&str>, message: &str) -> String {
        let mut error = json!({"code": status, "status": state, "message": message});
        if let Some(code) = code {
            error["details"] = json!([{"@type": "type.googleapis.com/google.rpc.BadRequest"}, {"@type": FCM_ERROR_TYPE, "errorCode": code}]);
        }
        json!({ "error": error }).to_string()
    }

    #[test]
    fn rejections_follow_fcm_codes() {
        let r = rejection(
            StatusCode::NOT_FOUND,
            &google(404, "NOT_FOUND", Some("UNREGISTERED"), "gone"),
            Duration::ZERO,
        );
        assert_eq!(
            (r.reason.as_str(), r.invalid_token, r.retry_after),
            ("UNREGISTERED", true, None)
        );
        assert_eq!(r.description, "gone");

        let bad_token = google(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        );
        assert!(rejection(StatusCode::BAD_REQUEST, &bad_token, Duration::ZERO).invalid_token);
        let bad_data = google(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Invalid value at 'message.data[0].value'",
        );
        let r = rejection(StatusCode::BAD_REQUEST, &bad_data, Duration::ZERO);
        assert!(!r.invalid_token && r.retry_after.is_none());

        let r = rejection(
            StatusCode::FORBIDDEN,
            &google(403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), "x"),
            Duration::ZERO,
        );
        assert_eq!(
            (r.reason.as_str(), r.invalid_token),
            ("SENDER_ID_MISMATCH", false)
        );

        let quota = google(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "quota");
        let r = rejection(
            StatusCode::TOO_MANY_REQUESTS,
            &quota,
            Duration::from_secs(7),
        );
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("QUOTA_EXCEEDED", Some(Duration::from_secs(7)))
        );

        let r = rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            &google(503, "UNAVAILABLE", None, "later"),
            Duration::ZERO,
        );
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("UNAVAILABLE", Some(Duration::ZERO))
        );

        let r = rejection(StatusCode::BAD_GATEWAY, "<html>", Duration::ZERO);
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("HTTP502", Some(Duration::ZERO))
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let parsed: FcmConfig =
            serde_json::from_str(r#"{"service_account_file": "sa.json"}"#).unwrap();
        assert_eq!(
            (parsed.project_id, parsed.endpoint, parsed.timeout),
            (None, None, default_timeout())
        );
        assert!(
            serde_json::from_str::<FcmConfig>(
                r#"{"service_account_file": "sa.json", "api_key": "x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn new_names_the_app_with_a_bad_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.json");
        std::fs::write(&path, r#"{"client_email": "a@b", "private_key": "nope", "token_uri": "https://t", "project_id": "p"}"#).unwrap();
        let config = FcmConfig {
            service_account_file: path,
            credentials_json: None,
            project_id: None,
            endpoint: None,
            ca_file: None,
            timeout: default_timeout(),
        };
        let err = Fcm::new(&BTreeMap::from([("shop".to_owned(), config)]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shop") && err.contains("private_key"), "{err}");
    }
}
