//! A local APNs: HTTP/2 over TLS, judging each request the way Apple's
//! provider API does (path, provider token, headers, payload), with canned
//! errors per device token, and a record of what it was sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::tls::{self, Recorded, Reply, TlsServer, Versions};

/// Apple's limit for every push type but VoIP.
const MAX_PAYLOAD: usize = 4096;
/// Apple refuses provider tokens issued more than an hour ago.
const TOKEN_LIFETIME: u64 = 3600;
/// The `apns-push-type` values Apple knows.
const PUSH_TYPES: [&str; 8] = [
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "location",
    "liveactivity",
];

/// A P-256 signing key in the two forms a test needs: the `.p8` file Apple
/// hands out (PKCS#8 PEM) for the client, the public key for the server.
#[derive(Debug, Clone)]
pub struct ApnsKey {
    /// PKCS#8 PEM, the content of a `.p8` file.
    pub private_pem: String,
    /// SubjectPublicKeyInfo PEM, for [`MockApns::trust`].
    pub public_pem: String,
}

impl ApnsKey {
    /// A fresh key (P-256 generation is fast even in debug builds).
    pub fn generate() -> ApnsKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key");
        ApnsKey {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        }
    }
}

/// One request the mock received, with the status it answered.
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    /// The device token from the path.
    pub token: String,
    /// Every request header (authorization, apns-topic, apns-priority, …).
    pub headers: HeaderMap,
    /// The payload, `Value::Null` when it was not JSON.
    pub body: Value,
    /// What the mock answered.
    pub status: u16,
}

impl ApnsRequest {
    /// A header's value, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running mock APNs; stops when dropped.
pub struct MockApns {
    /// Serves the mock over TLS until dropped; also holds its key files.
    server: TlsServer,
    /// Shared with the handler: trusted keys, canned answers, requests.
    state: Arc<State>,
}

#[derive(Default)]
struct Inner {
    /// Key id → (team id, public key).
    keys: HashMap<String, (String, DecodingKey)>,
    /// Device token → (status, reason).
    canned: HashMap<String, (u16, String)>,
    /// Provider tokens that verified, with their `iat`: Apple checks a
    /// connection's token once, so the signature is not checked again.
    jwts: HashMap<String, u64>,
    /// How long every answer waits after the request is recorded.
    delay: Duration,
}

struct State {
    /// The trusted keys, canned answers and delay the tests set.
    inner: Mutex<Inner>,
    /// Every request with its answer, in arrival order.
    requests: Recorded<ApnsRequest>,
}

#[derive(Deserialize)]
struct Claims {
    iat: u64,
}

impl MockApns {
    /// Starts the server on a free loopback port, on the current runtime.
    pub async fn start() -> MockApns {
        let state = Arc::new(State {
            inner: Mutex::default(),
            requests: Recorded::new(),
        });
        let (listener, _) = tls::bind().await;
        let handler = state.clone();
        let server = tls::serve(listener, Versions::H2Only, move |parts, body| {
            let reply = handler.handle(parts, body);
            (reply, handler.inner.lock().expect("mock APNs state").delay)
        });
        MockApns { server, state }
    }

    /// The base URL, for the client's `endpoint`.
    pub fn url(&self) -> String {
        self.server.url.clone()
    }

    /// The server's self-signed certificate, for the client's `ca_file`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.server.ca_path.clone()
    }

    /// Accepts provider tokens with `kid = key_id`, `iss = team_id`, signed by
    /// the key whose public half is `public_pem`.
    pub fn trust(&self, key_id: &str, team_id: &str, public_pem: &str) {
        let key = DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("a P-256 public key PEM");
        self.lock()
            .keys
            .insert(key_id.into(), (team_id.into(), key));
    }

    /// Makes a key, trusts it, and writes its `.p8` file (deleted with the
    /// mock); returns the file's path.
    pub fn issue_key(&self, key_id: &str, team_id: &str) -> PathBuf {
        let key = ApnsKey::generate();
        self.trust(key_id, team_id, &key.public_pem);
        let path = self.dir().join(format!("AuthKey_{key_id}.p8"));
        std::fs::write(&path, key.private_pem).expect("write the .p8 file");
        path
    }

    /// Answers every valid request for `token` with `status` and
    /// `{"reason": reason}` (plus Apple's `timestamp` on 410).
    pub fn respond(&self, token: &str, status: u16, reason: &str) {
        self.lock()
            .canned
            .insert(token.into(), (status, reason.into()));
    }

