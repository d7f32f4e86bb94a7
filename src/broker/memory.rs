//! The in-process broker: a map of topics, each with its own lock, behind
//! the [`Broker`] trait.
//!
//! The map is only read on the push and pull paths (to find the topic), and
//! it is split in shards by name, so topics never contend with one another
//! (not even on the map's lock word); everything else happens under the one
//! topic's lock (`topic`), and waiting in futures that own their place in a
//! queue (`waiters`).
//!
//! Beside the shards, every name is kept once more in tree order
//! (`names`, keyed by [`order::key`]), for
//! [`Broker::names`]: a listing, a walk to a directory that only leads to
//! topics, or the children of one directory cost O(log n) per name they
//! return, never a pass over every topic. The ordered index is only
//! touched by create and remove (under the shard's write lock, then the
//! index's), so pushes and pulls never see it.

use std::collections::BTreeSet;
use std::future::{Future, ready};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use foldhash::HashSet;
use parking_lot::RwLock;

use super::order;
use super::store::Store;
use super::tally::Tally;
use super::topic::{Start, State, Topic};
use super::waiters::{PullWait, PushWait, within};
use super::{
    Broker, BrokerStatus, Error, GroupLimits, PushedAll, Result, Seq, Setting, Target, TopicConfig,
    TopicId, TopicStatus, Wait,
};

pub use super::waiters::MemoryDelivery;

/// How many shards the topic map has.
const SHARDS: usize = 32;

/// One shard of the topic map: topics found by their names, which they
/// hold themselves (a key of its own would keep each name once more).
type Shard = RwLock<HashSet<ByName>>;

/// A topic in a shard, hashed and compared by its name (as `str` hashes,
/// so a lookup by `&str` finds it).
struct ByName(Arc<Topic>);

impl std::borrow::Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl std::hash::Hash for ByName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.as_str().hash(state);
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &ByName) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

/// Topics kept in this process.
pub struct MemoryBroker {
    /// Topics by name, in `SHARDS` maps chosen by the name's hash.
    /// parking_lot: never held across an `.await`; pushes and pulls hold a
    /// shard only to clone the topic's `Arc`.
    shards: Box<[Shard]>,
    /// Every topic's name, as its [`order::key`] (tree order), for listings. Locked after a shard,
    /// never before; never held across an `.await`.
    names: RwLock<BTreeSet<Box<str>>>,
    /// Picks a name's shard (foldhash, randomly seeded: fast on short
    /// names, and names cannot be chosen to pile into one shard).
    hasher: foldhash::fast::RandomState,
    /// Messages pushed and pulled over all topics, removed ones included,
    /// kept as they happen (see `tally`): the totals never walk the topics.
    tally: Arc<Tally>,
    /// The last topic identity handed out.
    last_id: AtomicU64,
    /// What groups each topic keeps.
    groups: GroupLimits,
}

