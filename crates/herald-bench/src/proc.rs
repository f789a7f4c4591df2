//! Reading CPU time and resident memory from `/proc`, for the server under test
//! (a process and all its descendants, so nginx's workers count) and for the generator itself.

use std::collections::HashMap;
use std::fs;

/// Linux reports `utime`/`stime` in USER_HZ ticks, which is 100 on every supported architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProcSample {
    /// utime + stime of every process in the tree, in seconds.
    pub(crate) cpu_seconds: f64,
    /// Sum of VmRSS over the tree, in KiB (shared pages counted once per process).
    pub(crate) rss_kib: u64,
    /// How many processes the tree had, so a reader can tell nginx master+workers apart from one process.
    pub(crate) processes: usize,
}

/// `(ppid, utime + stime ticks)` from the text of `/proc/<pid>/stat`.
/// The command name may contain spaces and parentheses, so fields are counted after the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// VmRSS in KiB from the text of `/proc/<pid>/status`.
pub(crate) fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid and all its descendants that exist now.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    // Bounded: each pid is visited once, and /proc lists finitely many.
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied().filter(|k| *k != root));
        }
        i += 1;
    }
    out
}

/// CPU and RSS of `root` and its descendants; `None` if `root` does not exist.
pub(crate) fn sample_tree(root: u32) -> Option<ProcSample> {
    fs::metadata(format!("/proc/{root}")).ok()?;
    let mut sample = ProcSample::default();
    for pid in tree(root) {
        let Some((_, ticks)) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        else {
            continue;
        };
        sample.cpu_seconds += ticks as f64 / TICKS_PER_SECOND;
        sample.rss_kib += fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| parse_vm_rss(&t))
            .unwrap_or(0);
        sample.processes += 1;
    }
    Some(sample)
}

/// This process's own CPU seconds (utime + stime).
pub(crate) fn self_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0.0, |(_, ticks)| ticks as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "1234 (nginx: a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_stat(text), Some((1, 325)));
    }

    #[test]
    fn vm_rss_line() {
        let text = "Name:\tnginx\nVmPeak:\t  9999 kB\nVmRSS:\t   20480 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(text), Some(20480));
    }

    #[test]
    fn self_tree_is_readable() {
        let me = std::process::id();
        let s = sample_tree(me).expect("own pid exists");
        assert!(s.rss_kib > 0);
        assert!(s.processes >= 1);
    }
}
