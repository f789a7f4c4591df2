//! The providers that deliver to devices, behind one trait.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, ClientBuilder, RequestBuilder, StatusCode, Url};
use serde_json::Value;

pub mod apns;
pub mod fcm;
pub mod webpush;

/// A push platform, as named in topics: the seed's `apns` and `gcm`, and
/// Herald's `webpush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Apns,
    /// Google's push service: legacy GCM messages, sent through FCM HTTP v1.
    Gcm,
    /// Browsers' push services (RFC 8030), encrypted (RFC 8291) and signed
    /// with VAPID (RFC 8292); the token is the subscription's endpoint URL.
    WebPush,
}

impl Platform {
    /// The name in topics, tables and stats tags.
    /// The platform named `name` (`apns`, `gcm`, `webpush`).
    pub fn from_name(name: &str) -> Option<Platform> {
        [Platform::Apns, Platform::Gcm, Platform::WebPush]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Gcm => "gcm",
            Platform::WebPush => "webpush",
        }
    }
}

/// One notification for one device, in the provider's own payload shape.
#[derive(Debug, Clone)]
pub struct Push {
    /// The app it belongs to (the seed's "game"); picks the credentials.
    pub app: String,
    /// The device token (for Web Push, the subscription's endpoint URL).
    pub token: String,
    /// The provider's own body: the APNs JSON payload (`{"aps":…}`), the
    /// FCM v1 `message` object without its `token`, or for Web Push
    /// `{"keys": {"p256dh", "auth"}, "data": <text>, "urgency"?}`.
    pub payload: Value,
    /// Unix seconds after which the provider should drop the push instead of
    /// storing it for an offline device.
    pub expires_at: Option<u64>,
    /// Pushes with the same id replace each other on the device.
    pub collapse_id: Option<String>,
    /// `Some(true)` for immediate delivery, `Some(false)` for power-saving.
    pub high_priority: Option<bool>,
    /// Validate only, deliver nothing (FCM `validate_only`).
    pub dry_run: bool,
}

/// The provider took the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id for it (`apns-id`, FCM's message name).
    pub id: Option<String>,
}

/// The provider refused the push, or could not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// The provider's reason code (`BadDeviceToken`, `UNREGISTERED`, …), or
    /// `ConnectionError` when it never answered. Bounded: used as a stats tag.
    pub reason: String,
    /// Human-readable detail.
    pub description: String,
    /// The token will never work again: delete it.
    pub invalid_token: bool,
    /// `invalid_token` is also what a misconfiguration (the wrong APNs
    /// environment or topic) answers for every token: the token is deleted
    /// only once the app has had a push accepted, which rules that out.
    pub unless_misconfigured: bool,
    /// Worth sending again, after this delay (the provider's `Retry-After`,
    /// or the default backoff when `Some(Duration::ZERO)`).
    pub retry_after: Option<Duration>,
}

/// Delivers pushes to one platform's service, for every configured app.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Which platform this provider serves.
    fn platform(&self) -> Platform;
    /// Whether `app` has credentials here.
    fn serves(&self, app: &str) -> bool;
    /// Sends one push; never panics on any answer.
    async fn send(&self, push: &Push) -> Result<Sent, Rejection>;
}

/// Why a provider could not be built from its configuration; names the app
/// so a bad entry among many is easy to find.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A key, certificate or service-account file could not be read.
    #[error("app {app}: cannot read {}: {source}", path.display())]
    Read {
        /// The app whose configuration names the file.
        app: String,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// A file or setting was read but cannot be used.
    #[error("app {app}: {problem}")]
    Invalid {
        /// The app whose configuration is wrong.
        app: String,
        /// What is wrong, naming the file or setting.
        problem: String,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// How long to wait for a TCP+TLS connection to a provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the provider text copied into a rejection's description.
const MAX_DESCRIPTION: usize = 512;
/// Bound on the answer body read: providers answer small JSON, and a Web
/// Push endpoint is whatever a subscription names, so the rest is dropped
/// unread rather than held in memory.
const MAX_ANSWER: usize = 16 * 1024;

/// The default per-request timeout of both providers' configs.
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One client for every app of a provider: HTTP/2 by ALPN over pooled,
/// reused connections, trusting the web PKI plus each app's extra root.
/// Redirects are not followed: no provider sends one, and following would
/// re-send a push (and its credentials' token) wherever a Web Push endpoint
/// points; a redirect is a final answer.
pub(crate) fn http_client<'a>(
    extra_roots: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<Client, ProviderError> {
    Ok(client_builder(extra_roots)?.build()?)
}

/// [`http_client`]'s settings, for a client that needs more of its own
/// (Web Push's resolver that keeps only public addresses).
pub(crate) fn client_builder<'a>(
    extra_roots: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<ClientBuilder, ProviderError> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT);
    for (app, path) in extra_roots {
        let pem = read(app, path)?;
        let roots =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ProviderError::Invalid {
                app: app.into(),
                problem: format!("{} holds no PEM certificate: {e}", path.display()),
            })?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// Every app's credentials built by `build` (failing on the first unusable
/// one, named), and one client trusting each app's extra root (`ca_file`).
pub(crate) fn load_apps<C, A>(
    apps: &std::collections::BTreeMap<String, C>,
    ca_file: impl Fn(&C) -> Option<&Path>,
    build: impl Fn(&str, &C) -> Result<A, ProviderError>,
) -> Result<(Client, std::collections::HashMap<String, A>), ProviderError> {
    let roots = apps
        .iter()
        .filter_map(|(name, c)| ca_file(c).map(|path| (name.as_str(), path)));
    let client = http_client(roots)?;
    let apps = apps
        .iter()
        .map(|(name, config)| Ok((name.clone(), build(name, config)?)))
        .collect::<Result<_, ProviderError>>()?;
    Ok((client, apps))
}

/// Reads a credentials file, naming the app on failure.
pub(crate) fn read(app: &str, path: &Path) -> Result<Vec<u8>, ProviderError> {
    std::fs::read(path).map_err(|source| ProviderError::Read {
        app: app.into(),
        path: path.into(),
        source,
    })
}

/// A provider base URL; HTTPS only, since HTTP/2 is negotiated by ALPN.
pub(crate) fn https_url(app: &str, url: &str) -> Result<Url, ProviderError> {
    match Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "https" => Ok(parsed),
        _ => Err(ProviderError::Invalid {
            app: app.into(),
            problem: format!("{url:?} is not an https:// URL"),
        }),
    }
}

