//! The benchmark driver: the workloads of `dchan bench`, written once and run
//! against dchan and its peers (Redis, NATS, JetStream, a raw TCP echo).
//!
//! A system under test is three small traits: a [`System`] makes topics and
//! connections, a [`Conn`] opens a [`Writer`] or a [`Reader`] on a topic, and
//! those push and pull one message. Several pushes or pulls may be in flight
//! on one writer or reader at once (`--depth`); a system whose client cannot
//! multiplex simply serializes them.
//!
//! Every message carries its producer, its sequence number within that
//! producer and the time it was sent (`payload`), so every workload checks
//! what arrived (count, order within a producer, no duplicates) and reports a
//! loss as an error, never as a slow result (`ledger`). Rates count what was
//! delivered, never what was pushed. Once the producers stop, readers drain
//! for as long as messages keep coming; a message still missing then is
//! "lost" only if the system says it holds nothing more for the group
//! ([`System::pending`]), and "unfinished" otherwise. Every run warms up
//! untimed first, and removes what it created (topics, streams, keys) at
//! the end, however it ends: an error, a panic, or (`dchan bench`) SIGINT
//! or SIGTERM, which stops the run and reports it as interrupted, with no
//! rate. Results are one JSON line each (`report`).
//!
//! Modules:
//! - `payload`  — the bytes of a benchmark message and their parsing.
//! - `ledger`   — what each group received, and the verdict on it.
//! - `report`   — one result line, and the server's CPU and memory from /proc.
//! - `workload` — the workloads themselves.
//! - `tcp`      — the raw TCP echo server and the system that uses it (the floor).
//! - `dchan`    — dchan itself, through `dchan::client`.
//! - `topics`   — the `topics` workload: many idle topics (dchan only).
//! - `command`  — `dchan bench`: its arguments and its run.

pub mod command;
pub mod dchan;
pub mod ledger;
pub mod payload;
pub mod report;
pub mod tcp;
pub mod topics;
pub mod workload;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use command::BenchArgs;
pub use report::Report;
pub use workload::run;

/// Errors of a system under test, boxed: each peer's client has its own type.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The workloads, as `dchan bench WORKLOAD` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Capacity 0: a producer pushes, a consumer pulls and answers on a
    /// second topic, the producer pulls the answer; reports the round trip.
    Rendezvous,
    /// One producer, one consumer, capacity 1024, `--depth` requests in
    /// flight on each side.
    Pipe,
    /// `--producers` producers and `--consumers` consumers in one group.
    Queue,
    /// One producer, `--groups` groups of one reader each; every group
    /// receives everything.
    Fanout,
    /// `--conns` connections each blocked in a read on its own topic, then
    /// one push to each: time to deliver all, and server memory.
    Conns,
    /// `--count` messages queued with no reader taking them: server memory
    /// per message, then all of them drained and checked.
    Backlog,
    /// `--count` idle topics (dchan only): create and remove rates through
    /// one connection, server memory per topic, one topic's status read
    /// with 10 topics and with all of them, and the time of the listing
    /// `dchan ls` reads (see `topics`).
    Topics,
}

