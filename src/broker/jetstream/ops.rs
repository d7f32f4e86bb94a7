//! Pushes, pulls and deliveries of the JetStream engine.
//!
//! Each push runs as a task and its future collects the outcome (a
//! oneshot), so that a rendezvous push can be taken while the caller is
//! not polling: the memory engine decides hand-offs under its lock the
//! same way. Dropping the future cancels the task, which then undoes what
//! it can: a push not yet published is withdrawn. A rendezvous push
//! publishes only once some group has a reader waiting for it, and from
//! then on counts as taken. With room, a push's first step
//! (`Broker::push_ordered`) ends once its publish is on the wire, so a
//! file's next write publishes while it waits for its acknowledgement.
//!
//! A blocking pull waits in its group's puller on this server
//! (`puller`), which hands it a message whether or not it is polled;
//! dropped, it takes nothing. A non-blocking pull asks JetStream once, in
//! a task that naks what its request brings if the pull is gone.
//!
//! Waiting for room never spins: a push asks every group's consumer how
//! far it lags, and while the slowest lags the capacity or more it sleeps
//! a back-off that doubles from 1 ms to `MAX_BACKOFF`, or less when a pull
//! or ack on this server moved the topic (`Topic::progress`), or when the
//! registry changed it (reset, close, remove). One look that finds room
//! for n more pushes lets the next n on this server go without looking
//! (`Topic::credit`), and what this server's pullers took since the last
//! look is room too (`Topic::room`), so a push with room costs one
//! publish. Both count only this server's pushes: a look that finds
//! messages stored beyond them (another server writes) gives no credit,
//! room is not used until a look finds this server alone again, and at
//! most C/8 pushes go on one look (`Topic::budget`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::registry::{Record, Topic};
use super::{Inner, unavailable};
use crate::broker::{Delivery, Error, Pushed, Result, Seq, Target, Wait, cut_error};
use crate::cut::cutting;

/// The longest a waiting push sleeps between two looks at the groups.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// How long a publish waits for its acknowledgement before it is
/// published again under the same id (stored once: JetStream's
/// de-duplication window is two minutes). A publish lost with a NATS node
/// (its stream's leader killed before it stored it) used to wait out the
/// broker's whole timeout and fail, though the later lines of its write
/// were stored: the write's count then ended before it, and the writer,
/// writing the rest again, doubled them (a review: 1 475 lines, one kill
/// of a stream's leader in twelve).
const ACK_TRY: Duration = Duration::from_secs(2);

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

/// Where a push stands, shared by the push and whoever cuts it short.
#[derive(Debug)]
struct Stage {
    phase: Mutex<Phase>,
    /// Woken once a publish on the wire is stored or given up: a caller
    /// that cut the push short while `Publishing` and waits for that.
    decided: AtomicWaker,
}

