//! One topic's state and the rules that move its messages: the log, the
//! groups, the blocked pushes and pulls, all changed under the topic's lock.
//!
//! The hand-off is decided here, never in a waiting future: whenever
//! something changes (a push, a pull, an ack, a drop, a setting), `dispatch`
//! gives each group's oldest blocked reader its message right away
//! (reserving it in the reader's slot), completes the pushes whose
//! condition now holds, and wakes the oldest waiting push when there is
//! room. A future only collects what was decided for it, or, dropped first,
//! undoes it under the same lock (see `waiters`). So no interleaving of a
//! wake-up and a drop can lose or duplicate a message.
//!
//! A waiting push's message enters the log in one of two ways only, each
//! final: a reader takes it (`take`, a rendezvous), or its own future, at
//! the front of the queue when there is room, appends it (`collect_writer`)
//! and returns `Ok` in the same critical section. Room alone appends
//! nothing, so a push dropped or cut short before that is withdrawn, and
//! a writer is never told "failed" about a message in the log (issue 15).
//!
//! The model of capacity C: a push appends its message when no group would
//! then lag more than C behind (the push returns at once), or when a reader
//! wants a message and the log has none left for its group (a rendezvous:
//! the push returns once every group has taken it, or C allows). With no
//! group the oldest held message stands for the group to come, which starts
//! there.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use foldhash::HashMap;
use parking_lot::Mutex;
use slab::Slab;

use super::group::Group;
use super::log::Log;
use super::rate::Bucket;
use super::retain::{Kept, Retention};
use super::store::Store;
use super::tally::Tally;
use super::waiters::store_waker;
use super::{
    Cut, Error, GroupLimits, Result, Seq, Setting, TopicConfig, TopicId, TopicStatus, Wait,
    cut_error,
};

/// A topic: its name and its state behind a lock.
pub(crate) struct Topic {
    /// The name it was created with, for its status.
    pub(crate) name: String,
    /// Its identity (see `TopicId`).
    pub(crate) id: TopicId,
    /// Everything that changes. parking_lot: never held across an `.await`.
    pub(crate) state: Mutex<State>,
}

thread_local! {
    /// Wakers taken out of a state to wake after its lock is released (a
    /// woken task on another core would otherwise find the lock held).
    /// Reused, so waking allocates nothing.
    static WAKES: Cell<Vec<Waker>> = const { Cell::new(Vec::new()) };
}

impl Topic {
    pub(crate) fn with_state(name: &str, id: TopicId, state: State) -> Topic {
        Topic {
            name: name.to_string(),
            id,
            state: Mutex::new(state),
        }
    }

    /// Run `f` on the state under the lock, then wake, outside it, the
    /// futures whose outcome `f` decided.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock();
        debug_assert!(state.wakes.is_empty(), "wakers left behind");
        let result = f(&mut state);
        if !state.wakes.is_empty() {
            let mut wakes = WAKES.take();
            wakes.append(&mut state.wakes);
            drop(state);
            for waker in wakes.drain(..) {
                waker.wake();
            }
            WAKES.set(wakes);
        }
        result
    }
}

/// A message handed to a reader of a group.
pub(crate) struct Taken {
    /// The group's slab key, to find it again on ack or requeue.
    pub(crate) group: usize,
    /// The group's id at hand-off: if it changed since, the group started
    /// over and neither ack nor requeue applies.
    pub(crate) group_id: u64,
    pub(crate) seq: Seq,
    pub(crate) data: Bytes,
}

/// What a pull or push decided at once, or the key of its waiter.
pub(crate) enum Start<T> {
    Done(Result<T>),
    Wait(usize, Option<Duration>),
}

/// A blocked pull.
pub(crate) struct Reader {
    /// The slab key of the reader's group.
    pub(crate) group: usize,
    /// Woken when `outcome` is set; `None` until the future's first poll.
    pub(crate) waker: Option<Waker>,
    /// Set (under the lock) when the pull is decided: a reserved message,
    /// the end of the topic, or an error.
    pub(crate) outcome: Option<Result<Option<Taken>>>,
}

/// Where a blocked push stands.
pub(crate) enum Stage {
    /// Its message waits in `offers`, not in the log: dropped now, the push
    /// is withdrawn.
    Offered,
    /// Its message (this sequence number) is in the log (a reader took
    /// it) and waits in `appended` until every group has taken it, or
    /// capacity allows. Whatever happens next, the push succeeded.
    Appended(Seq),
    /// Decided; the future collects it.
    Done(Result<Seq>),
}

/// A blocked push.
pub(crate) struct Writer {
    pub(crate) stage: Stage,
    /// Woken when `stage` becomes `Done`; `None` until the first poll.
    pub(crate) waker: Option<Waker>,
}

