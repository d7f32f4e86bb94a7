//! What each reader received, and the verdict on a group: every message
//! acknowledged to a producer arrived exactly once, in order.
//!
//! Each reader keeps its own [`Tally`] (no sharing on the hot path); a
//! group's tallies are merged at the end into a [`Verdict`]. Order is checked
//! within a producer. It is defined only with one request in flight on each
//! side: concurrent pushes have no order among themselves (a push waiting
//! for room may be overtaken by any number of later ones), nor do concurrent
//! pulls on separate fids. So with requests in flight, messages arriving
//! further out of place than the in-flight window are counted, but only a
//! run with one request in flight per side fails on them.
//!
//! A message acknowledged and never received is *lost* only when the system
//! says it holds nothing more for the group; while it still holds some (or
//! cannot say), the missing ones are *unfinished*: a slow system is not a
//! lossy one ([`Verdict::settle`]).

use std::time::Instant;

use hdrhistogram::Histogram;

use super::Result;
use super::payload;

/// One reader's record.
pub struct Tally {
    /// The message size every message must have.
    size: usize,
    /// How far behind the highest sequence number seen from a producer a
    /// message may arrive without counting as out of order.
    window: u64,
    /// The run's epoch, against which the messages' send times are measured.
    epoch: Instant,
    /// Per producer, one bit per sequence number received.
    seen: Vec<Vec<u64>>,
    /// Per producer, the highest sequence number received so far.
    highest: Vec<Option<u64>>,
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Push-to-pull latency, in nanoseconds.
    pub latency: Histogram<u64>,
}