impl Stage {
    fn new() -> Arc<Stage> {
        Arc::new(Stage {
            phase: Mutex::new(Phase::Waiting),
            decided: AtomicWaker::new(),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Phase> {
        self.phase.lock()
    }
}

/// A push: run by its caller, or as a task (a rendezvous).
pub(super) struct PushOp {
    run: Running,
    topic: Arc<Topic>,
    phase: Arc<Stage>,
    _cancel: DropGuard,
}

/// Who runs a push.
enum Running {
    /// Its caller, polling it: a push with room then costs no task, and
    /// the publishes of a write's many pushes leave together. Dropped
    /// unfinished, it finishes as a task (`Drop for PushOp`).
    Inline(Option<Pin<Box<dyn Future<Output = Result<Seq>> + Send>>>),
    /// A task of its own, whose outcome comes here.
    Task(oneshot::Receiver<Result<Seq>>),
}

impl Future for PushOp {
    type Output = Result<Seq>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Seq>> {
        let done = match &mut self.run {
            Running::Task(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Interrupted))),
            Running::Inline(Some(f)) => f.as_mut().poll(cx),
            Running::Inline(None) => Poll::Ready(Err(Error::Interrupted)),
        };
        if let Poll::Ready(r) = done {
            self.run = Running::Inline(None);
            return Poll::Ready(r);
        }
        let Some(cut) = cutting() else {
            return Poll::Pending;
        };
        // Registered before the phase is read: a publish that ends after
        // the read wakes it.
        if crate::cut::patient() {
            self.phase.decided.register(cx.waker());
        }
        let mut phase = self.phase.lock();
        Poll::Ready(match *phase {
            Phase::Published(js) => {
                *phase = Phase::Kept;
                Ok(js - 1)
            }
            Phase::Kept => Err(Error::Interrupted),
            // Stored or not, a reader may take it the moment it is: a
            // caller that can wait learns which (`cut::defer`).
            Phase::Publishing if crate::cut::patient() => {
                drop(phase);
                crate::cut::defer();
                return Poll::Pending;
            }
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

impl Drop for PushOp {
    fn drop(&mut self) {
        // Cut short or given up: what is left (a publish on the wire to
        // delete, a count to undo) runs as the task would have.
        if let Running::Inline(Some(f)) = self.run_take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(f);
        }
    }
}

impl PushOp {
    fn run_take(&mut self) -> Running {
        std::mem::replace(&mut self.run, Running::Inline(None))
    }
}

/// A pull: its outcome if it has one when cut short, else the cut.
/// Dropped next, it takes nothing: a delivery handed to it afterwards
/// goes to the group's next pull on this server, or back to the group.
struct Cuttable<F>(Pin<Box<F>>);

impl<F: Future<Output = Result<Option<JetStreamDelivery>>>> Future for Cuttable<F> {
    type Output = Result<Option<JetStreamDelivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => match cutting() {
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
    async move { start_push(inner, topic?, data, wait).0.await }
}

/// Start a push, in two steps (`Broker::push_ordered`): the first ends
/// once its publish is on the wire (where its order is fixed), unless it
/// is a rendezvous (which the first step waits out whole).
pub(super) fn push_ordered(
    inner: &Arc<Inner>,
    target: Target<'_>,
    data: Bytes,
    wait: Wait,
) -> impl Future<Output = Result<Pushed>> + Send + use<> {
    let topic = inner.topic(target);
    let inner = inner.clone();
    async move {
        let (mut op, sent) = start_push(inner, topic?, data, wait);
        tokio::select! {
            biased;
            r = &mut op => r.map(Pushed::Done),
            Ok(()) = sent => Ok(Pushed::Pending(Box::pin(op))),
        }
    }
}

/// Spawn a push's task: its outcome, and word once its publish is sent
/// (with room, not at a rendezvous).
fn start_push(
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    data: Bytes,
    wait: Wait,
) -> (PushOp, oneshot::Receiver<()>) {
    let (sent_tx, sent) = oneshot::channel();
    let phase = Stage::new();
    let cancel = CancellationToken::new();
    let task = PushTask {
        inner,
        topic,
        phase: phase.clone(),
        cancel: cancel.clone(),
        sent: Mutex::new(Some(sent_tx)),
    };
    task.topic.blocked_writers.fetch_add(1, Ordering::Relaxed);
    let topic = task.topic.clone();
    // A rendezvous is taken by a reader whether or not its caller polls:
    // a task. With room (capacity as it is now; a push that then waits
    // and finds capacity 0 only publishes), the caller runs it.
    let rendezvous = topic
        .record
        .borrow()
        .as_ref()
        .is_none_or(|r| r.capacity == 0);
    let push = async move {
        let r = task.run(data, wait).await.map_err(|e| gone(&task.topic, e));
        task.topic.blocked_writers.fetch_sub(1, Ordering::Relaxed);
        r
    };
    let run = if rendezvous {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(push.await);
        });
        Running::Task(rx)
    } else {
        Running::Inline(Some(Box::pin(push)))
    };
    let op = PushOp {
        run,
        topic,
        phase,
        _cancel: cancel.drop_guard(),
    };
    (op, sent)
}

/// Start a pull. A blocking pull of an open topic waits in the group's
/// puller on this server (`puller`); the others (non-blocking, or a
/// closed topic drained) ask JetStream once and run as a task, so that
/// what that request brings is nak'd if the pull is dropped meanwhile.
pub(super) fn pull(
    inner: &Arc<Inner>,
    target: Target<'_>,
    group: &str,
    wait: Wait,
) -> impl Future<Output = Result<Option<JetStreamDelivery>>> + Send + use<> {
    let topic = inner.topic(target);
    let inner = inner.clone();
    let group = group.to_string();
    // Till it ends, a pull of this group on this server is known
    // (`Topic::pulling`), from its first poll.
    let fut = async move {
        let topic = topic?;
        let _pulling = Pulling::new(&topic, &group);
        // Never take a push this server told its writer was withdrawn.
        topic.no_withdrawals(inner.config.timeout).await;
        let mut changes = topic.record.subscribe();
        let record = changes.borrow_and_update().clone().ok_or(Error::Removed)?;
        let deadline = record.config().timeout.map(|t| Instant::now() + t);
        if wait == Wait::Block {
            let closed = record.closed;
            let got = wait_for(&inner, &topic, &group, deadline, &mut changes, closed).await;
            return got.map_err(|e| gone(&topic, e));
        }
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
                .run(wait, deadline)
                .await
                .map_err(|e| gone(&task.topic, e));
            // A delivery nobody will collect is dropped, so nak'd.
            let _ = tx.send(r);
        });
        let _cancel = cancel.drop_guard();
        rx.await.unwrap_or(Err(Error::Interrupted))
    };
    Cuttable(Box::pin(fut))
}

/// How often a blocked pull looks whether this server still has NATS.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// A blocking pull: wait in the group's puller until it hands over a
/// message; on a closed topic (`closed`, or closed meanwhile), the end
/// (`None`) once the group has nothing left to read and nothing out. The
/// pull stays in the puller till then, so what a request of its brings
/// is its own, in order.
async fn wait_for(
    inner: &Arc<Inner>,
    topic: &Arc<Topic>,
    group: &str,
    deadline: Option<Instant>,
    changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    mut closed: bool,
) -> Result<Option<JetStreamDelivery>> {
    let (tx, mut rx) = oneshot::channel();
    let existing = topic.pullers.lock().get(group).cloned();
    // The group's first pull here (or the first since its puller retired)
    // starts its puller in a task of its own, so that the pull is at
    // JetStream whether or not this is polled.
    let tx = match existing {
        Some(puller) => puller.enlist(tx).err(),
        None => Some(tx),
    };
    let mut starting = tx.map(|mut tx| {
        let (failed, starting) = oneshot::channel();
        let (inner, topic, group) = (inner.clone(), topic.clone(), group.to_string());
        tokio::spawn(async move {
            for _ in 0..3 {
                match inner.puller(&topic, &group).await {
                    // Retired since it was found (idle: it has left the
                    // map; stopped by a removal: it leaves now), so the
                    // next look starts a new one.
                    Ok(puller) => match puller.enlist(tx) {
                        Ok(()) => return,
                        Err(back) => {
                            tx = back;
                            let mut pullers = topic.pullers.lock();
                            if pullers.get(&group).is_some_and(|p| Arc::ptr_eq(p, &puller)) {
                                pullers.remove(&group);
                            }
                        }
                    },
                    Err(e) => {
                        let _ = failed.send(e);
                        return;
                    }
                }
            }
            let _ = failed.send(unavailable(
                "the group's reader on this server keeps stopping (the broker is stopping?)",
            ));
        });
        starting
    });
    loop {
        // One timer for the deadline and the connection's check.
        let check = Instant::now() + CONNECTION_CHECK;
        let wake = deadline.map_or(check, |d| d.min(check));
        tokio::select! {
            biased;
            d = &mut rx => return match d {
                Ok(d) => Ok(Some(d)),
                Err(_) if topic.record().is_none() => Err(Error::Removed),
                // The puller could not start: its reason, not a guess.
                Err(_) => match starting.take() {
                    Some(failed) => Err(failed.await.unwrap_or_else(|_| unavailable("the broker is stopping"))),
                    None => Err(unavailable("the broker is stopping")),
                },
            },
            failed = async { starting.as_mut().expect("guarded").await }, if starting.is_some() => {
                starting = None;
                if let Ok(e) = failed {
                    return Err(e);
                }
            }
            _ = changes.changed() => {
                let removed = match &*changes.borrow_and_update() {
                    None => true,
                    Some(r) => {
                        closed |= r.closed;
                        false
                    }
                };
                if removed {
                    // One already handed over is this pull's.
                    if let Ok(d) = rx.try_recv() {
                        return Ok(Some(d));
                    }
                    return Err(Error::Removed);
                }
            }
            // Boxed once polled: its JetStream requests would make every
            // pull's future kilobytes larger (and select! makes a
            // disabled branch's future too, so not boxed before).
            drained = async { Box::pin(drained(inner, topic, group)).await }, if closed && starting.is_none() => {
                if drained? {
                    if let Ok(d) = rx.try_recv() {
                        return Ok(Some(d));
                    }
                    return Ok(None);
                }
                let _ = Box::pin(tokio::time::timeout(MAX_BACKOFF, topic.progress.notified())).await;
            }
            _ = tokio::time::sleep_until(wake) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::TimedOut);
                }
                // A request waiting at the server learns nothing of a
                // lost connection: fail within the broker's timeout.
                let state = inner.js.client().connection_state();
                if state != async_nats::connection::State::Connected {
                    Box::pin(inner.connected()).await?;
                }
            }
        }
    }
}

