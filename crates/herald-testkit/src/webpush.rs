//! A local push service, as browsers' push services speak RFC 8030 to
//! application servers: `POST /push/<id>` over TLS (HTTP/2 and HTTP/1.1),
//! a VAPID token checked the way RFC 8292 says (ES256 signature by the `k`
//! key, `aud` this service's origin, `exp` within 24 hours, a `sub`
//! contact), the body decrypted (RFC 8291 `aes128gcm`) with the browser
//! side's keys, and answered `201 Created` with a `Location`, or with a
//! canned error per subscription.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use serde::Deserialize;
use serde_json::{Value, json};
use web_push_native::Auth;

use crate::tls::{self, Recorded, Reply, TlsServer, Versions};

/// The encrypted body push services are bound to take (RFC 8030 §7.2).
const MAX_BODY: usize = 4096;
/// RFC 8292 §2: a token expiring more than 24 hours ahead is refused.
const MAX_VAPID_AHEAD: u64 = 24 * 3600;

/// A browser's subscription, as `PushSubscription.toJSON()` gives it to the
/// page that sends it to the application server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `https://127.0.0.1:PORT/push/<id>`.
    pub endpoint: String,
    /// The browser's P-256 public key, uncompressed, base64url.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

impl Subscription {
    /// `{"endpoint", "expirationTime": null, "keys": {"p256dh", "auth"}}`.
    pub fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        })
    }
}

/// The claims of a VAPID token that verified, and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vapid {
    /// The push service origin the token is for.
    pub aud: String,
    /// Unix seconds.
    pub exp: u64,
    /// The sender's contact.
    pub sub: String,
    /// The whole token.
    #[serde(skip)]
    pub token: String,
    /// The `k` parameter: the sender's public key, base64url.
    #[serde(skip)]
    pub key: String,
}

/// One request the mock received, with what it answered.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The subscription id from the path (`/push/<id>`).
    pub id: String,
    /// Every request header (authorization, ttl, urgency, topic, …).
    pub headers: HeaderMap,
    /// The encrypted body's length.
    pub body_len: usize,
    /// The decrypted data, when the push was accepted.
    pub plaintext: Option<Vec<u8>>,
    /// The VAPID token's claims, when it verified.
    pub vapid: Option<Vapid>,
    /// What the mock answered.
    pub status: u16,
}

impl PushRequest {
    /// A header's value, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decrypted data as text, when accepted and UTF-8.
    pub fn text(&self) -> Option<&str> {
        self.plaintext
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }
}

/// A running mock push service; stops when dropped.
pub struct MockPushService {
    /// Serves the mock over TLS until dropped; also holds its VAPID key files.
    server: TlsServer,
    /// Shared with the handler: subscriptions, keys, canned answers, requests.
    state: Arc<State>,
}

/// A canned answer for one subscription.
#[derive(Clone, Default)]
struct Canned {
    /// The status every valid push to the subscription gets.
    status: u16,
    /// Sent as `Retry-After`, in seconds.
    retry_after: Option<u64>,
    /// A `Location` header, as a redirect carries.
    location: Option<String>,
    /// The error body never ends (a hostile or broken endpoint).
    endless: bool,
}

/// The browser side of a subscription: what decrypts its pushes.
struct Browser {
    /// The private half of the subscription's `p256dh`, which decrypts its pushes.
    secret: p256::SecretKey,
    /// The subscription's auth secret, which decryption also takes.
    auth: Auth,
}

#[derive(Default)]
struct Inner {
    /// Subscription id (the endpoint's last segment) → the browser that decrypts its pushes.
    subscriptions: HashMap<String, Browser>,
    /// Subscription id → the answer every valid push to it gets.
    canned: HashMap<String, Canned>,
    /// VAPID public keys (base64url) handed out by `issue_vapid_key`; once
    /// there is one, tokens signed by any other key are refused, as a push
    /// service refuses a key other than the subscription's
    /// `applicationServerKey`.
    vapid_keys: HashSet<String>,
    /// Every VAPID token that verified, for tests that count distinct ones.
    jwts: HashSet<String>,
}

struct State {
    /// `https://127.0.0.1:PORT`, the audience every token must name.
    origin: String,
    /// The subscriptions, keys and canned answers the tests set.
    inner: Mutex<Inner>,
    /// Every request with its answer, in arrival order.
    requests: Recorded<PushRequest>,
}

impl MockPushService {
    /// Starts the service on a free loopback port, on the current runtime.
    pub async fn start() -> MockPushService {
        let (listener, addr) = tls::bind().await;
        let state = Arc::new(State {
            origin: format!("https://{addr}"),
            inner: Mutex::default(),
            requests: Recorded::new(),
        });
        let handler = state.clone();
        let server = tls::serve(listener, Versions::H2AndHttp1, move |parts, body| {
            (handler.handle(&parts, &body), Duration::ZERO)
        });
        MockPushService { server, state }
    }

