//! The futures of blocked pushes and pulls, and the delivery a pull returns:
//! each collects what the topic decided for it, or undoes it when dropped.
//!
//! A waiter owns its entry in the topic's reader or writer slab: only the
//! waiter removes it (on completion or in `Drop`), so its key stays valid.
//! Whatever the topic decided is read and removed under the topic's lock,
//! and a drop that finds a decision undoes it under the same lock: a
//! message reserved for a dropped pull goes back to the front of its group
//! (and on to the next blocked reader); a push dropped before its message
//! was taken is withdrawn. Polled inside `resolve_now` (a deadline, a
//! flush), a waiter decides at once under the lock instead of waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::topic::{Taken, Topic};
use super::{Delivery, Error, Result, Seq, cut_error};
use crate::cut::{Cut, cutting, last_poll};

/// Replace a stored waker unless it already wakes the same task.
pub(crate) fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Await `fut`; after `limit`, poll it one last time inside `resolve_now`,
/// so what the lock decided (taken or withdrawn) is what it returns.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let Some(limit) = limit else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    match tokio::time::timeout(limit, fut.as_mut()).await {
        Ok(out) => out,
        Err(_) => last_poll(Cut::Deadline, fut).unwrap_or(Err(Error::TimedOut)),
    }
}

/// A pull blocked in its group's queue.
pub(crate) struct PullWait {
    /// The topic whose reader slab holds our entry.
    topic: Arc<Topic>,
    /// Our entry's key.
    key: usize,
    /// Set once the entry is removed (the pull returned).
    finished: bool,
}

impl PullWait {
    pub(crate) fn new(topic: Arc<Topic>, key: usize) -> PullWait {
        PullWait {
            topic,
            key,
            finished: false,
        }
    }
}

impl Future for PullWait {
    type Output = Result<Option<MemoryDelivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = this.topic.state.lock();
        let reader = &mut state.readers[this.key];
        let outcome = match (reader.outcome.take(), cutting()) {
            (Some(outcome), _) => {
                state.readers.remove(this.key);
                outcome
            }
            (None, None) => {
                store_waker(&mut reader.waker, cx);
                return Poll::Pending;
            }
            (None, Some(cut)) => {
                drop(state);
                this.topic.with(|s| s.cancel_reader(this.key));
                this.finished = true;
                return Poll::Ready(Err(cut_error(cut)));
            }
        };
        drop(state);
        this.finished = true;
        let topic = &this.topic;
        Poll::Ready(outcome.map(|taken| taken.map(|t| MemoryDelivery::new(topic.clone(), t))))
    }
}

impl Drop for PullWait {
    fn drop(&mut self) {
        if !self.finished {
            self.topic.with(|s| s.cancel_reader(self.key));
        }
    }
}

/// A push waiting for room, a reader, or every group.
pub(crate) struct PushWait {
    /// The topic whose writer slab holds our entry.
    topic: Arc<Topic>,
    /// Our entry's key.
    key: usize,
    /// Set once the entry is removed (the push returned).
    finished: bool,
    /// The oldest waiting push, refused by the topic's `rate`, sleeps
    /// here until its next token (made on the first refusal, then reset).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PushWait {
    pub(crate) fn new(topic: Arc<Topic>, key: usize) -> PushWait {
        PushWait {
            topic,
            key,
            finished: false,
            sleep: None,
        }
    }
}

impl Future for PushWait {
    type Output = Result<Seq>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let cut = cutting();
        loop {
            match this.topic.with(|s| s.collect_writer(this.key, cut, cx)) {
                Ok(result) => {
                    this.finished = true;
                    return Poll::Ready(result);
                }
                Err(None) => return Poll::Pending,
                Err(Some(at)) => {
                    let sleep = match &mut this.sleep {
                        Some(sleep) => {
                            sleep.as_mut().reset(at);
                            sleep
                        }
                        none => none.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The token is there already: ask again.
                }
            }
        }
    }
}

impl Drop for PushWait {
    fn drop(&mut self) {
        if !self.finished {
            self.topic.with(|s| s.cancel_writer(self.key));
        }
    }
}

/// A message a pull returned. Acked, it is done; dropped unacked, it goes
/// back to the front of its group.
pub struct MemoryDelivery {
    /// The topic, to ack or requeue under its lock.
    topic: Arc<Topic>,
    /// The message and the group it went to.
    taken: Taken,
    /// Set by `ack`, so `Drop` does nothing.
    acked: bool,
}

impl MemoryDelivery {
    pub(crate) fn new(topic: Arc<Topic>, taken: Taken) -> MemoryDelivery {
        MemoryDelivery {
            topic,
            taken,
            acked: false,
        }
    }
}

impl std::fmt::Debug for MemoryDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDelivery")
            .field("topic", &self.topic.name)
            .field("seq", &self.taken.seq)
            .field("len", &self.taken.data.len())
            .finish()
    }
}

impl Delivery for MemoryDelivery {
    fn seq(&self) -> Seq {
        self.taken.seq
    }

    fn data(&self) -> &Bytes {
        &self.taken.data
    }

    fn ack(mut self) {
        self.acked = true;
        self.topic.with(|s| s.ack(&self.taken));
    }

    /// One lock for a batch of one topic's deliveries.
    fn ack_all(batch: impl IntoIterator<Item = Self>) {
        let mut batch: Vec<MemoryDelivery> = batch.into_iter().collect();
        let Some(first) = batch.first() else { return };
        let topic = first.topic.clone();
        if !batch.iter().all(|d| Arc::ptr_eq(&d.topic, &topic)) {
            return batch.into_iter().for_each(Delivery::ack);
        }
        topic.with(|s| {
            s.ack_all(batch.iter().map(|d| &d.taken));
        });
        for d in &mut batch {
            d.acked = true;
        }
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if !self.acked {
            let taken = Taken {
                data: std::mem::take(&mut self.taken.data),
                ..self.taken
            };
            self.topic.with(|s| s.requeue(taken));
        }
    }
}
