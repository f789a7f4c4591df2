//! Web Push: browsers' push services (Chrome's, Firefox's, Safari's) as
//! RFC 8030 describes them, with the payload encrypted for the subscription
//! (RFC 8291, `aes128gcm`) and the sender identified by VAPID (RFC 8292).
//!
//! The push's token is the subscription's endpoint URL; its payload carries
//! the subscription's keys and the data: `{"keys": {"p256dh", "auth"},
//! "data": <text>, "urgency"?}` (see `message::webpush`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use parking_lot::Mutex;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Client, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;
use web_push_native::Auth;

use super::{
    Answer, Platform, Provider, ProviderError, Push, Rejection, Sent, answer, app_of,
    client_builder, default_timeout, excerpt, load_apps, read, refuse,
};
use crate::message::now_secs;

/// How long a push service keeps a push for an offline browser when the
/// notification names no `ttl` or `push_expiry`: four weeks, the longest
/// Chrome's service stores one (and the `web-push` libraries' default).
pub const DEFAULT_TTL: u64 = 4 * 7 * 24 * 3600;
/// RFC 8030's Urgency values, least urgent first.
pub const URGENCIES: [&str; 4] = ["very-low", "low", "normal", "high"];
/// The encrypted body push services are bound to take (RFC 8030 §7.2,
/// RFC 8291 §4); larger bodies are refused without a request.
const MAX_CIPHERTEXT: usize = 4096;
/// What `aes128gcm` adds to the data in one record: the header (16-byte
/// salt, 4-byte record size, 1-byte key-id length, 65-byte sender key), the
/// padding delimiter and the 16-byte tag.
const OVERHEAD: usize = 16 + 4 + 1 + 65 + 1 + 16;
/// The most data one push carries: 3993 bytes.
const MAX_DATA: usize = MAX_CIPHERTEXT - OVERHEAD;
/// A VAPID token's lifetime; RFC 8292 allows at most 24 hours.
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A VAPID token is reused for this long, so none in use has less than an
/// hour left.
const VAPID_REFRESH: Duration = Duration::from_secs(11 * 3600);
/// Origins with a cached token per app, at most: push services are few, so
/// more means garbage endpoints, and the cache is cleared rather than grown.
const MAX_ORIGINS: usize = 256;

/// One app's VAPID identity and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID signing key: a P-256 private key, PKCS#8 PEM (`BEGIN
    /// PRIVATE KEY`; SEC1 `BEGIN EC PRIVATE KEY` is taken too). Its public
    /// half is the `applicationServerKey` browsers subscribe with.
    pub vapid_key_file: PathBuf,
    /// The contact RFC 8292 requires in every token: `mailto:…` or
    /// `https://…`.
    pub subject: String,
    /// An extra trusted root (PEM) for a private or test push service;
    /// trusted by the shared client, so for every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Bound on one request, from sending to the full answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Send to endpoints on loopback, private, link-local and other
    /// non-public addresses. Off by default: an endpoint is whatever a
    /// subscription names, and Herald must not be made to call the services
    /// of its own network; on only for a private push service or tests.
    #[serde(default)]
    pub allow_private_endpoints: bool,
}

/// Sends to any push service for every configured app over pooled clients
/// (HTTP/2 where the service offers it): one that reaches public addresses
/// only, and one for the apps that allow private endpoints.
pub struct WebPush {
    /// Connects to public addresses only (see [`PublicOnly`]).
    client: Client,
    /// Connects anywhere: for the apps with `allow_private_endpoints`.
    open_client: Client,
    /// Every configured app, by the name pushes give.
    apps: HashMap<String, App>,
    /// Age after which a VAPID token is replaced (a field so tests can
    /// shorten it).
    vapid_refresh: Duration,
}

/// One app, ready to send.
struct App {
    /// The app's VAPID key, which signs the tokens.
    key: EncodingKey,
    /// The uncompressed public key, base64url: VAPID's `k`.
    public_key: String,
    /// The contact every token names as its `sub`.
    subject: String,
    /// Bound on one request, from sending to the full answer.
    timeout: Duration,
    /// Sends through `open_client`, which also reaches non-public addresses.
    allow_private_endpoints: bool,
    /// The `Authorization` value per push-service origin.
    vapid: Mutex<HashMap<String, Vapid>>,
}

/// A VAPID `Authorization` value and when its token was made.
struct Vapid {
    /// `vapid t=<token>, k=<public key>`, sent as it is with every push to the origin.
    header: HeaderValue,
    /// When the token was signed, to tell when it is due for renewal.
    minted: Instant,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

impl WebPush {
    /// Loads every app's VAPID key and checks its subject (failing on the
    /// first unusable app, named), and builds the clients.
    pub fn new(configs: &BTreeMap<String, WebPushConfig>) -> Result<WebPush, ProviderError> {
        let (open_client, apps) = load_apps(configs, |c| c.ca_file.as_deref(), App::new)?;
        let roots: Vec<_> = configs
            .iter()
            .filter_map(|(name, c)| Some((name.as_str(), c.ca_file.as_deref()?)))
            .collect();
        let client = client_builder(roots)?
            .dns_resolver(Arc::new(PublicOnly))
            .build()?;
        Ok(WebPush {
            client,
            open_client,
            apps,
            vapid_refresh: VAPID_REFRESH,
        })
    }

