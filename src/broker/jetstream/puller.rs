//! A group's blocking pulls on this server, served together: one
//! subscription (an inbox) and as many messages asked of JetStream as
//! there are pulls waiting, in as few pull requests as that takes. Each
//! message that arrives goes to the longest-waiting pull still there; with
//! none left (flushed, timed out), it goes back to its group at once (a
//! nak), so a pull given up takes nothing. A pull thus costs no
//! subscription and no request of its own, and many pulls in flight cost
//! one request.
//!
//! One task per group read on this server keeps the count of what is
//! asked: a request's messages, until they all came or it expired (the
//! server says so, 408; a request of a lost connection is counted gone
//! `GRACE` after its expiry); a consumer deleted under it (a `forget`, or
//! a `seek` on any server) is looked up or made again while pulls wait.
//!
//! While a group is read on here, with capacity above 0 (each pull coming
//! within `STREAMING` of the last hand-over), the puller asks for one
//! message more than the pulls waiting (as JetStream's own client asks
//! ahead): a reader's next read then finds its message here, without a
//! round trip to JetStream. A message that comes with no pull
//! waiting is held for `HOLD`, for the group's next pull here, then given
//! back (a nak). What is held counts as unread wherever the engine counts
//! a group's lag or position (`Puller::held`), so the capacity holds; it
//! is given back at once when the topic's record changes (reset, close,
//! a setting) and when the group is moved or forgotten here. At a
//! rendezvous nothing is asked ahead or held: a message delivered there
//! counts as taken.
//!
//! A puller with no pull waiting and no request out for
//! `JetStreamConfig::idle_puller` (a minute by default) stops: it marks
//! itself retired and leaves the topic's map under its own lock, so a pull
//! that found it there and comes to enlist after sees it retired and
//! starts a new one. A server whose readers came and went once holds no
//! subscription or task per group for good.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::Inner;
use super::ops::{JetStreamDelivery, Settle, settle};
use super::registry::Topic;

/// How long an idle puller stays, by default (see the module comment).
pub(crate) const IDLE: Duration = Duration::from_secs(60);

/// How long one pull request waits at JetStream for messages.
pub(crate) const EXPIRES: Duration = Duration::from_secs(5);

/// How long after its expiry a request JetStream said nothing of (its
/// connection was lost meanwhile) is counted gone.
const GRACE: Duration = Duration::from_secs(2);

/// How long a message that came with no pull waiting is held for the
/// group's next pull on this server.
pub(crate) const HOLD: Duration = Duration::from_millis(50);

/// A pull that comes within this of the group's last hand-over here is
/// a reader reading on: the puller asks ahead for it (a slower reader's
/// messages would be held past `HOLD` and given back, each a round trip
/// to JetStream and a redelivery).
const STREAMING: Duration = Duration::from_millis(10);

/// How long to wait before asking again after JetStream refused a request.
const RETRY: Duration = Duration::from_millis(50);

/// A delivery handed to a waiting pull.
pub(crate) type Handed = oneshot::Sender<JetStreamDelivery>;

/// A group's pulls on this server (see the module comment).
pub(crate) struct Puller {
    state: Mutex<State>,
    /// A pull came: ask for more.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Pulls waiting, longest first.
    waiting: VecDeque<Handed>,
    /// Requests sent and not done, oldest first.
    asked: VecDeque<Asked>,
    /// Stopped for want of pulls: a pull must start a new puller.
    retired: bool,
    /// Messages that came with no pull waiting, oldest first, each given
    /// back at its deadline.
    held: VecDeque<(jetstream::Message, Instant)>,
    /// Whether to ask ahead and hold (capacity above 0).
    ahead: bool,
    /// When a pull was last handed a message.
    handed_at: Option<Instant>,
    /// Whether the last pull came within `STREAMING` of the hand-over
    /// before it.
    streaming: bool,
}

/// A pull request at JetStream.
struct Asked {
    /// Messages it may still bring.
    left: usize,
    /// When it counts as gone if JetStream said nothing.
    gone: Instant,
}

