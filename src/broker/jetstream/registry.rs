//! The topic registry: every topic's name, identity, settings and closed
//! flag in one JetStream key-value bucket, and this server's mirror of it.
//!
//! Every server watches the bucket, so `topics()` and `id()` are answered
//! from memory, and a change made on any server (create, a setting, close,
//! reset, remove) reaches every server's waiting pushes and pulls through
//! their topic's `watch` channel. A server that writes the bucket waits
//! until its own mirror has seen the write, so it reads its own writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv::{self, Operation};
use foldhash::HashMap;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::super::tally::Tally;
use super::super::{Framing, TopicConfig, TopicId, order};
use super::puller::Puller;

/// A topic as the bucket holds it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) id: TopicId,
    pub(crate) capacity: u64,
    /// "line" or "write".
    pub(crate) framing: String,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) max_message: u64,
    pub(crate) closed: bool,
    /// Resets so far: a change fails the pushes blocked on every server.
    pub(crate) resets: u64,
}

impl Record {
    pub(crate) fn new(name: &str, id: TopicId, c: TopicConfig) -> Record {
        let mut r = Record {
            name: name.to_string(),
            id,
            capacity: 0,
            framing: String::new(),
            timeout_ms: None,
            max_message: 0,
            closed: false,
            resets: 0,
        };
        r.set_config(c);
        r
    }

    pub(crate) fn config(&self) -> TopicConfig {
        TopicConfig {
            capacity: self.capacity,
            framing: match self.framing.as_str() {
                "write" => Framing::Write,
                _ => Framing::Line,
            },
            timeout: self.timeout_ms.map(Duration::from_millis),
            max_message: self.max_message,
            retain: crate::broker::Retention::None,
            max_bytes: None,
            rate: None,
        }
    }

    pub(crate) fn set_config(&mut self, c: TopicConfig) {
        self.capacity = c.capacity;
        self.framing = match c.framing {
            Framing::Line => "line",
            Framing::Write => "write",
        }
        .to_string();
        self.timeout_ms = c.timeout.map(|t| t.as_millis() as u64);
        self.max_message = c.max_message;
    }
}

/// The bucket key of a topic: its name in hex, since names may hold
/// characters and sequences (`a..b`, a leading `.`) that keys may not.
pub(crate) fn key(name: &str) -> String {
    format!("t.{}", hex(name.as_bytes()))
}

/// The key whose revisions hand out topic identities (small numbers,
/// never reused: the bucket's sequence).
pub(crate) const ID_KEY: &str = "id";

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One topic as this server knows it.
pub(crate) struct Topic {
    pub(crate) id: TopicId,
    /// Its stream's name and its subject.
    pub(crate) stream: String,
    pub(crate) subject: async_nats::Subject,
    /// The registry's record, `None` once removed: waiters watch it.
    pub(crate) record: watch::Sender<Option<Record>>,
    /// The group consumers this server has looked up, by group.
    pub(crate) consumers: Mutex<HashMap<String, PullConsumer>>,
    /// The highest stream sequence this server published.
    pub(crate) published: AtomicU64,
    /// This server's publishes on the wire, not yet acknowledged.
    pub(crate) in_flight: AtomicU64,
    /// Changes of the topic's lock seen in the registry: a group made,
    /// moved or trimmed on some server. A look that began before the
    /// last of them may miss a group (see `Topic::ready_here`).
    pub(crate) lock_changes: AtomicU64,
    /// Pushes let through by credit or room since the last look: at most
    /// `Topic::budget` before the next look, so that another server's
    /// writes are seen within that many.
    pub(crate) since_look: AtomicU64,
    /// Whether the last look found messages after this server's own:
    /// another server writes too, so this one's credit and room (which
    /// count only its own pushes) are not used (see `ops`).
    pub(crate) others_write: std::sync::atomic::AtomicBool,
    /// Pushes cut while their publish was on the wire, to be deleted.
    pub(crate) withdrawing: AtomicU64,
    /// The highest stream sequence a pull on this server delivered.
    pub(crate) delivered: AtomicU64,
    /// Acks and naks sent and not yet confirmed, and their wake-up.
    pub(crate) settling: AtomicU64,
    pub(crate) settled: Notify,
    /// Where acks and naks go to be sent (see `ops::settle`).
    pub(crate) settler: std::sync::OnceLock<super::ops::Settler>,
    /// Pulls under way on this server, by group: how many.
    pub(crate) pulling: Mutex<HashMap<String, usize>>,
    /// The pullers of the groups read on this server (see `puller`),
    /// and the lock that makes one at a time.
    pub(crate) pullers: Mutex<HashMap<String, Arc<Puller>>>,
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// Woken when a local pull or ack moved a group, so waiting pushes
    /// look again at once rather than at their next back-off.
    pub(crate) progress: Notify,
    /// Pushes this server may still make without looking at the groups:
    /// the room its last look found (see `push`).
    pub(crate) credit: AtomicU64,
    /// One look at the groups at a time (see `ops`), what the last found
    /// (each group's consumer and the highest sequence it delivered, and
    /// the stream's last sequence), and the highest this server's pullers
    /// got since, by consumer: the room a push has without a look.
    pub(crate) looking: tokio::sync::Mutex<()>,
    pub(crate) last_look: Mutex<Look>,
    pub(crate) reached: Mutex<HashMap<String, u64>>,
    /// The stream sequences of this server's last deliveries (at most
    /// `ARRIVALS`): which message a reader here got, where a reset's
    /// purge has moved the consumers' pointers past what it removed.
    pub(crate) arrivals: Mutex<std::collections::VecDeque<u64>>,
    /// Groups being made or moved on this server: no trim meanwhile.
    pub(crate) making: AtomicU64,
    /// The topic's lock as this server last found it held by another:
    /// its revision, and since when (see `Inner::lock`).
    pub(crate) lock_held: Mutex<Option<(u64, tokio::time::Instant)>>,
    /// The highest stream sequence purged up to, so a trim is asked once.
    pub(crate) trimmed: AtomicU64,
    /// This server's pulls, for status (its pushes are the stream's).
    pub(crate) pulled: AtomicU64,
    /// This server's running totals over all topics (the mirror's).
    pub(crate) tally: Arc<Tally>,
    pub(crate) blocked_writers: AtomicU64,
}

