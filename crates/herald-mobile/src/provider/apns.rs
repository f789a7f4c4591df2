//! APNs: Apple's HTTP/2 provider API with token (`.p8`) authentication.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{
    Answer, Platform, Provider, ProviderError, Push, Rejection, Sent, answer, app_of,
    default_timeout, excerpt, https_url, join, load_apps, read, refuse,
};
use crate::message::now_secs;

const SANDBOX: &str = "https://api.sandbox.push.apple.com";
const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple takes a provider token for an hour and answers
/// TooManyProviderTokenUpdates to one renewed within 20 minutes: 40 is in the
/// middle of that window.
const TOKEN_REFRESH: Duration = Duration::from_secs(40 * 60);
/// Apple's payload limit, and the larger one for VoIP pushes.
const MAX_PAYLOAD: usize = 4096;
const MAX_VOIP_PAYLOAD: usize = 5120;
/// Reasons that mean the token will never work for this app: the seed's
/// `deleteToken` set.
const DEAD_TOKEN: [&str; 4] = [
    "BadDeviceToken",
    "Unregistered",
    "DeviceTokenNotForTopic",
    "TopicDisallowed",
];

/// Of those, the ones a misconfiguration gives for every token: a token of
/// the other environment (`production`) is a BadDeviceToken, and a wrong
/// `topic` is DeviceTokenNotForTopic or TopicDisallowed. They condemn a
/// token only once the app has had a push accepted.
const DEAD_UNLESS_MISCONFIGURED: [&str; 3] = [
    "BadDeviceToken",
    "DeviceTokenNotForTopic",
    "TopicDisallowed",
];

/// One app's APNs credentials and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` signing key Apple issued (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
    /// The key's id, the provider token's `kid`.
    pub key_id: String,
    /// The developer team, the provider token's `iss`.
    pub team_id: String,
    /// The bundle id, sent as `apns-topic`.
    pub topic: String,
    /// `apns-push-type` (alert, background, voip, …), required by iOS 13+.
    #[serde(default = "default_push_type")]
    pub push_type: String,
    /// Base URL instead of Apple's sandbox or production host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// An extra trusted root (PEM) for a private or test endpoint; trusted by
    /// the shared client, so for every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Bound on one request, from sending to the full answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_push_type() -> String {
    "alert".into()
}

/// Sends to APNs for every configured app over one pooled HTTP/2 client.
pub struct Apns {
    /// One pooled HTTP/2 client for every app, trusting every app's extra root.
    client: Client,
    /// Every configured app, by the name pushes give.
    apps: HashMap<String, App>,
    /// Age after which a provider token is replaced (a field so tests can
    /// shorten it).
    token_refresh: Duration,
}

/// One app, ready to send.
struct App {
    /// Where pushes go: Apple's sandbox or production host, or the configured endpoint.
    base: Url,
    /// The app's `.p8` key, which signs the provider tokens.
    key: EncodingKey,
    /// The provider token's `kid`.
    key_id: String,
    /// The provider token's `iss`.
    team_id: String,
    /// Sent as `apns-topic` (the bundle id).
    topic: HeaderValue,
    /// Sent as `apns-push-type`.
    push_type: HeaderValue,
    /// The largest body APNs takes for the push type (more for VoIP); larger is refused here.
    max_payload: usize,
    /// Bound on one request, from sending to the full answer.
    timeout: Duration,
    /// The current provider token, reused until it is due for renewal or Apple calls it expired.
    jwt: Mutex<Option<Jwt>>,
}

/// A provider token and when it was made.
struct Jwt {
    /// The signed token, sent as the bearer credential.
    token: String,
    /// When it was signed, to tell when it is due for renewal.
    minted: Instant,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: String,
}

impl Apns {
    /// Loads every app's key (failing on the first unusable one, named) and
    /// builds the client. `production` picks Apple's host for apps without
    /// an `endpoint`.
    pub fn new(
        apps: &BTreeMap<String, ApnsConfig>,
        production: bool,
    ) -> Result<Apns, ProviderError> {
        let default = if production { PRODUCTION } else { SANDBOX };
        let (client, apps) = load_apps(
            apps,
            |c| c.ca_file.as_deref(),
            |name, config| App::new(name, config, default),
        )?;
        Ok(Apns {
            client,
            apps,
            token_refresh: TOKEN_REFRESH,
        })
    }
}

