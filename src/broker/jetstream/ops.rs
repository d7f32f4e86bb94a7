//! Pushes, pulls and deliveries of the JetStream engine.
//!
//! Each push and pull runs as a task and its future collects the outcome
//! (a oneshot), so that a pull's request stays at the server, and a
//! rendezvous push can be taken, while the caller is not polling: the
//! memory engine decides hand-offs under its lock the same way. Dropping
//! the future cancels the task, which then undoes what it can: a pull
//! naks whatever reaches it afterwards; a push not yet published is
//! withdrawn. A rendezvous push publishes only once some group has a
//! reader waiting for it, and from then on counts as taken.
//!
//! Waiting for room never spins: a push asks every group's consumer how
//! far it lags, and while the slowest lags the capacity or more it sleeps
//! a back-off that doubles from 1 ms to `MAX_BACKOFF`, or less when a pull
//! or ack on this server moved the topic (`Topic::progress`), or when the
//! registry changed it (reset, close, remove). One look that finds room
//! for n more pushes lets the next n on this server go without looking
//! (`Topic::credit`), so a push with room costs one publish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::registry::{Record, Topic};
use super::{Inner, unavailable};
use crate::broker::{Delivery, Error, Result, Seq, Target, Wait, cut_error};
use crate::cut::cutting;

/// The longest a waiting push sleeps between two looks at the groups.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// The longest one pull request waits at the server before another is
/// sent (so a reader whose server lost NATS finds out).
const MAX_EXPIRES: Duration = Duration::from_secs(5);

/// Message ids for JetStream's de-duplication: a publish retried after a
/// lost acknowledgement is stored once.
static NEXT_MSG: AtomicU64 = AtomicU64::new(0);

/// Where a push stands, for a caller that cuts it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for room: a cut withdraws it.
    Waiting,
    /// Its publish is on the wire.
    Publishing,
    /// Stored at this stream sequence.
    Published(u64),
    /// A cut told the caller `Ok`: stays, whatever happens.
    Kept,
    /// A cut withdrew it: not to be published, or deleted if it was.
    Abandoned,
    /// A cut withdrew it while its publish was on the wire: deleted once
    /// stored, and counted in `Topic::withdrawing` until then.
    AbandonedInFlight,
}

/// A push running as a task.
pub(super) struct PushOp {
    rx: oneshot::Receiver<Result<Seq>>,
    topic: Arc<Topic>,
    phase: Arc<Mutex<Phase>>,
    _cancel: DropGuard,
}

impl Future for PushOp {
    type Output = Result<Seq>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Seq>> {
        if let Poll::Ready(r) = Pin::new(&mut self.rx).poll(cx) {
            return Poll::Ready(r.unwrap_or(Err(Error::Interrupted)));
        }
        let Some(cut) = cutting() else {
            return Poll::Pending;
        };
        let mut phase = self.phase.lock();
        Poll::Ready(match *phase {
            Phase::Published(js) => {
                *phase = Phase::Kept;
                Ok(js - 1)
            }
            Phase::Kept => Err(Error::Interrupted),
            Phase::Publishing => {
                *phase = Phase::AbandonedInFlight;
                self.topic.withdrawing.fetch_add(1, Ordering::Relaxed);
                Err(cut_error(cut))
            }
            _ => {
                *phase = Phase::Abandoned;
                Err(cut_error(cut))
            }
        })
    }
}

/// A pull running as a task.
pub(super) struct PullOp {
    rx: oneshot::Receiver<Result<Option<JetStreamDelivery>>>,
    _cancel: DropGuard,
}

impl Future for PullOp {
    type Output = Result<Option<JetStreamDelivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.unwrap_or(Err(Error::Interrupted))),
            Poll::Pending => match cutting() {
                // Dropped next: the task naks whatever reaches it now.
                Some(cut) => Poll::Ready(Err(cut_error(cut))),
                None => Poll::Pending,
            },
        }
    }
}

