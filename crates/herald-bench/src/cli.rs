//! Command-line options. Options before or after the scenario name are accepted (`global`).

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::adapters::Target;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Herald and its peers (Nchan, sockudo). Loopback targets only."
)]
pub(crate) struct Cli {
    /// What to measure, with the scenario's own options.
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
    /// The options every scenario shares.
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Server and transport under test.
    #[arg(long, global = true, value_enum, default_value = "herald")]
    pub(crate) target: Target,
    /// Server base URL (http://IP:PORT); must be a loopback address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Where subscribers connect, when not `--url` (e.g. another node of a
    /// cluster, so messages cross nodes); publishing always uses `--url`.
    #[arg(long, global = true)]
    pub(crate) subscribe_url: Option<String>,
    /// Length of the measured phase (publishing, holding). Accepts 10, 10s, 500ms, 2m.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Print one JSON object on stdout (the human table then goes to stderr).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// PID of the server: its process tree's CPU seconds and RSS are reported.
    #[arg(long, global = true)]
    pub(crate) server_pid: Option<u32>,
    /// Generator processes: the generator re-executes itself P times, each holding a share of
    /// the connections (one process can hold ~19,000 sockets here), and merges their results.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) procs: u32,
    /// Runtime threads per generator process (default: CPUs this process may run on).
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    /// Connections being set up at once, in total.
    #[arg(long, global = true, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Limit on one connection's TCP connect + handshake + subscription.
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// Limit on opening all connections.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_duration)]
    pub(crate) connect_deadline: Duration,
    /// First source address to bind client sockets to (each loopback address has ~28k ports).
    /// Default: none with one process; 127.0.0.2 with --procs > 1 (one address per process).
    #[arg(long, global = true)]
    pub(crate) bind_base: Option<Ipv4Addr>,
    /// Source addresses per generator process, used round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) bind_count: u32,
    /// Limit on the warm-up that confirms every subscriber with a probe message.
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    pub(crate) warmup_timeout: Duration,
    /// After publishing ends, wait at most this long for outstanding deliveries.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
    /// Approximate size of each message payload in bytes.
    #[arg(long, global = true, default_value_t = 64)]
    pub(crate) payload_bytes: usize,
    /// HTTP publish requests in flight at once.
    #[arg(long, global = true, default_value_t = 32)]
    pub(crate) publish_concurrency: usize,
    /// Prefix for generated channel names (`<prefix>c<i>`).
    #[arg(long, global = true, default_value = "")]
    pub(crate) channel_prefix: String,
    /// Internal: run as worker process number N of --procs.
    #[arg(long, global = true, hide = true)]
    pub(crate) worker_index: Option<u32>,
    /// Internal: the run id the coordinator chose.
    #[arg(long, global = true, hide = true)]
    pub(crate) run_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    /// The sender's own WebSocket: Herald's `publish` command, Pushca's `SEND_MESSAGE`.
    Ws,
    /// The server's HTTP publish API.
    Http,
}

/// Fan-out publish rate: fixed, or the highest sustainable one, searched for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Rate {
    /// Messages per second over all channels.
    PerSecond(f64),
    /// Search for the highest rate the server sustains (see [`Search`]).
    Max,
}

/// `10`, `2.5` or `max`.
fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Rate::PerSecond(v)),
        _ => Err(format!("not a rate (msg/s) or \"max\": {s:?}")),
    }
}