/// The mutable part of a topic.
pub(crate) struct State {
    pub(crate) config: TopicConfig,
    /// Messages held, by sequence number.
    log: Log,
    /// Pushes fail with `Closed`; pulls end once drained.
    closed: bool,
    /// The topic was removed: everything fails with `Removed`.
    removed: bool,
    /// The groups; keys stay stable while a group lives.
    groups: Slab<Group>,
    /// Group name to slab key.
    group_index: HashMap<Box<str>, usize>,
    /// The id the next group (or group that starts over) gets.
    next_group_id: u64,
    /// Blocked pulls. An entry belongs to its `PullWait` future, which alone
    /// removes it, so its key is never reused under it.
    pub(crate) readers: Slab<Reader>,
    /// Readers blocked in some group's `waiters`, so `dispatch` can skip
    /// the groups when there are none.
    waiting: usize,
    /// Blocked pushes, owned by their `PushWait` futures likewise.
    pub(crate) writers: Slab<Writer>,
    /// Messages of blocked pushes not yet in the log, oldest first.
    offers: VecDeque<(usize, Bytes)>,
    /// Blocked pushes whose message is in the log, by sequence number.
    appended: VecDeque<(Seq, usize)>,
    /// Messages appended to the log, ever.
    pub(crate) pushed: u64,
    /// Messages handed to readers, ever.
    pub(crate) pulled: u64,
    /// Wakers of futures decided under the lock, for `Topic::with` to wake
    /// once it is released.
    wakes: Vec<Waker>,
    /// How many groups, and for how long idle.
    limits: GroupLimits,
    /// Scratch for `dispatch`: the groups with blocked readers.
    hungry: Vec<usize>,
    /// When idle groups are next looked for (with `idle_expiry` only).
    next_sweep: Option<Instant>,
    /// Where a durable engine keeps what changes (see `store`); `None`
    /// in the memory engine.
    store: Option<Box<dyn Store>>,
    /// The store's `memory`: past it, the oldest messages in memory are
    /// let go (spilled) and read back from the store when needed.
    memory: Option<u64>,
    /// The broker's running totals, told of every push and pull (`None`
    /// for a topic no broker counts).
    tally: Option<Arc<Tally>>,
    /// Every message before this one has been taken by every group (at
    /// some point: a group may seek back before it): the log holds those
    /// only by retention. Without retention it is the log's first.
    /// Capacity counts from here (see `fits_now`).
    taken: Seq,
    /// What retention needs to know of the retained messages.
    kept: Kept,
    /// The bytes of the messages from `taken` on (held for some group):
    /// what `max_bytes` bounds.
    held: u64,
    /// The token bucket of the topic's `rate`, when it has one.
    bucket: Option<Bucket>,
    /// When the rate's next token comes, set when it refused the oldest
    /// waiting push, for that push's future to sleep until then.
    retry_at: Option<Instant>,
}

impl State {
    pub(crate) fn new(config: TopicConfig, limits: GroupLimits) -> State {
        State {
            config,
            limits,
            next_sweep: None,
            hungry: Vec::new(),
            log: Log::new(),
            closed: false,
            removed: false,
            groups: Slab::new(),
            group_index: HashMap::default(),
            next_group_id: 0,
            readers: Slab::new(),
            waiting: 0,
            writers: Slab::new(),
            offers: VecDeque::new(),
            appended: VecDeque::new(),
            pushed: 0,
            pulled: 0,
            wakes: Vec::new(),
            store: None,
            memory: None,
            tally: None,
            taken: 0,
            kept: Kept::default(),
            held: 0,
            bucket: config.rate.map(Bucket::new),
            retry_at: None,
        }
    }

    /// A topic restored by a durable engine: the messages from `first` to
    /// `next` held in `store` (none in memory: they are read back as
    /// readers get there), and each group at its offset with the
    /// deliveries to make again. Every change from now on is told to
    /// `store`.
    pub(crate) fn restored(
        config: TopicConfig,
        limits: GroupLimits,
        closed: bool,
        (first, next): (Seq, Seq),
        groups: Vec<(String, Seq, Vec<Seq>)>,
        store: Box<dyn Store>,
    ) -> State {
        let mut state = State::new(config, limits);
        state.log.restore_spilled(first, next);
        // Sequence numbers count every message ever pushed.
        state.pushed = next;
        state.closed = closed;
        state.keep_in(store);
        for (name, offset, redeliver) in groups {
            let id = state.new_group_id();
            let mut group = Group::new(&name, id, offset.max(first));
            for seq in redeliver.into_iter().filter(|&s| s >= first) {
                match state.message(seq) {
                    Ok(data) => group.requeue(seq, data),
                    Err(e) => tracing::warn!("redelivery of {seq} to {name}: {e}"),
                }
            }
            let key = state.groups.insert(group);
            state.group_index.insert(name.into(), key);
        }
        // What every group has read is what retention may have kept.
        let floor = state.groups.iter().map(|(_, g)| g.floor()).min();
        state.taken = floor.unwrap_or(first).max(state.log.first());
        // The held bytes (the log has no message in memory: the store's
        // index says, or they are read back).
        let taken = state.taken.max(first);
        let all = state.bytes_between(first, next);
        let held = state.bytes_between(taken, next);
        state.log.set_bytes(all);
        state.held = held;
        state.retention_changed();
        state.trim();
        state
    }