    /// The service's origin, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url.clone()
    }

    /// The server's self-signed certificate, for the client's `ca_file`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.server.ca_path.clone()
    }

    /// A new subscription, as a browser makes one: a P-256 key pair and a
    /// 16-byte auth secret on the browser side, an endpoint on this service.
    pub fn subscribe(&self) -> Subscription {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key")
            .serialize_pem();
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).expect("a PKCS#8 P-256 key");
        let auth: [u8; 16] = rand::random();
        let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let subscription = Subscription {
            endpoint: format!("{}/push/{id}", self.url()),
            p256dh: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false)),
            auth: URL_SAFE_NO_PAD.encode(auth),
        };
        let browser = Browser {
            secret,
            auth: Auth::clone_from_slice(&auth),
        };
        self.lock().subscriptions.insert(id, browser);
        subscription
    }

    /// Writes a new VAPID signing key (PKCS#8 PEM, deleted with the mock),
    /// accepts tokens signed by it, and returns the file's path. From the
    /// first key issued on, keys not issued here are refused (403).
    pub fn issue_vapid_key(&self) -> PathBuf {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key")
            .serialize_pem();
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).expect("a PKCS#8 P-256 key");
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false));
        let path = self.server.dir().join(format!(
            "vapid-{}.pem",
            &public[..8].replace(['-', '_'], "x")
        ));
        std::fs::write(&path, pem).expect("write the VAPID key");
        self.lock().vapid_keys.insert(public);
        path
    }

    /// Answers every valid push to `endpoint` with `status` (410 for an
    /// unsubscribed browser, 429, 500, …) and a JSON error body.
    pub fn respond(&self, endpoint: &str, status: u16) {
        self.canned(endpoint, status, None);
    }

    /// [`MockPushService::respond`] with a `Retry-After: secs` header.
    pub fn respond_retry_after(&self, endpoint: &str, status: u16, secs: u64) {
        self.canned(endpoint, status, Some(secs));
    }

    /// Answers every valid push to `endpoint` with `status` (a 3xx) and
    /// `Location: location`.
    pub fn redirect(&self, endpoint: &str, status: u16, location: &str) {
        self.canned_as(
            endpoint,
            Canned {
                status,
                location: Some(location.to_owned()),
                ..Canned::default()
            },
        );
    }

    /// Answers every valid push to `endpoint` with `status` and a body that
    /// never ends: a little more every few milliseconds, for as long as the
    /// client reads.
    pub fn respond_endlessly(&self, endpoint: &str, status: u16) {
        self.canned_as(
            endpoint,
            Canned {
                status,
                endless: true,
                ..Canned::default()
            },
        );
    }

    /// Bytes of endless bodies (see [`MockPushService::respond_endlessly`])
    /// sent so far: what clients chose to read of them.
    pub fn endless_bytes_sent(&self) -> usize {
        self.server
            .endless_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<PushRequest> {
        self.state.requests.all()
    }

    /// How many different VAPID tokens verified so far.
    pub fn distinct_jwts(&self) -> usize {
        self.lock().jwts.len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<PushRequest> {
        self.state
            .requests
            .wait_for(n, timeout, "mock push service")
            .await
    }

    fn canned(&self, endpoint: &str, status: u16, retry_after: Option<u64>) {
        self.canned_as(
            endpoint,
            Canned {
                status,
                retry_after,
                ..Canned::default()
            },
        );
    }

    fn canned_as(&self, endpoint: &str, canned: Canned) {
        let id = endpoint
            .rsplit_once("/push/")
            .map_or(endpoint, |(_, id)| id)
            .to_owned();
        self.lock().canned.insert(id, canned);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock()
    }
}

/// What the mock decided about one request.
struct Verdict {
    /// The answer's status: 201 when the push was accepted.
    status: u16,
    /// The error's message (autopush's `message`), or `None` for 201.
    message: Option<String>,
    /// Sent as `Retry-After`, in seconds.
    retry_after: Option<u64>,
    /// The decrypted data, when the push was accepted.
    plaintext: Option<Vec<u8>>,
    /// The token's claims, once it verified (a push refused after that still has them).
    vapid: Option<Vapid>,
    /// Sent as `Location`: a canned redirect's target.
    location: Option<String>,
    /// The error body never ends (a canned endless answer).
    endless: bool,
}

impl Verdict {
    fn error(status: u16, message: &str) -> Verdict {
        Verdict {
            status,
            message: Some(message.to_owned()),
            retry_after: None,
            plaintext: None,
            vapid: None,
            location: None,
            endless: false,
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mock push service state")
    }

    fn handle(&self, parts: &Parts, body: &[u8]) -> Reply {
        let id = parts
            .uri
            .path()
            .strip_prefix("/push/")
            .unwrap_or_default()
            .to_owned();
        let verdict = self.judge(parts, &id, body);
        let status = verdict.status;
        let mut reply = match &verdict.message {
            None => {
                let mut reply = Response::new(Full::new(Bytes::new()));
                *reply.status_mut() = hyper::StatusCode::CREATED;
                let location = format!("{}/message/{}", self.origin, uuid::Uuid::now_v7().simple());
                let headers = reply.headers_mut();
                headers.insert("location", location.parse().expect("header"));
                if let Some(ttl) = parts.headers.get("ttl") {
                    headers.insert("ttl", ttl.clone());
                }
                reply
            }
            // The shape of Mozilla autopush's errors, without its errno.
            Some(message) => tls::json(
                status,
                &json!({"code": status, "error": reason(status), "message": message}),
            ),
        };
        if let Some(secs) = verdict.retry_after {
            reply.headers_mut().insert("retry-after", secs.into());
        }
        if let Some(location) = &verdict.location {
            let location = location.parse().expect("a header value");
            reply.headers_mut().insert("location", location);
        }
        if verdict.endless {
            reply.extensions_mut().insert(tls::EndlessBody);
        }
        let request = PushRequest {
            id,
            headers: parts.headers.clone(),
            body_len: body.len(),
            plaintext: verdict.plaintext,
            vapid: verdict.vapid,
            status,
        };
        self.requests.push(request);
        reply
    }

    /// RFC 8030's checks, then the canned answer, then decryption.
    fn judge(&self, parts: &Parts, id: &str, body: &[u8]) -> Verdict {
        if parts.method != Method::POST {
            return Verdict::error(405, "Method not allowed.");
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let vapid = match header("authorization").map(|a| self.verify(a)) {
            None => return Verdict::error(401, "Missing VAPID authorization."),
            Some(Err((status, message))) => return Verdict::error(status, &message),
            Some(Ok(vapid)) => vapid,
        };
        let error = |status: u16, message: &str| Verdict {
            vapid: Some(vapid.clone()),
            ..Verdict::error(status, message)
        };
        if header("ttl").is_none_or(|t| t.parse::<u64>().is_err()) {
            return error(400, "Missing or invalid TTL header.");
        }
        if header("content-encoding") != Some("aes128gcm") {
            return error(400, "Unknown Content-Encoding; aes128gcm expected.");
        }
        if header("urgency").is_some_and(|u| !["very-low", "low", "normal", "high"].contains(&u)) {
            return error(400, "Invalid Urgency header.");
        }
        if header("topic").is_some_and(|t| {
            t.is_empty()
                || t.len() > 32
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return error(400, "Invalid Topic header.");
        }
        if body.len() > MAX_BODY {
            return error(413, "Request body too large.");
        }
        let inner = self.lock();
        let Some(browser) = inner.subscriptions.get(id) else {
            return error(404, "Subscription not found.");
        };
        if let Some(canned) = inner.canned.get(id) {
            return Verdict {
                retry_after: canned.retry_after,
                location: canned.location.clone(),
                endless: canned.endless,
                ..error(canned.status, "Canned answer.")
            };
        }
        match web_push_native::decrypt(body.to_vec(), &browser.secret, &browser.auth) {
            Ok(plaintext) => Verdict {
                status: 201,
                message: None,
                retry_after: None,
                plaintext: Some(plaintext),
                vapid: Some(vapid),
                location: None,
                endless: false,
            },
            Err(e) => error(400, &format!("Cannot decrypt the body: {e}")),
        }
    }

    /// Checks `vapid t=<jwt>, k=<key>` (RFC 8292 §3); `Err` with 401 when
    /// it cannot be read, 403 when it does not verify.
    fn verify(&self, authorization: &str) -> Result<Vapid, (u16, String)> {
        let unreadable = || (401, "Authorization is not VAPID.".to_owned());
        let (scheme, params) = authorization.split_once(' ').ok_or_else(unreadable)?;
        if !scheme.eq_ignore_ascii_case("vapid") {
            return Err(unreadable());
        }
        let mut token = None;
        let mut key = None;
        for param in params.split(',') {
            match param.trim().split_once('=') {
                Some(("t", value)) => token = Some(value.trim()),
                Some(("k", value)) => key = Some(value.trim()),
                _ => {}
            }
        }
        let (Some(token), Some(key)) = (token, key) else {
            return Err(unreadable());
        };
        let forbidden = |why: &str| (403, format!("Invalid VAPID token: {why}."));
        let point = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| forbidden("k is not base64url"))?;
        if point.len() != 65 || p256::PublicKey::from_sec1_bytes(&point).is_err() {
            return Err(forbidden("k is not an uncompressed P-256 key"));
        }
        {
            let inner = self.lock();
            if !inner.vapid_keys.is_empty() && !inner.vapid_keys.contains(key) {
                return Err(forbidden("k is not the subscription's key"));
            }
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.origin]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 0;
        let decoded =
            jsonwebtoken::decode::<Vapid>(token, &DecodingKey::from_ec_der(&point), &validation)
                .map_err(|e| forbidden(&e.to_string()))?;
        let mut vapid = decoded.claims;
        if vapid.exp > crate::tls::unix_now() + MAX_VAPID_AHEAD {
            return Err(forbidden("exp is more than 24 hours ahead"));
        }
        if !(vapid.sub.starts_with("mailto:") || vapid.sub.starts_with("https:")) {
            return Err(forbidden("sub is not a mailto: or https: contact"));
        }
        vapid.token = token.to_owned();
        vapid.key = key.to_owned();
        self.lock().jwts.insert(vapid.token.clone());
        Ok(vapid)
    }
}

/// The status's name, for the `error` field.
fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}
