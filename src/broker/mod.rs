//! Topics, reader groups, capacity and waiting: the message broker, which
//! knows nothing of 9P or files.
//!
//! [`Broker`] is the interface; `memory` is the engine that keeps topics in
//! this process, `durable` the one that also writes them to a log in a
//! directory (the same topic rules, with a `store` under each topic), and
//! `jetstream` the one that keeps them in a NATS JetStream cluster, so that
//! several dchan servers share their topics.
//!
//! Pushes and pulls are futures that may wait (capacity, rendezvous, an empty
//! topic). A pulled message comes as a [`Delivery`]: acked, it is done;
//! dropped unacked (the reader's connection was lost before it read again),
//! it goes back to the front of its group.
//!
//! # A push's outcome (every engine)
//!
//! A push's message is *taken* once it is in the topic: appended to the log
//! (capacity allowed it, or a reader took it at a rendezvous). That is
//! decided once, under the topic's lock, and everything the writer can be
//! told agrees with it:
//!
//! - `Ok(seq)`: taken. It is held for every group (until a `reset`, `seek`,
//!   `forget` or `remove` drops it, as for any held message), so a writer
//!   that gets `Ok` must not push it again. At a rendezvous (capacity 0)
//!   the push waits for every group, but when its deadline comes, or a
//!   `reset` or `remove` ends the wait, after *some* group took the message,
//!   it is still `Ok`: the message was delivered and the others get it
//!   from the log, so an error would make a retrying writer send a
//!   duplicate.
//! - any error: not taken, and never will be (withdrawn). Retrying cannot
//!   duplicate it.
//!
//! A push or pull cut short — its deadline passed, or its future is about
//! to be dropped by a caller that still wants an answer (a 9P Tflush) — is
//! decided at once: the caller polls it one last time inside
//! [`resolve_now`], and a waiting broker future then returns its outcome
//! instead of `Pending`: a push not taken is withdrawn (`TimedOut` at a
//! deadline, `Interrupted` for a flush), a push taken returns `Ok`, a pull
//! returns the message reserved for it or withdraws. A future simply
//! dropped (its caller is gone) is withdrawn if not taken; a message taken
//! stays. A pull dropped before it returns took nothing.

pub mod durable;
mod group;
pub mod jetstream;
mod log;
pub mod memory;
pub mod order;
mod rate;
mod retain;
mod store;
mod tally;
mod topic;
mod waiters;

pub use jetstream::{JetStreamBroker, JetStreamConfig, JetStreamDelivery};
pub use memory::{MemoryBroker, MemoryDelivery};
pub use rate::Rate;
pub use retain::Retention;

use std::future::Future;
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

/// A message's sequence number in its topic: only grows, never reused.
pub type Seq = u64;

/// A topic's identity: one per creation, never reused in a broker, so a
/// topic removed and created again under its name is another topic.
pub type TopicId = u64;

/// The topic an operation is for: by name, and, from a file opened
/// earlier, the incarnation it was opened on. A removed topic's handles
/// are stale: with `id` set, an operation on a topic of that name but
/// another identity (or none) fails with `Removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub name: &'a str,
    pub id: Option<TopicId>,
}

impl<'a> From<&'a str> for Target<'a> {
    fn from(name: &'a str) -> Target<'a> {
        Target { name, id: None }
    }
}

impl<'a> From<&'a String> for Target<'a> {
    fn from(name: &'a String) -> Target<'a> {
        Target { name, id: None }
    }
}

/// How writes to a topic's data file become messages. The broker only
/// stores it; the file tree applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Each newline-terminated line is a message (the default).
    #[default]
    Line,
    /// Each write is a message.
    Write,
}

/// A topic's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    /// How far the slowest group may lag; 0 is a rendezvous.
    pub capacity: u64,
    pub framing: Framing,
    /// How long a push or pull may wait before failing with `TimedOut`;
    /// `None` waits forever.
    pub timeout: Option<Duration>,
    /// The longest message, in bytes: a longer push fails with `TooLong`.
    pub max_message: u64,
    /// What is kept of the messages every group has taken (see `retain`).
    pub retain: Retention,
    /// The most bytes of messages held for readers (not yet taken and
    /// acknowledged by every group; what `retain` keeps does not count):
    /// a push waits while its message would take the topic past it, as
    /// for capacity. A message longer than this fails with
    /// `OverMaxBytes`. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// The most messages a second pushed to the topic, by all its writers
    /// together: a push above it waits (see `rate`). `None`: no limit.
    pub rate: Option<Rate>,
}