/// A histogram of nanoseconds from 1 ns to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    pub fn new(size: usize, window: u64, epoch: Instant) -> Tally {
        Tally {
            size,
            window,
            epoch,
            seen: Vec::new(),
            highest: Vec::new(),
            received: 0,
            duplicates: 0,
            reordered: 0,
            latency: histogram(),
        }
    }

    /// Record one message; a malformed message is an error. A warm-up
    /// message is checked for shape and otherwise left out.
    pub fn record(&mut self, msg: &[u8]) -> Result<payload::Stamp> {
        let stamp = payload::decode(msg, self.size)?;
        if stamp.is_warmup() {
            return Ok(stamp);
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.latency
            .saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        let p = stamp.producer as usize;
        if p >= self.seen.len() {
            self.seen.resize_with(p + 1, Vec::new);
            self.highest.resize(p + 1, None);
        }
        let (word, bit) = ((stamp.seq / 64) as usize, stamp.seq % 64);
        let bits = &mut self.seen[p];
        if word >= bits.len() {
            bits.resize(word + 1 + word / 2, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        }
        bits[word] |= 1 << bit;
        match self.highest[p] {
            Some(h) if stamp.seq + self.window < h => self.reordered += 1,
            Some(h) if h >= stamp.seq => {}
            _ => self.highest[p] = Some(stamp.seq),
        }
        self.received += 1;
        Ok(stamp)
    }
}

impl Tally {
    /// Whether message `seq` of `producer` arrived.
    pub fn has(&self, producer: u32, seq: u64) -> bool {
        let Some(bits) = self.seen.get(producer as usize) else {
            return false;
        };
        bits.get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

/// The verdict on one group (or on the whole run, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Messages acknowledged to producers (per group).
    pub expected: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Acknowledged, not received, and no longer held by the system.
    pub lost: u64,
    /// Acknowledged, not received, and still held by the system (or it
    /// cannot say) when draining stopped.
    pub unfinished: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Messages received that no producer had been acknowledged for.
    pub unexpected: u64,
    /// Whether order was defined (one request in flight per side), so that
    /// `reordered` is a failure rather than a figure.
    pub ordered: bool,
}

impl Verdict {
    /// Merge a group's tallies; `pushed[p]` is how many messages producer
    /// `p` had acknowledged (sequence numbers `0..pushed[p]`).
    pub fn of_group(tallies: &[Tally], pushed: &[u64], ordered: bool) -> Verdict {
        let mut v = Verdict {
            expected: pushed.iter().sum(),
            ordered,
            ..Verdict::default()
        };
        let producers = tallies
            .iter()
            .map(|t| t.seen.len())
            .max()
            .unwrap_or(0)
            .max(pushed.len());
        for p in 0..producers {
            let mut merged: Vec<u64> = Vec::new();
            for t in tallies {
                let Some(bits) = t.seen.get(p) else { continue };
                if bits.len() > merged.len() {
                    merged.resize(bits.len(), 0);
                }
                for (m, &b) in merged.iter_mut().zip(bits) {
                    v.duplicates += (*m & b).count_ones() as u64;
                    *m |= b;
                }
            }
            let limit = pushed.get(p).copied().unwrap_or(0);
            let mut inside = 0;
            for (w, &bits) in merged.iter().enumerate() {
                for bit in 0..64 {
                    if bits & (1 << bit) != 0 {
                        if (w as u64) * 64 + bit < limit {
                            inside += 1;
                        } else {
                            v.unexpected += 1;
                        }
                    }
                }
            }
            v.received += inside;
            v.lost += limit - inside;
        }
        for t in tallies {
            v.duplicates += t.duplicates;
            v.reordered += t.reordered;
        }
        v.received += v.unexpected;
        v
    }

    /// Messages received that a producer had been acknowledged for: what a
    /// rate counts.
    pub fn delivered(&self) -> u64 {
        self.received - self.unexpected
    }

    /// Draining stopped with messages missing and the system holding `held`
    /// more for this group (`None`: it cannot say): those it holds are
    /// unfinished, only the rest lost.
    pub fn settle(&mut self, held: Option<u64>) {
        let unfinished = held.map_or(self.lost, |n| n.min(self.lost));
        self.unfinished += unfinished;
        self.lost -= unfinished;
    }

    pub fn add(&mut self, other: &Verdict) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.unfinished += other.unfinished;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.ordered = other.ordered;
    }

    /// Nothing lost, duplicated or made up, nor out of order where order
    /// is defined.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.unfinished == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && (self.reordered == 0 || !self.ordered)
    }

    /// What went wrong, for the error line: "unfinished: ..." when some
    /// were still held, "N of M messages lost, ..." otherwise.
    pub fn describe(&self) -> String {
        let counts = format!(
            "{} of {} messages lost, {} duplicated, {} out of order, {} unexpected",
            self.lost, self.expected, self.duplicates, self.reordered, self.unexpected
        );
        if self.unfinished > 0 {
            format!(
                "unfinished: {} of {} messages still held when draining stopped; {counts}",
                self.unfinished, self.expected
            )
        } else {
            counts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::payload::{Stamp, encode};
    use super::*;

    fn msg(producer: u32, seq: u64) -> bytes::Bytes {
        encode(
            Stamp {
                producer,
                seq,
                sent_ns: 0,
            },
            64,
        )
    }

    #[test]
    fn clean_split_between_two_readers() {
        let epoch = Instant::now();
        let (mut a, mut b) = (Tally::new(64, 0, epoch), Tally::new(64, 0, epoch));
        for seq in 0..100 {
            let t = if seq % 3 == 0 { &mut a } else { &mut b };
            t.record(&msg(0, seq)).unwrap();
            t.record(&msg(1, seq)).unwrap();
        }
        let v = Verdict::of_group(&[a, b], &[100, 100], true);
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.received, 200);
    }

    #[test]
    fn loss_duplicates_order_and_strays() {
        let epoch = Instant::now();
        let (mut a, mut b) = (Tally::new(64, 1, epoch), Tally::new(64, 1, epoch));
        for seq in [0, 1, 3, 2, 6, 4] {
            a.record(&msg(0, seq)).unwrap();
        }
        b.record(&msg(0, 1)).unwrap();
        b.record(&msg(0, 9)).unwrap();
        let v = Verdict::of_group(&[a, b], &[8], true);
        assert_eq!(v.lost, 2, "5 and 7 never came: {v:?}");
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.reordered, 1, "4 after 6 is beyond a window of 1");
        assert_eq!(v.unexpected, 1);
        assert_eq!(v.delivered(), 6, "0, 1, 2, 3, 4, 6");
        assert!(!v.is_clean());
        let mut held = v.clone();
        held.settle(Some(1));
        assert_eq!((held.lost, held.unfinished), (1, 1));
        assert!(
            held.describe().starts_with("unfinished: 1 of 8"),
            "{held:?}"
        );
        let mut unknown = v.clone();
        unknown.settle(None);
        assert_eq!((unknown.lost, unknown.unfinished), (0, 2));
        let unordered = Verdict {
            ordered: false,
            reordered: 3,
            ..Verdict::default()
        };
        assert!(
            unordered.is_clean(),
            "out of order is a figure, not a failure"
        );
    }
}