    /// The app's VAPID public key (uncompressed P-256 point, base64url): the
    /// `applicationServerKey` its pages pass to `pushManager.subscribe()`.
    pub fn application_server_key(&self, app: &str) -> Option<&str> {
        self.apps.get(app).map(|a| a.public_key.as_str())
    }
}

#[async_trait]
impl Provider for WebPush {
    fn platform(&self) -> Platform {
        Platform::WebPush
    }

    fn serves(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    async fn send(&self, push: &Push) -> Result<Sent, Rejection> {
        let app = app_of(&self.apps, push, "Web Push")?;
        let endpoint = endpoint(&push.token).map_err(|e| refuse("InvalidEndpoint", e))?;
        // An IP literal is never resolved, so `PublicOnly` cannot see it:
        // it is checked here.
        let client = if app.allow_private_endpoints {
            &self.open_client
        } else {
            if let Some(ip) = host_ip(&endpoint)
                && !is_public(ip)
            {
                return Err(PrivateEndpoint(ip.to_string()).rejection());
            }
            &self.client
        };
        let request = Prepared::new(push, now_secs())?;
        let body = web_push_native::encrypt(request.data, &request.p256dh, &request.auth)
            .map_err(|e| refuse("EncryptionFailed", format!("cannot encrypt: {e}")))?;
        let origin = endpoint.origin().ascii_serialization();
        let authorization = app
            .authorization(&origin, self.vapid_refresh)
            .map_err(|e| refuse("VapidError", format!("cannot sign the VAPID token: {e}")))?;

        let mut builder = client
            .post(endpoint)
            .timeout(app.timeout)
            .header(AUTHORIZATION, authorization)
            .header("ttl", request.ttl)
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(urgency) = request.urgency {
            builder = builder.header("urgency", urgency);
        }
        if let Some(topic) = &push.collapse_id {
            builder = builder.header("topic", topic);
        }

        let Answer {
            status,
            id,
            retry_after,
            text,
        } = answer(builder, LOCATION.as_str()).await?;
        if status.is_success() {
            debug!(app = push.app, %status, location = id, "The push service accepted the push.");
            return Ok(Sent { id });
        }
        let rejection = rejection(status, &text, retry_after);
        debug!(app = push.app, %status, reason = rejection.reason, "The push service refused the push.");
        Err(rejection)
    }
}

/// What a push needs besides the endpoint, read from its payload and
/// checked before anything is encrypted.
struct Prepared {
    /// The browser's public key, which the data is encrypted for.
    p256dh: p256::PublicKey,
    /// The subscription's auth secret, which the encryption also takes.
    auth: Auth,
    /// The plaintext to encrypt, at most `MAX_DATA` bytes.
    data: Vec<u8>,
    /// Seconds the push service may keep the push for an offline browser (`TTL`).
    ttl: u64,
    /// Sent as `Urgency`, when the payload or the push's priority sets one.
    urgency: Option<&'static str>,
}

impl Prepared {
    fn new(push: &Push, now: u64) -> Result<Prepared, Rejection> {
        let keys = &push.payload["keys"];
        let (p256dh, auth) = subscription_keys(
            keys["p256dh"].as_str().unwrap_or_default(),
            keys["auth"].as_str().unwrap_or_default(),
        )
        .map_err(|e| refuse("InvalidKeys", e.into()))?;
        let data = match &push.payload["data"] {
            Value::Null => Vec::new(),
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        if data.len() > MAX_DATA {
            let description = format!(
                "{} bytes of data, {} encrypted: over the {MAX_CIPHERTEXT} push services take",
                data.len(),
                data.len() + OVERHEAD
            );
            return Err(refuse("PayloadTooLarge", description));
        }
        let ttl = match push.expires_at {
            None => DEFAULT_TTL,
            Some(at) => at
                .checked_sub(now)
                .ok_or_else(|| refuse("Expired", format!("expired {}s ago", now - at)))?,
        };
        let urgency = match &push.payload["urgency"] {
            Value::Null => push
                .high_priority
                .map(|high| if high { "high" } else { "low" }),
            Value::String(u) => Some(
                URGENCIES
                    .into_iter()
                    .find(|known| *known == u.as_str())
                    .ok_or_else(|| refuse("InvalidUrgency", format!("urgency {u:?}")))?,
            ),
            other => return Err(refuse("InvalidUrgency", format!("urgency {other}"))),
        };
        if let Some(topic) = &push.collapse_id
            && !valid_topic(topic)
        {
            return Err(refuse(
                "InvalidTopic",
                format!("topic {topic:?}: at most 32 URL-safe base64 characters"),
            ));
        }
        Ok(Prepared {
            p256dh,
            auth,
            data,
            ttl,
            urgency,
        })
    }
}

/// A subscription's endpoint: an absolute `https://` URL with a host.
pub(crate) fn endpoint(text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Ok(url),
        _ => Err(format!(
            "endpoint {:?} is not an https:// URL",
            excerpt(text)
        )),
    }
}

/// A subscription's keys as browsers give them (`PushSubscription.toJSON()`):
/// `p256dh`, an uncompressed P-256 point, and `auth`, a 16-byte secret, both
/// base64url (padding and the standard alphabet are tolerated).
pub(crate) fn subscription_keys(
    p256dh: &str,
    auth: &str,
) -> Result<(p256::PublicKey, Auth), &'static str> {
    let point = decode(p256dh).ok_or("keys.p256dh is missing or not base64url")?;
    let p256dh = p256::PublicKey::from_sec1_bytes(&point)
        .ok()
        .filter(|_| point.len() == 65)
        .ok_or("keys.p256dh is not an uncompressed P-256 point")?;
    let secret = decode(auth).ok_or("keys.auth is missing or not base64url")?;
    if secret.len() != 16 {
        return Err("keys.auth is not 16 bytes");
    }
    Ok((p256dh, Auth::clone_from_slice(&secret)))
}

/// Base64url without padding, also taking padded or standard-alphabet text.
fn decode(text: &str) -> Option<Vec<u8>> {
    let text: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(text).ok().filter(|b| !b.is_empty())
}

/// RFC 8030 §5.4: a Topic is at most 32 characters of the URL-safe base64
/// alphabet.
pub(crate) fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 32
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads a push service's error answer. The subscription is gone on 404 and
/// 410 (RFC 8030 §6.2); retryable: 429 (with its Retry-After) and 5xx. The
/// reason is the status's name (`Gone`, `TooManyRequests`), the service's
/// own text goes in the description: services word their bodies each their
/// own way, so only the status is a bounded reason.
fn rejection(status: StatusCode, text: &str, retry: Duration) -> Rejection {
    let reason = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge".to_owned(),
        _ => status
            .canonical_reason()
            .map(|name| name.chars().filter(char::is_ascii_alphanumeric).collect())
            .filter(|name: &String| !name.is_empty())
            .unwrap_or_else(|| format!("HTTP{}", status.as_u16())),
    };
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    Rejection {
        status: Some(status.as_u16()),
        reason,
        description: excerpt(&format!("the push service answered {status}: {text}")),
        invalid_token: matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE),
        unless_misconfigured: false,
        retry_after: retryable.then_some(retry),
    }
}