/// The options every workload shares (the arguments of `dchan bench` and of
/// the peers' bench binary).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Bytes per message, the trailing newline included (48 to 16 MiB,
    /// the server's default `max_message`).
    #[arg(long, default_value_t = 64, value_parser = size)]
    pub size: usize,
    /// How long producers push, in seconds (above 0, at most a day).
    #[arg(long, default_value_t = 5.0, value_parser = secs)]
    pub secs: f64,
    /// Requests in flight per producer and per consumer (1 to 1024: each
    /// has its own connection, and dchan's connections take 1024 at once).
    #[arg(long, default_value_t = 1, value_parser = depth)]
    pub depth: usize,
    /// Messages per request (pipe, queue, fanout; 1 to 4096): a producer
    /// pushes this many in one write (dchan: lines of one Twrite; Redis:
    /// one RPUSH; NATS: publishes then one flush; JetStream: this many
    /// publishes in flight), and a reader takes up to this many in one
    /// request (dchan: every whole message there, in one Tread of a
    /// `:batch` session; Redis: LPOP key k; JetStream: a pull batch).
    #[arg(long, default_value_t = 1, value_parser = batch)]
    pub batch: usize,
    /// Producers (queue; 1 to 1024).
    #[arg(long, default_value_t = 2, value_parser = parties)]
    pub producers: usize,
    /// Consumers (queue; 1 to 1024).
    #[arg(long, default_value_t = 2, value_parser = parties)]
    pub consumers: usize,
    /// Reader groups (fanout; 1 to 1024).
    #[arg(long, default_value_t = 16, value_parser = parties)]
    pub groups: usize,
    /// Connections (conns; 1 to 100 000).
    #[arg(long, default_value_t = 10_000, value_parser = conns)]
    pub conns: usize,
    /// Messages to queue (backlog; 1 to 10^9); topics to make (topics).
    #[arg(long, default_value_t = 1_000_000, value_parser = count)]
    pub count: u64,
    /// Topic capacity for pipe, queue and fanout.
    #[arg(long, default_value_t = 1024)]
    pub capacity: u64,
    /// The server's process id, to report its CPU time and memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Once producers stopped: how long readers may go without receiving
    /// anything before draining stops, in seconds. What is missing then is
    /// lost if the system holds nothing more for the group, unfinished if
    /// it does or cannot say (at most a day).
    #[arg(long, default_value_t = 10.0, value_parser = drain)]
    pub drain: f64,
    /// The longest drain in all, in seconds, however steadily messages
    /// still arrive, counted from when the producers are told to stop
    /// (their last pushes may wait for room); what is missing then is
    /// unfinished (at most a day).
    #[arg(long, default_value_t = 60.0, value_parser = drain)]
    pub drain_max: f64,
    /// Untimed warm-up messages per producer before the timed window (flows
    /// and backlog), and untimed round trips (rendezvous); at most 10^9.
    #[arg(long, default_value_t = 2000, value_parser = warmup)]
    pub warmup: u64,
    /// Prefix of the topic names this run creates (so runs do not
    /// collide): a topic name (A-Z a-z 0-9 . _ -, parts separated by /).
    #[arg(long, default_value = "bench", value_parser = prefix)]
    pub prefix: String,
}

/// The largest `--size`: the server's default `max_message`.
pub const MAX_SIZE: usize = 16 << 20;
/// The largest `--depth`: the requests a dchan connection takes at once
/// ([`DEFAULT_MAX_IN_FLIGHT`](crate::client::DEFAULT_MAX_IN_FLIGHT)); a
/// deeper reader would wait in its own client behind itself.
pub const MAX_DEPTH: usize = crate::client::DEFAULT_MAX_IN_FLIGHT;
/// The longest `--secs`, `--drain` and `--drain-max`: a day.
pub const MAX_SECS: f64 = 86_400.0;

/// An integer argument from `lo` to `hi`.
fn within<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    s: &str,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let n: T = s.trim().parse().map_err(|e| format!("{e}"))?;
    if n < lo {
        Err(format!("at least {lo}{unit}"))
    } else if n > hi {
        Err(format!("at most {hi}{unit}"))
    } else {
        Ok(n)
    }
}

fn size(s: &str) -> Result<usize, String> {
    within(s, payload::MIN_SIZE, MAX_SIZE, " bytes")
}
fn depth(s: &str) -> Result<usize, String> {
    within(s, 1, MAX_DEPTH, " (requests in flight on one connection)")
}
fn batch(s: &str) -> Result<usize, String> {
    within(s, 1, 4096, " (messages per request)")
}
fn parties(s: &str) -> Result<usize, String> {
    within(s, 1, 1024, "")
}
fn conns(s: &str) -> Result<usize, String> {
    within(s, 1, 100_000, "")
}
fn count(s: &str) -> Result<u64, String> {
    within(s, 1, 1_000_000_000, "")
}
fn warmup(s: &str) -> Result<u64, String> {
    within(s, 0, 1_000_000_000, "")
}

/// Seconds, finite, from 0 (excluded if `positive`) to [`MAX_SECS`].
fn seconds(s: &str, positive: bool) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() {
        Err("a finite number of seconds".into())
    } else if positive && v <= 0.0 {
        Err("more than 0 seconds".into())
    } else if v < 0.0 {
        Err("at least 0 seconds".into())
    } else if v > MAX_SECS {
        Err(format!("at most {MAX_SECS} seconds (a day)"))
    } else {
        Ok(v)
    }
}
fn secs(s: &str) -> Result<f64, String> {
    seconds(s, true)
}
fn drain(s: &str) -> Result<f64, String> {
    seconds(s, false)
}

/// A prefix that makes topic names the tree accepts.
fn prefix(s: &str) -> Result<String, String> {
    match crate::client::check_topic(&format!("{s}-x")) {
        Ok(()) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(format!("not a topic name: {}", crate::broker::NAME_RULE)),
    }
}

/// The most message bytes one producer or reader may have in flight
/// (`--size` times its depth): each is a buffer in this process.
pub const MAX_IN_FLIGHT_BYTES: usize = 1 << 30;

