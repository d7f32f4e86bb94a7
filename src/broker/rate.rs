//! A topic's `rate` setting: the most messages a second its writers may
//! push together, and the token bucket that keeps it.
//!
//! The bucket is `governor`'s (GCRA, a token bucket in one number): it
//! holds one second's worth of messages, so a writer after a pause may
//! push that many at once, and from then on one every 1/N second. It is
//! asked under the topic's lock only when a message is about to be
//! appended, so the queue of waiting pushes stays in order (a push waits
//! its turn, then for its token) and a refused push learns when the next
//! token comes: its own future sleeps until then (no task, no lock held).

use std::fmt;
use std::num::NonZeroU32;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// Messages a second, pushed to one topic by all its writers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub NonZeroU32);

impl Rate {
    /// `N/s` (N from 1 to 4 294 967 295), or `none` for no limit.
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        if s == "none" {
            return Ok(None);
        }
        let digits = s.strip_suffix("/s").unwrap_or(s);
        match digits.parse::<NonZeroU32>() {
            Ok(n) => Ok(Some(Rate(n))),
            Err(_) => Err(format!(
                "bad rate {s:?}: want messages a second, like 1000/s, or none"
            )),
        }
    }

    /// The text `parse` takes back, for a status or a settings file.
    pub fn text(rate: Option<Rate>) -> String {
        match rate {
            None => "none".into(),
            Some(r) => r.to_string(),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// The bucket of one topic's rate.
pub(crate) struct Bucket(
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>,
);

impl Bucket {
    /// A full bucket (a second's worth).
    pub(crate) fn new(rate: Rate) -> Bucket {
        Bucket(RateLimiter::direct_with_clock(
            Quota::per_second(rate.0),
            MonotonicClock,
        ))
    }

    /// Take one token, or say when the next comes.
    pub(crate) fn take(&self) -> Result<(), Instant> {
        self.0
            .check()
            .map_err(|not_until| Instant::from_std(not_until.earliest_possible()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows() {
        assert_eq!(Rate::parse("none"), Ok(None));
        let r = Rate::parse("1000/s").unwrap().unwrap();
        assert_eq!(r.to_string(), "1000/s");
        assert_eq!(
            Rate::parse("5"),
            Ok(Some(Rate(NonZeroU32::new(5).unwrap())))
        );
        for bad in ["0/s", "-1/s", "fast", "1.5/s", "10/m", ""] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_holds_one_second() {
        let b = Bucket::new(Rate(NonZeroU32::MIN));
        b.take().unwrap();
        let next = b.take().unwrap_err();
        assert!(next > Instant::now());
    }
}