impl App {
    fn new(name: &str, config: &WebPushConfig) -> Result<App, ProviderError> {
        let invalid = |problem: String| ProviderError::Invalid {
            app: name.into(),
            problem,
        };
        let path = &config.vapid_key_file;
        let pem = read(name, path)?;
        let not_a_key = |e: String| {
            invalid(format!(
                "{} is not a PKCS#8 P-256 private key: {e}",
                path.display()
            ))
        };
        let pem = std::str::from_utf8(&pem).map_err(|e| not_a_key(e.to_string()))?;
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .map_err(|e| e.to_string())
            .or_else(|pkcs8| p256::SecretKey::from_sec1_pem(pem).map_err(|_| pkcs8))
            .map_err(not_a_key)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| not_a_key(e.to_string()))?;
        let public_key = secret.public_key().to_encoded_point(false);
        if !valid_subject(&config.subject) {
            return Err(invalid(format!(
                "subject {:?} is not a mailto: or https:// contact (RFC 8292)",
                config.subject
            )));
        }
        let app = App {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: URL_SAFE_NO_PAD.encode(public_key.as_bytes()),
            subject: config.subject.clone(),
            timeout: config.timeout,
            allow_private_endpoints: config.allow_private_endpoints,
            vapid: Mutex::new(HashMap::new()),
        };
        // Sign once now, so a key that cannot sign fails here rather than
        // on every push; the token is not kept.
        app.sign("https://herald.invalid")
            .map_err(|e| not_a_key(e.to_string()))?;
        Ok(app)
    }

    /// The `Authorization` value for a push service at `origin`, signed anew
    /// when the cached one is older than `refresh`.
    fn authorization(
        &self,
        origin: &str,
        refresh: Duration,
    ) -> Result<HeaderValue, jsonwebtoken::errors::Error> {
        let mut cache = self.vapid.lock();
        if let Some(vapid) = cache.get(origin).filter(|v| v.minted.elapsed() < refresh) {
            return Ok(vapid.header.clone());
        }
        let header = self.sign(origin)?;
        if cache.len() >= MAX_ORIGINS {
            cache.retain(|_, v| v.minted.elapsed() < refresh);
            if cache.len() >= MAX_ORIGINS {
                cache.clear();
            }
        }
        debug!(origin, "Signed a VAPID token.");
        cache.insert(
            origin.to_owned(),
            Vapid {
                header: header.clone(),
                minted: Instant::now(),
            },
        );
        Ok(header)
    }

    /// `vapid t=<ES256 JWT {aud, exp, sub}>, k=<public key>` for `origin`.
    fn sign(&self, origin: &str) -> Result<HeaderValue, jsonwebtoken::errors::Error> {
        let claims = Claims {
            aud: origin,
            exp: now_secs() + VAPID_LIFETIME.as_secs(),
            sub: &self.subject,
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)?;
        // A JWT and base64url are header-safe by construction.
        let value = format!("vapid t={jwt}, k={}", self.public_key);
        Ok(HeaderValue::from_str(&value).expect("a JWT and base64url are valid header text"))
    }
}

