//! A reader group's place in one topic: its offset, the deliveries that came
//! back unacked, and its blocked readers in arrival order.

use std::collections::VecDeque;

use bytes::Bytes;

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
    /// Deliveries handed to readers and neither acked nor returned.
    pub(crate) unacked: u64,
    /// Keys of the blocked readers (in the topic's reader slab), oldest
    /// first. Invariant, restored after every change under the lock: when
    /// this is not empty, the group has nothing to take.
    pub(crate) waiters: VecDeque<usize>,
}

impl Group {
    pub(crate) fn new(name: &str, id: u64, offset: Seq) -> Group {
        Group {
            name: name.into(),
            id,
            offset,
            requeued: VecDeque::new(),
            unacked: 0,
            waiters: VecDeque::new(),
        }
    }

    /// Start over at `offset`: what was requeued or is out with readers no
    /// longer belongs to the group. Blocked readers stay.
    pub(crate) fn restart(&mut self, id: u64, offset: Seq) {
        self.id = id;
        self.offset = offset;
        self.requeued.clear();
        self.unacked = 0;
    }

    /// Put a delivery back, in sequence order, ahead of the log.
    pub(crate) fn requeue(&mut self, seq: Seq, data: Bytes) {
        let at = self.requeued.partition_point(|&(s, _)| s < seq);
        self.requeued.insert(at, (seq, data));
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
            unacked: self.unacked,
            blocked: self.waiters.len() as u64,
        }
    }
}
