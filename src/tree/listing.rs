//! The root `topics` file: every topic and its status, one line each, in
//! one stream of reads, so that `cat /n/dchan/topics` and `dchan ls` list
//! 100 000 topics in one open and a few hundred Treads instead of four
//! round trips per topic.
//!
//! ```text
//! TOPIC PENDING PUSHED PULLED READERS GROUPS CAPACITY FRAMING STATE
//! jobs 3 10 7 1 1 10 line open
//! metrics/eu 0 0 0 0 0 0 write closed
//! ```
//! A header line naming the columns (the columns of `dchan ls`; a reader
//! finds a column by its header, so columns may be added at the end), then
//! one line per topic in tree order ([`crate::broker::order`]: `a`,
//! `a/b`, `a-x`), fields separated by one space (topic
//! names hold no spaces). A topic removed while the file is read is left
//! out; one created behind the reader's position is not seen.
//!
//! The file is made as it is read: each Tread formats the next topics from
//! where the previous one stopped (a position in the broker's tree order,
//! [`Broker::names`]), so an open file holds one read's worth of text, never
//! the whole listing, and each Tread costs O(log n + what it returns).
//! Reads go in order: offset 0 starts again from the first topic; any
//! offset other than where the last read ended fails with EINVAL (the
//! kernel's reads of a `cache=none` mount, `cat` and `9p read` all read in
//! order).

use std::ops::Bound;

use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, TopicStatus};
use crate::fs::{Error, Result, errno};

/// The file's first line.
pub const HEADER: &str = "TOPIC PENDING PUSHED PULLED READERS GROUPS CAPACITY FRAMING STATE\n";

/// How many names one broker range query asks for.
const BATCH: usize = 256;

/// An open `topics` file's place in the listing.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// The byte offset the next read starts at.
    offset: u64,
    /// Where the broker's names carry on; `None` once every name is read
    /// (or before the first read).
    from: Option<Bound<String>>,
    /// Text formatted but not yet read.
    pending: BytesMut,
}

impl Listing {
    /// Begin a read at `offset`: offset 0 starts the listing again; any
    /// other must be where the last read ended.
    pub(super) fn seek(&mut self, offset: u64) -> Result<()> {
        if offset == 0 {
            self.offset = 0;
            self.pending = BytesMut::from(HEADER);
            self.from = Some(Bound::Unbounded);
        } else if offset != self.offset {
            return Err(Error::new(
                errno::EINVAL,
                "the topics file reads in order: from 0, or where the last read ended",
            ));
        }
        Ok(())
    }

    /// The next names to format, while a read of `count` bytes wants more
    /// text than is pending; `None` once it has enough or the names are
    /// done.
    pub(super) fn more<B: Broker>(&mut self, broker: &B, count: u32) -> Option<Vec<String>> {
        if self.pending.len() >= count as usize {
            return None;
        }
        let from = self.from.take()?;
        let names = broker.names(from.as_ref().map(String::as_str), BATCH);
        if names.len() == BATCH {
            self.from = names.last().map(|n| Bound::Excluded(n.clone()));
        }
        Some(names)
    }

    /// Add a topic's line; `readers` is its open data files that read.
    pub(super) fn add(&mut self, s: &TopicStatus, readers: u64) {
        line(&mut self.pending, s, readers)
    }

    /// The read's bytes: at most `count` of the text pending.
    pub(super) fn take(&mut self, count: u32) -> Bytes {
        let n = (count as usize).min(self.pending.len());
        self.offset += n as u64;
        self.pending.split_to(n).freeze()
    }
}

/// One topic's line.
fn line(out: &mut BytesMut, s: &TopicStatus, readers: u64) {
    use std::fmt::Write as _;
    let framing = match s.config.framing {
        crate::broker::Framing::Line => "line",
        crate::broker::Framing::Write => "write",
    };
    let state = if s.closed { "closed" } else { "open" };
    let _ = writeln!(
        out,
        "{} {} {} {} {} {} {} {} {}",
        s.name,
        s.pending,
        s.pushed,
        s.pulled,
        readers,
        s.groups.len(),
        s.config.capacity,
        framing,
        state
    );
}