/// The default [`TopicConfig::max_message`], 16 MiB: RabbitMQ's default,
/// above the 1 MB of NATS and Kafka, so that large documents fit, while a
/// writer that never ends its line cannot make the server hold more than
/// this per open file.
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            capacity: 0,
            framing: Framing::default(),
            timeout: None,
            max_message: DEFAULT_MAX_MESSAGE,
            retain: Retention::None,
            max_bytes: None,
            rate: None,
        }
    }
}

/// A message size as people write it: bytes, or with a binary suffix
/// (`64k`, `16M`, `1G`); at least 1.
pub fn parse_size(s: &str) -> Result<u64, &'static str> {
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "want a number of bytes ≥ 1, like 65536, 64k or 16M")?;
    match n.checked_shl(shift).filter(|v| *v >= 1 && v >> shift == n) {
        Some(v) => Ok(v),
        None => Err("want a number of bytes ≥ 1, like 65536, 64k or 16M"),
    }
}

/// A `max_bytes` setting as people write it: a size as [`parse_size`]
/// takes one, or `none`.
pub fn parse_max_bytes(s: &str) -> Result<Option<u64>, String> {
    match s {
        "none" => Ok(None),
        _ => parse_size(s)
            .map(Some)
            .map_err(|why| format!("bad max_bytes {s:?}: {why}, or none")),
    }
}

impl TopicConfig {
    /// Whether a message of `len` bytes may be pushed: every engine asks
    /// before it takes a message.
    pub fn admits(&self, len: usize) -> Result<()> {
        if len as u64 > self.max_message {
            return Err(Error::TooLong {
                size: len as u64,
                max: self.max_message,
            });
        }
        match self.max_bytes {
            Some(max) if len as u64 > max => Err(Error::OverMaxBytes {
                size: len as u64,
                max,
            }),
            _ => Ok(()),
        }
    }
}

/// What reader groups a topic keeps: every attach name that reads makes
/// one, so a server bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups one topic may have; a pull, `offset` or seek that would make
    /// one more fails with `TooManyGroups`.
    pub max_per_topic: usize,
    /// A group with no reader blocked in it, no delivery out, and no pull,
    /// `offset` or seek for this long is dropped (as by `forget`), as
    /// JetStream's inactive threshold does; `None` keeps groups until
    /// `forget`.
    pub idle_expiry: Option<Duration>,
}

impl Default for GroupLimits {
    fn default() -> GroupLimits {
        GroupLimits {
            max_per_topic: 10_000,
            idle_expiry: None,
        }
    }
}

/// One setting to change on a live topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Capacity(u64),
    Framing(Framing),
    Timeout(Option<Duration>),
    MaxMessage(u64),
    Retain(Retention),
    MaxBytes(Option<u64>),
    Rate(Option<Rate>),
}

/// Whether an operation may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait as long as the topic's timeout allows.
    Block,
    /// Never wait: `WouldBlock` instead.
    NonBlock,
}

/// What a topic name may be, as errors say it.
pub const NAME_RULE: &str = "want parts of A-Z a-z 0-9 . _ - separated by /, \
     not . or .., not starting with -, at most 64 parts and 1024 bytes";

/// The most `/`-separated parts a topic name may have: a walk costs per
/// level, and a client lists a tree at most this deep
/// ([`crate::client::MAX_DEPTH`]).
pub const MAX_NAME_PARTS: usize = 64;

