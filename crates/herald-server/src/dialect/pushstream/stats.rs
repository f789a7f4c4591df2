//! `/channels-stats` and the channel info `/pub` answers with, in the
//! module's exact text formats, chosen by `Accept` (JSON by default; plain,
//! YAML and XML too).
//!
//! - no `id`: the summarized view;
//! - `id=ALL`, `id=prefix_*`, `id=*`: every (matching) channel;
//! - `id=a` or `id=a/b`: those channels (404 when none exists).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use herald_core::channel::MAX_CHANNEL_NAME_LEN;
use herald_core::{BrokerError, ChannelInfo, ChannelKey};
use serde::Deserialize;

use super::request::{Args, TOO_LARGE, parse_ids};
use super::{PsState, header_only, no_cache};
use crate::access::Grants;
use crate::dialect::utc::Utc;
use crate::publisher_auth::presents_key;

const CRLF: &str = "\r\n";

/// A stats format, picked from `Accept` as the module does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fmt {
    Plain,
    Json,
    Yaml,
    Xml,
    XJson,
    XYaml,
}

impl Fmt {
    /// The first subtype after a `/` in `Accept` that names a format.
    pub(crate) fn from_accept(headers: &HeaderMap) -> Self {
        const NAMES: [(&str, Fmt); 6] = [
            ("plain", Fmt::Plain),
            ("json", Fmt::Json),
            ("yaml", Fmt::Yaml),
            ("xml", Fmt::Xml),
            ("x-json", Fmt::XJson),
            ("x-yaml", Fmt::XYaml),
        ];
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for (i, _) in accept.match_indices('/') {
            let rest = &accept[i + 1..];
            if let Some((_, f)) = NAMES.iter().find(|(n, _)| rest.starts_with(n)) {
                return *f;
            }
        }
        Fmt::Json
    }

