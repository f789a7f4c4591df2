//! Counters of what was sent, acknowledged and refused, reported to StatsD
//! with DataDog tags like the seed (`sent`, `ack`, `failed`,
//! `send_notification_latency`), aggregated between flushes so a busy
//! pipeline sends a few datagrams a second, not one per push; and kept as
//! running totals for Herald's Prometheus `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UdpSocket;

use crate::topic::Route;

/// Latency samples kept between flushes; more are counted, not kept.
const MAX_TIMINGS: usize = 10_000;
/// Bytes per datagram: fits a loopback or LAN MTU with room for headers.
const DATAGRAM: usize = 1_400;

/// The pipeline's counters.
pub(crate) struct Stats {
    /// Counters since the last flush, keyed by `name|#tags`.
    pending: Mutex<Pending>,
    /// Where the lines go; `None` keeps counts in memory only.
    socket: Option<UdpSocket>,
    /// Prepended to every metric name (`herald.mobile.sent`).
    prefix: String,
}

#[derive(Default)]
struct Pending {
    /// StatsD counts since the last flush, keyed by `name#tags`.
    counters: BTreeMap<String, u64>,
    /// StatsD timing lines since the last flush.
    timings: Vec<String>,
    /// Prometheus totals since start: (metric, labels) → count.
    totals: BTreeMap<(&'static str, String), u64>,
    /// Provider answer times since start per platform: (count, seconds).
    latency: BTreeMap<&'static str, (u64, f64)>,
}

impl Stats {
    /// Stats sent to the StatsD server at `host` (`127.0.0.1:8125`), or kept
    /// in memory when `host` is `None`.
    pub(crate) async fn new(host: Option<&str>, prefix: &str) -> std::io::Result<Stats> {
        let socket = match host {
            Some(host) => {
                let socket = UdpSocket::bind(("0.0.0.0", 0)).await?;
                socket.connect(host).await?;
                Some(socket)
            }
            None => None,
        };
        Ok(Stats {
            pending: Mutex::new(Pending::default()),
            socket,
            prefix: prefix.trim_end_matches('.').to_owned(),
        })
    }

    /// A push went to its provider.
    pub(crate) fn sent(&self, route: &Route, topic: &str) {
        let tags = || {
            format!(
                "platform:{},game:{},topic:{topic}",
                route.platform.as_str(),
                route.app
            )
        };
        let total = ("herald_mobile_sent_total", Self::labels(route));
        self.count("sent", tags, total);
    }

    /// The provider took a push.
    pub(crate) fn ack(&self, route: &Route) {
        let total = ("herald_mobile_acked_total", Self::labels(route));
        self.count("ack", || Self::tags(route), total);
    }

    /// A push failed for `reason` (a `feedback::reason_key`).
    pub(crate) fn failed(&self, route: &Route, reason: &str) {
        let tags = || format!("{},reason:{reason}", Self::tags(route));
        let labels = format!("{},reason=\"{reason}\"", Self::labels(route));
        self.count("failed", tags, ("herald_mobile_failed_total", labels));
    }

    /// How long the provider took to answer.
    pub(crate) fn latency(&self, route: &Route, took: Duration) {
        let mut p = self.pending.lock();
        if self.socket.is_some() && p.timings.len() < MAX_TIMINGS {
            let line = format!(
                "{}.send_notification_latency:{}|ms|#{}",
                self.prefix,
                took.as_millis(),
                Self::tags(route)
            );
            p.timings.push(line);
        }
        let (count, sum) = p.latency.entry(route.platform.as_str()).or_default();
        *count += 1;
        *sum += took.as_secs_f64();
    }