/// How many of its last deliveries a topic remembers (see `arrivals`).
const ARRIVALS: usize = 1024;

impl Topic {
    fn new(prefix: &str, record: Record, tally: Arc<Tally>) -> Topic {
        Topic {
            id: record.id,
            stream: format!("{prefix}_{}", record.id),
            subject: format!("{prefix}.m.{}", record.id).into(),
            record: watch::Sender::new(Some(record)),
            consumers: Mutex::default(),
            pulling: Mutex::default(),
            pullers: Mutex::default(),
            starting: tokio::sync::Mutex::new(()),
            withdrawing: AtomicU64::new(0),
            published: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            lock_changes: AtomicU64::new(0),
            since_look: AtomicU64::new(0),
            others_write: std::sync::atomic::AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            settling: AtomicU64::new(0),
            settled: Notify::new(),
            settler: std::sync::OnceLock::new(),
            progress: Notify::new(),
            credit: AtomicU64::new(0),
            looking: tokio::sync::Mutex::new(()),
            last_look: Mutex::default(),
            reached: Mutex::default(),
            arrivals: Mutex::default(),
            making: AtomicU64::new(0),
            lock_held: Mutex::default(),
            trimmed: AtomicU64::new(0),
            pulled: AtomicU64::new(0),
            tally,
            blocked_writers: AtomicU64::new(0),
        }
    }