impl State {
    fn asked(&self) -> usize {
        self.asked.iter().map(|a| a.left).sum()
    }

    /// Messages the pulls waiting lack, and one more while pulls come
    /// (see the module comment): pulls given up are dropped first.
    fn lacking(&mut self, now: Instant) -> usize {
        self.waiting.retain(|w| !w.is_closed());
        while self.asked.front().is_some_and(|a| a.gone <= now) {
            self.asked.pop_front();
        }
        let ahead = self.ahead && self.streaming && self.handed_at.is_some_and(|t| now < t + HOLD);
        (self.waiting.len() + usize::from(ahead)).saturating_sub(self.asked() + self.held.len())
    }

    /// Hand `m` to the longest-waiting pull still there; `m` back if none.
    fn hand(&mut self, topic: &Arc<Topic>, m: jetstream::Message) -> Option<jetstream::Message> {
        // Withdrawn: dropped, so nothing to hold either.
        let js_seq = seq_unless_withdrawn(topic, &m)?;
        while let Some(w) = self.waiting.pop_front() {
            if w.is_closed() {
                continue;
            }
            if let Ok(info) = m.info() {
                topic.reached(info.consumer, js_seq);
            }
            self.handed_at = Some(Instant::now());
            // A pull gone since is handed nothing: the delivery comes
            // back, unacked, and goes to the next.
            match w.send(JetStreamDelivery::with_seq(topic, m, js_seq)) {
                Ok(()) => return None,
                Err(mut d) => return Some(d.take_message()),
            }
        }
        Some(m)
    }

    /// One message of the oldest request came.
    fn came(&mut self) {
        if let Some(a) = self.asked.front_mut() {
            a.left -= 1;
            if a.left == 0 {
                self.asked.pop_front();
            }
        }
    }
}