/// An endpoint refused because its host is, or resolves only to, addresses
/// outside the public internet; the host is named.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address (allow_private_endpoints is off)")]
pub(crate) struct PrivateEndpoint(String);

impl PrivateEndpoint {
    /// Final, but the subscription is not deleted: a name may resolve
    /// privately because of the network Herald runs in (split-horizon DNS,
    /// a local proxy), and deleting every subscription for that would not
    /// be undone by fixing the configuration.
    pub(crate) fn rejection(&self) -> Rejection {
        refuse("PrivateEndpoint", format!("endpoint refused: {self}"))
    }
}

/// Resolves names as the system does and keeps only public addresses, so
/// the check happens where the connection is made: a name cannot pass a
/// check and then resolve to an internal address when connecting (DNS
/// rebinding). A name with no public address fails with
/// [`PrivateEndpoint`].
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str();
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(PrivateEndpoint(host.to_owned()).into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The address an endpoint's host is written as, if it is an IP literal
/// (which the URL parser has already normalised: `2130706433` and
/// `127.1` are `127.0.0.1`; IPv6 comes bracketed).
fn host_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Whether `ip` may be on the public internet, after IANA's IPv4 and IPv6
/// special-purpose address registries: not loopback, unspecified, private,
/// link-local, unique local, shared (CGNAT), benchmarking, multicast,
/// broadcast, reserved, documentation, nor any other range the registries
/// mark not globally reachable. An IPv6 address that embeds an IPv4 one
/// (IPv4-mapped, NAT64, 6to4) is judged by the IPv4 address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Embedded::V4(v4) => is_public_v4(v4),
            Embedded::Refused => false,
            Embedded::None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    // 192.0.0/24 is IETF protocol assignments, not globally reachable but
    // for two anycast addresses (PCP, TURN).
    let protocol_assignments = [a, b, c] == [192, 0, 0] && !matches!(d, 9 | 10);
    !(a == 0 // "this network", 0/8, the unspecified address included
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && b & 0xc0 == 64) // shared address space (CGNAT), 100.64/10
        || protocol_assignments
        || (a == 198 && b & 0xfe == 18) // benchmarking, 198.18/15
        || ip.is_multicast()
        || a >= 240 // reserved, 240/4, and the broadcast address
        || ip.is_documentation())
}

/// What an IPv6 address says of an IPv4 address inside it.
enum Embedded {
    /// Judge the address by this IPv4 one.
    V4(Ipv4Addr),
    /// A form with an IPv4 address that cannot be judged: not public.
    Refused,
    /// No IPv4 address in it.
    None,
}

fn embedded_v4(ip: Ipv6Addr) -> Embedded {
    let s = ip.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped, ::ffff:0:0/96.
        [0, 0, 0, 0, 0, 0xffff, ..] => Embedded::V4(last),
        // NAT64 with the well-known prefix, 64:ff9b::/96 (RFC 6052, which
        // uses it with /96 only), and the /96 form of the local-use prefix
        // 64:ff9b:1::/48 (RFC 8215). Local-use prefixes of other lengths
        // (/48, /56, /64) put the IPv4 address elsewhere, and only the network
        // knows which length it chose: the rest of 64:ff9b:1::/48 is refused.
        // With bits 48..96 zero, any other length would read an address in
        // 0/8, which no translator forwards; this form is unambiguous.
        [0x64, 0xff9b, 0, 0, 0, 0, ..] | [0x64, 0xff9b, 1, 0, 0, 0, ..] => Embedded::V4(last),
        [0x64, 0xff9b, 1, ..] => Embedded::Refused,
        // 6to4, 2002::/16: the IPv4 address in bits 16..48, where the
        // traffic is tunnelled.
        [0x2002, high, low, ..] => {
            Embedded::V4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)))
        }
        // Teredo, 2001::/32: the client's address is obfuscated and reached
        // through whatever relay the network routes 2001::/32 to, which may
        // be an internal one; the server field says nothing of where the
        // connection goes. Teredo is all but unused: refused.
        [0x2001, 0, ..] => Embedded::Refused,
        _ => Embedded::None,
    }
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast, 2000::/3, is public: outside it are the
    // unspecified and loopback addresses, IPv4-compatible ::/96 (deprecated),
    // 64:ff9b::/32 beyond the NAT64 forms taken above, discard-only 100::/64
    // and the rest of 100::/8, SRv6 SIDs 5f00::/16, unique local fc00::/7,
    // link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8, and
    // the unassigned rest.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // IETF protocol assignments, 2001::/23: not globally reachable but for
    // the registry's exceptions (Teredo, 2001::/32, is taken above).
    if s[0] == 0x2001 && s[1] < 0x200 {
        return matches!(s, [0x2001, 1, 0, 0, 0, 0, 0, 1..=3]) // PCP, TURN, DNS-SD SRP anycast
            || s[1] == 3 // AMT, 2001:3::/32
            || s[1..3] == [4, 0x112] // AS112-v6, 2001:4:112::/48
            || s[1] & 0xfff0 == 0x20 // ORCHIDv2, 2001:20::/28
            || s[1] & 0xfff0 == 0x30; // drone remote ID, 2001:30::/28
    }
    // Documentation, 2001:db8::/32 and 3fff::/20.
    let documentation = s[..2] == [0x2001, 0xdb8] || (s[0] == 0x3fff && s[1] < 0x1000);
    !documentation
}