/// Start a push.
pub(super) fn push(
    inner: &Arc<Inner>,
    target: Target<'_>,
    data: Bytes,
    wait: Wait,
) -> impl Future<Output = Result<Seq>> + Send + use<> {
    let topic = inner.topic(target);
    let inner = inner.clone();
    // The task starts at the first poll, as the memory engine's push does.
    async move {
        let topic = topic?;
        let (tx, rx) = oneshot::channel();
        let phase = Arc::new(Mutex::new(Phase::Waiting));
        let cancel = CancellationToken::new();
        let task = PushTask {
            inner,
            topic,
            phase: phase.clone(),
            cancel: cancel.clone(),
        };
        task.topic.blocked_writers.fetch_add(1, Ordering::Relaxed);
        let topic = task.topic.clone();
        tokio::spawn(async move {
            let r = task.run(data, wait).await.map_err(|e| gone(&task.topic, e));
            task.topic.blocked_writers.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(r);
        });
        PushOp {
            rx,
            topic,
            phase,
            _cancel: cancel.drop_guard(),
        }
        .await
    }
}

/// Start a pull.
pub(super) fn pull(
    inner: &Arc<Inner>,
    target: Target<'_>,
    group: &str,
    wait: Wait,
) -> impl Future<Output = Result<Option<JetStreamDelivery>>> + Send + use<> {
    let topic = inner.topic(target);
    let inner = inner.clone();
    let group = group.to_string();
    // The task starts at the first poll; till it ends, a pull of this
    // group on this server is known (`Topic::pulling`) before its request
    // reaches JetStream.
    async move {
        let topic = topic?;
        let pulling = Pulling::new(&topic, &group);
        let (tx, rx) = oneshot::channel();
        let cancel = CancellationToken::new();
        let task = PullTask {
            inner,
            topic,
            group,
            cancel: cancel.clone(),
        };
        tokio::spawn(async move {
            let r = task
                .run(wait, &pulling)
                .await
                .map_err(|e| gone(&task.topic, e));
            drop(pulling);
            // A delivery nobody will collect is dropped, so nak'd.
            let _ = tx.send(r);
        });
        PullOp {
            rx,
            _cancel: cancel.drop_guard(),
        }
        .await
    }
}

/// A pull of a group under way on this server, counted in
/// `Topic::pulling` while it lives, with its place in the line of the
/// group's pulls: its first request goes to JetStream only after those of
/// the pulls that started before it on this server, so that JetStream
/// (which serves waiting requests in order) serves them in arrival order.
struct Pulling {
    topic: Arc<Topic>,
    group: String,
    ticket: u64,
}

impl Pulling {
    fn new(topic: &Arc<Topic>, group: &str) -> Pulling {
        let ticket = topic.tickets.fetch_add(1, Ordering::Relaxed);
        let mut pulling = topic.pulling.lock();
        pulling.entry(group.to_string()).or_default().insert(ticket);
        Pulling {
            topic: topic.clone(),
            group: group.to_string(),
            ticket,
        }
    }

    /// Wait until every pull of the group that started before this one
    /// on this server has sent its first request.
    async fn my_turn(&self) {
        loop {
            let turn = self.topic.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let first = self
                .topic
                .pulling
                .lock()
                .get(&self.group)
                .and_then(|line| line.first().copied());
            if first.is_none_or(|t| t >= self.ticket) {
                return;
            }
            turn.await;
        }
    }

    /// Its first request is sent: the next pull's turn.
    fn done_turn(&self) {
        let mut pulling = self.topic.pulling.lock();
        if let Some(line) = pulling.get_mut(&self.group) {
            line.remove(&self.ticket);
        }
        drop(pulling);
        self.topic.turn.notify_waiters();
    }
}

impl Drop for Pulling {
    fn drop(&mut self) {
        self.done_turn();
        // The group stays listed while a pull of it is under way.
        let mut pulling = self.topic.pulling.lock();
        if pulling.get(&self.group).is_some_and(|l| l.is_empty()) {
            pulling.remove(&self.group);
        }
    }
}

/// An error of JetStream on a topic removed meanwhile (its stream is
/// deleted just after the registry entry) is the removal.
fn gone(topic: &Topic, e: Error) -> Error {
    match e {
        Error::Unavailable(_) if topic.record().is_none() => Error::Removed,
        e => e,
    }
}

/// Why a wait ended early.
enum Woke {
    /// Time to look again.
    Look,
    Changed,
    Deadline,
    Cancelled,
}