    fn content_type(self) -> &'static str {
        match self {
            Fmt::Plain => "text/plain",
            Fmt::Json => "application/json",
            Fmt::Yaml => "application/yaml",
            Fmt::Xml => "application/xml",
            Fmt::XJson => "text/x-json",
            Fmt::XYaml => "text/x-yaml",
        }
    }

    fn base(self) -> Fmt {
        match self {
            Fmt::XJson => Fmt::Json,
            Fmt::XYaml => Fmt::Yaml,
            f => f,
        }
    }

    /// One channel's info, without separators.
    fn item(self, i: &Info<'_>) -> String {
        let (c, p, s, n) = (i.channel, i.published, i.stored, i.subscribers);
        match self.base() {
            Fmt::Plain => format!(
                "channel: {c}\r\npublished_messages: {p}\r\nstored_messages: {s}\r\nactive_subscribers: {n}"
            ),
            Fmt::Yaml => format!(
                "  channel: {c}\r\n  published_messages: {p}\r\n  stored_messages: {s}\r\n  subscribers: {n}"
            ),
            Fmt::Xml => format!(
                "<channel>\r\n  <name>{c}</name>\r\n  <published_messages>{p}</published_messages>\r\n  <stored_messages>{s}</stored_messages>\r\n  <subscribers>{n}</subscribers>\r\n</channel>\r\n"
            ),
            _ => format!(
                "{{\"channel\": \"{c}\", \"published_messages\": {p}, \"stored_messages\": {s}, \"subscribers\": {n}}}"
            ),
        }
    }

    fn single(self, i: &Info<'_>) -> String {
        match self.base() {
            Fmt::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n{}{CRLF}",
                self.item(i)
            ),
            _ => format!("{}{CRLF}", self.item(i)),
        }
    }

    fn group(self, g: &Global, infos: &[Info<'_>]) -> String {
        let (h, t, ch, w, up) = (&g.hostname, &g.time, g.channels, g.wildcard, g.uptime);
        let mut out = match self.base() {
            Fmt::Plain => format!(
                "hostname: {h}, time: {t}, channels: {ch}, wildcard_channels: {w}, uptime: {up}, infos: \r\n"
            ),
            Fmt::Yaml => format!(
                "hostname: {h}\r\ntime: {t}\r\nchannels: {ch}\r\nwildcard_channels: {w}\r\nuptime: {up}\r\ninfos: \r\n"
            ),
            Fmt::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n<root>\r\n  <hostname>{h}</hostname>\r\n  <time>{t}</time>\r\n  <channels>{ch}</channels>\r\n  <wildcard_channels>{w}</wildcard_channels>\r\n  <uptime>{up}</uptime>\r\n  <infos>\r\n"
            ),
            _ => format!(
                "{{\"hostname\": \"{h}\", \"time\": \"{t}\", \"channels\": {ch}, \"wildcard_channels\": {w}, \"uptime\": {up}, \"infos\": [\r\n"
            ),
        };
        for (idx, info) in infos.iter().enumerate() {
            let last = idx + 1 == infos.len();
            match self.base() {
                Fmt::Plain => {
                    out.push_str(&self.item(info));
                    if !last {
                        out.push_str(",\r\n");
                    }
                }
                Fmt::Yaml => {
                    out.push_str(" -\r\n");
                    out.push_str(&self.item(info));
                    if !last {
                        out.push_str(CRLF);
                    }
                }
                Fmt::Xml => out.push_str(&self.item(info)),
                _ => {
                    out.push_str(&self.item(info));
                    out.push_str(if last { CRLF } else { ",\r\n" });
                }
            }
        }
        out.push_str(match self.base() {
            Fmt::Xml => "  </infos>\r\n</root>\r\n",
            Fmt::Plain | Fmt::Yaml => CRLF,
            _ => "]}\r\n",
        });
        out
    }

    fn summarized(self, g: &Global, s: &Summary) -> String {
        let (h, t, ch, w, up) = (&g.hostname, &g.time, g.channels, g.wildcard, g.uptime);
        let (p, st, n, pid) = (s.published, s.stored, s.subscribers, std::process::id());
        match self.base() {
            Fmt::Plain => format!(
                "hostname: {h}\r\ntime: {t}\r\nchannels: {ch}\r\nwildcard_channels: {w}\r\npublished_messages: {p}\r\nstored_messages: {st}\r\nmessages_in_trash: 0\r\nchannels_in_delete: 0\r\nchannels_in_trash: 0\r\nsubscribers: {n}\r\nuptime: {up}\r\nby_worker:\r\n  pid: {pid}\r\n  subscribers: {n}\r\n  uptime: {up}\r\n"
            ),
            Fmt::Yaml => format!(
                "  hostname: {h}\r\n  time: {t}\r\n  channels: {ch}\r\n  wildcard_channels: {w}\r\n  published_messages: {p}\r\n  stored_messages: {st}\r\n  messages_in_trash: 0\r\n  channels_in_delete: 0\r\n  channels_in_trash: 0\r\n  subscribers: {n}\r\n  uptime: {up}\r\n  by_worker:\r\n   -\r\n    pid: {pid}\r\n    subscribers: {n}\r\n    uptime: {up}\r\n"
            ),
            Fmt::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n<infos>\r\n  <hostname>{h}</hostname>\r\n  <time>{t}</time>\r\n  <channels>{ch}</channels>\r\n  <wildcard_channels>{w}</wildcard_channels>\r\n  <published_messages>{p}</published_messages>\r\n  <stored_messages>{st}</stored_messages>\r\n  <messages_in_trash>0</messages_in_trash>\r\n  <channels_in_delete>0</channels_in_delete>\r\n  <channels_in_trash>0</channels_in_trash>\r\n  <subscribers>{n}</subscribers>\r\n  <uptime>{up}</uptime>\r\n  <by_worker><worker>\r\n  <pid>{pid}</pid>\r\n  <subscribers>{n}</subscribers>\r\n  <uptime>{up}</uptime>\r\n</worker>\r\n</by_worker>\r\n</infos>\r\n"
            ),
            _ => format!(
                "{{\"hostname\": \"{h}\", \"time\": \"{t}\", \"channels\": {ch}, \"wildcard_channels\": {w}, \"published_messages\": {p}, \"stored_messages\": {st}, \"messages_in_trash\": 0, \"channels_in_delete\": 0, \"channels_in_trash\": 0, \"subscribers\": {n}, \"uptime\": {up}, \"by_worker\": [\r\n{{\"pid\": \"{pid}\", \"subscribers\": {n}, \"uptime\": {up}}}\r\n]}}\r\n"
            ),
        }
    }
}