/// Whether `name` is one or more `/`-separated components of
/// `[A-Za-z0-9._-]`, none of them "." or "..", and does not start with
/// "-" (a command would take it for an option: `dchan ls -q | xargs`), of
/// at most [`MAX_NAME_PARTS`](super::MAX_NAME_PARTS) parts and
/// [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes.
pub fn valid_name(name: &str) -> bool {
    !name.starts_with('-')
        && name.len() <= super::MAX_NAME_LEN
        && name.split('/').count() <= super::MAX_NAME_PARTS
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

impl Default for MemoryBroker {
    fn default() -> MemoryBroker {
        MemoryBroker {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            names: RwLock::default(),
            hasher: foldhash::fast::RandomState::default(),
            tally: Arc::default(),
            last_id: AtomicU64::new(0),
            groups: GroupLimits::default(),
        }
    }
}

impl MemoryBroker {
    pub fn new() -> MemoryBroker {
        MemoryBroker::default()
    }

    /// A broker whose topics keep groups as `limits` says.
    pub fn with_group_limits(limits: GroupLimits) -> MemoryBroker {
        MemoryBroker {
            groups: limits,
            ..MemoryBroker::default()
        }
    }

    /// The running totals, for an engine built on this one to add to.
    pub(crate) fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// The shard that holds `name`.
    fn shard(&self, name: &str) -> &Shard {
        let hash = self.hasher.hash_one(name);
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// Every topic, in no order.
    fn all(&self) -> Vec<Arc<Topic>> {
        self.shards
            .iter()
            .flat_map(|shard| shard.read().iter().map(|t| t.0.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// Create a topic whose changes go to the store `keep` makes for its
    /// identity (under the map's lock, so two creations of one name
    /// cannot both make one).
    pub(crate) fn create_with(
        &self,
        name: &str,
        config: TopicConfig,
        keep: impl FnOnce(TopicId) -> Result<Box<dyn Store>>,
    ) -> Result<TopicId> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let mut topics = self.shard(name).write();
        if topics.contains(name) {
            return Err(Error::Exists(name.to_string()));
        }
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = State::new(config, self.groups);
        state.keep_in(keep(id)?);
        state.count_in(self.tally.clone());
        topics.insert(ByName(Arc::new(Topic::with_state(name, id, state))));
        self.names.write().insert(order::key(name).into());
        Ok(id)
    }

    /// Put back a topic read from a store, with its identity.
    pub(crate) fn restore(&self, name: &str, id: TopicId, mut state: State) {
        state.count_in(self.tally.clone());
        self.last_id.fetch_max(id, Ordering::Relaxed);
        let topic = Arc::new(Topic::with_state(name, id, state));
        let mut shard = self.shard(name).write();
        shard.insert(ByName(topic));
        self.names.write().insert(order::key(name).into());
    }

    /// The topic `target` names; a stale target (its topic was removed,
    /// whether or not one of that name exists now) fails with `Removed`.
    pub(crate) fn topic(&self, target: Target<'_>) -> Result<Arc<Topic>> {
        let found = self
            .shard(target.name)
            .read()
            .get(target.name)
            .map(|t| t.0.clone());
        match (found, target.id) {
            (Some(topic), Some(id)) if topic.id != id => Err(Error::Removed),
            (Some(topic), _) => Ok(topic),
            (None, Some(_)) => Err(Error::Removed),
            (None, None) => Err(Error::NoTopic(target.name.to_string())),
        }
    }
}

/// The memory engine's operations never wait, so they are plain calls too
/// (the [`Broker`] trait's futures are ready at once).
impl MemoryBroker {
    pub fn create(&self, name: &str, config: TopicConfig) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let mut topics = self.shard(name).write();
        if topics.contains(name) {
            return Err(Error::Exists(name.to_string()));
        }
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = State::new(config, self.groups);
        state.count_in(self.tally.clone());
        topics.insert(ByName(Arc::new(Topic::with_state(name, id, state))));
        self.names.write().insert(order::key(name).into());
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let topic = {
            let mut shard = self.shard(name).write();
            let topic = shard
                .take(name)
                .ok_or_else(|| Error::NoTopic(name.to_string()))?
                .0;
            self.names.write().remove(&*order::key(name));
            topic
        };
        topic.with(State::remove);
        Ok(())
    }

    /// See [`Broker::names`]: a range of the ordered index.
    pub fn names(&self, from: Bound<&str>, limit: usize) -> Vec<String> {
        let from = from.map(order::key);
        let names = self.names.read();
        names
            .range::<str, _>((from.as_ref().map(|k| &**k), Bound::Unbounded))
            .take(limit)
            .map(|k| order::name(k))
            .collect()
    }

    /// Every topic's name, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.names(Bound::Unbounded, usize::MAX)
    }

    pub fn id(&self, name: &str) -> Result<TopicId> {
        Ok(self.topic(name.into())?.id)
    }

    pub fn status<'a>(&self, name: impl Into<Target<'a>>) -> Result<TopicStatus> {
        let topic = self.topic(name.into())?;
        // No group past its expiry is shown.
        topic.with(|s| {
            s.sweep_idle();
            s.status(&topic.name)
        })
    }

    pub fn expire_idle(&self) {
        for topic in self.all() {
            topic.with(State::sweep_idle);
        }
    }

    /// The totals, in constant time: the ordered index's length and the
    /// running counts (see `tally`).
    pub fn totals(&self) -> BrokerStatus {
        let (pushed, pulled) = self.tally.sum();
        BrokerStatus {
            topics: self.names.read().len() as u64,
            pushed,
            pulled,
            engine: "memory",
            disk: None,
        }
    }

    pub fn set<'a>(&self, name: impl Into<Target<'a>>, setting: Setting) -> Result<()> {
        self.topic(name.into())?.with(|s| s.set(setting))
    }

    pub fn reset<'a>(&self, name: impl Into<Target<'a>>) -> Result<()> {
        self.topic(name.into())?.with(|s| s.reset())
    }

    pub fn close<'a>(&self, name: impl Into<Target<'a>>) -> Result<()> {
        self.topic(name.into())?.with(|s| s.close())
    }

    pub fn forget<'a>(&self, name: impl Into<Target<'a>>, group: &str) -> Result<()> {
        self.topic(name.into())?.with(|s| s.forget(group))
    }

    pub fn offset<'a>(&self, name: impl Into<Target<'a>>, group: &str) -> Result<Seq> {
        self.topic(name.into())?.with(|s| s.offset(group))
    }

    pub fn seek<'a>(&self, name: impl Into<Target<'a>>, group: &str, seq: Seq) -> Result<()> {
        self.topic(name.into())?.with(|s| s.seek(group, seq))
    }
}

impl Broker for MemoryBroker {
    type Delivery = MemoryDelivery;

