//! The JetStream engine: topics kept in a NATS JetStream cluster, so that
//! several dchan servers, on several machines, serve the same topics with
//! the contract of one (see the broker module comment, and chapter 7 of
//! the book for the mapping, its deviations and its figures).
//!
//! - The registry (`registry`): one key-value bucket `PREFIX_topics` holds
//!   every topic's record (name, identity, settings, closed flag, resets);
//!   every server watches it, so `topics()` and `id()` are answered from a
//!   local mirror, and close, reset and remove reach every server's waiters.
//! - Messages: one stream per topic, `PREFIX_ID` on subject `PREFIX.m.ID`,
//!   limits retention; what every group has acked is purged (`trim`).
//!   dchan's sequence number is the stream's minus one.
//! - Groups: one durable pull consumer per group, explicit ack; a group's
//!   blocking pulls on a server share its puller (`puller`: one
//!   subscription, one request for the pulls waiting together);
//!   `Delivery::ack` is an AckAck (confirmed by the server), a delivery
//!   dropped unacked is a Nak (redelivered first).
//! - Capacity (`ops`): JetStream never makes a publisher wait, so a push
//!   looks at the groups' consumers and waits, with a bounded back-off and
//!   a local wake-up, while the slowest lags C or more; at C = 0 it
//!   publishes and waits until every group's consumer has delivered it.
//! - Pushes run as tasks and pulls wait in the puller, so a blocked pull
//!   keeps its request at the server (and a rendezvous push can complete)
//!   whether or not its future is polled, as the memory engine's
//!   reservations do.
//! - A purge and the making of a group take the topic's lock (a key of
//!   the registry made only if absent), so a group made never misses what
//!   a purge took.
//!
//! `async-nats` does the protocol, the key-value store and the consumers;
//! what is written here is the mapping of dchan's rules onto them, and
//! the collecting of publishes' acknowledgements (`publisher`), which
//! async-nats makes a request each, at several allocations a message.

mod ops;
mod publisher;
mod puller;
mod registry;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::{FutureExt, TryStreamExt};

use super::{
    Broker, BrokerStatus, Error, GroupLimits, GroupStatus, Result, Seq, Setting, Target,
    TopicConfig, TopicId, TopicStatus, Wait, memory::valid_name,
};
use registry::{ID_KEY, Mirror, Record, Topic};

pub use ops::JetStreamDelivery;

/// The publishes whose acknowledgement may be uncollected at once, for
/// async-nats: more than a server ever has. (Messages are published by
/// `publisher`, outside this count; the registry's writes are the
/// JetStream publishes it still bounds.) async-nats lends each
/// JetStream publish one of a context's permits (5 000 by default) until
/// its acknowledgement is collected, and makes a publish wait for one. A
/// file's write used to collect its pushes' acknowledgements only once
/// every line of it had its place (`Broker::push_all` now collects each
/// as it comes), so writes of thousands of lines waiting for room held
/// every permit, and each publish of this server, registry locks
/// included, then waited for ever: a review's two stress runs stalled
/// both servers for good. dchan bounds its publishes itself (capacity, a
/// file's writes in flight), so the permits never run out; and were they
/// to, a publish fails at once (`backpressure_on_inflight(false)`) and is
/// retried within the broker's timeout, rather than waiting with no
/// bound.
const ACKS_IN_FLIGHT: usize = 1 << 30;

/// Where JetStream keeps a topic's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk: a topic survives the loss of every NATS node's process.
    #[default]
    File,
    /// In the NATS servers' memory: faster, lost if every replica stops.
    Memory,
}

/// How to reach JetStream and how to keep topics there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// NATS servers to connect to (`nats://HOST:PORT`), any of the cluster.
    pub servers: Vec<String>,
    /// Copies of each stream and of the registry: 1, or 3 for a cluster
    /// that keeps serving when a node is lost.
    pub replicas: usize,
    pub storage: Storage,
    /// Names of buckets, streams and subjects start with it, so several
    /// dchan deployments can share one NATS: `[A-Za-z0-9_-]+`.
    pub prefix: String,
    /// How long an operation waits for JetStream before it fails with
    /// "broker unavailable" (a topic's own timeout, if shorter, comes
    /// first).
    pub timeout: Duration,
    /// How long a delivery may stay unacknowledged before JetStream gives
    /// it to another reader: only matters when a dchan server dies with
    /// deliveries out (a live server naks at once).
    pub ack_wait: Duration,
    /// What groups each topic keeps.
    pub groups: GroupLimits,
    /// How long a group's puller on this server (one subscription and one
    /// task, see `puller`) stays once no pull of that group waits here
    /// and no request of its is at JetStream: then it stops, and the
    /// group's next pull here starts it again. The group's consumer at
    /// JetStream stays.
    pub idle_puller: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> JetStreamConfig {
        JetStreamConfig {
            servers: vec!["nats://127.0.0.1:4222".to_string()],
            replicas: 1,
            storage: Storage::File,
            prefix: "dchan".to_string(),
            timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            groups: GroupLimits::default(),
            idle_puller: puller::IDLE,
        }
    }
}

/// Topics kept in JetStream, shared with every dchan server on the same
/// NATS with the same prefix.
pub struct JetStreamBroker {
    inner: Arc<Inner>,
    /// The task that keeps the mirror in step with the registry.
    follower: tokio::task::JoinHandle<()>,
}