    /// Holds every answer back for `delay` after recording the request, to
    /// keep pushes in flight.
    pub fn answer_after(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ApnsRequest> {
        self.state.requests.all()
    }

    /// Waits until the client gave up on at least `n` requests before their
    /// answers (stream reset or connection closed); panics after `timeout`.
    pub async fn wait_abandoned(&self, n: usize, timeout: Duration) {
        let what = "mock APNs abandoned answers";
        self.server.abandoned.wait_for(n, timeout, what).await;
    }

    /// The most requests this server had in flight (received, not yet
    /// answered) at once so far.
    pub fn peak_in_flight(&self) -> usize {
        self.server.in_flight.peak()
    }

    /// How many different provider tokens (JWTs) verified so far.
    pub fn distinct_jwts(&self) -> usize {
        self.lock().jwts.len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ApnsRequest> {
        self.state.requests.wait_for(n, timeout, "mock APNs").await
    }

    fn dir(&self) -> &Path {
        self.server.dir()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("mock APNs state")
    }
}

impl State {
    fn handle(&self, parts: Parts, body: Bytes) -> Reply {
        let token = parts
            .uri
            .path()
            .strip_prefix("/3/device/")
            .unwrap_or_default()
            .to_owned();
        let (status, reason) = match self.judge(&parts, &token, &body) {
            Ok(()) => (200, None),
            Err((status, reason)) => (status, Some(reason)),
        };
        let request = ApnsRequest {
            token,
            headers: parts.headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status,
        };
        self.requests.push(request);

        let mut reply = match reason {
            None => tls::json(200, &json!({})),
            Some(reason) if status == 410 => tls::json(
                status,
                &json!({"reason": reason, "timestamp": crate::tls::unix_now() * 1000}),
            ),
            Some(reason) => tls::json(status, &json!({ "reason": reason })),
        };
        // Apple names every answer, errors included.
        let id = uuid::Uuid::now_v7().hyphenated().to_string().to_uppercase();
        reply
            .headers_mut()
            .insert("apns-id", id.parse().expect("header"));
        reply
    }

    /// Apple's checks, in roughly Apple's order; `Err((status, reason))`.
    fn judge(&self, parts: &Parts, token: &str, body: &[u8]) -> Result<(), (u16, String)> {
        let fail = |status: u16, reason: &str| Err((status, reason.to_owned()));
        if parts.method != Method::POST {
            return fail(405, "MethodNotAllowed");
        }
        if !parts.uri.path().starts_with("/3/device/") || token.contains('/') {
            return fail(404, "BadPath");
        }
        if token.is_empty() {
            return fail(400, "MissingDeviceToken");
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let Some(jwt) = header("authorization").and_then(tls::bearer) else {
            return fail(403, "MissingProviderToken");
        };
        self.verify(jwt)?;
        if header("apns-topic").is_none_or(str::is_empty) {
            return fail(400, "MissingTopic");
        }
        if header("apns-priority").is_some_and(|p| !["1", "5", "10"].contains(&p)) {
            return fail(400, "BadPriority");
        }
        if header("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
            return fail(400, "BadExpirationDate");
        }
        if header("apns-push-type").is_some_and(|t| !PUSH_TYPES.contains(&t)) {
            return fail(400, "InvalidPushType");
        }
        if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
            return fail(400, "BadCollapseId");
        }
        if body.len() > MAX_PAYLOAD {
            return fail(413, "PayloadTooLarge");
        }
        if body.is_empty() {
            return fail(400, "PayloadEmpty");
        }
        // Apple documents no reason for malformed JSON; this name is ours.
        if !serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object()) {
            return fail(400, "BadPayload");
        }
        let canned = self
            .inner
            .lock()
            .expect("mock APNs state")
            .canned
            .get(token)
            .cloned();
        match canned {
            Some((status, reason)) => Err((status, reason)),
            None => Ok(()),
        }
    }

    /// Checks an ES256 provider token against the trusted keys.
    fn verify(&self, jwt: &str) -> Result<(), (u16, String)> {
        let invalid = || (403, "InvalidProviderToken".to_owned());
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| invalid())?;
        let kid = header.kid.ok_or_else(invalid)?;
        let mut inner = self.inner.lock().expect("mock APNs state");
        let expired = |iat: u64| iat + TOKEN_LIFETIME < crate::tls::unix_now();
        if let Some(&iat) = inner.jwts.get(jwt) {
            return if expired(iat) {
                Err((403, "ExpiredProviderToken".to_owned()))
            } else {
                Ok(())
            };
        }
        let (team, key) = inner.keys.get(&kid).ok_or_else(invalid)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.set_issuer(&[team]);
        let claims = jsonwebtoken::decode::<Claims>(jwt, key, &validation)
            .map_err(|_| invalid())?
            .claims;
        if expired(claims.iat) {
            return Err((403, "ExpiredProviderToken".to_owned()));
        }
        inner.jwts.insert(jwt.to_owned(), claims.iat);
        Ok(())
    }
}