/// One channel's counts, as the module reports them.
pub(crate) struct Info<'a> {
    /// The channel id, as clients name it (without the namespace).
    pub(crate) channel: &'a str,
    /// The channel's last message id.
    pub(crate) published: u64,
    /// Messages kept for backtracks, reported as `stored_messages`.
    pub(crate) stored: usize,
    /// Connections subscribed to it.
    pub(crate) subscribers: usize,
}

impl<'a> From<&'a ChannelInfo> for Info<'a> {
    fn from(i: &'a ChannelInfo) -> Self {
        Self {
            channel: i.key.name(),
            published: i.next_offset.saturating_sub(1),
            stored: i.stored,
            subscribers: i.subscribers,
        }
    }
}

/// The server-wide part of group and summarized replies.
pub(crate) struct Global {
    /// This machine's host name, as the module reports it.
    pub(crate) hostname: String,
    /// `YYYY-MM-DDTHH:MM:SS`, UTC.
    pub(crate) time: String,
    /// Channels, wildcard ones excluded.
    pub(crate) channels: usize,
    /// Channels whose ids start with the wildcard prefix, counted apart.
    pub(crate) wildcard: usize,
    /// Seconds since the dialect started.
    pub(crate) uptime: u64,
}

/// The totals of the summarized reply.
pub(crate) struct Summary {
    /// Messages published on this node since start.
    pub(crate) published: u64,
    /// Messages kept for backtracks, summed over channels.
    pub(crate) stored: usize,
    /// Subscriptions on this node (a connection counts once per channel).
    pub(crate) subscribers: usize,
}

impl PsState {
    /// Every channel of the namespace, cluster-wide on a cluster.
    pub(crate) async fn all_channels(&self) -> Result<Vec<ChannelInfo>, Response> {
        self.app
            .engine
            .channel_infos(&self.namespace)
            .await
            .map_err(unavailable)
    }

    /// The infos of those of `keys` that exist, cluster-wide on a cluster.
    pub(crate) async fn channel_infos(
        &self,
        keys: &[ChannelKey],
    ) -> Result<Vec<ChannelInfo>, Response> {
        let mut infos = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(info) = self
                .app
                .engine
                .channel_info(key)
                .await
                .map_err(unavailable)?
            {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    pub(crate) fn global(&self, all: &[ChannelInfo]) -> Global {
        let wildcard = all
            .iter()
            .filter(|i| self.is_wildcard(i.key.name()))
            .count();
        Global {
            hostname: self.hostname.clone(),
            time: Utc::from_ms(herald_core::message::now_ms()).iso_seconds(),
            channels: all.len() - wildcard,
            wildcard,
            uptime: self.started.elapsed().as_secs(),
        }
    }

    /// The summary of this mount's channels `all`. `published` counts what
    /// they hold too: the hub's counter is the whole server's (every app and
    /// PushaaS instance), and a cluster has no shared counter at all.
    pub(crate) fn summary(&self, all: &[ChannelInfo]) -> Summary {
        Summary {
            published: all.iter().map(|i| i.published).sum(),
            stored: all.iter().map(|i| i.stored).sum(),
            subscribers: all.iter().map(|i| i.subscribers).sum(),
        }
    }
}

fn text_reply(fmt: Fmt, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fmt.content_type()),
    );
    no_cache(h);
    res
}

/// The broker could not be asked.
fn unavailable(e: BrokerError) -> Response {
    tracing::warn!(error = %e, "Push-stream stats unavailable.");
    header_only(StatusCode::SERVICE_UNAVAILABLE, None)
}

/// The info of `infos`: one channel alone, several as a group, none 404.
pub(crate) async fn detailed(ps: &PsState, fmt: Fmt, infos: &[ChannelInfo]) -> Response {
    match infos {
        [] => header_only(StatusCode::NOT_FOUND, None),
        [one] => text_reply(fmt, fmt.single(&Info::from(one))),
        many => match ps.all_channels().await {
            Ok(all) => group(ps, fmt, &all, many),
            Err(res) => res,
        },
    }
}