/// The longest topic name, in bytes: well inside PATH_MAX (4096) with a
/// mount point and `/data` around it.
pub const MAX_NAME_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such topic: {0}")]
    NoTopic(String),
    #[error("topic exists: {0}")]
    Exists(String),
    #[error("bad topic name {0:?}: {NAME_RULE}")]
    BadName(String),
    #[error("topic closed")]
    Closed,
    #[error("topic reset")]
    Reset,
    #[error("topic removed")]
    Removed,
    #[error("timed out")]
    TimedOut,
    #[error("would block")]
    WouldBlock,
    /// Cut short by its caller (see [`resolve_now`]); withdrawn.
    #[error("interrupted")]
    Interrupted,
    #[error("no such group: {0}")]
    NoGroup(String),
    #[error("offset {asked} out of range [{first}, {next}]")]
    OffsetOutOfRange { asked: Seq, first: Seq, next: Seq },
    #[error("server shutting down")]
    Shutdown,
    #[error("too many reader groups on this topic (at most {0}); forget one")]
    TooManyGroups(usize),
    #[error("message too large: {size} bytes, over the topic's max_message {max}")]
    TooLong { size: u64, max: u64 },
    /// One message longer than the topic's `max_bytes`: it could never
    /// fit, so the push fails instead of waiting for ever.
    #[error("message larger than the topic's max_bytes: {size} bytes, over max_bytes {max}")]
    OverMaxBytes { size: u64, max: u64 },
    /// A setting this engine cannot keep (JetStream: `max_bytes`, `rate`).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The engine's store (JetStream) did not answer in time or refused.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The durable engine could not keep a change on disk (a full disk:
    /// `kind` is `StorageFull`); a push that fails so was not taken.
    #[error("storage: {reason}")]
    Storage {
        kind: std::io::ErrorKind,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use crate::cut::{Cut, resolve_now};

/// The error a push or pull cut short and withdrawn returns.
pub(crate) fn cut_error(cut: Cut) -> Error {
    match cut {
        Cut::Deadline => Error::TimedOut,
        Cut::Cancel => Error::Interrupted,
    }
}

/// A group's place in a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub name: String,
    /// The next sequence number the group will read.
    pub offset: Seq,
    /// Messages pushed that the group has not yet read.
    pub lag: u64,
    /// Messages delivered to the group's readers and not yet acked.
    pub unacked: u64,
    /// Readers of the group blocked in a pull.
    pub blocked: u64,
}

/// A topic's state, as its ctl file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    pub name: String,
    pub config: TopicConfig,
    /// Messages held: not yet taken by every group, or kept by retention.
    pub pending: u64,
    /// The bytes of those messages.
    pub bytes: u64,
    /// Of those, the ones every group has taken, kept by retention.
    pub retained: u64,
    /// The oldest held sequence number, and the next one to be assigned.
    pub first: Seq,
    pub next: Seq,
    pub pushed: u64,
    pub pulled: u64,
    pub blocked_readers: u64,
    pub blocked_writers: u64,
    pub groups: Vec<GroupStatus>,
    pub closed: bool,
    /// The figures above that count this server's part only, by their
    /// ctl names ("" for an engine that is one server).
    pub local: &'static str,
}

/// Totals over all topics, for the server's ctl file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStatus {
    pub topics: u64,
    pub pushed: u64,
    pub pulled: u64,
    /// The engine, as the server's ctl names it: `memory`, `durable` or
    /// `jetstream`.
    pub engine: &'static str,
    /// The durable engine's disk: `None` for topics kept in memory.
    pub disk: Option<DiskStatus>,
}

/// How the durable engine keeps its topics, for the server's ctl file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStatus {
    pub sync: durable::SyncMode,
    /// The bytes its topics' files take.
    pub bytes: u64,
}

/// A push whose place in its topic is fixed (see [`Broker::push_ordered`]).
pub enum Pushed {
    /// Done: its sequence number.
    Done(Seq),
    /// On its way: resolves as [`Broker::push_to`] would.
    Pending(PendingPush),
}

impl Pushed {
    /// Wait for the rest of the push.
    pub async fn done(self) -> Result<Seq> {
        match self {
            Pushed::Done(seq) => Ok(seq),
            Pushed::Pending(f) => f.await,
        }
    }
}

/// What [`Broker::push_all`] did with a write's messages.
#[derive(Default)]
pub struct PushedAll {
    /// How many, from the first, have their place in the topic.
    pub pushed: usize,
    /// What stopped the rest.
    pub error: Option<Error>,
    /// Those of the `pushed` still on their way (their index, and the
    /// rest of the push: see [`Pushed::Pending`]).
    pub pending: Vec<(usize, PendingPush)>,
}

/// The rest of a push on its way.
pub type PendingPush = std::pin::Pin<Box<dyn Future<Output = Result<Seq>> + Send>>;

