//! The standard `process_*` metrics of Prometheus clients, read from
//! `/proc/self` at scrape time. A metric whose file cannot be read or
//! parsed (as off Linux) is left out.

use std::fmt::Write;
use std::fs;

use super::header;

/// Clock ticks per second of the times in `/proc`: Linux always reports
/// them in USER_HZ, which is 100. (Asking `sysconf(_SC_CLK_TCK)` would
/// need unsafe code.)
const TICKS_PER_SECOND: u64 = 100;

/// The fields of `/proc/self/stat` the metrics use.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    /// Threads in the process.
    threads: u64,
    /// Start time, in clock ticks after boot.
    start_ticks: u64,
    /// Virtual memory size in bytes.
    vsize: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name may hold spaces and ")": fields follow the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        // `rest` starts at field 3 (state); `field(n)` is field `n` of proc(5).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            cpu_ticks: field(14)?.saturating_add(field(15)?),
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// The number after `key` on its line of `text` (`/proc/stat`'s `btime`,
/// `/proc/self/status`'s `VmRSS:`, `/proc/self/limits`' soft limits).
fn value_after(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Appends the process metrics to `out`.
pub(super) fn render(out: &mut String) {
    let read = |path| fs::read_to_string(path).ok();
    let stat = read("/proc/self/stat").and_then(|s| Stat::parse(&s));
    let boot = read("/proc/stat").and_then(|s| value_after(&s, "btime"));
    let rss_kib = read("/proc/self/status").and_then(|s| value_after(&s, "VmRSS:"));
    let ticks = |t: u64| t as f64 / TICKS_PER_SECOND as f64;
    let metrics: [(&str, &str, &str, Option<f64>); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.as_ref().map(|s| ticks(s.cpu_ticks)),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_kib.map(|kib| kib as f64 * 1024.0),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.as_ref().map(|s| s.vsize as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            read("/proc/self/limits")
                .and_then(|s| value_after(&s, "Max open files"))
                .map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.as_ref()
                .zip(boot)
                .map(|(s, boot)| boot as f64 + ticks(s.start_ticks)),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            stat.as_ref().map(|s| s.threads as f64),
        ),
    ];
    for (name, kind, help, value) in metrics {
        if let Some(value) = value {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let line = "4242 (we ird) (x) S) R 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 7 0 98765 123456789 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 3 0 0 0 0 0\n";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_ticks: 175,
                threads: 7,
                start_ticks: 98765,
                vsize: 123456789,
            }
        );
        assert_eq!(Stat::parse("4242 (no end"), None);
        assert_eq!(Stat::parse("4242 (short) R 1 2"), None);
    }

    #[test]
    fn values_are_read_after_their_key() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(value_after(limits, "Max open files"), Some(1024));
        assert_eq!(
            value_after("cpu 1 2\nbtime 1700000000\n", "btime"),
            Some(1700000000)
        );
        assert_eq!(value_after("VmRSS:\t   5120 kB\n", "VmRSS:"), Some(5120));
        assert_eq!(
            value_after(
                "Max open files  unlimited  unlimited  files",
                "Max open files"
            ),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_every_metric() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
            "process_virtual_memory_bytes",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} in {out}");
        }
    }
}