    /// Wait (at most `limit`) until this server's acks and naks are
    /// confirmed, so that a status after them shows them.
    pub(crate) async fn settled(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.settling.load(Ordering::Relaxed) == 0 {
                    return;
                }
                settled.await;
            }
        })
        .await;
    }

    /// A push cut on the wire is deleted.
    pub(crate) fn withdrawn(&self) {
        self.withdrawing.fetch_sub(1, Ordering::Relaxed);
        self.settled.notify_waiters();
    }

    /// Wait (at most `limit`) until no push cut on the wire is left to
    /// delete.
    pub(crate) async fn no_withdrawals(&self, limit: Duration) {
        if self.withdrawing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.withdrawing.load(Ordering::Relaxed) == 0 {
                    return;
                }
                settled.await;
            }
        })
        .await;
    }

    /// Keep what a look at the groups found; `lock_changes` is the
    /// topic's count of them from before the look's request. The stream
    /// holding messages beyond this server's publishes (those on the wire
    /// included) means another server writes too: credit and room, which
    /// count only this server's pushes, are then not used (see `ops`).
    pub(crate) fn looked(
        &self,
        groups: &[async_nats::jetstream::consumer::Info],
        lock_changes: u64,
    ) {
        let mut look = self.last_look.lock();
        look.groups.clear();
        look.last = 0;
        look.lock_changes = lock_changes;
        self.since_look.store(0, Ordering::Relaxed);
        for g in groups {
            look.groups
                .push((g.name.clone(), g.delivered.stream_sequence));
            look.last = look.last.max(g.delivered.stream_sequence + g.num_pending);
        }
        let mine = self.published.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed);
        self.others_write.store(look.last > mine, Ordering::Relaxed);
    }

    /// How many pushes may go on one look: an eighth of the capacity.
    pub(crate) fn budget(capacity: u64) -> u64 {
        (capacity / 8).max(1)
    }

    /// At a rendezvous, whether a push may publish without a look: the
    /// groups the last look found, if no group was made or moved since it,
    /// no other server writes, and every one of them has a pull waiting on
    /// this server that has reached all the look saw stored and all this
    /// server published since (so nothing is left for it to read).
    pub(crate) fn ready_here(&self) -> Option<Vec<String>> {
        if self.others_write.load(Ordering::Relaxed) {
            return None;
        }
        let look = self.last_look.lock();
        if look.groups.is_empty() || look.lock_changes != self.lock_changes.load(Ordering::Relaxed)
        {
            return None;
        }
        let last = look.last.max(self.published.load(Ordering::Relaxed));
        let reached = self.reached.lock();
        let pulling = self.pulling.lock();
        let ready = look.groups.iter().all(|(name, delivered)| {
            let got = reached
                .get(name)
                .map_or(*delivered, |r| (*r).max(*delivered));
            got >= last && super::group_of(name).is_some_and(|g| pulling.contains_key(&g))
        });
        ready.then(|| look.groups.iter().map(|(name, _)| name.clone()).collect())
    }

    /// Stream message `js_seq` was delivered to this server.
    pub(crate) fn arrived(&self, js_seq: u64) {
        let mut arrivals = self.arrivals.lock();
        if arrivals.len() == ARRIVALS {
            arrivals.pop_front();
        }
        arrivals.push_back(js_seq);
    }

    /// Whether stream message `js_seq` was delivered to this server lately.
    pub(crate) fn got_here(&self, js_seq: u64) -> bool {
        self.arrivals.lock().contains(&js_seq)
    }

    /// A group's message reached a puller of this server.
    pub(crate) fn reached(&self, consumer: &str, js_seq: u64) {
        let mut reached = self.reached.lock();
        match reached.get_mut(consumer) {
            Some(r) => *r = (*r).max(js_seq),
            None => {
                reached.insert(consumer.to_string(), js_seq);
            }
        }
    }

    /// The room for pushes under `capacity` as the last look and this
    /// server's deliveries since tell (a group read on another server has
    /// at least the room the look found); `None` without a look.
    pub(crate) fn room(&self, capacity: u64) -> Option<u64> {
        let look = self.last_look.lock();
        if look.groups.is_empty() {
            return None;
        }
        let reached = self.reached.lock();
        let last = look.last.max(self.published.load(Ordering::Relaxed));
        let lag = look
            .groups
            .iter()
            .map(|(name, delivered)| {
                let got = reached
                    .get(name)
                    .map_or(*delivered, |r| (*r).max(*delivered));
                last.saturating_sub(got)
            })
            .max()?;
        Some(capacity.saturating_sub(lag))
    }

    /// The current record; `None` once removed.
    pub(crate) fn record(&self) -> Option<Record> {
        self.record.borrow().clone()
    }
}

/// What a push's last look at the groups found (see `Topic::room`).
#[derive(Default)]
pub(crate) struct Look {
    /// Each group's consumer and the highest sequence it had delivered.
    pub(crate) groups: Vec<(String, u64)>,
    /// The stream's last sequence, as far as the groups' counts tell.
    pub(crate) last: u64,
    /// `Topic::lock_changes` when the look began.
    pub(crate) lock_changes: u64,
}

/// This server's copy of the registry.
pub(crate) struct Mirror {
    pub(crate) prefix: String,
    /// Topics by [`order::key`] of their name (tree order, for
    /// [`Broker::names`](crate::broker::Broker::names)). parking_lot: never
    /// held across an `.await`.
    pub(crate) topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// The last bucket revision the watch applied (entries come in order).
    pub(crate) seen: watch::Sender<u64>,
    /// Keys read directly, ahead of a late watch ([`Mirror::apply_read`]),
    /// with the revision read: the watch's older entries for them are
    /// skipped until it passes that revision, so a late watch never undoes
    /// a newer state.
    ahead: Mutex<HashMap<String, u64>>,
    /// Messages this server pushed and pulled over all topics, removed
    /// ones included, kept as they happen: the totals walk no topics.
    pub(crate) tally: Arc<Tally>,
}