/// Sleep `backoff`, or less if something moved.
async fn nap(
    topic: &Topic,
    changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    backoff: Duration,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Woke {
    let until = deadline.map_or(Instant::now() + backoff, |d| {
        d.min(Instant::now() + backoff)
    });
    tokio::select! {
        _ = topic.progress.notified() => Woke::Look,
        r = changes.changed() => match r {
            Ok(()) => Woke::Changed,
            Err(_) => Woke::Changed,
        },
        _ = tokio::time::sleep_until(until) => match deadline {
            Some(d) if Instant::now() >= d => Woke::Deadline,
            _ => Woke::Look,
        },
        _ = cancel.cancelled() => Woke::Cancelled,
    }
}

struct PushTask {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    phase: Arc<Mutex<Phase>>,
    cancel: CancellationToken,
}

impl PushTask {
    async fn run(&self, data: Bytes, wait: Wait) -> Result<Seq> {
        let mut changes = self.topic.record.subscribe();
        let record = changes.borrow_and_update().clone().ok_or(Error::Removed)?;
        if record.closed {
            return Err(Error::Closed);
        }
        let config = record.config();
        config.admits(data.len())?;
        if data.len() as u64 > self.inner.max_payload {
            return Err(Error::TooLong {
                size: data.len() as u64,
                max: self.inner.max_payload,
            });
        }
        let deadline = config.timeout.map(|t| Instant::now() + t);
        let stream = self.inner.stream(&self.topic).await?;
        if config.capacity > 0 {
            self.wait_room(
                &stream,
                &record,
                config.capacity,
                wait,
                deadline,
                &mut changes,
            )
            .await?;
        } else {
            self.wait_reader(&stream, &record, wait, deadline, &mut changes)
                .await?;
        }
        let js_seq = self.publish(&stream, data).await?;
        // Capacity may have grown while it waited for a reader.
        let capacity = changes.borrow().as_ref().map_or(0, |r| r.capacity);
        if config.capacity > 0 || capacity > 0 {
            return Ok(js_seq - 1);
        }
        let deadline = match wait {
            Wait::Block => deadline,
            Wait::NonBlock => Some(Instant::now() + Duration::from_secs(1)),
        };
        self.wait_taken(&stream, &record, js_seq, deadline, &mut changes)
            .await
    }

    /// Wait until no group lags `capacity` or more.
    async fn wait_room(
        &self,
        stream: &jetstream::stream::Stream<()>,
        record: &Record,
        capacity: u64,
        wait: Wait,
        deadline: Option<Instant>,
        changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    ) -> Result<()> {
        let credit = &self.topic.credit;
        let mut backoff = Duration::from_millis(1);
        loop {
            if credit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
                .is_ok()
            {
                return Ok(());
            }
            // A reset, close or removal seen meanwhile ends the wait.
            changed(changes, record)?;
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let groups = self.inner.groups(stream).await?;
            // A consumer's count may not have caught up with this server's
            // last publish yet: count from that too.
            let last = self.topic.published.load(Ordering::Relaxed);
            let lag_of = |g: &consumer::Info| {
                g.num_pending
                    .max(last.saturating_sub(g.delivered.stream_sequence))
            };
            let lag = match groups.iter().map(lag_of).max() {
                Some(lag) => lag,
                // Held for the group to come.
                None => self.inner.held(stream).await?.messages,
            };
            if lag < capacity {
                changed(changes, record)?;
                credit.store(capacity - lag - 1, Ordering::Relaxed);
                let _ = self.inner.trim(&self.topic, stream, &groups).await;
                return Ok(());
            }
            if wait == Wait::NonBlock {
                return Err(Error::WouldBlock);
            }
            let woke = tokio::select! {
                _ = progress => Woke::Look,
                w = nap(&self.topic, changes, backoff, deadline, &self.cancel) => w,
            };
            match woke {
                Woke::Look => {}
                Woke::Changed => changed(changes, record)?,
                Woke::Deadline => return Err(Error::TimedOut),
                Woke::Cancelled => return Err(Error::Interrupted),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Publish, retrying with the same message id (stored once) until
    /// JetStream acknowledges or the broker's timeout passes.
    async fn publish(&self, stream: &jetstream::stream::Stream<()>, data: Bytes) -> Result<u64> {
        {
            let mut phase = self.phase.lock();
            if *phase == Phase::Abandoned {
                return Err(Error::Interrupted);
            }
            *phase = Phase::Publishing;
        }
        let id = format!(
            "{}-{}",
            self.inner.instance,
            NEXT_MSG.fetch_add(1, Ordering::Relaxed)
        );
        let give_up = Instant::now() + self.inner.config.timeout;
        let js_seq = loop {
            let sent = async {
                self.inner
                    .js
                    .send_publish(
                        self.topic.subject.clone(),
                        PublishMessage::build()
                            .payload(data.clone())
                            .message_id(&id),
                    )
                    .await?
                    .await
            };
            match sent.await {
                Ok(ack) => break ack.sequence,
                Err(e) if Instant::now() >= give_up => {
                    let mut phase = self.phase.lock();
                    if *phase == Phase::AbandonedInFlight {
                        self.topic.withdrawn();
                    }
                    *phase = Phase::Abandoned;
                    return Err(unavailable(e));
                }
                Err(_) if self.topic.record().is_none() => {
                    let mut phase = self.phase.lock();
                    if *phase == Phase::AbandonedInFlight {
                        self.topic.withdrawn();
                    }
                    *phase = Phase::Abandoned;
                    return Err(Error::Removed);
                }
                Err(e) => {
                    tracing::debug!("publish to {}: {e}; again", self.topic.stream);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let abandoned = {
            let mut phase = self.phase.lock();
            let abandoned = *phase == Phase::AbandonedInFlight;
            if !abandoned {
                *phase = Phase::Published(js_seq);
            }
            abandoned
        };
        if abandoned {
            // Cut short while on the wire: told withdrawn, so it goes
            // (this server's pulls wait for that: `Topic::withdrawing`).
            let _ = stream.delete_message(js_seq).await;
            self.topic.withdrawn();
            return Err(Error::Interrupted);
        }
        self.topic.tally.pushed();
        self.topic.published.fetch_max(js_seq, Ordering::Relaxed);
        Ok(js_seq)
    }

    /// At a rendezvous, before publishing: wait until some group has a
    /// reader waiting and nothing left to read (a reader on this server
    /// counts at once, one on another once its request reached JetStream),
    /// so that a push no reader wants is never stored.
    async fn wait_reader(
        &self,
        stream: &jetstream::stream::Stream<()>,
        record: &Record,
        wait: Wait,
        deadline: Option<Instant>,
        changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(1);
        loop {
            changed(changes, record)?;
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let groups = self.inner.groups(stream).await?;
            let wants = |g: &consumer::Info| {
                g.num_pending == 0
                    && (g.num_waiting > 0
                        || super::group_of(&g.name)
                            .is_some_and(|n| self.topic.pulling.lock().contains_key(&n)))
            };
            let ready = match wait {
                Wait::Block => groups.iter().any(wants),
                Wait::NonBlock => !groups.is_empty() && groups.iter().all(wants),
            };
            if ready {
                return Ok(());
            }
            if wait == Wait::NonBlock {
                return Err(Error::WouldBlock);
            }
            let woke = tokio::select! {
                _ = progress => Woke::Look,
                w = nap(&self.topic, changes, backoff, deadline, &self.cancel) => w,
            };
            match woke {
                Woke::Look => {}
                Woke::Changed => {
                    changed(changes, record)?;
                    if changes.borrow().as_ref().is_some_and(|r| r.capacity > 0) {
                        // Capacity grew: room now decides.
                        return Ok(());
                    }
                }
                Woke::Deadline => return Err(Error::TimedOut),
                Woke::Cancelled => return Err(Error::Interrupted),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// At a rendezvous: wait until every group has taken `js_seq`.
    async fn wait_taken(
        &self,
        stream: &jetstream::stream::Stream<()>,
        record: &Record,
        js_seq: u64,
        deadline: Option<Instant>,
        changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    ) -> Result<Seq> {
        let mut backoff = Duration::from_millis(1);
        let took = |g: &consumer::Info| g.delivered.stream_sequence >= js_seq;
        let mut last_look: Vec<consumer::Info>;
        loop {
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let groups = self.inner.groups(stream).await?;
            if !groups.is_empty() && groups.iter().all(took) {
                return Ok(js_seq - 1);
            }
            last_look = groups;
            let woke = tokio::select! {
                _ = progress => Woke::Look,
                w = nap(&self.topic, changes, backoff, deadline, &self.cancel) => w,
            };
            let taken = |last_look: &[consumer::Info]| {
                last_look.iter().any(took) || self.topic.delivered.load(Ordering::Relaxed) >= js_seq
            };
            match woke {
                Woke::Look => {}
                Woke::Changed => match changed(changes, record) {
                    // Reset: the purge leaves the consumers' pointers, so
                    // one more look tells whether a group took it.
                    Err(Error::Reset) => {
                        let groups = self.inner.groups(stream).await?;
                        return match groups.iter().any(took) || taken(&last_look) {
                            true => Ok(js_seq - 1),
                            false => Err(Error::Reset),
                        };
                    }
                    // Removed before any group took it: gone.
                    Err(Error::Removed) if !taken(&last_look) => return Err(Error::Removed),
                    // Taken before that, or closed: it stays for the
                    // readers to drain.
                    Err(_) => return Ok(js_seq - 1),
                    // Capacity grew: it is held, as room allows.
                    Ok(()) if changes.borrow().as_ref().is_some_and(|r| r.capacity > 0) => {
                        return Ok(js_seq - 1);
                    }
                    Ok(()) => {}
                },
                // Stored because a reader wanted it: held for every group
                // as a taken message is, so `Ok` (deleting it now could
                // race a reader that takes it, and other groups would lose
                // it).
                Woke::Deadline | Woke::Cancelled => return Ok(js_seq - 1),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// What a change of the topic's record means to a waiting push.
fn changed(
    changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    before: &Record,
) -> Result<()> {
    match &*changes.borrow_and_update() {
        None => Err(Error::Removed),
        Some(r) if r.resets != before.resets => Err(Error::Reset),
        Some(r) if r.closed => Err(Error::Closed),
        Some(_) => Ok(()),
    }
}

struct PullTask {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    group: String,
    cancel: CancellationToken,
}

impl PullTask {
    async fn run(&self, wait: Wait, pulling: &Pulling) -> Result<Option<JetStreamDelivery>> {
        // Never take a push this server told its writer was withdrawn.
        self.topic.no_withdrawals(self.inner.config.timeout).await;
        let mut changes = self.topic.record.subscribe();
        let record = changes.borrow_and_update().clone().ok_or(Error::Removed)?;
        let deadline = record.config().timeout.map(|t| Instant::now() + t);
        let mut consumer = self.inner.consumer(&self.topic, &self.group).await?;
        loop {
            let Some(record) = changes.borrow_and_update().clone() else {
                return Err(Error::Removed);
            };
            if record.closed || wait == Wait::NonBlock {
                let mut batch = self
                    .inner
                    .within(consumer.fetch().max_messages(1).messages())
                    .await?;
                match batch.next().await {
                    Some(Ok(m)) => return Ok(Some(self.deliver(m))),
                    Some(Err(e)) => return Err(unavailable(e)),
                    None if !record.closed => return Err(Error::WouldBlock),
                    None => {}
                }
                // Closed, nothing to read now: the end, unless a delivery
                // of the group is still out (it may come back) or a nak of
                // this server is on its way.
                self.topic.settled(self.inner.config.timeout).await;
                let mut c = consumer.clone();
                let info = self.inner.within(c.info()).await?;
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    return Ok(None);
                }
                if wait == Wait::NonBlock {
                    return Err(Error::WouldBlock);
                }
                let woke = tokio::select! {
                    _ = self.topic.progress.notified() => Woke::Look,
                    _ = tokio::time::sleep(MAX_BACKOFF) => Woke::Look,
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + MAX_EXPIRES)), if deadline.is_some() => Woke::Deadline,
                    _ = self.cancel.cancelled() => Woke::Cancelled,
                };
                match woke {
                    Woke::Deadline => return Err(Error::TimedOut),
                    Woke::Cancelled => return Err(Error::Interrupted),
                    _ => continue,
                }
            }
            let expires = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(MAX_EXPIRES),
                None => MAX_EXPIRES,
            };
            if expires < Duration::from_millis(1) {
                return Err(Error::TimedOut);
            }
            self.inner.connected().await?;
            self.topic.blocked_readers.fetch_add(1, Ordering::Relaxed);
            pulling.my_turn().await;
            let got = self
                .one(&consumer, expires, deadline, &mut changes, pulling)
                .await;
            self.topic.blocked_readers.fetch_sub(1, Ordering::Relaxed);
            match got {
                Got::Message(m) => return Ok(Some(self.deliver(*m))),
                Got::Again => {}
                Got::Fail(e) => return Err(e),
                Got::Lost => {
                    // The group's consumer is gone (forgotten, or moved
                    // by a seek on another server): find or make it.
                    // A seek deletes and makes it again at once: wait for
                    // that rather than make it at the oldest meanwhile.
                    self.topic.consumers.lock().remove(&self.group);
                    consumer = self.inner.find_consumer(&self.group, &self.topic).await?;
                }
            }
        }
    }

    /// One pull request for one message, waiting at most `expires`.
    async fn one(
        &self,
        consumer: &PullConsumer,
        expires: Duration,
        deadline: Option<Instant>,
        changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
        pulling: &Pulling,
    ) -> Got {
        let batch = consumer.batch().max_messages(1).expires(expires).messages();
        let batch = self.inner.within(batch).await;
        pulling.done_turn();
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => return Got::Fail(e),
        };
        loop {
            let until = deadline.unwrap_or_else(|| Instant::now() + 2 * MAX_EXPIRES);
            tokio::select! {
                m = batch.next() => return match m {
                    Some(Ok(m)) => Got::Message(Box::new(m)),
                    Some(Err(e)) => {
                        tracing::debug!("pull {}: {e}", self.topic.stream);
                        Got::Lost
                    }
                    None => Got::Again,
                },
                _ = changes.changed() => {
                    let ends = match &*changes.borrow() {
                        None => true,
                        Some(r) => r.closed,
                    };
                    if ends {
                        abandon(batch);
                        return Got::Again;
                    }
                }
                _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                    abandon(batch);
                    return Got::Fail(Error::TimedOut);
                }
                _ = self.cancel.cancelled() => {
                    abandon(batch);
                    return Got::Fail(Error::Interrupted);
                }
            }
        }
    }

    fn deliver(&self, m: jetstream::Message) -> JetStreamDelivery {
        let js_seq = m.info().map(|i| i.stream_sequence).unwrap_or(1);
        self.topic.pulled.fetch_add(1, Ordering::Relaxed);
        self.topic.tally.pulled();
        self.topic.delivered.fetch_max(js_seq, Ordering::Relaxed);
        self.topic.progress.notify_waiters();
        JetStreamDelivery {
            seq: js_seq - 1,
            data: m.payload.clone(),
            message: Some(m),
            topic: self.topic.clone(),
        }
    }
}

/// What one pull request brought.
enum Got {
    Message(Box<jetstream::Message>),
    /// Nothing yet: ask again.
    Again,
    /// The consumer went away.
    Lost,
    Fail(Error),
}

/// A pull request given up while still open at the server: whatever it
/// still brings (until it expires) goes back to its group at once.
fn abandon(mut batch: consumer::pull::Batch) {
    tokio::spawn(async move {
        while let Some(m) = batch.next().await {
            if let Ok(m) = m {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
    });
}

/// A message pulled from JetStream: `ack` is an AckAck (the server
/// confirms it); dropped unacked, it is nak'd, so redelivered first.
pub struct JetStreamDelivery {
    seq: Seq,
    data: Bytes,
    /// The message to acknowledge; taken by `ack`.
    message: Option<jetstream::Message>,
    /// Woken on ack, so waiting pushes look again.
    topic: Arc<Topic>,
}

impl Delivery for JetStreamDelivery {
    fn seq(&self) -> Seq {
        self.seq
    }

    fn data(&self) -> &Bytes {
        &self.data
    }

    fn ack(mut self) {
        if let Some(m) = self.message.take() {
            settle(&self.topic, async move {
                if let Err(e) = m.double_ack().await {
                    tracing::warn!("ack: {e}; the message will be delivered again");
                }
            });
        }
    }
}

impl Drop for JetStreamDelivery {
    fn drop(&mut self) {
        if let Some(m) = self.message.take() {
            self.topic.pulled.fetch_sub(1, Ordering::Relaxed);
            self.topic.tally.unpulled();
            settle(&self.topic, async move {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

/// Send an ack or nak without making the reader wait for it, counted in
/// `Topic::settling` until JetStream confirmed it, so that this server's
/// status shows it; then waiting pushes look again. Outside a runtime it
/// cannot be sent: the message is redelivered after the ack wait.
fn settle(topic: &Arc<Topic>, f: impl Future<Output = ()> + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let topic = topic.clone();
    topic.settling.fetch_add(1, Ordering::Relaxed);
    rt.spawn(async move {
        f.await;
        topic.settling.fetch_sub(1, Ordering::Relaxed);
        topic.settled.notify_waiters();
        topic.progress.notify_waiters();
    });
}