/// Whether a closed topic's group has nothing left: nothing to read, and
/// no delivery out (one may come back), once this server's acks and naks
/// are confirmed.
async fn drained(inner: &Inner, topic: &Topic, group: &str) -> Result<bool> {
    topic.settled(inner.config.timeout).await;
    let mut consumer = inner.consumer(topic, group).await?;
    let info = inner.within(consumer.info()).await?;
    Ok(info.num_pending == 0 && info.num_ack_pending == 0)
}

/// A pull of a group under way on this server, counted in
/// `Topic::pulling` while it lives.
struct Pulling {
    topic: Arc<Topic>,
    group: String,
}

impl Pulling {
    fn new(topic: &Arc<Topic>, group: &str) -> Pulling {
        *topic.pulling.lock().entry(group.to_string()).or_default() += 1;
        Pulling {
            topic: topic.clone(),
            group: group.to_string(),
        }
    }
}

impl Drop for Pulling {
    fn drop(&mut self) {
        // The group stays listed while a pull of it is under way.
        let mut pulling = self.topic.pulling.lock();
        if let Some(n) = pulling.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                pulling.remove(&self.group);
            }
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
    phase: Arc<Stage>,
    cancel: CancellationToken,
    /// Told once the publish is on the wire (with room; not at a
    /// rendezvous), so that the writer's next push may go.
    sent: Mutex<Option<oneshot::Sender<()>>>,
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
        // At a rendezvous, the groups there were when a reader was found.
        let mut known = Vec::new();
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
            known =
                Box::pin(self.wait_reader(&stream, &record, wait, deadline, &mut changes)).await?;
        }
        let js_seq = self.publish(&stream, data, config.capacity > 0).await?;
        // Capacity may have grown while it waited for a reader.
        let capacity = changes.borrow().as_ref().map_or(0, |r| r.capacity);
        if config.capacity > 0 || capacity > 0 {
            return Ok(js_seq - 1);
        }
        let deadline = match wait {
            Wait::Block => deadline,
            Wait::NonBlock => Some(Instant::now() + Duration::from_secs(1)),
        };
        Box::pin(self.wait_taken(&stream, &record, js_seq, &known, deadline, &mut changes)).await
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
        let since_look = &self.topic.since_look;
        let budget = Topic::budget(capacity);
        let mut backoff = Duration::from_millis(1);
        loop {
            if credit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
                .is_ok()
            {
                since_look.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // A reset, close or removal seen meanwhile ends the wait.
            changed(changes, record)?;
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            // Room this server's own deliveries made since the last look
            // needs no look, unless another server writes too; and only
            // `budget` pushes go between two looks, so that a server that
            // starts writing too is seen (each server's room counts only
            // its own pushes).
            let alone = !self.topic.others_write.load(Ordering::Relaxed);
            let used = since_look.load(Ordering::Relaxed);
            if alone
                && used < budget
                && let Some(room) = self.topic.room(capacity).filter(|r| *r > 0)
            {
                credit.store((room - 1).min(budget - used - 1), Ordering::Relaxed);
                since_look.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Boxed, as are the rendezvous' waits: their JetStream
            // requests would make every push's future kilobytes larger.
            if Box::pin(self.look(stream, capacity)).await? {
                changed(changes, record)?;
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

    /// Look at every group's consumer: whether there is room for this
    /// push (then the room left is this server's credit), and let go of
    /// what every group acked. One look at a time per topic on a server.
    async fn look(&self, stream: &jetstream::stream::Stream<()>, capacity: u64) -> Result<bool> {
        let credit = &self.topic.credit;
        let _looking = self.topic.looking.lock().await;
        // Another push's look may have made room meanwhile.
        if credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
            .is_ok()
        {
            return Ok(true);
        }
        let lock_changes = self.topic.lock_changes.load(Ordering::Relaxed);
        let groups = self.inner.groups(stream).await?;
        self.topic.looked(&groups, lock_changes);
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
        if lag >= capacity {
            return Ok(false);
        }
        // Another server's pushes are not counted in a credit, so with
        // other writers (`Topic::looked` tells) every push looks: each
        // server then waits on what all have stored, and the bound is
        // exceeded only by the pushes in flight. Alone, this push and its
        // credit are at most `Topic::budget`, so that a server that
        // starts writing meanwhile is seen within that many pushes.
        let credit_left = match self.topic.others_write.load(Ordering::Relaxed) {
            true => 0,
            false => (capacity - lag - 1).min(Topic::budget(capacity) - 1),
        };
        credit.store(credit_left, Ordering::Relaxed);
        self.topic.since_look.store(1, Ordering::Relaxed);
        // Purging costs JetStream a round of its own: not for every look.
        let _ = self
            .inner
            .trim(&self.topic, stream, &groups, capacity / 2)
            .await;
        Ok(true)
    }

    /// Publish, retrying with the same message id (stored once) until
    /// JetStream acknowledges or the broker's timeout passes.
    /// `pipelined`: the writer's next push may go once this one is sent.
    async fn publish(
        &self,
        stream: &jetstream::stream::Stream<()>,
        data: Bytes,
        pipelined: bool,
    ) -> Result<u64> {
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
        // Counted on the wire till it is answered (see `look`).
        self.topic.in_flight.fetch_add(1, Ordering::Relaxed);
        let _on_wire = InFlight(&self.topic);
        let js_seq = loop {
            let sent = async {
                let ack = self
                    .inner
                    .publisher
                    .send(self.topic.subject.clone(), &id, data.clone())
                    .await
                    .map_err(|e| (e.to_string(), false))?;
                if pipelined && let Some(sent) = self.sent.lock().take() {
                    let _ = sent.send(());
                }
                let try_by = give_up.min(Instant::now() + ACK_TRY);
                match tokio::time::timeout_at(try_by, ack.recv()).await {
                    Ok(acked) => acked.map_err(|e| (e, false)),
                    Err(_) => Err(("no acknowledgement in time".to_string(), true)),
                }
            };
            // The error, and whether it is that no answer came.
            match sent.await {
                Ok(seq) => break seq,
                Err((e, _)) if Instant::now() >= give_up => {
                    self.give_up();
                    return Err(unavailable(e));
                }
                Err(_) if self.topic.record().is_none() => {
                    self.give_up();
                    return Err(Error::Removed);
                }
                // Not answered: at once again (its id makes it stored once).
                Err((e, true)) => {
                    tracing::debug!("publish to {}: {e}; again", self.topic.stream);
                }
                Err((e, false)) => {
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
        self.phase.decided.wake();
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

    /// A publish not stored within the broker's timeout (or its topic
    /// removed): abandoned, and a caller waiting on it told.
    fn give_up(&self) {
        {
            let mut phase = self.phase.lock();
            if *phase == Phase::AbandonedInFlight {
                self.topic.withdrawn();
            }
            *phase = Phase::Abandoned;
        }
        self.phase.decided.wake();
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
    ) -> Result<Vec<String>> {
        let mut backoff = Duration::from_millis(1);
        loop {
            changed(changes, record)?;
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            // Every group read here, with nothing left to read: no look.
            if wait == Wait::Block
                && let Some(known) = self.topic.ready_here()
            {
                return Ok(known);
            }
            let lock_changes = self.topic.lock_changes.load(Ordering::Relaxed);
            let groups = self.inner.groups(stream).await?;
            self.topic.looked(&groups, lock_changes);
            // A reader waits: a pull on this server, or a pull request at
            // JetStream beyond this server's own (which may outlive the
            // pulls they were for: a push must not go to them).
            let wants = |g: &consumer::Info| {
                let Some(group) = super::group_of(&g.name) else {
                    return false;
                };
                let asked_here = self
                    .topic
                    .pullers
                    .lock()
                    .get(&group)
                    .map_or(0, |p| p.waiting().1);
                g.num_pending == 0
                    && (g.num_waiting as u64 > asked_here
                        || self.topic.pulling.lock().contains_key(&group))
            };
            let ready = match wait {
                Wait::Block => groups.iter().any(wants),
                Wait::NonBlock => !groups.is_empty() && groups.iter().all(wants),
            };
            if ready {
                return Ok(groups.into_iter().map(|g| g.name).collect());
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
                        return Ok(Vec::new());
                    }
                }
                Woke::Deadline => return Err(Error::TimedOut),
                Woke::Cancelled => return Err(Error::Interrupted),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// At a rendezvous: wait until every group has taken `js_seq`. The
    /// groups `known` when a reader was found, each read by a pull on this
    /// server, need no look: this server's pullers tell when they took it
    /// (a group made since then is not waited for).
    async fn wait_taken(
        &self,
        stream: &jetstream::stream::Stream<()>,
        record: &Record,
        js_seq: u64,
        known: &[String],
        deadline: Option<Instant>,
        changes: &mut tokio::sync::watch::Receiver<Option<Record>>,
    ) -> Result<Seq> {
        let mut backoff = Duration::from_millis(1);
        let took = |g: &consumer::Info| g.delivered.stream_sequence >= js_seq;
        let taken_here = || {
            let reached = self.topic.reached.lock();
            !known.is_empty()
                && known
                    .iter()
                    .all(|c| reached.get(c).is_some_and(|r| *r >= js_seq))
        };
        let read_here = !known.is_empty() && {
            let pulling = self.topic.pulling.lock();
            known
                .iter()
                .all(|c| super::group_of(c).is_some_and(|g| pulling.contains_key(&g)))
        };
        let mut last_look: Vec<consumer::Info> = Vec::new();
        // Read here: the first look waits for this server's pullers.
        let mut look = !read_here;
        loop {
            let progress = self.topic.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if taken_here() {
                return Ok(js_seq - 1);
            }
            if look {
                let groups = self.inner.groups(stream).await?;
                if !groups.is_empty() && groups.iter().all(took) {
                    // A reset's purge moves every consumer past what it
                    // removed: the look counts only if no reset began
                    // before it (the registry changes before the purge).
                    if !self.inner.reset_since(record).await? {
                        return Ok(js_seq - 1);
                    }
                    return Box::pin(self.after_reset(stream, js_seq)).await;
                }
                last_look = groups;
            }
            look = true;
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
                    Err(Error::Reset) => return Box::pin(self.after_reset(stream, js_seq)).await,
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

    /// A reset came while a rendezvous push waited to be taken. Its purge
    /// moves the consumers' pointers past what it removed, so only this
    /// server's own deliveries tell whether a reader took the message:
    /// taken here, `Ok`; else it is deleted (so that none takes it after)
    /// and, still not taken here, "reset". A reader on another server
    /// that took it just before is not seen: its writer is told "reset"
    /// (chapter 7).
    async fn after_reset(
        &self,
        stream: &jetstream::stream::Stream<()>,
        js_seq: u64,
    ) -> Result<Seq> {
        if self.topic.got_here(js_seq) {
            return Ok(js_seq - 1);
        }
        // JetStream could not say: it may stay for the readers.
        if !self.delete(stream, js_seq).await {
            return Ok(js_seq - 1);
        }
        match self.topic.got_here(js_seq) {
            true => Ok(js_seq - 1),
            false => Err(Error::Reset),
        }
    }

    /// Make sure no reader can take stream message `js_seq` from now on:
    /// deleted, or gone already (a purge took it). `false` if JetStream
    /// could not say.
    async fn delete(&self, stream: &jetstream::stream::Stream<()>, js_seq: u64) -> bool {
        match tokio::time::timeout(self.inner.config.timeout, stream.delete_message(js_seq)).await {
            Ok(Ok(_)) => true,
            // JetStream's own refusal: not there ("sequence not found",
            // or the store's "no message found"; a topic's stream allows
            // deletes).
            Ok(Err(e)) => matches!(
                e.kind(),
                jetstream::stream::DeleteMessageErrorKind::JetStream(_)
            ),
            Err(_) => false,
        }
    }
}

/// A publish of this server on the wire: counted in `Topic::in_flight`
/// while it lives.
struct InFlight<'a>(&'a Topic);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    /// A non-blocking pull: one request that takes what is there now; on
    /// a closed topic with nothing there, the end once no delivery of the
    /// group is out.
    async fn run(
        &self,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<Option<JetStreamDelivery>> {
        let mut changes = self.topic.record.subscribe();
        let mut consumer = self.inner.consumer(&self.topic, &self.group).await?;
        loop {
            let Some(record) = changes.borrow_and_update().clone() else {
                return Err(Error::Removed);
            };
            let mut batch = self
                .inner
                .within(consumer.fetch().max_messages(1).messages())
                .await?;
            match batch.next().await {
                Some(Ok(m)) => return Ok(Some(JetStreamDelivery::new(&self.topic, m))),
                Some(Err(e)) => return Err(unavailable(e)),
                None if !record.closed => return Err(Error::WouldBlock),
                None => {}
            }
            // Closed, nothing to read now: the end, unless a delivery
            // of the group is still out (it may come back) or a nak of
            // this server is on its way.
            self.topic.settled(self.inner.config.timeout).await;
            let info = self.inner.within(consumer.info()).await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(None);
            }
            if wait == Wait::NonBlock {
                return Err(Error::WouldBlock);
            }
            let woke = tokio::select! {
                _ = self.topic.progress.notified() => Woke::Look,
                _ = tokio::time::sleep(MAX_BACKOFF) => Woke::Look,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Woke::Deadline,
                _ = self.cancel.cancelled() => Woke::Cancelled,
            };
            match woke {
                Woke::Deadline => return Err(Error::TimedOut),
                Woke::Cancelled => return Err(Error::Interrupted),
                _ => continue,
            }
        }
    }
}

/// A message pulled from JetStream: `ack` acks it, confirmed by the
/// server (see `settler`); dropped unacked, it is nak'd, so redelivered
/// first.
pub struct JetStreamDelivery {
    seq: Seq,
    data: Bytes,
    /// The message to acknowledge; taken by `ack`.
    message: Option<jetstream::Message>,
    /// Woken on ack, so waiting pushes look again.
    topic: Arc<Topic>,
}

impl JetStreamDelivery {
    /// A message JetStream delivered to this server for a pull of its
    /// group, counted as pulled here (until it is nak'd).
    pub(crate) fn new(topic: &Arc<Topic>, m: jetstream::Message) -> JetStreamDelivery {
        let js_seq = m.info().map(|i| i.stream_sequence).unwrap_or(1);
        topic.pulled.fetch_add(1, Ordering::Relaxed);
        topic.tally.pulled();
        topic.delivered.fetch_max(js_seq, Ordering::Relaxed);
        topic.arrived(js_seq);
        topic.progress.notify_waiters();
        JetStreamDelivery {
            seq: js_seq - 1,
            data: m.payload.clone(),
            message: Some(m),
            topic: topic.clone(),
        }
    }
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
            settle(&self.topic, m, Settle::Ack);
        }
    }
}

impl Drop for JetStreamDelivery {
    fn drop(&mut self) {
        if let Some(m) = self.message.take() {
            self.topic.pulled.fetch_sub(1, Ordering::Relaxed);
            self.topic.tally.unpulled();
            settle(&self.topic, m, Settle::Nak);
        }
    }
}

/// A topic's way to its settler.
pub(crate) type Settler = tokio::sync::mpsc::UnboundedSender<(jetstream::Message, Settle)>;

/// What to tell JetStream of a delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settle {
    /// Taken.
    Ack,
    /// Not taken: delivered again, first.
    Nak,
}

/// Send an ack or nak without making the reader wait for it, counted in
/// `Topic::settling` until JetStream confirmed it, so that this server's
/// status shows it; then waiting pushes look again. One task per topic
/// (`settler`) sends them all, not a task per message. Outside a runtime
/// no settler can start: the message is redelivered after the ack wait.
fn settle(topic: &Arc<Topic>, m: jetstream::Message, how: Settle) {
    let tx = match topic.settler.get() {
        Some(tx) => tx,
        None => {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            topic.settler.get_or_init(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                rt.spawn(settler(Arc::downgrade(topic), rx));
                tx
            })
        }
    };
    topic.settling.fetch_add(1, Ordering::Relaxed);
    if tx.send((m, how)).is_err() {
        topic.settling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A topic's acks and naks. JetStream handles a consumer's acks and naks
/// in the order they came, so one confirmed (an AckAck) confirms those
/// sent before it: what came while a confirmation was awaited goes out
/// together, each plain but the last of each group, which asks for one.
/// One confirmation a round trip, not one a message. It ends once the
/// topic is gone and what it had is confirmed.
async fn settler(
    topic: std::sync::Weak<Topic>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(jetstream::Message, Settle)>,
) {
    let done = |n: u64| {
        if let Some(topic) = topic.upgrade() {
            topic.settling.fetch_sub(n, Ordering::Relaxed);
            topic.settled.notify_waiters();
            topic.progress.notify_waiters();
        }
    };
    let mut queue = Vec::new();
    let mut open = true;
    while open || !queue.is_empty() {
        if queue.is_empty() {
            match rx.recv().await {
                Some(m) => queue.push(m),
                None => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(m) => queue.push(m),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let n = queue.len() as u64;
        send_settles(std::mem::take(&mut queue)).await;
        done(n);
    }
}

/// Send `batch` in order, asking a confirmation of the last of each
/// consumer's, and wait for those.
async fn send_settles(batch: Vec<(jetstream::Message, Settle)>) {
    let kind = |how: Settle| match how {
        Settle::Ack => AckKind::Ack,
        Settle::Nak => AckKind::Nak(None),
    };
    // The index of each consumer's last (a topic's readers are of a few
    // groups: a short list).
    let mut lasts: Vec<(String, usize)> = Vec::new();
    for (i, (m, _)) in batch.iter().enumerate() {
        let consumer = m
            .info()
            .map(|info| info.consumer.to_string())
            .unwrap_or_default();
        match lasts.iter_mut().find(|(c, _)| *c == consumer) {
            Some(last) => last.1 = i,
            None => lasts.push((consumer, i)),
        }
    }
    let mut confirms = Vec::with_capacity(lasts.len());
    for (i, (m, how)) in batch.into_iter().enumerate() {
        if lasts.iter().any(|(_, last)| *last == i) {
            confirms.push(async move {
                if let Err(e) = confirm(&m, kind(how)).await {
                    tracing::warn!("ack: {e}; unconfirmed messages will be delivered again");
                }
            });
        } else if let Err(e) = m.ack_with(kind(how)).await {
            tracing::warn!("ack: {e}; the message will be delivered again");
        }
    }
    futures_util::future::join_all(confirms).await;
}

/// `how` for `m`, confirmed by JetStream: `double_ack_with`, but through
/// the client's one reply subscription. (`double_ack_with` subscribes a
/// fresh inbox for each confirmation, and each subscribe and unsubscribe
/// is a change of NATS's subscription list: at pipe depth 1, one of each
/// per message.)
async fn confirm(m: &jetstream::Message, how: AckKind) -> std::result::Result<(), String> {
    let reply = m.message.reply.clone().ok_or("not a JetStream message")?;
    m.context
        .client()
        .request(reply, how.into())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