fn group(ps: &PsState, fmt: Fmt, all: &[ChannelInfo], infos: &[ChannelInfo]) -> Response {
    let items: Vec<Info<'_>> = infos.iter().map(Info::from).collect();
    text_reply(fmt, fmt.group(&ps.global(all), &items))
}

#[derive(Default, Deserialize)]
pub(crate) struct StatsQuery {
    id: Option<String>,
}

/// `GET /channels-stats[?id=…]`.
#[utoipa::path(get, path = "/channels-stats", tag = "pushstream",
    operation_id = "pushstream_channels_stats", summary = "Server and channel stats",
    description = "In the format `Accept` picks: JSON by default, or `text/plain`, \
        `application/yaml`, `application/xml`, `text/x-json`, `text/x-yaml`, byte for byte \
        the module's, with `X-Nginx-PushStream-Tag` and `-Commit` headers.",
    params(("id" = Option<String>, Query, description = "None: the server summary. `ALL`, \
        `prefix_*` or `*`: every (matching) channel. `a` or `a/b`: those channels")),
    responses((status = 200, description = "Summary: `{\"hostname\", \"time\", \"channels\", \
            \"wildcard_channels\", \"published_messages\", \"stored_messages\", \
            \"subscribers\", \"uptime\", \"by_worker\": […], …}`; several channels: \
            `{\"hostname\", \"time\", \"channels\", \"wildcard_channels\", \"uptime\", \
            \"infos\": [{\"channel\", \"published_messages\", \"stored_messages\", \
            \"subscribers\"}…]}`; one channel: its info"),
        (status = 400, description = "A channel id too long",
            headers(("X-Nginx-PushStream-Explain" = String, description = "Why"))),
        (status = 404, description = "None of the channels exists"),
        (status = 503, description = "The broker could not be asked")))]
pub(crate) async fn handle(
    State(ps): State<PsState>,
    method: Method,
    Args(q): Args<StatsQuery>,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET {
        return super::not_allowed("GET");
    }
    let id = q.id.as_deref().unwrap_or("");
    // Protected channels are counted and listed for publishers only:
    // push-stream's requests carry no token that could grant them.
    let grants = match presents_key(&ps.app, &headers) {
        true => Grants::all(),
        false => Grants::default(),
    };
    let mut res = match answer(&ps, id, Fmt::from_accept(&headers), &grants).await {
        Ok(res) | Err(res) => res,
    };
    let h = res.headers_mut();
    h.insert(
        "x-nginx-pushstream-tag",
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    h.insert(
        "x-nginx-pushstream-commit",
        HeaderValue::from_static("herald"),
    );
    res
}

async fn answer(ps: &PsState, id: &str, fmt: Fmt, grants: &Grants) -> Result<Response, Response> {
    let requested = parse_ids(id);
    let readable = |key: &ChannelKey| ps.app.access.may_read(key, grants);
    let all_readable = || async {
        let mut all = ps.all_channels().await?;
        all.retain(|i| readable(&i.key));
        Ok::<_, Response>(all)
    };
    if requested.is_empty() {
        let all = all_readable().await?;
        let body = fmt.summarized(&ps.global(&all), &ps.summary(&all));
        return Ok(text_reply(fmt, body));
    }
    let mut keys = Vec::new();
    for r in &requested {
        if r.id.len() > MAX_CHANNEL_NAME_LEN {
            return Ok(header_only(StatusCode::BAD_REQUEST, Some(TOO_LARGE)));
        }
        let prefix = match r.id.split_once('*') {
            Some((prefix, _)) => Some(prefix),
            None => (r.id == "ALL").then_some(""),
        };
        if let Some(prefix) = prefix {
            let all = all_readable().await?;
            let matching: Vec<ChannelInfo> = all
                .iter()
                .filter(|i| i.key.name().starts_with(prefix))
                .cloned()
                .collect();
            return Ok(group(ps, fmt, &all, &matching));
        }
        if let Ok(key) = ps.channel(&r.id)
            && readable(&key)
        {
            keys.push(key);
        }
    }
    let infos = ps.channel_infos(&keys).await?;
    Ok(detailed(ps, fmt, &infos).await)
}
