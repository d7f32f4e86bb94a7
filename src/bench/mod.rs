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
//! - `command`  — `dchan bench`: its arguments and its run.

pub mod command;
pub mod dchan;
pub mod ledger;
pub mod payload;
pub mod report;
pub mod tcp;
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
}

/// The options every workload shares (the arguments of `dchan bench` and of
/// the peers' bench binary).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Bytes per message, the trailing newline included (at least 48).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How long producers push, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Requests in flight per producer and per consumer.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Producers (queue).
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Consumers (queue).
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Reader groups (fanout).
    #[arg(long, default_value_t = 16)]
    pub groups: usize,
    /// Connections (conns).
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Messages to queue (backlog).
    #[arg(long, default_value_t = 1_000_000)]
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
    /// it does or cannot say.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// The longest drain in all, in seconds, however steadily messages
    /// still arrive; what is missing then is unfinished.
    #[arg(long, default_value_t = 60.0)]
    pub drain_max: f64,
    /// Untimed warm-up messages per producer before the timed window (flows
    /// and backlog), and untimed round trips (rendezvous).
    #[arg(long, default_value_t = 2000)]
    pub warmup: u64,
    /// Prefix of the topic names this run creates (so runs do not collide).
    #[arg(long, default_value = "bench")]
    pub prefix: String,
}

impl Options {
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
}

/// Pulls messages from one topic for one group.
pub trait Reader: Send + Sync + 'static {
    /// Pull the next message, waiting for one. Dropped before it returns, it
    /// should take nothing (where the system allows).
    fn pull(&self) -> impl Future<Output = Result<Bytes>> + Send;
}