    /// Tell every change from now on to `store` (a new durable topic).
    pub(crate) fn keep_in(&mut self, store: Box<dyn Store>) {
        self.memory = store.memory();
        self.store = Some(store);
    }

    /// Tell every push and pull from now on to `tally` (the broker's totals).
    pub(crate) fn count_in(&mut self, tally: Arc<Tally>) {
        self.tally = Some(tally);
    }

    /// Held message `seq`, from memory or read back from the store.
    fn message(&mut self, seq: Seq) -> Result<Bytes> {
        if let Some(data) = self.log.get(seq) {
            return Ok(data);
        }
        match self.store() {
            Some(store) => store.read(seq),
            None => Err(Error::Storage {
                kind: std::io::ErrorKind::NotFound,
                reason: format!("message {seq} is not held"),
            }),
        }
    }

    /// The length of held message `seq` (0 if it cannot be read back).
    fn size(&mut self, seq: Seq) -> u64 {
        match self.log.size(seq) {
            Some(n) => n,
            None => self.message(seq).map_or(0, |m| m.len() as u64),
        }
    }

    /// The payload bytes of messages `from..to`: counted one by one, but
    /// a long run of them no longer in memory is asked of the store (a
    /// subtraction in its index), so that neither a restart nor a long
    /// trim reads every message back to learn its size.
    fn bytes_between(&mut self, from: Seq, to: Seq) -> u64 {
        /// Fewer spilled messages than this are counted one by one (most
        /// are in the store's read-ahead).
        const LONG_RUN: u64 = 1024;
        let spilled_to = to.min(self.log.resident());
        let mut s = from;
        let mut sum = 0;
        if spilled_to > from + LONG_RUN
            && let Some(store) = self.store.as_deref_mut()
            && let Some(a) = store.bytes_from(from)
            && let Some(b) = store.bytes_from(spilled_to)
        {
            sum = a.saturating_sub(b);
            s = spilled_to;
        }
        sum + (s..to.max(s)).map(|s| self.size(s)).sum::<u64>()
    }

    /// The store's handle, when there is one.
    fn store(&mut self) -> Option<&mut (dyn Store + 'static)> {
        self.store.as_deref_mut()
    }

    /// Put `data` at the end of the log, in the store first: a message the
    /// store could not keep is not taken.
    fn append(&mut self, data: &Bytes) -> Result<Seq> {
        let seq = self.next();
        if let Some(store) = self.store() {
            store.append(seq, data)?;
        }
        self.log.push(data);
        self.held += data.len() as u64;
        self.pushed += 1;
        if let Some(memory) = self.memory
            && self.log.resident_bytes() > memory
        {
            // In batches, so the chunks they lay in go whole.
            self.log.spill(memory - memory / 4);
        }
        if let Some(tally) = &self.tally {
            tally.pushed();
        }
        if let Retention::Age(age) = self.config.retain {
            self.kept.pushed(seq, age);
        }
        Ok(seq)
    }

    /// The sequence number the next appended message gets.
    fn next(&self) -> Seq {
        self.log.next()
    }

    fn alive(&self) -> Result<()> {
        if self.removed {
            Err(Error::Removed)
        } else {
            Ok(())
        }
    }

    fn new_group_id(&mut self) -> u64 {
        self.next_group_id += 1;
        self.next_group_id
    }

    /// The group's key, creating it at the oldest held message (unless
    /// the topic has its most groups), and marking it used.
    fn group(&mut self, name: &str) -> Result<usize> {
        let key = match self.group_index.get(name) {
            Some(&key) => key,
            None => {
                if self.groups.len() >= self.limits.max_per_topic {
                    self.next_sweep = None;
                    self.expire_idle();
                    if self.groups.len() >= self.limits.max_per_topic {
                        return Err(Error::TooManyGroups(self.limits.max_per_topic));
                    }
                }
                let id = self.new_group_id();
                let first = self.log.first();
                let key = self.groups.insert(Group::new(name, id, first));
                self.group_index.insert(name.into(), key);
                if let Some(store) = self.store() {
                    store.start_group(name, first);
                }
                key
            }
        };
        self.touch(key);
        Ok(key)
    }

    /// A reader used group `key` now (kept only when groups expire).
    fn touch(&mut self, key: usize) {
        if self.limits.idle_expiry.is_some() {
            self.groups[key].active = Some(Instant::now());
        }
    }