    fn create(&self, name: &str, config: TopicConfig) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::create(self, name, config))
    }

    fn remove(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::remove(self, name))
    }

    fn names(&self, from: Bound<&str>, limit: usize) -> Vec<String> {
        MemoryBroker::names(self, from, limit)
    }

    fn id(&self, name: &str) -> Result<TopicId> {
        MemoryBroker::id(self, name)
    }

    fn status(&self, name: Target<'_>) -> impl Future<Output = Result<TopicStatus>> + Send {
        ready(MemoryBroker::status(self, name))
    }

    fn totals(&self) -> BrokerStatus {
        MemoryBroker::totals(self)
    }

    fn expire_idle(&self) {
        MemoryBroker::expire_idle(self)
    }

    fn set(&self, name: Target<'_>, setting: Setting) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::set(self, name, setting))
    }

    fn reset(&self, name: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::reset(self, name))
    }

    fn close(&self, name: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::close(self, name))
    }

    fn forget(&self, name: Target<'_>, group: &str) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::forget(self, name, group))
    }

    fn offset(&self, name: Target<'_>, group: &str) -> impl Future<Output = Result<Seq>> + Send {
        ready(MemoryBroker::offset(self, name, group))
    }

    fn seek(
        &self,
        name: Target<'_>,
        group: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<()>> + Send {
        ready(MemoryBroker::seek(self, name, group, seq))
    }

    fn push_to(
        &self,
        name: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Seq>> + Send {
        let topic = self.topic(name);
        async move { push_topic(topic?, data, wait).await }
    }

    fn pull_from(
        &self,
        name: Target<'_>,
        group: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Option<MemoryDelivery>>> + Send {
        let topic = self.topic(name);
        async move { pull_topic(topic?, group, wait).await }
    }

    fn push_all<'a>(
        &'a self,
        name: Target<'a>,
        messages: &'a [Bytes],
        wait: Wait,
    ) -> impl Future<Output = PushedAll> + Send + 'a {
        push_all_topic(self.topic(name), messages, wait)
    }

    fn pull_ready_while(
        &self,
        name: Target<'_>,
        group: &str,
        accept: &mut dyn FnMut(&Bytes) -> bool,
    ) -> Vec<MemoryDelivery> {
        pull_ready_topic(self.topic(name), group, accept)
    }
}

/// The further messages of a batch read from `topic` (see
/// [`Broker::pull_ready_while`]), under one lock.
pub(crate) fn pull_ready_topic(
    topic: Result<Arc<Topic>>,
    group: &str,
    accept: &mut dyn FnMut(&Bytes) -> bool,
) -> Vec<MemoryDelivery> {
    let Ok(topic) = topic else {
        return Vec::new();
    };
    let taken = topic.with(|s| s.take_while(group, accept));
    (taken.into_iter())
        .map(|t| MemoryDelivery::new(topic.clone(), t))
        .collect()
}

/// Push each of `messages` to `topic` (see [`Broker::push_all`]): those
/// that go at once under one lock, then, for one that must wait, its
/// wait, and so on. Nothing is left on its way.
pub(crate) async fn push_all_topic(
    topic: Result<Arc<Topic>>,
    messages: &[Bytes],
    wait: Wait,
) -> PushedAll {
    let mut all = PushedAll::default();
    let topic = match topic {
        Ok(topic) => topic,
        Err(e) => {
            all.error = Some(e);
            return all;
        }
    };
    while all.pushed < messages.len() {
        let start = topic.with(|s| {
            while let Some(m) = messages.get(all.pushed) {
                match s.start_push(m, wait) {
                    Start::Done(Ok(_)) => all.pushed += 1,
                    Start::Done(Err(e)) => return Some(Err(e)),
                    Start::Wait(key, limit) => return Some(Ok((key, limit))),
                }
            }
            None
        });
        let waited = match start {
            None => break,
            Some(Err(e)) => Err(e),
            Some(Ok((key, limit))) => within(limit, PushWait::new(topic.clone(), key)).await,
        };
        match waited {
            Ok(_) => all.pushed += 1,
            Err(e) => {
                all.error = Some(e);
                break;
            }
        }
    }
    all
}

/// Push to `topic` (see [`Broker::push_to`]).
pub(crate) async fn push_topic(topic: Arc<Topic>, data: Bytes, wait: Wait) -> Result<Seq> {
    let start = topic.with(|s| s.start_push(&data, wait));
    match start {
        Start::Done(result) => result,
        Start::Wait(key, limit) => within(limit, PushWait::new(topic, key)).await,
    }
}

/// Pull from `topic` for `group` (see [`Broker::pull_from`]).
pub(crate) async fn pull_topic(
    topic: Arc<Topic>,
    group: &str,
    wait: Wait,
) -> Result<Option<MemoryDelivery>> {
    let start = topic.with(|s| s.start_pull(group, wait));
    match start {
        Start::Done(result) => result.map(|taken| taken.map(|t| MemoryDelivery::new(topic, t))),
        Start::Wait(key, limit) => within(limit, PullWait::new(topic, key)).await,
    }
}