/// How `fanout --rate max` searches: short steps at increasing rates (doubling from
/// `--rate-start`, then bisecting between the last sustainable and the first unsustainable
/// rate to within 10%), on the same connected subscribers. `--duration` caps the whole search.
#[derive(Debug, Clone, Args)]
pub(crate) struct Search {
    /// First rate tried (msg/s).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate_start: f64,
    /// Publishing time of each step (its drain comes on top, bounded by --drain).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) step_duration: Duration,
    /// Highest latency p99 a sustainable step may have.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub(crate) max_p99: Duration,
    /// Most steps tried.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_steps: u32,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Scenario {
    /// N subscribers over K channels; HTTP publishers at R msg/s in total; end-to-end latency,
    /// losses and duplicates.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: u32,
        #[arg(long, default_value_t = 1)]
        channels: u32,
        /// Messages per second over all channels (round-robin), or `max`: search for the
        /// highest sustainable rate (no loss, ≥ 97% of the offered publishes and deliveries,
        /// p99 ≤ --max-p99) with the options below; --duration then caps the whole search.
        #[arg(long, default_value = "10", value_parser = parse_rate)]
        rate: Rate,
        /// Stop publishing after this many messages even if time remains.
        #[arg(long, default_value_t = 10_000_000)]
        max_messages: u64,
        #[command(flatten)]
        search: Search,
    },
    /// N clients, each on its own channel `c<i>`; repeatedly send from a random client to
    /// another; exactly-once check per message id; latency from send to receipt.
    Pairs {
        #[arg(long, default_value_t = 1000)]
        clients: u32,
        /// Target messages per second in total; 0 = as fast as --concurrency allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Messages sent but not yet delivered (with --ack: not yet acknowledged to their
        /// sender), at most (in total).
        #[arg(long, default_value_t = 100)]
        concurrency: u32,
        /// Default: ws for --target pushca, http otherwise.
        #[arg(long, value_enum)]
        via: Option<Via>,
        /// Send with acknowledgement (--target pushca): the receiver acknowledges each message
        /// and the sender waits for it; reports the sender's round trip too.
        #[arg(long)]
        ack: bool,
        /// With --target herald --via ws: publish with `"reply": false`, so the server answers
        /// a publish only if it fails.
        #[arg(long)]
        no_reply: bool,
        /// Stop after this many messages even if time remains.
        #[arg(long, default_value_t = 20_000_000)]
        max_messages: u64,
    },
    /// Open N connections and hold them; report the server's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        /// Channels the connections subscribe to (round-robin).
        #[arg(long, default_value_t = 1)]
        channels: u32,
    },
    /// Open connections as fast as --connect-concurrency allows until N are open.
    Connect {
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        #[arg(long, default_value_t = 1)]
        channels: u32,
    },
}

impl Cli {
    /// How pairs messages are sent, `--via` or the target's default; `None` outside pairs.
    pub(crate) fn pairs_via(&self) -> Option<Via> {
        match self.scenario {
            Scenario::Pairs { via, .. } => Some(via.unwrap_or(match self.common.target {
                Target::Pushca => Via::Ws,
                _ => Via::Http,
            })),
            _ => None,
        }
    }
}

impl Scenario {
    /// Total connections and channels.
    pub(crate) fn shape(&self) -> (u32, u32) {
        match *self {
            Scenario::Fanout {
                subscribers,
                channels,
                ..
            } => (subscribers, channels),
            // Client i listens on its own channel c<i>.
            Scenario::Pairs { clients, .. } => (clients, clients),
            Scenario::Idle {
                connections,
                channels,
            }
            | Scenario::Connect {
                connections,
                channels,
            } => (connections, channels),
        }
    }
}

/// `10`, `10s`, `1.5s`, `500ms`, `2m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn global_options_after_the_scenario() {
        let cli = Cli::try_parse_from([
            "herald-bench",
            "fanout",
            "--subscribers",
            "5",
            "--target",
            "nchan",
            "--duration",
            "2s",
            "--json",
        ])
        .expect("parses");
        assert_eq!(cli.common.target, Target::Nchan);
        assert!(cli.common.json);
        assert_eq!(cli.scenario.shape(), (5, 1));
    }

    #[test]
    fn rates_and_the_max_search() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["herald-bench", "fanout"], args].concat()).map(|c| c.scenario)
        };
        let Ok(Scenario::Fanout { rate, search, .. }) = parse(&["--rate", "2.5"]) else {
            panic!("fanout parses");
        };
        assert_eq!(rate, Rate::PerSecond(2.5));
        assert_eq!(search.max_p99, Duration::from_millis(50));
        let Ok(Scenario::Fanout { rate, search, .. }) =
            parse(&["--rate", "max", "--rate-start", "4", "--max-p99", "20ms"])
        else {
            panic!("fanout parses");
        };
        assert_eq!(rate, Rate::Max);
        assert_eq!(
            (search.rate_start, search.max_p99),
            (4.0, Duration::from_millis(20))
        );
        assert!(parse(&["--rate", "fast"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
    }

    #[test]
    fn pairs_send_over_websocket_by_default_only_for_pushca() {
        let via = |args: &[&str]| {
            Cli::try_parse_from([&["herald-bench", "pairs"], args].concat())
                .expect("parses")
                .pairs_via()
        };
        assert_eq!(via(&[]), Some(Via::Http));
        assert_eq!(via(&["--target", "pushca"]), Some(Via::Ws));
        assert_eq!(
            via(&["--target", "pushca", "--via", "http"]),
            Some(Via::Http)
        );
        assert_eq!(via(&["--target", "herald", "--via", "ws"]), Some(Via::Ws));
    }
}
