//! Running totals of the messages pushed to and pulled from all of a
//! broker's topics, for the server's ctl: kept as they happen, so reading
//! them costs the same with 10 or 1 000 000 topics (a sum over the topics
//! would walk them all).
//!
//! Every push and pull adds to them, so one shared atomic would be the one
//! cache line every core writes for every message, however unrelated the
//! topics (which otherwise share no lock and no line). The counts are
//! striped instead: each thread adds to a stripe of its own (a cache line,
//! picked once per thread), with a relaxed add that stays in that core's
//! cache; a read sums the stripes. Threads past `STRIPES` share stripes,
//! which costs only some contention. Written by hand: it is twenty lines,
//! and the crates that stripe counters bring much more than that.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many stripes: more than the worker threads of most servers.
const STRIPES: usize = 64;

/// One thread's counts, alone in its cache line (128 bytes: adjacent-line
/// prefetch pairs 64-byte lines on x86).
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    pushed: AtomicU64,
    pulled: AtomicU64,
    /// Bytes of files on disk (the durable engine's).
    disk: AtomicU64,
}

/// Messages pushed and pulled over all topics, ever (a pull given back,
/// a reader's that was cancelled, is taken off again), and the bytes their
/// files take on disk (the durable engine's).
pub(crate) struct Tally {
    stripes: Box<[Stripe]>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }
}

/// The next stripe to give a thread.
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe.
    static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

impl Tally {
    fn mine(&self) -> &Stripe {
        &self.stripes[MINE.with(|i| *i)]
    }

    pub(crate) fn pushed(&self) {
        self.mine().pushed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pulled(&self) {
        self.mine().pulled.fetch_add(1, Ordering::Relaxed);
    }

    /// A pull given back: wraps in its stripe, but not in the sum.
    pub(crate) fn unpulled(&self) {
        self.mine().pulled.fetch_sub(1, Ordering::Relaxed);
    }

    /// Bytes written to disk (`n` as an `i64` below 0: deleted).
    pub(crate) fn disk(&self, n: i64) {
        self.mine().disk.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (pushed, pulled), summed over the stripes.
    pub(crate) fn sum(&self) -> (u64, u64) {
        self.stripes.iter().fold((0u64, 0u64), |(a, b), s| {
            (
                a.wrapping_add(s.pushed.load(Ordering::Relaxed)),
                b.wrapping_add(s.pulled.load(Ordering::Relaxed)),
            )
        })
    }

    /// The bytes on disk, summed over the stripes.
    pub(crate) fn disk_bytes(&self) -> u64 {
        (self.stripes.iter()).fold(0u64, |a, s| a.wrapping_add(s.disk.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_threads_and_takes_back() {
        let tally = std::sync::Arc::new(Tally::default());
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let t = tally.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.pushed();
                        t.pulled();
                    }
                    t.unpulled();
                    t.disk(10);
                    t.disk(-3);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(tally.sum(), (100_000, 99_900));
        assert_eq!(tally.disk_bytes(), 700);
    }
}
