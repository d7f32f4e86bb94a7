//! One result line (JSON), and what /proc says about the server process.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::ledger::Verdict;
use super::{Options, Workload};

/// One result: the JSON line `dchan bench` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub workload: Workload,
    pub system: String,
    /// How this system was set up, where it has choices that change the
    /// work (dchan's 9P dialect, JetStream's storage, NATS core's flushes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub size: usize,
    pub depth: usize,
    /// Messages per request (`--batch`).
    pub batch: usize,
    pub producers: usize,
    pub consumers: usize,
    pub groups: usize,
    /// Connections held open (conns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conns: Option<usize>,
    /// Messages each group received that a producer had been acknowledged
    /// for, warm-up excluded (= pushed when nothing was lost or unfinished).
    pub messages: u64,
    /// Seconds from the first timed push to the last message received.
    pub secs: f64,
    /// Messages delivered per second per group: for fanout, each reader's
    /// rate; for queue, the whole group's; for rendezvous, round trips per
    /// second. Never computed from what was pushed.
    pub msgs_per_sec: f64,
    /// `msgs_per_sec` times the message size, in MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Latency in µs: the round trip for rendezvous, push to pull otherwise.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Server CPU (user + system) seconds per million messages delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s_per_m: Option<f64>,
    /// Server resident memory at the end (conns: with every reader blocked;
    /// backlog: with every message held), whatever earlier runs left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// How much the server's resident memory grew during this run: from
    /// before its first connection to the point `server_rss_mib` is taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_growth_mib: Option<f64>,
    /// Bytes of server memory growth per queued message beyond its payload
    /// (backlog; memory only: a system that keeps them on disk shows less).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_bytes_per_msg: Option<f64>,
    /// Milliseconds from the first push until every reader had its message (conns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_all_ms: Option<f64>,
    /// The check of what arrived.
    pub check: Verdict,
    /// Set when the run failed: a loss, a duplicate, an error from the system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The signal that interrupted the run ("SIGINT"), if one did: then
    /// nothing was measured, and `error` says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

impl Report {
    /// An empty report for this run, filled in by the workload.
    pub fn new(workload: Workload, system: &str, opts: &Options) -> Report {
        let (producers, consumers, groups) = match workload {
            Workload::Queue => (opts.producers, opts.consumers, 1),
            Workload::Fanout => (1, opts.groups, opts.groups),
            Workload::Conns => (1, opts.conns, opts.conns),
            _ => (1, 1, 1),
        };
        Report {
            workload,
            system: system.to_string(),
            variant: None,
            size: opts.size,
            depth: opts.depth,
            batch: opts.batch,
            producers,
            consumers,
            groups,
            conns: (workload == Workload::Conns).then_some(opts.conns),
            messages: 0,
            secs: 0.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            server_cpu_s_per_m: None,
            server_rss_mib: None,
            server_rss_growth_mib: None,
            overhead_bytes_per_msg: None,
            deliver_all_ms: None,
            check: Verdict::default(),
            error: None,
            interrupted: None,
        }
    }

    /// Fill in rates and latencies from a count of messages delivered (per
    /// group), a duration and a histogram of nanoseconds.
    pub fn measured(&mut self, messages: u64, elapsed: Duration, latency: &Histogram<u64>) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        self.messages = messages;
        self.secs = round(secs, 3);
        self.msgs_per_sec = round(messages as f64 / secs, 0);
        self.mb_per_sec = round(messages as f64 * self.size as f64 / secs / 1e6, 2);
        let us = |q: f64| round(latency.value_at_quantile(q) as f64 / 1000.0, 1);
        if !latency.is_empty() {
            self.p50_us = us(0.5);
            self.p99_us = us(0.99);
            self.p999_us = us(0.999);
        }
    }

    /// Fill in the server's CPU per million deliveries between `before`
    /// and `after` (the timed window and its drain).
    pub fn server_cpu(
        &mut self,
        before: Option<ProcStat>,
        after: Option<ProcStat>,
        deliveries: u64,
    ) {
        if let (Some(b), Some(a), true) = (before, after, deliveries > 0) {
            let cpu = (a.cpu_secs - b.cpu_secs).max(0.0);
            self.server_cpu_s_per_m = Some(round(cpu * 1e6 / deliveries as f64, 3));
        }
    }

    /// Fill in the server's memory at `at`, and its growth since `start`
    /// (before the run's first connection).
    pub fn server_memory(&mut self, start: Option<ProcStat>, at: Option<ProcStat>) {
        let mib = |bytes: f64| round(bytes / (1 << 20) as f64, 1);
        if let Some(a) = at {
            self.server_rss_mib = Some(mib(a.rss_bytes as f64));
            if let Some(s) = start {
                self.server_rss_growth_mib = Some(mib(a.rss_bytes as f64 - s.rss_bytes as f64));
            }
        }
    }

    /// Print the JSON line on stdout.
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a report serializes")
        );
    }
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// A process's CPU time and memory, from /proc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User plus system CPU seconds so far.
    pub cpu_secs: f64,
    /// Resident set size (VmRSS).
    pub rss_bytes: u64,
}

/// Clock ticks per second of /proc/PID/stat's utime and stime. Linux
/// reports them in USER_HZ, which is 100 on every architecture it exports.
const USER_HZ: f64 = 100.0;

impl ProcStat {
    /// Read `pid`'s figures; `None` if the process is not readable (another
    /// machine, gone, no /proc).
    pub fn read(pid: Option<u32>) -> Option<ProcStat> {
        let pid = pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; fields restart after ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcStat {
            cpu_secs: (utime + stime) / USER_HZ,
            rss_bytes: rss_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = ProcStat::read(Some(std::process::id())).expect("own /proc readable");
        assert!(me.rss_bytes > 0);
        assert!(me.cpu_secs >= 0.0);
        assert_eq!(ProcStat::read(None), None);
    }
}