impl Mirror {
    pub(crate) fn new(prefix: &str) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            topics: RwLock::default(),
            seen: watch::Sender::new(0),
            ahead: Mutex::default(),
            tally: Arc::default(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(&*order::key(name)).cloned()
    }

    /// Apply one entry of the bucket, as the watch delivers them (in
    /// revision order).
    pub(crate) fn apply(&self, entry: &kv::Entry) {
        let stale = {
            let mut ahead = self.ahead.lock();
            match ahead.get(&entry.key) {
                Some(&read) if read >= entry.revision => {
                    if read == entry.revision {
                        ahead.remove(&entry.key);
                    }
                    true
                }
                Some(_) => {
                    ahead.remove(&entry.key);
                    false
                }
                None => false,
            }
        };
        if !stale {
            self.change(entry);
        }
        self.seen.send_if_modified(|seen| {
            let newer = entry.revision > *seen;
            if newer {
                *seen = entry.revision;
            }
            newer
        });
    }

    /// Apply one entry read directly from the bucket while the watch is
    /// late, so this server reads its own write. The watch's position is
    /// left alone (it must still deliver what came before).
    pub(crate) fn apply_read(&self, entry: &kv::Entry) {
        if entry.revision <= *self.seen.borrow() {
            return; // the watch has it, or something newer
        }
        let mut ahead = self.ahead.lock();
        let read = ahead.entry(entry.key.clone()).or_insert(0);
        if *read < entry.revision {
            *read = entry.revision;
            self.change(entry);
        }
    }

    fn change(&self, entry: &kv::Entry) {
        if let Some(id) = entry.key.strip_prefix("lock.") {
            // A group made, moved or trimmed somewhere: a rendezvous on
            // this server looks again (`Topic::ready_here`).
            if let Ok(id) = id.parse::<TopicId>() {
                for t in self.topics.read().values().filter(|t| t.id == id) {
                    t.lock_changes.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if let Some(name_hex) = entry.key.strip_prefix("t.") {
            let Some(name) = unhex(name_hex) else { return };
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<Record>(&entry.value) {
                    Ok(record) => self.put(&name, record),
                    Err(e) => tracing::warn!("registry entry {}: {e}", entry.key),
                },
                Operation::Delete | Operation::Purge => self.drop_topic(&name),
            }
        }
    }

    fn put(&self, name: &str, record: Record) {
        let mut topics = self.topics.write();
        match topics.get(&*order::key(name)) {
            Some(t) if t.id == record.id => {
                let resets = record.resets;
                let before = t.record.send_replace(Some(record));
                if before.is_some_and(|b| b.resets != resets) {
                    // Purged: nothing this server published is held.
                    t.published.store(0, Ordering::Relaxed);
                    t.credit.store(0, Ordering::Relaxed);
                }
            }
            _ => {
                let new = Arc::new(Topic::new(&self.prefix, record, self.tally.clone()));
                if let Some(old) = topics.insert(order::key(name).into_owned(), new) {
                    self.retire(&old);
                }
            }
        }
    }

    /// Drop `name` from the mirror: the registry no longer has it.
    pub(crate) fn forget(&self, name: &str) {
        self.drop_topic(name);
    }

    fn drop_topic(&self, name: &str) {
        let old = self.topics.write().remove(&*order::key(name));
        if let Some(old) = old {
            self.retire(&old);
        }
    }

    /// A topic gone from the registry: its waiters fail with `Removed`.
    fn retire(&self, old: &Topic) {
        old.record.send_replace(None);
    }

    /// Wait until the mirror has applied revision `rev`, for at most `limit`.
    pub(crate) async fn caught_up(&self, rev: u64, limit: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|s| *s >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Keep `mirror` in step with `bucket` until the task is aborted: the
/// current entries first, then every change; a watch that ends (the
/// connection was lost for long) starts again after the last revision
/// applied.
pub(crate) async fn follow(bucket: kv::Store, mirror: Arc<Mirror>) {
    loop {
        let from = *mirror.seen.borrow() + 1;
        let watch = match from {
            // Every key's current entry first (`watch_all` would give
            // only changes from now on: a server started after topics
            // were made would never see them), then every change.
            1 => bucket.watch_with_history(">").await,
            _ => bucket.watch_all_from_revision(from).await,
        };
        match watch {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    match entry {
                        Ok(entry) => mirror.apply(&entry),
                        Err(e) => {
                            tracing::warn!("registry watch: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("registry watch: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