    /// Drop the groups idle past `idle_expiry`, looking at most four times
    /// per that period (so the cost per operation stays small).
    pub(crate) fn expire_idle(&mut self) {
        let Some(idle) = self.limits.idle_expiry else {
            return;
        };
        let now = Instant::now();
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + (idle / 4).max(Duration::from_millis(1)));
        let expired: Vec<usize> = (self.groups.iter())
            .filter(|(_, g)| g.expired(now, idle))
            .map(|(k, _)| k)
            .collect();
        if expired.is_empty() {
            return;
        }
        for key in expired {
            let group = self.groups.remove(key);
            self.group_index.remove(&group.name);
            let first = self.log.first();
            if let Some(store) = self.store() {
                store.forget_group(&group.name, first);
            }
        }
        self.dispatch();
        self.trim();
    }

    /// Drop the groups idle past `idle_expiry` now, however recently
    /// they were looked for (a sweep of the whole topic, O(groups)).
    pub(crate) fn sweep_idle(&mut self) {
        if !self.removed {
            self.next_sweep = None;
            self.expire_idle();
        }
    }

    /// The offset of the slowest group, a group reading retained history
    /// counting as at `taken`; with no group, `taken`.
    fn min_offset(&self) -> Seq {
        self.groups
            .iter()
            .map(|(_, g)| g.offset.max(self.taken))
            .min()
            .unwrap_or(self.taken)
    }

    // ---- pull ----

    pub(crate) fn start_pull(&mut self, group: &str, wait: Wait) -> Start<Option<Taken>> {
        if let Err(e) = self.alive() {
            return Start::Done(Err(e));
        }
        self.expire_idle();
        let g = match self.group(group) {
            Ok(g) => g,
            Err(e) => return Start::Done(Err(e)),
        };
        // A group with blocked readers has nothing to take (invariant).
        if self.groups[g].waiters.is_empty() {
            match self.take(g) {
                Some(Ok(taken)) => {
                    self.dispatch();
                    return Start::Done(Ok(Some(taken)));
                }
                Some(Err(e)) => return Start::Done(Err(e)),
                None => {}
            }
            if self.closed {
                return Start::Done(Ok(None));
            }
        }
        if wait == Wait::NonBlock {
            return Start::Done(Err(Error::WouldBlock));
        }
        let key = self.readers.insert(Reader {
            group: g,
            waker: None,
            outcome: None,
        });
        self.groups[g].waiters.push_back(key);
        self.waiting += 1;
        Start::Wait(key, self.config.timeout)
    }

    /// Take group `g`'s next message: a requeued one, the log's next, or
    /// the oldest blocked push's (appending it).
    /// A message that cannot be read back from the store fails the pull,
    /// and the group stays at it.
    /// Acks the store could not keep (a full disk) fail the pull before
    /// anything is taken: the reader learns at once that its acks are not
    /// kept, instead of reading on while a crash would take them back.
    fn take(&mut self, g: usize) -> Option<Result<Taken>> {
        let next = self.next();
        let group = &self.groups[g];
        let ready = !group.requeued.is_empty() || group.offset < next || !self.offers.is_empty();
        if ready
            && let Some(store) = self.store.as_deref_mut()
            && let Err(e) = store.before_delivery()
        {
            return Some(Err(e));
        }
        let group = &mut self.groups[g];
        let (seq, data) = if let Some(m) = group.requeued.pop_front() {
            m
        } else if group.offset < next {
            let seq = group.offset;
            match self.message(seq) {
                Ok(data) => {
                    self.groups[g].offset += 1;
                    (seq, data)
                }
                Err(e) => return Some(Err(e)),
            }
        } else if let Some(&(front, ref data)) = self.offers.front() {
            if !(self.bytes_fit(data.len()) && self.rate_token()) {
                // Its own future appends it once there is room (and
                // sleeps until the rate's next token first).
                if let Some(waker) = self.writers[front].waker.take() {
                    self.wakes.push(waker);
                }
                return None;
            }
            let (key, data) = self.offers.pop_front().expect("front");
            if let Err(e) = self.append(&data) {
                // Not kept, so not taken: the push fails, the reader waits.
                self.finish_writer(key, Err(e));
                return None;
            }
            self.groups[g].offset += 1;
            self.writers[key].stage = Stage::Appended(next);
            self.appended.push_back((next, key));
            (next, data)
        } else {
            return None;
        };
        let group = &mut self.groups[g];
        group.deliver(seq);
        let group_id = group.id;
        self.pulled += 1;
        if let Some(tally) = &self.tally {
            tally.pulled();
        }
        self.touch(g);
        Some(Ok(Taken {
            group: g,
            group_id,
            seq,
            data,
        }))
    }

    /// A blocked reader's future was dropped: forget it, and put back what
    /// was reserved for it.
    pub(crate) fn cancel_reader(&mut self, key: usize) {
        let reader = self.readers.remove(key);
        match reader.outcome {
            None => {
                if let Some(group) = self.groups.get_mut(reader.group)
                    && let Some(at) = group.waiters.iter().position(|&k| k == key)
                {
                    group.waiters.remove(at);
                    self.waiting -= 1;
                }
            }
            Some(Ok(Some(taken))) => self.untake(taken),
            Some(_) => {}
        }
    }

    /// Put back a message taken under this same lock but not handed out:
    /// as if it had never been pulled.
    fn untake(&mut self, taken: Taken) {
        self.pulled -= 1;
        if let Some(tally) = &self.tally {
            tally.unpulled();
        }
        self.requeue(taken);
    }

    /// A batch read's further messages (see `Broker::pull_ready_while`):
    /// group `group`'s next messages that are there now, while `accept`
    /// takes each; the first it refuses goes back to the front of the
    /// group. Nothing if the group has blocked readers (they come first)
    /// or does not exist.
    pub(crate) fn take_while(
        &mut self,
        group: &str,
        accept: &mut dyn FnMut(&Bytes) -> bool,
    ) -> Vec<Taken> {
        let mut batch = Vec::new();
        if self.alive().is_err() {
            return batch;
        }
        let Some(&g) = self.group_index.get(group) else {
            return batch;
        };
        if !self.groups[g].waiters.is_empty() {
            return batch;
        }
        while let Some(Ok(taken)) = self.take(g) {
            if !accept(&taken.data) {
                self.untake(taken);
                break;
            }
            batch.push(taken);
        }
        if !batch.is_empty() {
            self.dispatch();
        }
        batch
    }

    /// Acks of several deliveries, under one lock.
    pub(crate) fn ack_all<'a>(&mut self, taken: impl IntoIterator<Item = &'a Taken>) {
        for t in taken {
            self.ack(t);
        }
    }

    /// A delivery came back unacked: to the front of its group.
    pub(crate) fn requeue(&mut self, taken: Taken) {
        if self.removed {
            return;
        }
        if let Some(group) = self.groups.get_mut(taken.group)
            && group.id == taken.group_id
        {
            group.requeue(taken.seq, taken.data);
            self.dispatch();
        }
    }

    /// A delivery was acked: done with; the log may let it go.
    pub(crate) fn ack(&mut self, taken: &Taken) {
        if let Some(group) = self.groups.get_mut(taken.group)
            && group.id == taken.group_id
        {
            // Only the slowest group can let a message go.
            let held_first = group.floor() <= self.taken;
            group.settle(taken.seq);
            if let Some(store) = self.store.as_deref_mut() {
                store.ack(&group.name, taken.seq);
            }
            if held_first {
                self.trim();
            }
        }
    }

    // ---- push ----

    pub(crate) fn start_push(&mut self, data: &Bytes, wait: Wait) -> Start<Seq> {
        if let Err(e) = self.alive() {
            return Start::Done(Err(e));
        }
        self.expire_idle();
        if matches!(self.config.retain, Retention::Age(_)) {
            // Retained messages grow old while nothing else happens.
            self.trim();
        }
        if self.closed {
            return Start::Done(Err(Error::Closed));
        }
        if let Err(e) = self.config.admits(data.len()) {
            return Start::Done(Err(e));
        }
        if self.offers.is_empty()
            && self.fits_now()
            && self.bytes_fit(data.len())
            && self.rate_token()
        {
            let seq = self.append(data);
            if seq.is_ok() {
                self.dispatch();
            }
            return Start::Done(seq);
        }
        if wait == Wait::NonBlock {
            return Start::Done(Err(Error::WouldBlock));
        }
        let key = self.writers.insert(Writer {
            stage: Stage::Offered,
            waker: None,
        });
        // Only a push that waits keeps its message (the log copies it).
        self.offers.push_back((key, data.clone()));
        self.dispatch();
        match self.decide_writer(key, None) {
            Some(result) => Start::Done(result),
            None => Start::Wait(key, self.config.timeout),
        }
    }

    /// A waiting push's future polls: its result if decided (removing its
    /// entry), else `None` with its waker stored. At the front of the
    /// queue with room, it appends its message now. With `cut`, it must
    /// decide: a message not taken is withdrawn with `cut`'s error, one a
    /// reader took is `Ok`.
    pub(crate) fn collect_writer(
        &mut self,
        key: usize,
        cut: Option<Cut>,
        cx: &Context<'_>,
    ) -> Result<Result<Seq>, Option<Instant>> {
        self.retry_at = None;
        match self.decide_writer(key, cut) {
            Some(out) => Ok(out),
            None => {
                store_waker(&mut self.writers[key].waker, cx);
                // Refused by the rate alone: sleep until its next token.
                Err(self.retry_at.take())
            }
        }
    }

    fn decide_writer(&mut self, key: usize, cut: Option<Cut>) -> Option<Result<Seq>> {
        // At the front of the queue, with room (capacity, max_bytes) and
        // a token of the rate: it goes in.
        let goes = matches!(self.writers[key].stage, Stage::Offered)
            && (self.offers.front()).is_some_and(|o| o.0 == key && self.bytes_fit(o.1.len()))
            && self.fits_now()
            && self.rate_token();
        let result = match self.writers[key].stage {
            Stage::Done(_) => None,
            Stage::Offered if goes => {
                let (_, data) = self.offers.pop_front().expect("front");
                let seq = self.append(&data);
                self.dispatch();
                Some(seq)
            }
            Stage::Offered => {
                let cut = cut?;
                self.withdraw(key);
                Some(Err(cut_error(cut)))
            }
            Stage::Appended(seq) => {
                cut?;
                if let Some(at) = self.appended.iter().position(|&(_, k)| k == key) {
                    self.appended.remove(at);
                }
                Some(Ok(seq))
            }
        };
        if result.is_some() || matches!(self.writers[key].stage, Stage::Done(_)) {
            let removed = self.writers.remove(key);
            return result.or(match removed.stage {
                Stage::Done(result) => Some(result),
                _ => None,
            });
        }
        None
    }

    /// Take a waiting push's message out of the queue (it was never in the
    /// log), and let the next one go if there is room.
    fn withdraw(&mut self, key: usize) {
        if let Some(at) = self.offers.iter().position(|&(k, _)| k == key) {
            self.offers.remove(at);
        }
        self.dispatch();
    }

    /// Whether a message of `len` bytes may join those held for readers
    /// under `max_bytes`. With none held, any may (one over the limit is
    /// refused before it waits, unless the limit was lowered meanwhile:
    /// then it goes alone rather than wait for ever).
    fn bytes_fit(&self, len: usize) -> bool {
        match self.config.max_bytes {
            Some(max) => self.held == 0 || self.held.saturating_add(len as u64) <= max,
            None => true,
        }
    }

    /// Take a token of the topic's rate for a message about to be
    /// appended; refused, remember when the next comes (`retry_at`).
    fn rate_token(&mut self) -> bool {
        let Some(bucket) = &self.bucket else {
            return true;
        };
        match bucket.take() {
            Ok(()) => true,
            Err(at) => {
                self.retry_at = Some(at);
                false
            }
        }
    }

    /// Whether a message appended now leaves its push nothing to wait for:
    /// every group has room for it, or is at the end with a reader blocked
    /// that will take it at once.
    fn fits_now(&self) -> bool {
        let next = self.next();
        let c = self.config.capacity;
        // Every group counts as at or past `taken` (one reading retained
        // history as at `taken`): room there is room for all (and idle
        // groups cost nothing).
        if next < self.taken.saturating_add(c) {
            return true;
        }
        if self.groups.is_empty() {
            return false;
        }
        self.groups.iter().all(|(_, g)| {
            next < g.offset.max(self.taken).saturating_add(c)
                || (g.offset == next && !g.waiters.is_empty())
        })
    }

    /// A blocked push's future was dropped: withdraw its message if it
    /// was not taken.
    pub(crate) fn cancel_writer(&mut self, key: usize) {
        match self.writers.remove(key).stage {
            Stage::Offered => self.withdraw(key),
            Stage::Appended(_) => {
                if let Some(at) = self.appended.iter().position(|&(_, k)| k == key) {
                    self.appended.remove(at);
                }
            }
            Stage::Done(_) => {}
        }
    }

    fn finish_writer(&mut self, key: usize, result: Result<Seq>) {
        let writer = &mut self.writers[key];
        writer.stage = Stage::Done(result);
        if let Some(waker) = writer.waker.take() {
            self.wakes.push(waker);
        }
    }

    // ---- the hand-off ----

    /// Restore the invariants after a change: feed every group's blocked
    /// readers, complete and admit pushes. Only the groups with blocked
    /// readers are visited, so idle groups cost a push nothing. (Feeding
    /// and pushing never let a held message go: what a reader takes is out
    /// with it. What does — an ack, a forget, a seek, an expiry — trims.)
    pub(crate) fn dispatch(&mut self) {
        loop {
            let mut moved = false;
            if self.waiting > 0 {
                let mut hungry = std::mem::take(&mut self.hungry);
                hungry.extend(
                    (self.readers.iter())
                        .filter(|(_, r)| r.outcome.is_none())
                        .map(|(_, r)| r.group),
                );
                hungry.sort_unstable();
                hungry.dedup();
                for &g in &hungry {
                    if self.groups.get(g).is_some_and(|g| !g.waiters.is_empty()) {
                        moved |= self.feed(g);
                    }
                }
                hungry.clear();
                self.hungry = hungry;
            }
            moved |= self.settle_writers();
            if !moved {
                break;
            }
        }
    }

    /// Hand group `g`'s messages to its blocked readers, oldest first.
    /// Returns whether a message moved.
    fn feed(&mut self, g: usize) -> bool {
        let mut moved = false;
        while let Some(&key) = self.groups[g].waiters.front() {
            let outcome = match self.take(g) {
                Some(Ok(taken)) => {
                    moved = true;
                    Ok(Some(taken))
                }
                Some(Err(e)) => Err(e),
                None if self.closed => Ok(None),
                None => break,
            };
            self.groups[g].waiters.pop_front();
            self.waiting -= 1;
            self.decide_reader(key, outcome);
        }
        moved
    }

    fn decide_reader(&mut self, key: usize, outcome: Result<Option<Taken>>) {
        let reader = &mut self.readers[key];
        reader.outcome = Some(outcome);
        if let Some(waker) = reader.waker.take() {
            self.wakes.push(waker);
        }
    }

    /// Complete the appended pushes whose message every group has taken (or
    /// capacity allows), and wake the oldest waiting push if there is room
    /// (its future appends it: see the module comment). Returns whether a
    /// message was appended.
    fn settle_writers(&mut self) -> bool {
        if self.appended.is_empty() && self.offers.is_empty() {
            return false;
        }
        let c = self.config.capacity;
        let min = self.min_offset();
        while let Some(&(seq, key)) = self.appended.front() {
            if seq < min.saturating_add(c) {
                self.appended.pop_front();
                self.finish_writer(key, Ok(seq));
            } else {
                break;
            }
        }
        if let Some(&(key, _)) = self.offers.front()
            && self.next() < min.saturating_add(c)
            && let Some(waker) = self.writers[key].waker.take()
        {
            self.wakes.push(waker);
        }
        false
    }

    /// Drop the messages every group is done with (read and acked, not
    /// out with a reader nor waiting for redelivery) that retention does
    /// not keep, so `first`, `pending` and every group's `offset` agree.
    /// With no group, keep all that no group has taken: they wait for the
    /// first.
    fn trim(&mut self) {
        let first = self.log.first();
        let held = match self.groups.iter().map(|(_, g)| g.floor()).min() {
            Some(min) => min,
            None if self.config.retain == Retention::None => return,
            None => self.taken,
        };
        let bytes = matches!(self.config.retain, Retention::Bytes(_));
        let freed = held > self.taken;
        if freed {
            // (A removed topic's log is empty: nothing of it is held.)
            let from = self.taken.max(first);
            let size = self.bytes_between(from, held);
            if bytes {
                self.kept.bytes += size;
            }
            self.held = self.held.saturating_sub(size);
            self.taken = held;
        }
        let keep_from = match self.config.retain {
            Retention::None => self.taken,
            Retention::Count(n) => self.taken.saturating_sub(n),
            Retention::Bytes(max) => {
                let (mut s, mut b) = (first, self.kept.bytes);
                while s < self.taken && b > max {
                    b -= self.size(s);
                    s += 1;
                }
                s
            }
            Retention::Age(age) => self.kept.expired_before(age, first).min(self.taken),
        };
        let to = held.min(keep_from);
        if to > first {
            if bytes {
                for s in first..to {
                    self.kept.bytes -= self.size(s);
                }
            }
            // The bytes of those no longer in memory (see `bytes_between`).
            let spilled = self.bytes_between(first, to.min(self.log.resident()));
            self.log.trim(to, spilled);
            self.kept.trimmed(to);
            if let Some(store) = self.store() {
                store.trimmed(to);
            }
        }
        if freed && self.config.max_bytes.is_some() && !self.offers.is_empty() {
            // Room under max_bytes: a waiting push may go on.
            self.dispatch();
        }
    }

    /// Start the bookkeeping of a retention limit afresh (a new limit, or
    /// a restored topic): the bytes held by retention, or, for an age,
    /// the messages held counted as pushed now (so they are kept at least
    /// that long).
    fn retention_changed(&mut self) {
        self.kept.clear();
        match self.config.retain {
            Retention::Bytes(_) => {
                self.kept.bytes += self.bytes_between(self.log.first(), self.taken);
            }
            Retention::Age(age) if self.next() > 0 => self.kept.pushed(self.next() - 1, age),
            Retention::Age(_) => {}
            Retention::None | Retention::Count(_) => {}
        }
    }

    // ---- control ----

    pub(crate) fn set(&mut self, setting: Setting) -> Result<()> {
        self.alive()?;
        match setting {
            Setting::Capacity(c) => self.config.capacity = c,
            Setting::Framing(f) => self.config.framing = f,
            Setting::Timeout(t) => self.config.timeout = t,
            Setting::MaxMessage(m) => self.config.max_message = m,
            Setting::Retain(r) => {
                self.config.retain = r;
                self.retention_changed();
            }
            Setting::MaxBytes(m) => self.config.max_bytes = m,
            Setting::Rate(r) => {
                self.config.rate = r;
                self.bucket = r.map(Bucket::new);
            }
        }
        let (config, closed) = (self.config, self.closed);
        if let Some(store) = self.store() {
            store.settings(&config, closed);
        }
        self.dispatch();
        self.trim();
        Ok(())
    }

    /// End every blocked push: those not taken fail with `error` (and are
    /// withdrawn), those a reader took succeed.
    fn fail_writers(&mut self, error: Error) {
        for (_, writer) in self.writers.iter_mut() {
            let result = match writer.stage {
                Stage::Done(_) => continue,
                Stage::Offered => Err(error.clone()),
                Stage::Appended(seq) => Ok(seq),
            };
            writer.stage = Stage::Done(result);
            if let Some(waker) = writer.waker.take() {
                self.wakes.push(waker);
            }
        }
        self.offers.clear();
        self.appended.clear();
    }

    pub(crate) fn reset(&mut self) -> Result<()> {
        self.alive()?;
        let next = self.next();
        self.log.clear();
        self.taken = next;
        self.held = 0;
        self.retention_changed();
        let (config, was_closed) = (self.config, self.closed);
        if let Some(store) = self.store() {
            store.reset(next);
            if was_closed {
                store.settings(&config, false);
            }
        }
        self.fail_writers(Error::Reset);
        // Every group goes on from the end; its blocked readers keep
        // waiting, and deliveries still out no longer come back.
        for key in 0..self.groups.capacity() {
            if self.groups.contains(key) {
                let id = self.new_group_id();
                self.groups[key].restart(id, next);
            }
        }
        self.closed = false;
        self.dispatch();
        Ok(())
    }

    pub(crate) fn close(&mut self) -> Result<()> {
        self.alive()?;
        self.closed = true;
        let config = self.config;
        if let Some(store) = self.store() {
            store.settings(&config, true);
        }
        // Pushes still waiting with their message outside the log fail;
        // those a reader took stay to be drained.
        let offers = std::mem::take(&mut self.offers);
        for (key, _) in offers {
            self.finish_writer(key, Err(Error::Closed));
        }
        self.dispatch();
        Ok(())
    }

    /// The topic is gone: wake everything blocked with `Removed`.
    pub(crate) fn remove(&mut self) {
        self.removed = true;
        self.fail_writers(Error::Removed);
        for (_, reader) in self.readers.iter_mut() {
            if reader.outcome.is_none() {
                reader.outcome = Some(Err(Error::Removed));
                if let Some(waker) = reader.waker.take() {
                    self.wakes.push(waker);
                }
            }
        }
        for (_, group) in self.groups.iter_mut() {
            group.waiters.clear();
        }
        self.waiting = 0;
        self.log.clear();
        if let Some(mut store) = self.store.take() {
            store.removed();
        }
    }

    pub(crate) fn forget(&mut self, name: &str) -> Result<()> {
        self.alive()?;
        let Some(&key) = self.group_index.get(name) else {
            return Err(Error::NoGroup(name.to_string()));
        };
        let first = self.log.first();
        if self.groups[key].waiters.is_empty() {
            self.groups.remove(key);
            self.group_index.remove(name);
            if let Some(store) = self.store() {
                store.forget_group(name, first);
            }
        } else {
            // Readers are blocked in it: it begins anew, as at a first pull.
            let id = self.new_group_id();
            self.groups[key].restart(id, first);
            if let Some(store) = self.store() {
                store.start_group(name, first);
            }
        }
        self.dispatch();
        self.trim();
        Ok(())
    }

    pub(crate) fn offset(&mut self, name: &str) -> Result<Seq> {
        self.alive()?;
        self.expire_idle();
        let key = self.group(name)?;
        Ok(self.groups[key].next_seq())
    }

    pub(crate) fn seek(&mut self, name: &str, seq: Seq) -> Result<()> {
        self.alive()?;
        let (first, next) = (self.log.first(), self.next());
        if seq < first || seq > next {
            return Err(Error::OffsetOutOfRange {
                asked: seq,
                first,
                next,
            });
        }
        let key = self.group(name)?;
        let id = self.new_group_id();
        self.groups[key].restart(id, seq);
        if let Some(store) = self.store() {
            store.start_group(name, seq);
        }
        self.dispatch();
        self.trim();
        Ok(())
    }

    pub(crate) fn status(&self, name: &str) -> Result<TopicStatus> {
        self.alive()?;
        let next = self.next();
        let mut groups: Vec<_> = self.groups.iter().map(|(_, g)| g.status(next)).collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(TopicStatus {
            name: name.to_string(),
            config: self.config,
            pending: self.log.len(),
            bytes: self.log.bytes(),
            retained: self.taken - self.log.first(),
            first: self.log.first(),
            next,
            pushed: self.pushed,
            pulled: self.pulled,
            blocked_readers: self.waiting as u64,
            blocked_writers: (self.offers.len() + self.appended.len()) as u64,
            groups,
            closed: self.closed,
            local: "",
        })
    }
}