#[async_trait]
impl Provider for Apns {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn serves(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    async fn send(&self, push: &Push) -> Result<Sent, Rejection> {
        let app = app_of(&self.apps, push, "APNs")?;
        let body = push.payload.to_string();
        if body.len() > app.max_payload {
            let description = format!("{} bytes, over APNs' {}", body.len(), app.max_payload);
            return Err(refuse("PayloadTooLarge", description));
        }
        let jwt = app.jwt(self.token_refresh).map_err(|e| {
            refuse(
                "InvalidProviderToken",
                format!("cannot sign the provider token: {e}"),
            )
        })?;

        let mut request = self
            .client
            .post(join(&app.base, &["3", "device", &push.token]))
            .timeout(app.timeout)
            .bearer_auth(&jwt)
            .header("apns-topic", app.topic.clone())
            .header("apns-push-type", app.push_type.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(high) = push.high_priority {
            request = request.header("apns-priority", if high { "10" } else { "5" });
        }
        if let Some(expires_at) = push.expires_at {
            request = request.header("apns-expiration", expires_at);
        }
        if let Some(collapse_id) = &push.collapse_id {
            request = request.header("apns-collapse-id", collapse_id);
        }

        let Answer {
            status,
            id,
            retry_after,
            text,
        } = answer(request, "apns-id").await?;
        if status.is_success() {
            debug!(app = push.app, %status, apns_id = id, "APNs accepted the push.");
            return Ok(Sent { id });
        }
        let rejection = rejection(status, &text, retry_after);
        if rejection.reason == "ExpiredProviderToken" {
            app.forget(&jwt);
        }
        debug!(app = push.app, %status, reason = rejection.reason, "APNs refused the push.");
        Err(rejection)
    }
}

/// Reads an APNs error answer. Retryable: 429 (the seed's only retry), 5xx
/// (Apple's InternalServerError, ServiceUnavailable, Shutdown: transient
/// by definition), and ExpiredProviderToken (the next try carries a new
/// token).
fn rejection(status: StatusCode, text: &str, retry: Duration) -> Rejection {
    let reason = serde_json::from_str::<ErrorBody>(text)
        .map(|b| b.reason)
        .unwrap_or_else(|_| format!("HTTP{}", status.as_u16()));
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || reason == "ExpiredProviderToken";
    Rejection {
        status: Some(status.as_u16()),
        invalid_token: DEAD_TOKEN.contains(&reason.as_str()),
        unless_misconfigured: DEAD_UNLESS_MISCONFIGURED.contains(&reason.as_str()),
        retry_after: retryable.then_some(retry),
        description: excerpt(&format!("APNs answered {status}: {text}")),
        reason,
    }
}

impl App {
    fn new(name: &str, config: &ApnsConfig, default_endpoint: &str) -> Result<App, ProviderError> {
        let invalid = |problem: String| ProviderError::Invalid {
            app: name.into(),
            problem,
        };
        let pem = read(name, &config.key_file)?;
        let not_a_key = |e| {
            invalid(format!(
                "{} is not a PKCS#8 P-256 key: {e}",
                config.key_file.display()
            ))
        };
        let header = |what: &str, value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("{what} {value:?} is not a valid header value")))
        };
        let app = App {
            base: https_url(name, config.endpoint.as_deref().unwrap_or(default_endpoint))?,
            key: EncodingKey::from_ec_pem(&pem).map_err(not_a_key)?,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            topic: header("topic", &config.topic)?,
            push_type: header("push_type", &config.push_type)?,
            max_payload: if config.push_type == "voip" {
                MAX_VOIP_PAYLOAD
            } else {
                MAX_PAYLOAD
            },
            timeout: config.timeout,
            jwt: Mutex::new(None),
        };
        // The key is only parsed when signing: sign now, so a bad key fails
        // here rather than on every push.
        app.jwt(TOKEN_REFRESH).map_err(not_a_key)?;
        Ok(app)
    }

    /// The current provider token, minted anew when older than `refresh`.
    fn jwt(&self, refresh: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let mut cached = self.jwt.lock();
        if let Some(jwt) = cached.as_ref().filter(|j| j.minted.elapsed() < refresh) {
            return Ok(jwt.token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: now_secs(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        debug!(key_id = self.key_id, "Minted an APNs provider token.");
        *cached = Some(Jwt {
            token: token.clone(),
            minted: Instant::now(),
        });
        Ok(token)
    }

    /// Drops `token` if it is still the cached one (a concurrent send may
    /// already have replaced it), so the next send mints a new one.
    fn forget(&self, token: &str) {
        let mut cached = self.jwt.lock();
        if cached.as_ref().is_some_and(|j| j.token == token) {
            *cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_testkit::apns::ApnsKey;

    fn config(key_file: PathBuf) -> ApnsConfig {
        ApnsConfig {
            key_file,
            key_id: "KEY1".into(),
            team_id: "TEAM1".into(),
            topic: "com.example.app".into(),
            push_type: "alert".into(),
            endpoint: None,
            ca_file: None,
            timeout: default_timeout(),
        }
    }

    fn key_file(dir: &tempfile::TempDir, pem: &str) -> PathBuf {
        let path = dir.path().join("key.p8");
        std::fs::write(&path, pem).unwrap();
        path
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let parsed: ApnsConfig = serde_json::from_str(
            r#"{"key_file": "k.p8", "key_id": "K", "team_id": "T", "topic": "com.x", "timeout": "3s"}"#,
        )
        .unwrap();
        assert_eq!(parsed.push_type, "alert");
        assert_eq!(parsed.timeout, Duration::from_secs(3));
        assert_eq!(parsed.endpoint, None);
        let unknown = serde_json::from_str::<ApnsConfig>(
            r#"{"key_file": "k.p8", "key_id": "K", "team_id": "T", "topic": "com.x", "bundle": "x"}"#,
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn new_names_the_app_with_a_missing_or_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = BTreeMap::from([("shop".to_owned(), config(dir.path().join("nope.p8")))]);
        let err = Apns::new(&missing, false).err().unwrap().to_string();
        assert!(err.contains("shop") && err.contains("nope.p8"), "{err}");

        let garbage = BTreeMap::from([("shop".to_owned(), config(key_file(&dir, "not a key")))]);
        let err = Apns::new(&garbage, false).err().unwrap().to_string();
        assert!(err.contains("shop") && err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn endpoint_follows_production_unless_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let mut apps = BTreeMap::from([(
            "a".to_owned(),
            config(key_file(&dir, &ApnsKey::generate().private_pem)),
        )]);
        assert_eq!(
            Apns::new(&apps, true).unwrap().apps["a"].base.as_str(),
            "https://api.push.apple.com/"
        );
        assert_eq!(
            Apns::new(&apps, false).unwrap().apps["a"].base.as_str(),
            "https://api.sandbox.push.apple.com/"
        );
        apps.get_mut("a").unwrap().endpoint = Some("https://127.0.0.1:2197".into());
        assert_eq!(
            Apns::new(&apps, true).unwrap().apps["a"].base.as_str(),
            "https://127.0.0.1:2197/"
        );
    }

    #[test]
    fn provider_token_is_reused_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let apps = BTreeMap::from([(
            "a".to_owned(),
            config(key_file(&dir, &ApnsKey::generate().private_pem)),
        )]);
        let apns = Apns::new(&apps, false).unwrap();
        let app = &apns.apps["a"];
        let minted = |app: &App| app.jwt.lock().as_ref().map(|j| j.minted);

        let first = app.jwt(TOKEN_REFRESH).unwrap();
        let at = minted(app);
        assert_eq!(app.jwt(TOKEN_REFRESH).unwrap(), first);
        assert_eq!(minted(app), at, "reused within the refresh age");

        app.forget("some older token");
        assert_eq!(
            minted(app),
            at,
            "a stale token does not evict the current one"
        );
        app.forget(&first);
        assert_eq!(minted(app), None);
        app.jwt(TOKEN_REFRESH).unwrap();
        assert!(minted(app) > at, "minted again after being forgotten");

        let at = minted(app);
        app.jwt(Duration::ZERO).unwrap();
        assert!(
            minted(app) > at,
            "minted again once older than the refresh age"
        );
    }

    #[test]
    fn rejections_follow_apple_reasons() {
        let r = rejection(
            StatusCode::GONE,
            r#"{"reason":"Unregistered","timestamp":1}"#,
            Duration::ZERO,
        );
        assert!(r.invalid_token && r.retry_after.is_none());
        assert_eq!((r.status, r.reason.as_str()), (Some(410), "Unregistered"));

        let r = rejection(
            StatusCode::BAD_REQUEST,
            r#"{"reason":"BadTopic"}"#,
            Duration::ZERO,
        );
        assert!(!r.invalid_token && r.retry_after.is_none());

        let r = rejection(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"reason":"TooManyRequests"}"#,
            Duration::from_secs(2),
        );
        assert_eq!(r.retry_after, Some(Duration::from_secs(2)));

        let r = rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            "<html>down</html>",
            Duration::ZERO,
        );
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("HTTP503", Some(Duration::ZERO))
        );

        let r = rejection(
            StatusCode::FORBIDDEN,
            r#"{"reason":"ExpiredProviderToken"}"#,
            Duration::ZERO,
        );
        assert_eq!(r.retry_after, Some(Duration::ZERO));
        let r = rejection(
            StatusCode::FORBIDDEN,
            r#"{"reason":"InvalidProviderToken"}"#,
            Duration::ZERO,
        );
        assert_eq!(r.retry_after, None);
    }
}