    /// Appends the totals in the Prometheus text format. Labels: platform,
    /// app (configured apps, plus any a topic names) and the reason key.
    pub(crate) fn render(&self, out: &mut String) {
        let p = self.pending.lock();
        for (name, help) in [
            (
                "herald_mobile_sent_total",
                "Pushes handed to a provider (APNs, FCM, Web Push).",
            ),
            ("herald_mobile_acked_total", "Pushes the provider accepted."),
            (
                "herald_mobile_failed_total",
                "Notifications refused by the provider or skipped, by reason.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((metric, labels), n) in &p.totals {
                if *metric == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {n}");
                }
            }
        }
        let name = "herald_mobile_send_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a push to the provider's answer, retries included.\n# TYPE {name} summary"
        );
        for (platform, (count, sum)) in &p.latency {
            let _ = writeln!(out, "{name}_sum{{platform=\"{platform}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{platform=\"{platform}\"}} {count}");
        }
    }

    /// Sends what accumulated since the last flush.
    pub(crate) async fn flush(&self) {
        let Some(socket) = &self.socket else {
            return;
        };
        let (counters, timings) = {
            let mut p = self.pending.lock();
            (
                std::mem::take(&mut p.counters),
                std::mem::take(&mut p.timings),
            )
        };
        let lines = counters
            .into_iter()
            .map(|(key, n)| {
                let (name, tags) = key.split_once('#').unwrap_or((&key, ""));
                format!("{}.{name}:{n}|c|#{tags}", self.prefix)
            })
            .chain(timings);
        let mut datagram = String::with_capacity(DATAGRAM);
        for line in lines {
            if !datagram.is_empty() && datagram.len() + 1 + line.len() > DATAGRAM {
                send(socket, &datagram).await;
                datagram.clear();
            }
            if !datagram.is_empty() {
                datagram.push('\n');
            }
            datagram.push_str(&line);
        }
        if !datagram.is_empty() {
            send(socket, &datagram).await;
        }
    }

    fn tags(route: &Route) -> String {
        format!("platform:{},game:{}", route.platform.as_str(), route.app)
    }

    fn labels(route: &Route) -> String {
        format!(
            "platform=\"{}\",app=\"{}\"",
            route.platform.as_str(),
            route.app
        )
    }

    /// Counts one event: for StatsD under `name` and `tags` (built only
    /// when StatsD is on), and in the Prometheus `total`.
    fn count(
        &self,
        name: &'static str,
        tags: impl FnOnce() -> String,
        total: (&'static str, String),
    ) {
        let key = self.socket.is_some().then(|| format!("{name}#{}", tags()));
        let mut p = self.pending.lock();
        if let Some(key) = key {
            *p.counters.entry(key).or_default() += 1;
        }
        *p.totals.entry(total).or_default() += 1;
    }
}

async fn send(socket: &UdpSocket, datagram: &str) {
    // StatsD is best effort: a lost datagram must not slow pushes down.
    if let Err(e) = socket.send(datagram.as_bytes()).await {
        tracing::debug!(error = %e, "StatsD datagram not sent.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Platform;

    #[tokio::test]
    async fn counts_are_aggregated_into_tagged_lines() {
        let statsd = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = statsd.local_addr().unwrap().to_string();
        let stats = Stats::new(Some(&addr), "herald.mobile.").await.unwrap();
        let route = Route {
            app: "game".into(),
            platform: Platform::Apns,
        };
        for _ in 0..3 {
            stats.sent(&route, "push-game_apns");
        }
        stats.ack(&route);
        stats.failed(&route, "unregistered");
        stats.latency(&route, Duration::from_millis(12));
        stats.flush().await;
        let mut buf = [0; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), statsd.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "herald.mobile.ack:1|c|#platform:apns,game:game",
                "herald.mobile.failed:1|c|#platform:apns,game:game,reason:unregistered",
                "herald.mobile.sent:3|c|#platform:apns,game:game,topic:push-game_apns",
                "herald.mobile.send_notification_latency:12|ms|#platform:apns,game:game",
            ]
        );
        let mut prometheus = String::new();
        stats.render(&mut prometheus);
        for line in [
            "herald_mobile_sent_total{platform=\"apns\",app=\"game\"} 3",
            "herald_mobile_acked_total{platform=\"apns\",app=\"game\"} 1",
            "herald_mobile_failed_total{platform=\"apns\",app=\"game\",reason=\"unregistered\"} 1",
            "herald_mobile_send_seconds_count{platform=\"apns\"} 1",
            "# TYPE herald_mobile_failed_total counter",
        ] {
            assert!(
                prometheus.lines().any(|l| l == line),
                "{line} in {prometheus}"
            );
        }
        // Nothing new: the next flush sends nothing.
        stats.flush().await;
        stats.ack(&route);
        stats.flush().await;
        let n = statsd.recv(&mut buf).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "herald.mobile.ack:1|c|#platform:apns,game:game"
        );
    }
}