impl Puller {
    /// Start the group's puller, its consumer already found or made.
    pub(crate) async fn start(
        inner: &Arc<Inner>,
        topic: &Arc<Topic>,
        group: &str,
        consumer: PullConsumer,
    ) -> crate::broker::Result<Arc<Puller>> {
        let client = inner.js.client();
        let inbox = async_nats::Subject::from(client.new_inbox());
        let sub = inner.within(client.subscribe(inbox.clone())).await?;
        let puller = Arc::new(Puller {
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let run = Run {
            puller: puller.clone(),
            inner: inner.clone(),
            topic: topic.clone(),
            group: group.to_string(),
            inbox,
            consumer,
            stale: false,
            retry_at: None,
        };
        tokio::spawn(run.run(sub));
        Ok(puller)
    }

    /// The pulls waiting here, and the pull requests asked for them that
    /// JetStream may still hold.
    pub(crate) fn waiting(&self) -> (u64, u64) {
        let mut state = self.state.lock();
        state.waiting.retain(|w| !w.is_closed());
        (state.waiting.len() as u64, state.asked.len() as u64)
    }

    /// A pull waits: the next message that comes (or one held here) is
    /// sent to `handed`, unless it is dropped first. A retired puller
    /// gives `handed` back: start a new one.
    pub(crate) fn enlist(&self, topic: &Arc<Topic>, handed: Handed) -> Result<(), Handed> {
        let mut state = self.state.lock();
        if state.retired {
            return Err(handed);
        }
        state.streaming = state.handed_at.is_some_and(|t| t.elapsed() < STREAMING);
        state.waiting.push_back(handed);
        if let Some((m, _)) = state.held.pop_front()
            && let Some(m) = state.hand(topic, m)
        {
            // The pull went meanwhile: held again, first.
            let deadline = Instant::now() + HOLD;
            state.held.push_front((m, deadline));
        }
        drop(state);
        // Asks for what the pull lacks, or ahead.
        self.wake.notify_one();
        Ok(())
    }

    /// A message held here for the group's next pull, for a pull that
    /// does not wait here (non-blocking): the oldest.
    pub(crate) fn take_held(&self, topic: &Arc<Topic>) -> Option<JetStreamDelivery> {
        let m = loop {
            let (m, _) = self.state.lock().held.pop_front()?;
            if seq_unless_withdrawn(topic, &m).is_some() {
                break m;
            }
        };
        if let Ok(info) = m.info() {
            topic.reached(info.consumer, info.stream_sequence);
        }
        Some(JetStreamDelivery::new(topic, m))
    }

    /// A delivery of this puller's group that a pull dropped unread goes
    /// back to the front of what is held (`m` back if nothing is held
    /// here: at a rendezvous, or stopped).
    pub(crate) fn put_back(&self, m: jetstream::Message) -> Option<jetstream::Message> {
        let mut state = self.state.lock();
        if !state.ahead || state.retired {
            return Some(m);
        }
        state.held.push_front((m, Instant::now() + HOLD));
        drop(state);
        self.wake.notify_one();
        None
    }

    /// How many messages are held here: delivered by JetStream, unread.
    pub(crate) fn held(&self) -> u64 {
        self.state.lock().held.len() as u64
    }

    /// Give back what is held (the group moved or was forgotten).
    pub(crate) fn give_back(&self, topic: &Arc<Topic>) {
        let held = std::mem::take(&mut self.state.lock().held);
        for (m, _) in held {
            settle(topic, m, Settle::Nak);
        }
    }
}

/// `None` if `m` is a push withdrawn once stored (and so being deleted):
/// then acked, for nobody.
/// Its stream sequence otherwise.
fn seq_unless_withdrawn(topic: &Arc<Topic>, m: &jetstream::Message) -> Option<u64> {
    let js_seq = m.info().map_or(1, |i| i.stream_sequence);
    if topic.was_withdrawn(js_seq) {
        settle(topic, m.clone(), Settle::Ack);
        return None;
    }
    Some(js_seq)
}

struct Run {
    puller: Arc<Puller>,
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    group: String,
    inbox: async_nats::Subject,
    consumer: PullConsumer,
    /// The consumer went away: look it up (or make it) before asking.
    stale: bool,
    /// JetStream refused a request: not before then.
    retry_at: Option<Instant>,
}

impl Run {
    async fn run(mut self, mut sub: async_nats::Subscriber) {
        let mut changes = self.topic.record.subscribe();
        self.puller.state.lock().ahead = changes
            .borrow_and_update()
            .as_ref()
            .is_some_and(|r| r.capacity > 0);
        let idle = self.inner.config.idle_puller;
        let mut busy_at = Instant::now();
        loop {
            self.give_back_due();
            self.ask().await;
            let (expiry, busy) = {
                let mut state = self.puller.state.lock();
                state.waiting.retain(|w| !w.is_closed());
                let busy =
                    !state.waiting.is_empty() || !state.asked.is_empty() || !state.held.is_empty();
                let expiry = [
                    state.asked.front().map(|a| a.gone),
                    state.held.front().map(|h| h.1),
                    // Asking ahead ends then.
                    state
                        .handed_at
                        .map(|t| t + HOLD)
                        .filter(|t| *t > Instant::now()),
                ];
                (expiry.into_iter().flatten().min(), busy)
            };
            if busy {
                busy_at = Instant::now();
            } else if busy_at.elapsed() >= idle && self.retire() {
                break;
            }
            let wake_at = match (expiry, self.retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Idle: wake to retire.
            let wake_at = match wake_at {
                None if !busy => Some(busy_at + idle),
                w => w,
            };
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => self.arrived(m),
                    None => break,
                },
                _ = self.puller.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
                r = changes.changed() => {
                    let ahead = match (r, &*changes.borrow_and_update()) {
                        (Ok(()), Some(r)) => r.capacity > 0,
                        _ => break,
                    };
                    // Reset, closed or set: what is held may be gone, or
                    // no longer to be held.
                    self.puller.state.lock().ahead = ahead;
                    self.puller.give_back(&self.topic);
                }
                _ = self.inner.shutdown.cancelled() => break,
            }
        }
        self.puller.give_back(&self.topic);
        // Removed (or the broker stops): the waiting pulls learn it from
        // their own watch of the record, or from their sender dropped.
        {
            let mut state = self.puller.state.lock();
            state.retired = true;
            state.waiting.clear();
        }
        let _ = sub.unsubscribe().await;
    }

    /// Give back what was held past its deadline.
    fn give_back_due(&self) {
        let now = Instant::now();
        let mut state = self.puller.state.lock();
        while state.held.front().is_some_and(|h| h.1 <= now) {
            let (m, _) = state.held.pop_front().expect("front");
            settle(&self.topic, m, Settle::Nak);
        }
    }

    /// Stop, if still nothing waits or is asked: retired and out of the
    /// topic's map, both under the state's lock, so a pull either enlisted
    /// before (and this does not stop) or finds it retired.
    fn retire(&self) -> bool {
        let mut state = self.puller.state.lock();
        state.waiting.retain(|w| !w.is_closed());
        if !state.waiting.is_empty() || !state.asked.is_empty() || !state.held.is_empty() {
            return false;
        }
        state.retired = true;
        let mut pullers = self.topic.pullers.lock();
        if pullers
            .get(&self.group)
            .is_some_and(|p| Arc::ptr_eq(p, &self.puller))
        {
            pullers.remove(&self.group);
        }
        true
    }

    /// Ask JetStream for what the waiting pulls lack.
    async fn ask(&mut self) {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        if self.puller.state.lock().lacking(now) == 0 {
            return;
        }
        if self.stale {
            match self.inner.find_consumer(&self.group, &self.topic).await {
                Ok(c) => {
                    self.consumer = c;
                    self.stale = false;
                }
                Err(e) => {
                    tracing::debug!("pull {}: {e}", self.topic.stream);
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        // Counted before it is sent: its messages may come first.
        let want = {
            let mut state = self.puller.state.lock();
            let want = state.lacking(Instant::now());
            if want == 0 {
                return;
            }
            state.asked.push_back(Asked {
                left: want,
                gone: Instant::now() + EXPIRES + GRACE,
            });
            want
        };
        let config = BatchConfig {
            batch: want,
            expires: Some(EXPIRES),
            ..Default::default()
        };
        if let Err(e) = self
            .consumer
            .request_batch(config, self.inbox.clone())
            .await
        {
            tracing::debug!("pull request {}: {e}", self.topic.stream);
            self.puller.state.lock().asked.pop_back();
            self.retry_at = Some(Instant::now() + RETRY);
        }
    }

    /// A message or a status came to the inbox.
    fn arrived(&mut self, m: async_nats::Message) {
        match m.status {
            None | Some(StatusCode::OK) => {
                let m = jetstream::Message {
                    message: m,
                    context: self.inner.js.clone(),
                };
                let mut state = self.puller.state.lock();
                state.came();
                let Some(m) = state.hand(&self.topic, m) else {
                    return;
                };
                if state.ahead {
                    // For the group's next pull here, for a while.
                    state.held.push_back((m, Instant::now() + HOLD));
                } else {
                    // Nobody waits any more: given back.
                    drop(state);
                    settle(&self.topic, m, Settle::Nak);
                }
            }
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            // The oldest request expired (or, a fetch, found nothing).
            Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                self.puller.state.lock().asked.pop_front();
            }
            Some(status) => {
                let why = m.description.unwrap_or_default();
                tracing::debug!("pull {}: {status} {why}", self.topic.stream);
                let mut state = self.puller.state.lock();
                if status == StatusCode::NO_RESPONDERS || why.contains("Deleted") {
                    // No consumer (forgotten, or a seek made it again):
                    // every request to it is gone.
                    self.stale = true;
                    state.asked.clear();
                } else if why.contains("Leadership") {
                    state.asked.clear();
                } else {
                    state.asked.pop_front();
                }
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }
}