pub(crate) struct Inner {
    /// This server's name in message ids (see `ops`): random, per process.
    instance: u64,
    js: jetstream::Context,
    /// Publishes of messages, and their acknowledgements.
    publisher: publisher::Publisher,
    bucket: kv::Store,
    mirror: Arc<Mirror>,
    /// The longest message NATS takes (its `max_payload`, as the server
    /// connected to says, less [`HEADROOM`]): a longer push fails at once
    /// as too long, where NATS would refuse every try until the timeout.
    pub(crate) max_payload: u64,
    config: JetStreamConfig,
    /// Cancelled when the broker is dropped: its pullers stop.
    shutdown: tokio_util::sync::CancellationToken,
}

/// What a publish's headers (its message id) take of NATS's
/// `max_payload`.
const HEADROOM: u64 = 128;

impl Drop for JetStreamBroker {
    fn drop(&mut self) {
        self.follower.abort();
        self.inner.shutdown.cancel();
    }
}

/// An error of JetStream or of the connection to it, as dchan says it.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

impl JetStreamBroker {
    /// Connect to JetStream, make the registry bucket if it is not there,
    /// and load the registry; fails with `Unavailable` if NATS cannot be
    /// reached within the configured timeout.
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamBroker> {
        if config.prefix.is_empty()
            || !config
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Unavailable(format!(
                "bad JetStream prefix {:?}: want A-Z a-z 0-9 _ -",
                config.prefix
            )));
        }
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| unavailable(format!("{s}: {e}"))))
            .collect::<Result<_>>()?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .connect(servers)
            .await
            .map_err(|e| unavailable(format!("NATS {}: {e}", config.servers.join(","))))?;
        let max_payload = (client.server_info().max_payload as u64).saturating_sub(HEADROOM);
        let publisher = publisher::Publisher::new(client.clone())
            .await
            .map_err(unavailable)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.timeout)
            .max_ack_inflight(ACKS_IN_FLIGHT)
            .backpressure_on_inflight(false)
            .build(client);
        let name = format!("{}_topics", config.prefix);
        let bucket = match js.get_key_value(&name).await {
            Ok(b) => b,
            Err(_) => {
                let made = js
                    .create_key_value(kv::Config {
                        bucket: name.clone(),
                        history: 1,
                        storage: storage(config.storage),
                        num_replicas: config.replicas,
                        ..Default::default()
                    })
                    .await;
                match made {
                    Ok(b) => b,
                    // Another server made it first.
                    Err(e) => js
                        .get_key_value(&name)
                        .await
                        .map_err(|_| unavailable(format!("cannot make bucket {name}: {e}")))?,
                }
            }
        };
        // A bucket just made on a cluster takes writes only once every
        // node knows its stream ("no stream found for given subject"
        // till then): wait for that here, not in the first create. The
        // write is of the key that numbers topics, so it only skips one.
        let ready_by = tokio::time::Instant::now() + config.timeout;
        loop {
            match bucket.put(ID_KEY, Bytes::new()).await {
                Err(e)
                    if e.to_string().contains("no stream found")
                        && tokio::time::Instant::now() < ready_by =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => {
                    r.map_err(unavailable)?;
                    break;
                }
            }
        }
        let mirror = Arc::new(Mirror::new(&config.prefix));
        let last = bucket
            .status()
            .await
            .map_err(unavailable)?
            .info
            .state
            .last_sequence;
        let follower = tokio::spawn(registry::follow(bucket.clone(), mirror.clone()));
        if !mirror.caught_up(last, config.timeout).await {
            follower.abort();
            return Err(unavailable("cannot read the topic registry"));
        }
        Ok(JetStreamBroker {
            inner: Arc::new(Inner {
                instance: {
                    use std::hash::{BuildHasher, RandomState};
                    RandomState::new().hash_one(std::time::SystemTime::now())
                },
                js,
                publisher,
                bucket,
                mirror,
                max_payload,
                config,
                shutdown: Default::default(),
            }),
            follower,
        })
    }
}

/// How JetStream's "stream not found" (its API error code 10059) reads
/// in async-nats's errors.
const STREAM_NOT_FOUND: &str = "error code 10059";

/// How long a topic's lock may stay held before another server breaks it
/// (its holder died holding it: it holds it for a few round trips).
const STALE_LOCK: Duration = Duration::from_secs(30);

/// Whether the topic's lock, found held at revision `rev` at `now`, has
/// been seen held at that revision for longer than [`STALE_LOCK`]
/// (`held`: what this server saw last, forgotten once broken).
fn stale(
    held: &mut Option<(u64, tokio::time::Instant)>,
    rev: u64,
    now: tokio::time::Instant,
) -> bool {
    match *held {
        Some((seen, since)) if seen == rev => {
            let stale = now.duration_since(since) > STALE_LOCK;
            if stale {
                *held = None;
            }
            stale
        }
        _ => {
            *held = Some((rev, now));
            false
        }
    }
}

/// A topic's lock held (see [`Inner::lock`]); released by `release`, or
/// when dropped (a cancelled operation) by a task of its own.
pub(crate) struct Lock {
    key: String,
    rev: u64,
    released: bool,
    js: jetstream::Context,
    bucket: kv::Store,
}