/// `url` with `segments` appended to its path, each percent-encoded (a
/// device token can never reach another route).
pub(crate) fn join(url: &Url, segments: &[&str]) -> Url {
    let mut url = url.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The provider's `Retry-After` in seconds, or zero for "the default
/// backoff" (HTTP dates are not used by APNs or FCM).
pub(crate) fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// A provider's answer, its body read up to [`MAX_ANSWER`] bytes.
pub(crate) struct Answer {
    /// Whether the push was accepted, and which kind of refusal otherwise.
    pub(crate) status: StatusCode,
    /// The header that names an accepted push (`apns-id`, `location`).
    pub(crate) id: Option<String>,
    /// `Retry-After`, or zero (see [`retry_after`]).
    pub(crate) retry_after: Duration,
    /// The body, lossily decoded: where a refusal says why.
    pub(crate) text: String,
}

/// Sends `request` and reads the answer; a request that never got one is
/// the rejection [`unsent`] makes of it.
pub(crate) async fn answer(request: RequestBuilder, id_header: &str) -> Result<Answer, Rejection> {
    let mut response = request.send().await.map_err(|e| unsent(&e))?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let id = Some(id_header)
        .filter(|h| !h.is_empty())
        .and_then(header)
        .map(str::to_owned);
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let mut body = Vec::new();
    while body.len() < MAX_ANSWER {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - body.len())]);
            }
            // The end, or a body cut short: what arrived is the answer.
            Ok(None) | Err(_) => break,
        }
    }
    // Dropping `response` here abandons whatever is left unread.
    Ok(Answer {
        status,
        id,
        retry_after,
        text: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The push never left: a request that could not be built is final, and so
/// is one to an endpoint whose name resolves only to non-public addresses;
/// one that could not be delivered (connection, TLS, timeout) is worth
/// retrying.
pub(crate) fn unsent(error: &reqwest::Error) -> Rejection {
    if error.is_builder() {
        return refuse(
            "InvalidRequest",
            format!("the request cannot be built: {error}"),
        );
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(private) = cause.downcast_ref::<webpush::PrivateEndpoint>() {
            return private.rejection();
        }
        source = cause.source();
    }
    Rejection {
        status: None,
        reason: "ConnectionError".into(),
        description: excerpt(&error.to_string()),
        invalid_token: false,
        unless_misconfigured: false,
        retry_after: Some(Duration::ZERO),
    }
}

/// The credentials `push` names, or its final rejection: the app has none
/// at `provider`.
pub(crate) fn app_of<'a, A>(
    apps: &'a std::collections::HashMap<String, A>,
    push: &Push,
    provider: &str,
) -> Result<&'a A, Rejection> {
    apps.get(&push.app).ok_or_else(|| {
        refuse(
            "UnknownApp",
            format!("no {provider} credentials for app {:?}", push.app),
        )
    })
}

/// A final rejection decided locally, before anything was sent.
pub(crate) fn refuse(reason: &str, description: String) -> Rejection {
    Rejection {
        status: None,
        reason: reason.into(),
        description,
        invalid_token: false,
        unless_misconfigured: false,
        retry_after: None,
    }
}

/// At most [`MAX_DESCRIPTION`] bytes of provider text, cut on a char boundary.
pub(crate) fn excerpt(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(MAX_DESCRIPTION);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_percent_encodes_segments_after_any_base_path() {
        let base = Url::parse("https://example.test/prefix/").unwrap();
        let url = join(&base, &["3", "device", "a/../b?c"]);
        assert_eq!(
            url.as_str(),
            "https://example.test/prefix/3/device/a%2F..%2Fb%3Fc"
        );
        let bare = Url::parse("https://example.test").unwrap();
        assert_eq!(join(&bare, &["3", "device", ""]).path(), "/3/device/");
    }

    #[test]
    fn retry_after_reads_seconds_and_defaults_to_zero() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), Duration::ZERO);
        headers.insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&headers), Duration::from_secs(30));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Duration::ZERO);
    }

    #[test]
    fn excerpt_cuts_on_a_char_boundary() {
        let long = "é".repeat(MAX_DESCRIPTION);
        let cut = excerpt(&long);
        assert!(cut.len() <= MAX_DESCRIPTION && cut.len() >= MAX_DESCRIPTION - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn only_https_endpoints() {
        assert!(https_url("a", "https://api.push.apple.com").is_ok());
        let err = https_url("shop", "http://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shop") && err.contains("https"), "{err}");
    }
}
