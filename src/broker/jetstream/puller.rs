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
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::Inner;
use super::ops::JetStreamDelivery;
use super::registry::Topic;

/// How long an idle puller stays, by default (see the module comment).
pub(crate) const IDLE: Duration = Duration::from_secs(60);

/// How long one pull request waits at JetStream for messages.
pub(crate) const EXPIRES: Duration = Duration::from_secs(5);

/// How long after its expiry a request JetStream said nothing of (its
/// connection was lost meanwhile) is counted gone.
const GRACE: Duration = Duration::from_secs(2);

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

    /// Messages the pulls waiting lack: pulls given up are dropped first.
    fn lacking(&mut self, now: Instant) -> usize {
        self.waiting.retain(|w| !w.is_closed());
        while self.asked.front().is_some_and(|a| a.gone <= now) {
            self.asked.pop_front();
        }
        self.waiting.len().saturating_sub(self.asked())
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

    /// A pull waits: the next message that comes is sent to `handed`,
    /// unless it is dropped first. A retired puller gives `handed` back:
    /// start a new one.
    pub(crate) fn enlist(&self, handed: Handed) -> Result<(), Handed> {
        let mut state = self.state.lock();
        if state.retired {
            return Err(handed);
        }
        state.waiting.push_back(handed);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }
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
        let idle = self.inner.config.idle_puller;
        let mut busy_at = Instant::now();
        loop {
            self.ask().await;
            let (expiry, busy) = {
                let mut state = self.puller.state.lock();
                state.waiting.retain(|w| !w.is_closed());
                let busy = !state.waiting.is_empty() || !state.asked.is_empty();
                (state.asked.front().map(|a| a.gone), busy)
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
                    if r.is_err() || changes.borrow().is_none() {
                        break;
                    }
                }
                _ = self.inner.shutdown.cancelled() => break,
            }
        }
        // Removed (or the broker stops): the waiting pulls learn it from
        // their own watch of the record, or from their sender dropped.
        {
            let mut state = self.puller.state.lock();
            state.retired = true;
            state.waiting.clear();
        }
        let _ = sub.unsubscribe().await;
    }

    /// Stop, if still nothing waits or is asked: retired and out of the
    /// topic's map, both under the state's lock, so a pull either enlisted
    /// before (and this does not stop) or finds it retired.
    fn retire(&self) -> bool {
        let mut state = self.puller.state.lock();
        state.waiting.retain(|w| !w.is_closed());
        if !state.waiting.is_empty() || !state.asked.is_empty() {
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
                let m = async_nats::jetstream::Message {
                    message: m,
                    context: self.inner.js.clone(),
                };
                if let Ok(info) = m.info() {
                    self.topic.reached(info.consumer, info.stream_sequence);
                }
                let delivery = JetStreamDelivery::new(&self.topic, m);
                let mut state = self.puller.state.lock();
                state.came();
                let mut delivery = Some(delivery);
                while let Some(d) = delivery.take() {
                    let Some(w) = state.waiting.pop_front() else {
                        // Nobody waits any more: dropped, so nak'd.
                        drop(state);
                        drop(d);
                        return;
                    };
                    delivery = w.send(d).err();
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