impl Options {
    /// What the arguments' own bounds cannot say: a usage error, before
    /// any connection.
    pub fn check(&self, workload: Workload) -> Result<(), String> {
        let depth = self.reader_depth(workload);
        if self.size.saturating_mul(depth) > MAX_IN_FLIGHT_BYTES {
            return Err(format!(
                "--size {} with {depth} in flight is more than {} MiB in flight; lower --size or --depth",
                self.size,
                MAX_IN_FLIGHT_BYTES >> 20
            ));
        }
        Ok(())
    }

    pub fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain)
    }
    pub fn drain_max(&self) -> Duration {
        Duration::from_secs_f64(self.drain_max.max(self.drain))
    }
    /// Requests in flight per reader group: the depth of each of its readers
    /// (queue: `--consumers` of them), which a peer that bounds a group's
    /// unacknowledged messages uses as that bound.
    pub fn group_in_flight(&self, workload: Workload) -> usize {
        let readers = match workload {
            Workload::Queue => self.consumers.max(1),
            _ => 1,
        };
        self.reader_depth(workload) * readers
    }

    /// Requests in flight per producer and per reader: `--depth`, and at
    /// least 64 for backlog, which pushes and drains a million.
    pub fn reader_depth(&self, workload: Workload) -> usize {
        match workload {
            Workload::Backlog => self.depth.max(64),
            _ => self.depth.max(1),
        }
    }
}

/// A message system under test.
pub trait System: Send + Sync + 'static {
    type Conn: Conn;

    /// The name results carry: "dchan", "redis", "nats", ...
    fn name(&self) -> &'static str;

    /// How it is set up where that changes the work (dialect, storage,
    /// acknowledgement), for the report's `variant`.
    fn variant(&self) -> Option<String> {
        None
    }

    /// Whether this system can run the workload with its own semantics; the
    /// driver reports the others as not applicable rather than faking them.
    fn supports(&self, _workload: Workload) -> bool {
        true
    }

    /// Whether a push comes back to the pusher on the same topic with no
    /// consumer involved (the raw TCP echo): then rendezvous has no consumer.
    fn echoes(&self) -> bool {
        false
    }

    /// Make an empty topic holding at most `capacity` unread messages (0: a
    /// push waits for a reader, where the system can).
    fn create(&self, topic: &str, capacity: u64) -> impl Future<Output = Result<()>> + Send;

    /// A new connection whose readers belong to reader group `group`.
    fn connect(&self, group: &str) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Delete `topic` and everything the system keeps for it (a dchan
    /// topic, a JetStream stream, a Redis key), once the run is over.
    fn remove(&self, topic: &str) -> impl Future<Output = Result<()>> + Send;

    /// How many messages the system still holds for `group` on `topic`
    /// (queued or delivered and unacknowledged), where it can say: `Some(0)`
    /// means a message the group has not received is lost. `None`: the
    /// system cannot tell, so a missing message is unfinished, not lost.
    fn pending(&self, _topic: &str, _group: &str) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }
}

/// One connection to a system.
pub trait Conn: Send + Sync + 'static {
    type Writer: Writer;
    type Reader: Reader;

    fn writer(&self, topic: &str) -> impl Future<Output = Result<Self::Writer>> + Send;

    /// A reader in this connection's group; once this returns, the group
    /// exists and will get every message pushed from then on.
    fn reader(&self, topic: &str) -> impl Future<Output = Result<Self::Reader>> + Send;
}

/// Pushes messages to one topic.
pub trait Writer: Send + Sync + 'static {
    /// Push one message; returns once the system acknowledged it.
    fn push(&self, msg: Bytes) -> impl Future<Output = Result<()>> + Send;

    /// Push `msgs` in order, as one request where the system can (`--batch`);
    /// returns once the system acknowledged all. By default one at a time.
    fn push_batch(&self, msgs: Vec<Bytes>) -> impl Future<Output = Result<()>> + Send {
        async move {
            for m in msgs {
                self.push(m).await?;
            }
            Ok(())
        }
    }
}

/// Pulls messages from one topic for one group.
pub trait Reader: Send + Sync + 'static {
    /// Pull the next message, waiting for one. Dropped before it returns, it
    /// should take nothing (where the system allows).
    fn pull(&self) -> impl Future<Output = Result<Bytes>> + Send;

    /// Pull at least one message and at most `max` (or, where the system
    /// reads every message available at once, as many as it returns),
    /// waiting only for the first (`--batch`). By default one.
    fn pull_batch(&self, _max: usize) -> impl Future<Output = Result<Vec<Bytes>>> + Send {
        async move { Ok(vec![self.pull().await?]) }
    }
}