/// A push on its way, with its place in a write (see `Broker::push_all`).
struct OnWay(usize, PendingPush);

impl Future for OnWay {
    type Output = (usize, Result<Seq>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let i = self.0;
        self.1.as_mut().poll(cx).map(|r| (i, r))
    }
}

/// A push on its way that has already ended.
fn ready_push(r: Result<Seq>) -> PendingPush {
    Box::pin(std::future::ready(r))
}

/// A pulled message. `ack` finishes it; dropping it unacked puts it back at
/// the front of its group (at-least-once delivery).
pub trait Delivery: Send + Sync + 'static {
    fn seq(&self) -> Seq;
    fn data(&self) -> &Bytes;
    fn ack(self);
    /// Ack each of `batch` (a batch read's messages): by default one after
    /// another; an engine may do them at once.
    fn ack_all(batch: impl IntoIterator<Item = Self>)
    where
        Self: Sized,
    {
        for d in batch {
            d.ack();
        }
    }
}

/// Topics and their groups.
///
/// Every operation that may need another machine or a disk (JetStream, a
/// durable log) is a future; `topics`, `id` and `totals` answer from what
/// this server knows now, since walks and stats must not wait. An engine
/// may do an operation's work when it is called or when its future is
/// first polled: callers await it at once.
///
/// Names are one or more `/`-separated components of `[A-Za-z0-9._-]`
/// (not "." or ".."); groups are any string, "" being the default group.
pub trait Broker: Send + Sync + 'static {
    type Delivery: Delivery;

    /// Make a topic.
    fn create(&self, topic: &str, config: TopicConfig) -> impl Future<Output = Result<()>> + Send;
    /// Remove a topic: blocked pushes and pulls fail with `Removed`.
    fn remove(&self, topic: &str) -> impl Future<Output = Result<()>> + Send;
    /// Up to `limit` topic names from `from` on, in tree order (see
    /// [`order`]: component by component, each in byte order, so `a`,
    /// `a/b`, `a-x`; keep the index keyed by [`order::key`]): the one
    /// ordered range query every listing is built on, so
    /// that a walk, a stat or one directory's listing costs the same with
    /// 10 or 1 000 000 topics. An engine keeps its names in an ordered map
    /// (a `BTreeMap`/`BTreeSet` range) and answers in O(log n + limit);
    /// the listings below are provided on top of it. A range cut between
    /// calls sees topics created or removed meanwhile, as a directory read
    /// does. Like `id`, answered from this server's view of the namespace
    /// (an engine shared by several servers keeps a local ordered copy).
    fn names(&self, from: Bound<&str>, limit: usize) -> Vec<String>;

    /// Every topic's name, sorted (O(n): a whole listing, never needed to
    /// find one topic).
    fn topics(&self) -> Vec<String> {
        self.names(Bound::Unbounded, usize::MAX)
    }

    /// Whether some topic's name is `dir` followed by `/` (the directory
    /// `dir` leads to topics): one range query.
    fn leads_to(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.names(Bound::Included(&prefix), 1)
            .first()
            .is_some_and(|n| n.starts_with(&prefix))
    }

    /// The names one level below the directory `dir` ("" for the root)
    /// that are topics or lead to topics: `a` and `b` for the topics `a`
    /// and `b/c`. One range query per child, however many topics lie
    /// deeper under it. They come in byte order of the child's name,
    /// whichever of them are topics (tree order keeps each child's topics
    /// together), so a listing cut into pages while topics come and go
    /// never repeats nor misses a child that stays; `limit` children at
    /// most, starting at the first name ≥ `from` (`Bound::Unbounded` from
    /// the start), with the position to carry on from (`None` once at the
    /// end).
    fn children(
        &self,
        dir: &str,
        mut from: Bound<String>,
        limit: usize,
    ) -> (Vec<String>, Option<Bound<String>>) {
        let prefix = match dir {
            "" => String::new(),
            d => format!("{d}/"),
        };
        if matches!(from, Bound::Unbounded) {
            from = Bound::Included(prefix.clone());
        }
        let mut found = Vec::new();
        while found.len() < limit {
            let Some(name) = self.names(from.as_ref().map(String::as_str), 1).pop() else {
                return (found, None);
            };
            let Some(rest) = name.strip_prefix(&prefix) else {
                return (found, None);
            };
            // The child is the first name of its subtree (the topic itself,
            // or the first topic under it); then past every `child/…`.
            let child = rest.split_once('/').map_or(rest, |(c, _)| c);
            found.push(child.to_string());
            from = Bound::Excluded(order::past_subtree(&format!("{prefix}{child}")));
        }
        (found, Some(from))
    }

    /// The topic's identity, in constant time (no status is built), from
    /// this server's view of the namespace: walks and stats ask it.
    fn id(&self, topic: &str) -> Result<TopicId>;

    /// A topic this server's view lacks may exist (a namespace shared with
    /// other servers, which this one hears of a moment later): the asking
    /// that brings it into the view if so, after which `id` is asked
    /// again. `None` (the default) for an engine that is its own view.
    fn refresh(&self, topic: &str) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let _ = topic;
        None
    }
    fn status(&self, topic: Target<'_>) -> impl Future<Output = Result<TopicStatus>> + Send;
    /// Totals, as this server knows them now.
    fn totals(&self) -> BrokerStatus;
    fn set(&self, topic: Target<'_>, setting: Setting) -> impl Future<Output = Result<()>> + Send;
    /// Drop every message, move every group to the end, fail blocked pushes
    /// not taken with `Reset`, reopen a closed topic. Blocked pulls keep
    /// waiting.
    fn reset(&self, topic: Target<'_>) -> impl Future<Output = Result<()>> + Send;
    /// Pushes fail with `Closed`; pulls drain what is held, then end.
    fn close(&self, topic: Target<'_>) -> impl Future<Output = Result<()>> + Send;
    /// Drop a group.
    fn forget(&self, topic: Target<'_>, group: &str) -> impl Future<Output = Result<()>> + Send;
    /// Drop, in every topic, the groups idle past `idle_expiry` now. Topics
    /// also look on their own as they are used; a server calls this every
    /// quarter of that period so that expiry comes on time on a topic
    /// nobody touches (a push held by a stray group is let through). Does
    /// nothing by default, or without `idle_expiry`.
    fn expire_idle(&self) {}
    /// The group's next sequence number (creating the group).
    fn offset(&self, topic: Target<'_>, group: &str) -> impl Future<Output = Result<Seq>> + Send;
    /// Move the group to `seq`, anywhere in `[first, next]`.
    fn seek(
        &self,
        topic: Target<'_>,
        group: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Append a message; resolves once capacity allows (with capacity 0,
    /// once every group has taken it). Returns its sequence number; see
    /// the module comment for what `Ok` and an error promise.
    fn push_to(
        &self,
        topic: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Seq>> + Send;

    /// Push `messages` in order, each as `push_ordered` would (a write of
    /// many lines): how many have their place fixed, the error that
    /// stopped the rest, and those still on their way. By default
    /// `push_ordered` one after another, the pushes on their way polled
    /// meanwhile, so that each ends (what it holds let go) as soon as it
    /// can rather than once the whole write is placed: a JetStream write
    /// of 14 000 lines into a full topic held 5 KB a line until its last
    /// line went. The memory engine pushes all that can go at once under
    /// one lock, so that readers find the write's messages together (a
    /// batch read takes them in one), and waits only where one must.
    fn push_all<'a>(
        &'a self,
        topic: Target<'a>,
        messages: &'a [Bytes],
        wait: Wait,
    ) -> impl Future<Output = PushedAll> + Send + 'a {
        use futures_util::StreamExt;
        async move {
            let mut all = PushedAll::default();
            // A write of one line, the most common, needs no set to poll.
            if let [m] = messages {
                match self.push_ordered(topic, m.clone(), wait).await {
                    Ok(Pushed::Done(_)) => {}
                    Ok(Pushed::Pending(p)) => all.pending.push((0, p)),
                    Err(e) => {
                        all.error = Some(e);
                        return all;
                    }
                }
                all.pushed = 1;
                return all;
            }
            let mut on_way = futures_util::stream::FuturesUnordered::new();
            for (i, m) in messages.iter().enumerate() {
                let placed = self.push_ordered(topic, m.clone(), wait);
                tokio::pin!(placed);
                let placed = loop {
                    tokio::select! {
                        biased;
                        r = &mut placed => break r,
                        Some((j, r)) = on_way.next() => {
                            if let Err(e) = r {
                                all.pending.push((j, ready_push(Err(e))));
                            }
                        }
                    }
                };
                match placed {
                    Ok(Pushed::Done(_)) => {}
                    // The last needs no polling here: nothing is placed
                    // after it (a write of one line costs no more).
                    Ok(Pushed::Pending(p)) if i + 1 == messages.len() => all.pending.push((i, p)),
                    Ok(Pushed::Pending(p)) => on_way.push(OnWay(i, p)),
                    Err(e) => {
                        all.error = Some(e);
                        break;
                    }
                }
                all.pushed = i + 1;
            }
            all.pending
                .extend(on_way.into_iter().map(|OnWay(i, p)| (i, p)));
            all.pending.sort_by_key(|(i, _)| *i);
            all
        }
    }

    /// `push_to` in two steps, for a file's pipelined writes: resolves once
    /// the push's place in the topic is fixed (it comes after every push
    /// whose first step resolved before it was called), with what is left
    /// to wait for before it counts as `push_to`'s `Ok`. An engine whose
    /// store is a round trip away (JetStream) thus has many pushes on the
    /// wire; by default, `push_to` whole.
    fn push_ordered(
        &self,
        topic: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Pushed>> + Send {
        let push = self.push_to(topic, data, wait);
        async move { push.await.map(Pushed::Done) }
    }

    /// Take the group's next message, waiting for one; `None` once the topic
    /// is closed and the group has read everything (end of file).
    fn pull_from(
        &self,
        topic: Target<'_>,
        group: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Option<Self::Delivery>>> + Send;

    /// The group's next message if the engine can hand it over now,
    /// without waiting on anything (a batch read's further messages, see
    /// the tree's `data` module): `None` when there is none, or when
    /// taking one would need a round trip. By default a non-blocking pull
    /// polled once; an engine whose pulls always go over the network (and
    /// would take a message that the dropped future then hands back,
    /// reordering the group) answers `None`.
    fn pull_ready(&self, topic: Target<'_>, group: &str) -> Option<Self::Delivery> {
        use futures_util::FutureExt;
        match self.pull_from(topic, group, Wait::NonBlock).now_or_never() {
            Some(Ok(Some(d))) => Some(d),
            _ => None,
        }
    }

    /// A batch read's further messages: the group's next ones that the
    /// engine can hand over now (as [`pull_ready`](Broker::pull_ready)),
    /// one after another while `accept` takes each; the first it refuses
    /// goes back to the front of the group. By default `pull_ready` in a
    /// loop; the memory engine takes them all under one lock, with one
    /// lookup of the topic and the group.
    fn pull_ready_while(
        &self,
        topic: Target<'_>,
        group: &str,
        accept: &mut dyn FnMut(&Bytes) -> bool,
    ) -> Vec<Self::Delivery> {
        let mut batch = Vec::new();
        while let Some(d) = self.pull_ready(topic, group) {
            if !accept(d.data()) {
                break; // dropped unacked: back to the front
            }
            batch.push(d);
        }
        batch
    }

    /// Resolves once the pushes to `topic` that returned `Ok` so far are
    /// as safe as the engine promises before a writer is told: on disk
    /// for the durable engine with `sync = "always"` (one sync shared by
    /// every push waiting), at once otherwise. The tree awaits it before
    /// answering a write, after letting the next write of the same file go
    /// ahead, so that a file's pipelined writes share a sync.
    fn settle(&self, topic: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        let _ = topic;
        std::future::ready(Ok(()))
    }

    /// Resolves once the creates and removes of topics that returned `Ok`
    /// so far are as safe as the engine promises before a client is told:
    /// on disk for the durable engine with `sync = "always"` (one sync
    /// shared by every create and remove since the last), at once
    /// otherwise. The tree awaits it before answering a root ctl write, a
    /// mkdir or an rmdir, after letting the next one go ahead.
    fn settle_topics(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// `push_to` the topic named `topic`, whichever its identity.
    fn push(
        &self,
        topic: &str,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Seq>> + Send {
        self.push_to(topic.into(), data, wait)
    }

    /// `pull_from` the topic named `topic`, whichever its identity.
    fn pull(
        &self,
        topic: &str,
        group: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Option<Self::Delivery>>> + Send {
        self.pull_from(topic.into(), group, wait)
    }
}