/// RFC 8292 §2.1: the contact is a `mailto:` or an `https:` URI.
fn valid_subject(subject: &str) -> bool {
    match subject.strip_prefix("mailto:") {
        Some(address) => address.contains('@') && !address.contains(char::is_whitespace),
        None => Url::parse(subject).is_ok_and(|u| u.scheme() == "https" && u.host().is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_testkit::apns::ApnsKey;
    use serde_json::json;

    /// A subscription's browser side: its private key and its JSON keys.
    fn browser() -> (p256::SecretKey, Value) {
        let pem = ApnsKey::generate().private_pem;
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();
        let point = secret.public_key().to_encoded_point(false);
        let keys = json!({
            "p256dh": URL_SAFE_NO_PAD.encode(point.as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode([7u8; 16]),
        });
        (secret, keys)
    }

    fn push(payload: Value) -> Push {
        Push {
            app: "a".into(),
            token: "https://push.example/send/1".into(),
            payload,
            expires_at: None,
            collapse_id: None,
            high_priority: None,
            dry_run: false,
        }
    }

    fn config(dir: &tempfile::TempDir, pem: &str, subject: &str) -> WebPushConfig {
        let path = dir.path().join("vapid.pem");
        std::fs::write(&path, pem).unwrap();
        WebPushConfig {
            vapid_key_file: path,
            subject: subject.into(),
            ca_file: None,
            timeout: default_timeout(),
            allow_private_endpoints: false,
        }
    }

    fn web_push(subject: &str) -> WebPush {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir, &ApnsKey::generate().private_pem, subject);
        WebPush::new(&BTreeMap::from([("a".to_owned(), config)])).unwrap()
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let parsed: WebPushConfig =
            serde_json::from_str(r#"{"vapid_key_file": "v.pem", "subject": "mailto:a@b.c"}"#)
                .unwrap();
        assert_eq!(
            (
                parsed.ca_file,
                parsed.timeout,
                parsed.allow_private_endpoints
            ),
            (None, default_timeout(), false)
        );
        let parsed: WebPushConfig = serde_json::from_str(
            r#"{"vapid_key_file": "v.pem", "subject": "mailto:a@b.c", "timeout": "3s"}"#,
        )
        .unwrap();
        assert_eq!(parsed.timeout, Duration::from_secs(3));
        assert!(
            serde_json::from_str::<WebPushConfig>(
                r#"{"vapid_key_file": "v.pem", "subject": "mailto:a@b.c", "endpoint": "x"}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<WebPushConfig>(r#"{"vapid_key_file": "v.pem"}"#).is_err());
    }

    #[test]
    fn new_names_the_app_with_a_missing_or_bad_key_or_subject() {
        let dir = tempfile::tempdir().unwrap();
        let mut missing = config(&dir, "", "mailto:ops@example.com");
        missing.vapid_key_file = dir.path().join("nope.pem");
        let err = WebPush::new(&BTreeMap::from([("shop".to_owned(), missing)]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shop") && err.contains("nope.pem"), "{err}");

        let garbage = config(&dir, "not a key", "mailto:ops@example.com");
        let err = WebPush::new(&BTreeMap::from([("shop".to_owned(), garbage)]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shop") && err.contains("PKCS#8"), "{err}");

        let key = ApnsKey::generate().private_pem;
        for subject in ["", "ops@example.com", "http://example.com", "mailto:"] {
            let bad = config(&dir, &key, subject);
            let err = WebPush::new(&BTreeMap::from([("shop".to_owned(), bad)]))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("shop") && err.contains("RFC 8292"), "{err}");
        }
        for subject in ["mailto:ops@example.com", "https://example.com/contact"] {
            let good = config(&dir, &key, subject);
            assert!(WebPush::new(&BTreeMap::from([("shop".to_owned(), good)])).is_ok());
        }
    }

    #[test]
    fn sec1_keys_are_taken_too() {
        let pem = ApnsKey::generate().private_pem;
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();
        let sec1 = secret.to_sec1_pem(Default::default()).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        let apps = BTreeMap::from([("a".to_owned(), config(&dir, &sec1, "mailto:a@b.c"))]);
        let web_push = WebPush::new(&apps).unwrap();
        let expected = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false));
        assert_eq!(
            web_push.application_server_key("a"),
            Some(expected.as_str())
        );
        assert_eq!(web_push.application_server_key("b"), None);
    }

    #[test]
    fn vapid_tokens_are_kept_per_origin_then_replaced() {
        let web_push = web_push("mailto:ops@example.com");
        let app = &web_push.apps["a"];
        let minted = |origin: &str| app.vapid.lock().get(origin).map(|v| v.minted);

        let first = app.authorization("https://a.test", VAPID_REFRESH).unwrap();
        let at = minted("https://a.test");
        assert_eq!(
            app.authorization("https://a.test", VAPID_REFRESH).unwrap(),
            first
        );
        assert_eq!(
            minted("https://a.test"),
            at,
            "reused within the refresh age"
        );

        let other = app.authorization("https://b.test", VAPID_REFRESH).unwrap();
        assert_ne!(other, first, "each origin has its own audience");
        assert_eq!(app.vapid.lock().len(), 2);

        app.authorization("https://a.test", Duration::ZERO).unwrap();
        assert!(minted("https://a.test") > at, "signed again once too old");

        let text = first.to_str().unwrap();
        let (t, k) = text
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(Some(k), web_push.application_server_key("a"));
        let claims = t.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://a.test");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let exp = claims["exp"].as_u64().unwrap();
        let ahead = exp - now_secs();
        assert!(
            (VAPID_LIFETIME.as_secs() - 5..=VAPID_LIFETIME.as_secs()).contains(&ahead),
            "{ahead}"
        );
    }

    #[test]
    fn the_origin_cache_stays_bounded() {
        let web_push = web_push("mailto:ops@example.com");
        let app = &web_push.apps["a"];
        for i in 0..=MAX_ORIGINS {
            app.authorization(&format!("https://{i}.test"), VAPID_REFRESH)
                .unwrap();
        }
        assert!(app.vapid.lock().len() <= MAX_ORIGINS);
    }

    #[test]
    fn prepared_reads_keys_data_ttl_urgency_and_topic() {
        let (secret, keys) = browser();
        let mut p = push(json!({"keys": keys, "data": "hello", "urgency": "very-low"}));
        p.expires_at = Some(1_300);
        p.collapse_id = Some("match-7".into());
        p.high_priority = Some(true);
        let r = Prepared::new(&p, 1_000).unwrap();
        assert_eq!((r.ttl, r.urgency), (300, Some("very-low")));
        assert_eq!(r.data, b"hello");
        assert_eq!(r.p256dh, secret.public_key());
        assert_eq!(r.auth.as_slice(), [7u8; 16]);

        // Without `urgency` in the payload, the priority decides.
        let mut p = push(json!({"keys": keys, "data": {"n": 1}}));
        assert_eq!(Prepared::new(&p, 0).unwrap().urgency, None);
        assert_eq!(Prepared::new(&p, 0).unwrap().ttl, DEFAULT_TTL);
        assert_eq!(Prepared::new(&p, 0).unwrap().data, br#"{"n":1}"#);
        p.high_priority = Some(false);
        assert_eq!(Prepared::new(&p, 0).unwrap().urgency, Some("low"));
        p.high_priority = Some(true);
        assert_eq!(Prepared::new(&p, 0).unwrap().urgency, Some("high"));
        assert!(
            Prepared::new(&push(json!({"keys": keys})), 0)
                .unwrap()
                .data
                .is_empty()
        );
    }

    #[test]
    fn prepared_refuses_what_no_push_service_would_take() {
        let (_, keys) = browser();
        let reason = |p: &Push| Prepared::new(p, 1_000).err().unwrap().reason;

        let mut expired = push(json!({"keys": keys, "data": ""}));
        expired.expires_at = Some(999);
        assert_eq!(reason(&expired), "Expired");
        expired.expires_at = Some(1_000);
        assert_eq!(Prepared::new(&expired, 1_000).unwrap().ttl, 0);

        let mut topic = push(json!({"keys": keys}));
        topic.collapse_id = Some("a".repeat(33));
        assert_eq!(reason(&topic), "InvalidTopic");
        topic.collapse_id = Some("has space".into());
        assert_eq!(reason(&topic), "InvalidTopic");
        topic.collapse_id = Some("A-z_09".repeat(5));
        assert!(Prepared::new(&topic, 1_000).is_ok());

        let urgency = push(json!({"keys": keys, "urgency": "urgent"}));
        assert_eq!(reason(&urgency), "InvalidUrgency");

        let big = push(json!({"keys": keys, "data": "x".repeat(MAX_DATA + 1)}));
        let r = Prepared::new(&big, 1_000).err().unwrap();
        assert_eq!(
            (r.reason.as_str(), r.status, r.retry_after),
            ("PayloadTooLarge", None, None)
        );
        let fits = push(json!({"keys": keys, "data": "x".repeat(MAX_DATA)}));
        assert!(Prepared::new(&fits, 1_000).is_ok());

        for bad in [
            json!({}),
            json!({"keys": {"p256dh": keys["p256dh"]}}),
            json!({"keys": {"p256dh": "AAAA", "auth": keys["auth"]}}),
            json!({"keys": {"p256dh": keys["p256dh"], "auth": "AAAA"}}),
            json!({"keys": {"p256dh": keys["p256dh"], "auth": "!!"}}),
        ] {
            assert_eq!(reason(&push(bad)), "InvalidKeys");
        }
    }

    #[test]
    fn the_overhead_is_what_aes128gcm_adds() {
        let (secret, keys) = browser();
        let (p256dh, auth) = subscription_keys(
            keys["p256dh"].as_str().unwrap(),
            keys["auth"].as_str().unwrap(),
        )
        .unwrap();
        for len in [0, 1, MAX_DATA] {
            let data = vec![b'x'; len];
            let body = web_push_native::encrypt(data.clone(), &p256dh, &auth).unwrap();
            assert_eq!(body.len(), len + OVERHEAD);
            let auth = Auth::clone_from_slice(&[7u8; 16]);
            assert_eq!(
                web_push_native::decrypt(body, &secret, &auth).unwrap(),
                data
            );
        }
    }

    #[test]
    fn keys_are_taken_padded_or_in_the_standard_alphabet() {
        let (_, keys) = browser();
        let p256dh = keys["p256dh"].as_str().unwrap();
        let standard = p256dh.replace('-', "+").replace('_', "/");
        assert!(subscription_keys(&standard, "BwcHBwcHBwcHBwcHBwcHBw==").is_ok());
        // A compressed point is a valid key but not what browsers send.
        let (secret, _) = browser();
        let compressed = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(true));
        assert!(subscription_keys(&compressed, "BwcHBwcHBwcHBwcHBwcHBw").is_err());
    }

    #[test]
    fn only_public_addresses_are_public() {
        let public = |ip: &str| is_public(ip.parse().unwrap());
        for ip in [
            "8.8.8.8",
            "142.250.74.202",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.169.0.1",
            "2a00:1450:4007:80e::200a",
            "::ffff:8.8.8.8",
        ] {
            assert!(public(ip), "{ip} is public");
        }
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!public(ip), "{ip} is not public");
        }
    }

    /// IANA's special-purpose registries: what must be refused, what must
    /// pass, IPv6 forms that embed an IPv4 address judged by that address.
    #[test]
    fn special_purpose_ranges_and_embedded_ipv4_are_judged() {
        let public = |ip: &str| is_public(ip.parse().unwrap());
        for ip in [
            // 192.0.0/24 but for its two globally reachable anycast addresses.
            "192.0.0.9",
            "192.0.0.10",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            // NAT64, well-known prefix (RFC 6052) and local-use /96 (RFC 8215).
            "64:ff9b::8.8.8.8",
            "64:ff9b::808:808",
            "64:ff9b:1::8.8.8.8",
            // 6to4: the IPv4 address in bits 16..48.
            "2002:808:808::1",
            "2002:8e6:4a0a:1:2:3:4:5",
            // IPv4-mapped.
            "::ffff:142.250.74.202",
            // Globally reachable assignments inside 2001::/23.
            "2001:1::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            // Ordinary global unicast, next to the special ranges.
            "2001:200::1",
            "2001:db9::1",
            "2003::1",
            "2606:4700:4700::1111",
            "3ffe:ffff::1",
            "3fff:1000::1",
        ] {
            assert!(public(ip), "{ip} is public");
        }
        for ip in [
            "192.0.0.0",
            "192.0.0.1",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.0.255",
            "198.18.0.1",
            "198.19.255.255",
            "0.0.0.1",
            "10.255.255.255",
            "127.1.2.3",
            "169.254.0.1",
            "192.0.2.255",
            "192.168.255.255",
            "198.51.100.255",
            "203.0.113.255",
            "224.0.0.0",
            "239.255.255.255",
            "240.0.0.0",
            "254.255.255.255",
            // IPv4-mapped.
            "::ffff:0.0.0.0",
            "::ffff:100.64.0.1",
            "::ffff:192.168.0.1",
            "::ffff:198.18.0.1",
            "::ffff:255.255.255.255",
            // NAT64 embedding a non-public address.
            "64:ff9b::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::169.254.169.254",
            "64:ff9b::192.168.1.1",
            "64:ff9b::100.64.0.1",
            "64:ff9b::0.0.0.0",
            "64:ff9b:1::10.0.0.1",
            "64:ff9b:1::127.0.0.1",
            // Local-use NAT64 not in the /96 form: where its IPv4 address
            // sits depends on a prefix length only the network knows.
            "64:ff9b:1:a00:1::",
            "64:ff9b:1:ffff::8.8.8.8",
            // The rest of 64:ff9b::/32 is not assigned.
            "64:ff9b:2::8.8.8.8",
            "64:ff9b:0:1::8.8.8.8",
            // 6to4 embedding a non-public address.
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::1",
            "2002:6440:1::1",
            "2002::1",
            "2002:e000:1::1",
            // IPv4-compatible (deprecated), public embedded address or not.
            "::8.8.8.8",
            "::127.0.0.1",
            "::0.0.0.2",
            // Teredo: the client's address is obfuscated, reached through
            // whatever relay the network routes 2001::/32 to.
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            // Inside 2001::/23 and not globally reachable.
            "2001:1::4",
            "2001:2::1",
            "2001:10::1",
            "2001:1ff::1",
            // Documentation.
            "2001:db8:ffff::1",
            "3fff::1",
            "3fff:fff::1",
            // Discard-only and the rest of 100::/8, outside 2000::/3.
            "100::1",
            "100::ffff:1",
            "100:0:0:1::1",
            "1::1",
            "4000::1",
            "fec0::1",
            // SRv6 SIDs.
            "5f00::1",
            // Unique local, link-local, multicast.
            "fc00::",
            "fdff:ffff::1",
            "fe80::",
            "fe80::1:2:3:4",
            "ff0e::1",
            "ffff::1",
        ] {
            assert!(!public(ip), "{ip} is not public");
        }
    }

    #[test]
    fn ip_literal_hosts_are_read_as_the_parser_normalised_them() {
        let ip = |url: &str| host_ip(&endpoint(url).unwrap()).map(|ip| ip.to_string());
        assert_eq!(ip("https://127.0.0.1:8443/p").as_deref(), Some("127.0.0.1"));
        assert_eq!(ip("https://2130706433/p").as_deref(), Some("127.0.0.1"));
        assert_eq!(ip("https://0x7f.1/p").as_deref(), Some("127.0.0.1"));
        assert_eq!(ip("https://[::1]:8443/p").as_deref(), Some("::1"));
        assert_eq!(
            ip("https://[::ffff:127.0.0.1]/p").as_deref(),
            Some("::ffff:127.0.0.1")
        );
        assert_eq!(ip("https://localhost/p"), None);
        assert_eq!(ip("https://fcm.googleapis.com/fcm/send/x"), None);
    }

    #[test]
    fn endpoints_are_https_urls() {
        assert!(endpoint("https://fcm.googleapis.com/fcm/send/abc").is_ok());
        for bad in ["http://push.example/1", "push.example/1", "", "https://"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejections_follow_rfc_8030() {
        let r = rejection(StatusCode::GONE, "unsubscribed", Duration::ZERO);
        assert_eq!(
            (r.status, r.reason.as_str(), r.invalid_token, r.retry_after),
            (Some(410), "Gone", true, None)
        );
        assert!(r.description.contains("unsubscribed"), "{}", r.description);
        let r = rejection(StatusCode::NOT_FOUND, "", Duration::ZERO);
        assert_eq!((r.reason.as_str(), r.invalid_token), ("NotFound", true));

        let r = rejection(StatusCode::PAYLOAD_TOO_LARGE, "", Duration::ZERO);
        assert_eq!(
            (r.reason.as_str(), r.invalid_token, r.retry_after),
            ("PayloadTooLarge", false, None)
        );
        let r = rejection(StatusCode::TOO_MANY_REQUESTS, "", Duration::from_secs(9));
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("TooManyRequests", Some(Duration::from_secs(9)))
        );
        let r = rejection(StatusCode::SERVICE_UNAVAILABLE, "", Duration::ZERO);
        assert_eq!(
            (r.reason.as_str(), r.retry_after),
            ("ServiceUnavailable", Some(Duration::ZERO))
        );
        for (status, reason) in [
            (StatusCode::BAD_REQUEST, "BadRequest"),
            (StatusCode::UNAUTHORIZED, "Unauthorized"),
            (StatusCode::FORBIDDEN, "Forbidden"),
        ] {
            let r = rejection(status, "{\"error\": \"x\"}", Duration::ZERO);
            assert_eq!(
                (r.reason.as_str(), r.invalid_token, r.retry_after),
                (reason, false, None)
            );
            assert!(r.description.contains("\"error\""), "{}", r.description);
        }
        let odd = StatusCode::from_u16(499).unwrap();
        assert_eq!(rejection(odd, "", Duration::ZERO).reason, "HTTP499");
    }
}
