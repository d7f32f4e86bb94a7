//! A reader group's place in one topic: its offset, the deliveries that came
//! back unacked, and its blocked readers in arrival order.

use std::collections::VecDeque;

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{GroupStatus, Seq};

/// One group of one topic. Lives in the topic's state, under its lock, from
/// the group's first pull or offset access until `forget` or the topic's
/// removal; `reset` moves it to the end (as the trait says), so a group whose
/// reader happens to be busy at a reset misses nothing pushed after it.
pub(crate) struct Group {
    /// The group's name (the attach name of its readers; "" is the default).
    pub(crate) name: Box<str>,
    /// Unique within the topic and renewed whenever the group starts over
    /// (forget, reset, seek), so a delivery made before that can tell that
    /// its ack or requeue no longer applies.
    pub(crate) id: u64,
    /// The next sequence number of the log this group takes.
    pub(crate) offset: Seq,
    /// Deliveries dropped unacked, by sequence number: the group's readers
    /// take these before anything else (at-least-once).
    pub(crate) requeued: VecDeque<(Seq, Bytes)>,
    /// Sequence numbers of the deliveries handed to readers and neither
    /// acked nor returned, in order. The topic holds them in its log (they
    /// may come back), so `floor` counts them.
    out: VecDeque<Seq>,
    /// Keys of the blocked readers (in the topic's reader slab), oldest
    /// first. Invariant, restored after every change under the lock: when
    /// this is not empty, the group has nothing to take.
    pub(crate) waiters: VecDeque<usize>,
    /// When a reader last used the group (only kept when groups expire).
    pub(crate) active: Option<Instant>,
}

impl Group {
    pub(crate) fn new(name: &str, id: u64, offset: Seq) -> Group {
        Group {
            name: name.into(),
            id,
            offset,
            requeued: VecDeque::new(),
            out: VecDeque::new(),
            waiters: VecDeque::new(),
            active: None,
        }
    }

    /// Start over at `offset`: what was requeued or is out with readers no
    /// longer belongs to the group. Blocked readers stay.
    pub(crate) fn restart(&mut self, id: u64, offset: Seq) {
        self.id = id;
        self.offset = offset;
        self.requeued.clear();
        self.out.clear();
    }

    /// `seq` was handed to a reader.
    pub(crate) fn deliver(&mut self, seq: Seq) {
        // Usually the newest (a requeued one comes back lower).
        let at = self.out.partition_point(|&s| s < seq);
        self.out.insert(at, seq);
    }

    /// The delivery of `seq` is done with (acked or returned).
    pub(crate) fn settle(&mut self, seq: Seq) {
        if let Ok(at) = self.out.binary_search(&seq) {
            self.out.remove(at);
        }
    }

    /// Put a delivery back, in sequence order, ahead of the log.
    pub(crate) fn requeue(&mut self, seq: Seq, data: Bytes) {
        self.settle(seq);
        let at = self.requeued.partition_point(|&(s, _)| s < seq);
        self.requeued.insert(at, (seq, data));
    }

    /// The oldest message the group may still read: out with a reader,
    /// requeued, or next in the log. The topic holds everything from here.
    pub(crate) fn floor(&self) -> Seq {
        let mut floor = self.next_seq();
        if let Some(&s) = self.out.front() {
            floor = floor.min(s);
        }
        floor
    }

    /// Whether the group has gone `idle` without a reader at `now`.
    pub(crate) fn expired(&self, now: Instant, idle: Duration) -> bool {
        self.waiters.is_empty()
            && self.out.is_empty()
            && self
                .active
                .is_some_and(|t| now.saturating_duration_since(t) >= idle)
    }

    pub(crate) fn unacked(&self) -> u64 {
        self.out.len() as u64
    }

    /// The sequence number the group's next pull returns, if one is there.
    pub(crate) fn next_seq(&self) -> Seq {
        self.requeued.front().map_or(self.offset, |&(s, _)| s)
    }

    pub(crate) fn status(&self, next: Seq) -> GroupStatus {
        GroupStatus {
            name: self.name.to_string(),
            offset: self.next_seq(),
            lag: next - self.offset + self.requeued.len() as u64,
            unacked: self.unacked(),
            blocked: self.waiters.len() as u64,
        }
    }
}
