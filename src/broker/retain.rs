//! Retention: how much of what every group has taken a topic keeps, so
//! that a new group starts from history and a group can seek back over it
//! (Kafka's and JetStream's limits retention). The limit (`Retention`),
//! its text (`retain 1000`, `retain 64M`, `retain 1h`, `retain none`),
//! and the bookkeeping a topic needs to apply it (`Kept`).
//!
//! Capacity is unchanged by it: it bounds how far the slowest group lags
//! behind what every group has taken, and a group reading retained history
//! counts as at that point, so replaying history never holds a writer back.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::Seq;

/// What a topic keeps of the messages every group has taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Nothing: a message goes once every group is done with it.
    #[default]
    None,
    /// The last N taken messages.
    Count(u64),
    /// The newest taken messages whose payloads fit in this many bytes.
    Bytes(u64),
    /// The taken messages pushed less than this long ago.
    Age(Duration),
}

const RULE: &str =
    "want a count (1000), a size with k, M or G (64M), a duration (1h, 30min), or none";

impl Retention {
    /// A limit as people write it: `none`; a plain number is a count of
    /// messages; a number with `k`/`K`, `M`, `G`/`g` is bytes (binary, as
    /// `max_message`: `M` is MiB, never a month); anything else is a
    /// humantime duration (`30s`, `10min`, `1h`, `7days`; `m` is minutes).
    /// A zero limit is refused: `none` says it.
    pub fn parse(s: &str) -> Result<Retention, String> {
        let bad = |why: &str| format!("bad retain {s:?}: {why}");
        if s == "none" {
            return Ok(Retention::None);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u64>() {
                Ok(0) => Err(bad("a zero limit is refused (say none)")),
                Ok(n) => Ok(Retention::Count(n)),
                Err(_) => Err(bad(RULE)),
            };
        }
        if s.ends_with(['k', 'K', 'M', 'G', 'g']) {
            return super::parse_size(s)
                .map(Retention::Bytes)
                .map_err(|_| bad(RULE));
        }
        match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => Err(bad("a zero limit is refused (say none)")),
            Ok(d) => Ok(Retention::Age(d)),
            Err(_) => Err(bad(RULE)),
        }
    }
}

/// As `parse` reads it back.
impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Retention::None => f.write_str("none"),
            Retention::Count(n) => write!(f, "{n}"),
            Retention::Bytes(b) => {
                // Sizes come with a suffix, so they are whole KiB.
                let (n, unit) = match b {
                    b if b % (1 << 30) == 0 => (b >> 30, "G"),
                    b if b % (1 << 20) == 0 => (b >> 20, "M"),
                    b => (b >> 10, "k"),
                };
                write!(f, "{n}{unit}")
            }
            Retention::Age(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}

/// What a topic keeps to apply its retention.
#[derive(Default)]
pub(crate) struct Kept {
    /// The bytes of the retained messages (those every group has taken
    /// still held), kept with a `Bytes` limit only.
    pub(crate) bytes: u64,
    /// With an `Age` limit: the pushes in buckets of `Age / 64`, oldest
    /// first, each as (the sequence number after its last message, when it
    /// began): every message before `end` was pushed before `when` plus
    /// the grain. A message goes at most a grain late; a bucket costs 16
    /// bytes however many messages it spans.
    marks: VecDeque<(Seq, Instant)>,
}

/// The width of an age's buckets.
fn grain(age: Duration) -> Duration {
    (age / 64).max(Duration::from_millis(1))
}

impl Kept {
    /// Message `seq` is pushed now (with an `Age` limit).
    pub(crate) fn pushed(&mut self, seq: Seq, age: Duration) {
        let now = Instant::now();
        match self.marks.back_mut() {
            Some((end, began)) if now < *began + grain(age) => *end = seq + 1,
            _ => self.marks.push_back((seq + 1, now)),
        }
    }

    /// The messages before the returned one were all pushed `age` ago or
    /// longer (`first` if none is known to be).
    pub(crate) fn expired_before(&self, age: Duration, first: Seq) -> Seq {
        let now = Instant::now();
        let old = (self.marks).partition_point(|&(_, began)| {
            now.saturating_duration_since(began) >= age + grain(age)
        });
        match old {
            0 => first,
            n => self.marks[n - 1].0.max(first),
        }
    }

    /// The messages before `first` are gone.
    pub(crate) fn trimmed(&mut self, first: Seq) {
        while self.marks.front().is_some_and(|&(end, _)| end <= first) {
            self.marks.pop_front();
        }
    }

    /// Forget the marks (a reset, or a limit that is no longer an age).
    pub(crate) fn clear(&mut self) {
        self.marks.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_each_kind() {
        for (text, want) in [
            ("none", Retention::None),
            ("1000", Retention::Count(1000)),
            ("64M", Retention::Bytes(64 << 20)),
            ("512k", Retention::Bytes(512 << 10)),
            ("1G", Retention::Bytes(1 << 30)),
            ("1h", Retention::Age(Duration::from_secs(3600))),
            ("10m", Retention::Age(Duration::from_secs(600))),
        ] {
            let got = Retention::parse(text).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(Retention::parse(&got.to_string()).unwrap(), want);
        }
        for bad in ["", "0", "0s", "0M", "lots", "-1", "1.5M"] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