impl Lock {
    async fn release(mut self, inner: &Inner) {
        self.released = true;
        let _ = inner.within(inner.delete_marker(&self.key, self.rev)).await;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (key, rev, js, bucket) = (
            std::mem::take(&mut self.key),
            self.rev,
            self.js.clone(),
            self.bucket.clone(),
        );
        rt.spawn(async move {
            let _ = delete_marker(&js, &bucket, &key, rev).await;
        });
    }
}

/// Publish a delete marker for `key` of `bucket` whose revision must be
/// `last`, as the bucket would; the marker's revision.
async fn delete_marker(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    last: u64,
) -> std::result::Result<u64, String> {
    let prefix = bucket.put_prefix.as_ref().unwrap_or(&bucket.prefix);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last.to_string().as_str(),
    );
    let ack = js
        .publish_with_headers(format!("{prefix}{key}"), headers, Bytes::new())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// A group being made or moved on this server, counted in
/// `Topic::making` while it lives: this server's trims wait for it.
struct Making<'a>(&'a Topic);

impl<'a> Making<'a> {
    fn new(topic: &'a Topic) -> Making<'a> {
        topic.making.fetch_add(1, Ordering::Relaxed);
        Making(topic)
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        self.0.making.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The lowest ack floor of the groups: what they all acked.
fn floor_of(groups: &[consumer::Info]) -> Option<u64> {
    groups.iter().map(floor).min()
}

/// The last message `g` has done with: its ack floor, or, for a group
/// made to start at a message (a seek), the one before it, which it will
/// never be given. (On a cluster the info of a consumer just made can
/// still show the floor at 0 while its leader is being chosen.)
fn floor(g: &consumer::Info) -> u64 {
    let start = match g.config.deliver_policy {
        consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        _ => 0,
    };
    g.ack_floor.stream_sequence.max(start.saturating_sub(1))
}

impl JetStreamBroker {
    /// Whether this engine keeps topics with `config`: `retain`,
    /// `max_bytes` and `rate` it refuses (see [`unsupported`]). A server
    /// asks it of its `[topic_defaults]` at start, so that a default it
    /// cannot keep stops it there rather than fail every create.
    pub fn supports(config: &TopicConfig) -> Result<()> {
        if config.max_bytes.is_some() {
            return Err(unsupported("max_bytes"));
        }
        if config.rate.is_some() {
            return Err(unsupported("rate"));
        }
        if config.retain != crate::broker::Retention::None {
            return Err(unsupported("retain"));
        }
        Ok(())
    }
}

/// What a stream holds, in dchan's sequence numbers.
pub(crate) struct Held {
    pub(crate) messages: u64,
    /// The bytes JetStream keeps for them (its own count, with headers).
    pub(crate) bytes: u64,
    pub(crate) first: Seq,
    pub(crate) next: Seq,
}

/// A setting this engine does not keep: JetStream's own `max_bytes` refuses
/// a publish past it (a push would fail, not wait), it has no rate for
/// publishers, and retention (what every group has taken, kept for
/// replay) is not built on it: what every group has acked is purged.
fn unsupported(setting: &str) -> Error {
    Error::Unsupported(format!(
        "{setting} on the JetStream engine (use the memory or durable engine)"
    ))
}

fn storage(s: Storage) -> stream::StorageType {
    match s {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    }
}

/// The consumer name of a group: its name in hex after a `g`, since
/// consumer names may not hold `.`, `/` and others that group names may.
fn consumer_name(group: &str) -> String {
    format!("g{}", registry::hex(group.as_bytes()))
}

pub(crate) fn group_of(consumer: &str) -> Option<String> {
    let hex = consumer.strip_prefix('g')?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Inner {
    /// The topic `target` names, as the mirror has it.
    pub(crate) fn topic(&self, target: Target<'_>) -> Result<Arc<Topic>> {
        match (self.mirror.get(target.name), target.id) {
            (Some(t), Some(id)) if t.id != id => Err(Error::Removed),
            (Some(t), _) => Ok(t),
            (None, Some(_)) => Err(Error::Removed),
            (None, None) => Err(Error::NoTopic(target.name.to_string())),
        }
    }

    /// Wait until the connection to NATS is up, for at most the broker's
    /// timeout: a pull waiting at the server learns nothing of a lost
    /// connection, so it asks here before each request.
    pub(crate) async fn connected(&self) -> Result<()> {
        use async_nats::connection::State;
        let client = self.js.client();
        let give_up = tokio::time::Instant::now() + self.config.timeout;
        while client.connection_state() != State::Connected {
            if tokio::time::Instant::now() >= give_up {
                return Err(unavailable("the connection to NATS is lost"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Run an operation on JetStream within the broker's timeout. A
    /// topic's stream not found is the topic removed: a topic is in the
    /// registry only once its stream is made, and its stream is deleted
    /// just after its entry, which another server's mirror may not have
    /// seen yet (`dchan ls` failed whole there, "stream not found", while
    /// topics were removed: 9 % of listings in a review).
    pub(crate) async fn within<T, E: std::fmt::Display>(
        &self,
        f: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.timeout, f).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                let e = e.to_string();
                match e.contains(STREAM_NOT_FOUND) {
                    true => Err(Error::Removed),
                    false => Err(unavailable(e)),
                }
            }
            Err(_) => Err(unavailable("JetStream did not answer in time")),
        }
    }

    /// Write `record` for `name` (`None` deletes it), where the key's
    /// revision is `last` (`0`: it must not exist), and wait until this
    /// server's mirror has it. `Ok(false)`: the revision did not match.
    async fn write(&self, name: &str, last: u64, record: Option<&Record>) -> Result<bool> {
        let key = registry::key(name);
        let written = match record {
            Some(r) => {
                let value = Bytes::from(serde_json::to_vec(r).expect("a record serializes"));
                match last {
                    0 => self.within(self.bucket.create(&key, value)).await,
                    n => self.within(self.bucket.update(&key, value, n)).await,
                }
            }
            // The bucket's own `delete_expect_revision` does not return the
            // delete's revision (and `status()` is the bucket's info as it
            // was when opened), so the delete marker is published here, as
            // the bucket would, and its revision is the acknowledgement's.
            None => self.within(self.delete_marker(&key, last)).await,
        };
        let rev = match written {
            Ok(rev) => rev,
            Err(Error::Unavailable(e))
                if e.contains("wrong last sequence") || e.contains("exists") =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if !self.mirror.caught_up(rev, Duration::from_secs(1)).await {
            // The watch is late (it restarts after a lost connection):
            // read the entry itself, so this server reads its own write.
            match self.within(self.bucket.entry(registry::key(name))).await? {
                Some(entry) => self.mirror.apply_read(&entry),
                None => self.mirror.forget(name),
            }
        }
        Ok(true)
    }

    /// Publish a delete marker for `key` whose revision must be `last`;
    /// the marker's revision.
    async fn delete_marker(&self, key: &str, last: u64) -> std::result::Result<u64, String> {
        delete_marker(&self.js, &self.bucket, key, last).await
    }

    /// Whether the topic of `record` was reset (or removed) since: read
    /// from the registry itself, as the mirror may lag behind it.
    pub(crate) async fn reset_since(&self, record: &Record) -> Result<bool> {
        let entry = self
            .within(self.bucket.entry(registry::key(&record.name)))
            .await?;
        Ok(match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => true,
            Some(e) => serde_json::from_slice::<Record>(&e.value).map_or(true, |now| {
                now.id != record.id || now.resets != record.resets
            }),
        })
    }

    /// Change `target`'s record with `f`, retrying on a concurrent change.
    async fn update(&self, target: Target<'_>, f: impl Fn(&mut Record)) -> Result<()> {
        loop {
            let topic = self.topic(target)?;
            let key = registry::key(target.name);
            let entry = self.within(self.bucket.entry(key)).await?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Err(Error::Removed);
            };
            let mut record: Record = serde_json::from_slice(&entry.value).map_err(unavailable)?;
            if record.id != topic.id {
                return Err(Error::Removed);
            }
            f(&mut record);
            if self
                .write(target.name, entry.revision, Some(&record))
                .await?
            {
                return Ok(());
            }
        }
    }

    /// The topic's stream.
    pub(crate) async fn stream(&self, topic: &Topic) -> Result<stream::Stream<()>> {
        self.within(self.js.get_stream_no_info(&topic.stream)).await
    }

    /// The stream's state: what it holds, as dchan's `first` and `next`.
    pub(crate) async fn held(&self, stream: &stream::Stream<()>) -> Result<Held> {
        let state = self.within(stream.get_info()).await?.state;
        let next = state.last_sequence;
        let first = match state.messages {
            0 => next,
            _ => state.first_sequence - 1,
        };
        Ok(Held {
            messages: state.messages,
            bytes: state.bytes,
            first,
            next,
        })
    }

    /// The consumer config of a group starting at `start` (a stream
    /// sequence), or at the oldest held message.
    fn consumer_config(&self, group: &str, start: Option<u64>) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(consumer_name(group)),
            deliver_policy: match start {
                Some(s) => DeliverPolicy::ByStartSequence { start_sequence: s },
                None => DeliverPolicy::All,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_ack_pending: -1,
            inactive_threshold: self.config.groups.idle_expiry.unwrap_or_default(),
            num_replicas: self.config.replicas,
            memory_storage: self.config.storage == Storage::Memory,
            ..Default::default()
        }
    }

    /// The group's consumer, made (at the oldest held message) if new.
    pub(crate) async fn consumer(&self, topic: &Topic, group: &str) -> Result<PullConsumer> {
        if let Some(c) = topic.consumers.lock().get(group) {
            return Ok(c.clone());
        }
        let stream = self.stream(topic).await?;
        let name = consumer_name(group);
        let consumer = match self
            .within(stream.get_consumer::<consumer::pull::Config>(&name))
            .await
        {
            Ok(c) => c,
            Err(_) => {
                // Trims on this server wait for it from now on (`Making`),
                // trims on any server once it has the lock.
                let _making = Making::new(topic);
                let lock = self.lock(topic, true).await?;
                let made = self.make_consumer(topic, &stream, group).await;
                if let Some(lock) = lock {
                    lock.release(self).await;
                }
                made?
            }
        };
        topic
            .consumers
            .lock()
            .insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }

    /// Make the group's consumer, at the oldest message held, with the
    /// topic's lock held; one made meanwhile (by a pull on another
    /// server) is the group's.
    async fn make_consumer(
        &self,
        topic: &Topic,
        stream: &stream::Stream<()>,
        group: &str,
    ) -> Result<PullConsumer> {
        let name = consumer_name(group);
        if let Ok(c) = stream.get_consumer::<consumer::pull::Config>(&name).await {
            return Ok(c);
        }
        let infos = self.groups(stream).await?;
        if infos.len() >= self.config.groups.max_per_topic {
            return Err(Error::TooManyGroups(self.config.groups.max_per_topic));
        }
        // A new group starts at the oldest message held for the others:
        // first let go of what they all acked.
        self.trim_locked(topic, stream).await?;
        // A push's room counts this group from the next look.
        topic.last_look.lock().groups.clear();
        self.within(stream.create_consumer(self.consumer_config(group, None)))
            .await
    }

    /// The group's puller on this server, started if new.
    pub(crate) async fn puller(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        group: &str,
    ) -> Result<Arc<puller::Puller>> {
        if let Some(p) = topic.pullers.lock().get(group) {
            return Ok(p.clone());
        }
        // The group may be new: this server's trims wait for it.
        let _making = Making::new(topic);
        let _starting = topic.starting.lock().await;
        if let Some(p) = topic.pullers.lock().get(group) {
            return Ok(p.clone());
        }
        let consumer = self.consumer(topic, group).await?;
        let p = puller::Puller::start(self, topic, group, consumer).await?;
        topic.pullers.lock().insert(group.to_string(), p.clone());
        Ok(p)
    }

    /// The group's consumer after it went away under a pull: the one a
    /// seek makes again, or (forgotten) a new one at the oldest held.
    pub(crate) async fn find_consumer(&self, group: &str, topic: &Topic) -> Result<PullConsumer> {
        topic.consumers.lock().remove(group);
        let stream = self.stream(topic).await?;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let found = stream
                .get_consumer::<consumer::pull::Config>(&consumer_name(group))
                .await;
            if let Ok(c) = found {
                topic.consumers.lock().insert(group.to_string(), c.clone());
                return Ok(c);
            }
        }
        self.consumer(topic, group).await
    }

    /// Every group's consumer info.
    pub(crate) async fn groups(&self, stream: &stream::Stream<()>) -> Result<Vec<consumer::Info>> {
        self.within(stream.consumers().try_collect::<Vec<_>>())
            .await
    }

    /// Purge what every group has acked, so that the stream holds what a
    /// group still needs and a new group starts at the oldest of it. With
    /// no group, nothing goes: it is held for the group to come. Only
    /// under the topic's lock (see [`Inner::lock`]): a purge never runs
    /// while a group is being made or moved on any server, so a group made
    /// starts at the oldest message held and keeps it. A trim that finds
    /// the lock held leaves the purge to a later one.
    pub(crate) async fn trim(
        &self,
        topic: &Topic,
        stream: &stream::Stream<()>,
        groups: &[consumer::Info],
        min_gain: u64,
    ) -> Result<()> {
        if !self.worth_trimming(topic, groups, min_gain) || topic.making.load(Ordering::Relaxed) > 0
        {
            return Ok(());
        }
        let Some(lock) = self.lock(topic, false).await? else {
            return Ok(());
        };
        let r = self.trim_locked(topic, stream).await;
        lock.release(self).await;
        r
    }

    /// Whether a look at the groups shows more than `min_gain` to purge.
    fn worth_trimming(&self, topic: &Topic, groups: &[consumer::Info], min_gain: u64) -> bool {
        floor_of(groups).is_some_and(|f| f > topic.trimmed.load(Ordering::Relaxed) + min_gain)
    }

    /// `trim` with the topic's lock held: the groups are looked at again,
    /// since a group may have been made before the lock was taken.
    async fn trim_locked(&self, topic: &Topic, stream: &stream::Stream<()>) -> Result<()> {
        let Some(floor) = floor_of(&self.groups(stream).await?) else {
            return Ok(());
        };
        if floor <= topic.trimmed.load(Ordering::Relaxed) {
            return Ok(());
        }
        tracing::debug!("trim {}: purge below {}", topic.stream, floor + 1);
        // Filtered by the topic's one subject, so that JetStream removes
        // the messages one by one. Unfiltered, a purge to a sequence
        // compacts the store, and NATS 2.15.1 then sometimes moved a
        // consumer past messages above that sequence, never delivered:
        // `broker_random` lost one about every fourth run under load.
        self.within(
            stream
                .purge()
                .filter(topic.subject.to_string())
                .sequence(floor + 1)
                .into_future(),
        )
        .await?;
        topic.trimmed.fetch_max(floor, Ordering::Relaxed);
        Ok(())
    }

    /// Take the topic's lock, a key of the registry bucket made only if
    /// absent: held while a group is made or moved, and while a trim
    /// purges, on whichever server. `wait` false: `None` if it is held.
    /// A lock held past [`STALE_LOCK`] (its server died holding it) is
    /// broken.
    pub(crate) async fn lock(&self, topic: &Topic, wait: bool) -> Result<Option<Lock>> {
        let key = format!("lock.{}", topic.id);
        let give_up = tokio::time::Instant::now() + self.config.timeout + STALE_LOCK;
        let mut backoff = Duration::from_millis(2);
        loop {
            match self.within(self.bucket.create(&key, Bytes::new())).await {
                Ok(rev) => {
                    return Ok(Some(Lock {
                        key,
                        rev,
                        released: false,
                        js: self.js.clone(),
                        bucket: self.bucket.clone(),
                    }));
                }
                // Held (or just taken by another: the bucket's create
                // of a deleted key says "wrong last sequence" then).
                Err(Error::Unavailable(e))
                    if e.contains("exists") || e.contains("wrong last sequence") => {}
                Err(e) => return Err(e),
            }
            // A lock left by a holder that died, or whose release failed
            // (NATS lost meanwhile), is broken once this server has seen
            // it held that long, by a trim too: trims, which do not wait,
            // never broke one, and a topic whose lock was left held kept
            // every message its groups had acked (4 of 42 topics in a
            // review).
            let now = tokio::time::Instant::now();
            if let Some(entry) = self.within(self.bucket.entry(&key)).await?
                && entry.operation == kv::Operation::Put
                && stale(&mut topic.lock_held.lock(), entry.revision, now)
            {
                tracing::warn!(
                    "{}: breaking its lock, held for more than {STALE_LOCK:?}",
                    topic.stream
                );
                let _ = self.within(self.delete_marker(&key, entry.revision)).await;
                continue;
            }
            if !wait {
                return Ok(None);
            }
            if now >= give_up {
                return Err(unavailable("a topic's lock stays held"));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    async fn create(&self, name: &str, config: TopicConfig) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        JetStreamBroker::supports(&config)?;
        if self.mirror.get(name).is_some() {
            return Err(Error::Exists(name.to_string()));
        }
        let id = self.within(self.bucket.put(ID_KEY, Bytes::new())).await?;
        let record = Record::new(name, id, config);
        let prefix = &self.config.prefix;
        // The stream first, so that a topic listed is a topic usable.
        self.within(self.js.create_stream(stream::Config {
            name: format!("{prefix}_{id}"),
            subjects: vec![format!("{prefix}.m.{id}")],
            retention: stream::RetentionPolicy::Limits,
            storage: storage(self.config.storage),
            num_replicas: self.config.replicas,
            allow_direct: true,
            ..Default::default()
        }))
        .await?;
        let stream = format!("{prefix}_{id}");
        match self.write(name, 0, Some(&record)).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                let _ = self.js.delete_stream(&stream).await;
                Err(Error::Exists(name.to_string()))
            }
            // Not answered (a timeout): the entry may be there all the
            // same. Unless it is this create's, the stream goes, so that
            // no stream is left that no topic names.
            Err(e) => {
                let key = registry::key(name);
                let ours = match self.within(self.bucket.entry(&key)).await {
                    Ok(Some(entry)) => {
                        entry.operation == kv::Operation::Put
                            && serde_json::from_slice::<Record>(&entry.value)
                                .is_ok_and(|r| r.id == id)
                    }
                    Ok(None) => false,
                    // Cannot tell: the stream stays rather than risk a
                    // listed topic without one.
                    Err(_) => return Err(e),
                };
                if ours {
                    return Ok(());
                }
                let _ = self.within(self.js.delete_stream(&stream)).await;
                Err(e)
            }
        }
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let topic = self.topic(name.into())?;
        let key = registry::key(name);
        // A read may be served by a replica behind the one that took the
        // create (direct gets, on a cluster): while this server's mirror
        // holds the topic, a missing entry is read again, for a while.
        let mut tries = 0;
        let entry = loop {
            let entry = self.within(self.bucket.entry(&key)).await?;
            match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => break e,
                None if tries < 50 && topic.record().is_some() => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None => return Err(Error::NoTopic(name.to_string())),
            }
        };
        if !self.write(name, entry.revision, None).await? {
            return Err(Error::NoTopic(name.to_string()));
        }
        match self.within(self.js.delete_stream(&topic.stream)).await {
            Ok(_) | Err(Error::Removed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn status(&self, target: Target<'_>) -> Result<TopicStatus> {
        let topic = self.topic(target)?;
        let record = topic.record().ok_or(Error::Removed)?;
        topic.settled(self.config.timeout).await;
        let stream = self.stream(&topic).await?;
        let groups = self.groups(&stream).await?;
        self.trim(&topic, &stream, &groups, 0).await?;
        let Held {
            messages,
            bytes: stream_bytes,
            first,
            next,
        } = self.held(&stream).await?;
        // Blocked readers: this server's pulls waiting, and the pull
        // requests other servers have at JetStream (a server asks once
        // for its pulls of a group that wait together).
        let pullers = topic.pullers.lock().clone();
        let mut blocked_readers = 0;
        let mut out: Vec<GroupStatus> = groups
            .iter()
            .filter_map(|g| {
                let name = group_of(&g.name)?;
                let (here, asked) = pullers.get(&name).map_or((0, 0), |p| p.waiting());
                let blocked = here + (g.num_waiting as u64).saturating_sub(asked);
                blocked_readers += blocked;
                let offset = g.delivered.stream_sequence.clamp(first, next);
                Some(GroupStatus {
                    name,
                    offset,
                    // A consumer's count may lag a purge.
                    lag: g.num_pending.min(next - offset),
                    unacked: g.num_ack_pending as u64,
                    blocked,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        // The longest message is also NATS's: say the one that holds.
        let mut config = record.config();
        config.max_message = config.max_message.min(self.max_payload);
        Ok(TopicStatus {
            name: target.name.to_string(),
            config,
            pending: messages,
            bytes: stream_bytes,
            retained: 0,
            first,
            next,
            pushed: next,
            pulled: topic.pulled.load(Ordering::Relaxed),
            blocked_readers,
            blocked_writers: topic.blocked_writers.load(Ordering::Relaxed),
            groups: out,
            closed: record.closed,
            local: "readers pulled blocked_writers",
        })
    }

    /// In constant time: the mirror's length and its running counts.
    fn totals(&self) -> BrokerStatus {
        let (pushed, pulled) = self.mirror.tally.sum();
        BrokerStatus {
            topics: self.mirror.topics.read().len() as u64,
            pushed,
            pulled,
            engine: "jetstream",
            disk: None,
        }
    }

    async fn set(&self, target: Target<'_>, setting: Setting) -> Result<()> {
        match setting {
            Setting::MaxBytes(Some(_)) => return Err(unsupported("max_bytes")),
            Setting::Rate(Some(_)) => return Err(unsupported("rate")),
            Setting::Retain(r) if r != crate::broker::Retention::None => {
                return Err(unsupported("retain"));
            }
            _ => {}
        }
        self.update(target, |r| {
            let mut c = r.config();
            match setting {
                Setting::Capacity(n) => c.capacity = n,
                Setting::Framing(f) => c.framing = f,
                Setting::Timeout(t) => c.timeout = t,
                Setting::MaxMessage(m) => c.max_message = m,
                Setting::Retain(_) | Setting::MaxBytes(_) | Setting::Rate(_) => {}
            }
            r.set_config(c);
        })
        .await
    }

    async fn reset(&self, target: Target<'_>) -> Result<()> {
        let topic = self.topic(target)?;
        let stream = self.stream(&topic).await?;
        // Blocked pushes on every server fail first, then the messages go.
        self.update(target, |r| {
            r.resets += 1;
            r.closed = false;
        })
        .await?;
        self.within(stream.purge().into_future()).await?;
        topic.credit.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn close(&self, target: Target<'_>) -> Result<()> {
        self.update(target, |r| r.closed = true).await
    }

    async fn forget(&self, target: Target<'_>, group: &str) -> Result<()> {
        let topic = self.topic(target)?;
        let stream = self.stream(&topic).await?;
        topic.consumers.lock().remove(group);
        // A pull of the group that started on this server makes it; give
        // its request the time to arrive.
        let mut tries = 0;
        // A delete that timed out may have been done: asked again, "not
        // found" then means it was.
        let mut timed_out = 0;
        loop {
            // A puller of this server making the group's consumer finishes
            // first: on a cluster, a delete racing the create leaves both
            // unanswered till they time out.
            let found = {
                let _starting = topic.starting.lock().await;
                stream.delete_consumer(&consumer_name(group)).await
            };
            let not_found = matches!(&found, Err(e) if e.to_string().contains("not found"));
            if not_found && tries < 20 && topic.pulling.lock().contains_key(group) {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            // On a cluster a consumer just made (by a pull waiting) can be
            // slow to delete while its leader is chosen.
            if matches!(&found, Err(e) if e.to_string().contains("timed out")) && timed_out < 3 {
                timed_out += 1;
                continue;
            }
            break match found {
                Ok(_) => Ok(()),
                Err(_) if not_found && timed_out > 0 => Ok(()),
                Err(e) if e.to_string().contains("not found") => {
                    Err(Error::NoGroup(group.to_string()))
                }
                Err(e) => Err(unavailable(e)),
            };
        }
    }

    async fn offset(&self, target: Target<'_>, group: &str) -> Result<Seq> {
        let topic = self.topic(target)?;
        let mut consumer = self.consumer(&topic, group).await?;
        let info = self.within(consumer.info()).await?.clone();
        let stream = self.stream(&topic).await?;
        let first = self.held(&stream).await?.first;
        Ok(info.delivered.stream_sequence.max(first))
    }

    async fn seek(&self, target: Target<'_>, group: &str, seq: Seq) -> Result<()> {
        let topic = self.topic(target)?;
        let stream = self.stream(&topic).await?;
        let Held { first, next, .. } = self.held(&stream).await?;
        if seq < first || seq > next {
            return Err(Error::OffsetOutOfRange {
                asked: seq,
                first,
                next,
            });
        }
        if self.groups(&stream).await?.len() >= self.config.groups.max_per_topic
            && self.consumer(&topic, group).await.is_err()
        {
            return Err(Error::TooManyGroups(self.config.groups.max_per_topic));
        }
        // No purge while the group is away (it would not count).
        let _making = Making::new(&topic);
        let lock = self.lock(&topic, true).await?;
        // A blocked pull of the group may make it again (at the oldest)
        // between the delete and the create: then delete it again.
        let mut tries = 0;
        let consumer = loop {
            topic.consumers.lock().remove(group);
            let _ = stream.delete_consumer(&consumer_name(group)).await;
            let made = self
                .within(stream.create_consumer(self.consumer_config(group, Some(seq + 1))))
                .await;
            match made {
                Err(Error::Unavailable(e)) if e.contains("can not be updated") && tries < 5 => {
                    tries += 1;
                }
                made => break made,
            }
        };
        if let Some(lock) = lock {
            lock.release(self).await;
        }
        let consumer = consumer?;
        topic.consumers.lock().insert(group.to_string(), consumer);
        topic.last_look.lock().groups.clear();
        topic.reached.lock().remove(&consumer_name(group));
        // Other servers' handles of the old consumer find the new one by
        // name: a pull is by name at the server.
        drop(_making);
        let held = self.groups(&stream).await?;
        self.trim(&topic, &stream, &held, 0).await
    }
}

impl Broker for JetStreamBroker {
    type Delivery = JetStreamDelivery;

    /// In a task of its own: a caller that gives up (its client gone, its
    /// request flushed) does not cut a create between its stream and its
    /// registry entry, which would leave a stream no topic names.
    fn create(&self, topic: &str, config: TopicConfig) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        let task = tokio::spawn(async move { inner.create(&topic, config).await });
        async move { task.await.unwrap_or_else(|e| Err(unavailable(e))) }
    }

    /// In a task of its own, as `create`: a remove is not cut between its
    /// registry entry and its stream.
    fn remove(&self, topic: &str) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        let task = tokio::spawn(async move { inner.remove(&topic).await });
        async move { task.await.unwrap_or_else(|e| Err(unavailable(e))) }
    }

    fn names(&self, from: std::ops::Bound<&str>, limit: usize) -> Vec<String> {
        let from = from.map(crate::broker::order::key);
        let topics = self.inner.mirror.topics.read();
        topics
            .range::<str, _>((from.as_ref().map(|k| &**k), std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(k, _)| crate::broker::order::name(k))
            .collect()
    }

    fn id(&self, topic: &str) -> Result<TopicId> {
        Ok(self.inner.topic(topic.into())?.id)
    }

    /// A topic made on another server moments ago may not have reached
    /// this server's registry watch: read its record (one round trip).
    fn refresh(&self, topic: &str) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        if !valid_name(topic) {
            return None;
        }
        let inner = self.inner.clone();
        let key = registry::key(topic);
        Some(Box::pin(async move {
            if let Ok(Some(entry)) = inner.within(inner.bucket.entry(key)).await {
                inner.mirror.apply_read(&entry);
            }
        }))
    }

    /// Within the broker's timeout in all (it asks JetStream several
    /// things, each of which could wait that long). This and the other
    /// rare operations below are boxed: their futures hold async-nats's
    /// and are kilobytes, and the tree's read and write futures would
    /// otherwise be as large as the largest, moved at every data request.
    fn status(&self, topic: Target<'_>) -> impl Future<Output = Result<TopicStatus>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        async move {
            let status = inner.status(Target { name: &name, id });
            match tokio::time::timeout(inner.config.timeout, status).await {
                Ok(r) => r,
                Err(_) => Err(unavailable("JetStream did not answer in time")),
            }
        }
        .boxed()
    }

    fn totals(&self) -> BrokerStatus {
        self.inner.totals()
    }

    fn set(&self, topic: Target<'_>, setting: Setting) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        async move { inner.set(Target { name: &name, id }, setting).await }.boxed()
    }

    fn reset(&self, topic: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        async move { inner.reset(Target { name: &name, id }).await }.boxed()
    }

    fn close(&self, topic: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        async move { inner.close(Target { name: &name, id }).await }.boxed()
    }

    fn forget(&self, topic: Target<'_>, group: &str) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        let group = group.to_string();
        async move { inner.forget(Target { name: &name, id }, &group).await }.boxed()
    }

    fn offset(&self, topic: Target<'_>, group: &str) -> impl Future<Output = Result<Seq>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        let group = group.to_string();
        async move { inner.offset(Target { name: &name, id }, &group).await }.boxed()
    }

    fn seek(
        &self,
        topic: Target<'_>,
        group: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<()>> + Send {
        let inner = self.inner.clone();
        let (name, id) = owned(topic);
        let group = group.to_string();
        async move { inner.seek(Target { name: &name, id }, &group, seq).await }.boxed()
    }

    fn push_to(
        &self,
        topic: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Seq>> + Send {
        ops::push(&self.inner, topic, data, wait)
    }

    fn push_ordered(
        &self,
        topic: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<crate::broker::Pushed>> + Send {
        ops::push_ordered(&self.inner, topic, data, wait)
    }

    /// Every pull is a request to JetStream, never ready at once: a batch
    /// read on this engine is one message (a pull polled once and dropped
    /// would take a message and nak it, and the group would meet it again
    /// after the next one).
    fn pull_ready(&self, _topic: Target<'_>, _group: &str) -> Option<JetStreamDelivery> {
        None
    }

    fn pull_from(
        &self,
        topic: Target<'_>,
        group: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Option<JetStreamDelivery>>> + Send {
        ops::pull(&self.inner, topic, group, wait)
    }
}

fn owned(t: Target<'_>) -> (String, Option<TopicId>) {
    (t.name.to_string(), t.id)
}
