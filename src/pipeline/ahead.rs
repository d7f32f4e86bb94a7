//! [`Ahead`]: reading a topic with several Treads in flight, in order.
//!
//! dchan answers a Tread with at most one message, so a reader with one
//! Tread at a time moves one message per round trip. `Ahead` keeps up to
//! [`AHEAD`] data files of one connection open in the same group, each
//! with a Tread out, and takes their answers in the order the Treads were
//! sent (a `FuturesOrdered`). The server does *not* promise to give the
//! messages to those Treads in the order they were sent (tried: over
//! 100 000 lines through `cat | cat | cat`, a few came a place or more
//! out of order), so a reader whose order is promised (one copy of a
//! stage, and the printer after it) reads with one file; copies of a stage
//! with several replicas, whose order is not promised, read ahead. A
//! read is acknowledged by the next Tread on its own file, so a copy that
//! dies gives back up to [`AHEAD`] reads (at least once, for those). Read
//! in batches over plain 9P2000 (see `stage::reader_options`), so each
//! read is a batch: every whole message there was, up to the count.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;

use crate::client::{Client, Error, Puller, Result};

/// Treads a reader whose order is not promised keeps in flight.
pub const AHEAD: usize = 32;

type Pending = BoxFuture<'static, (Puller, Result<Option<Bytes>>)>;

/// Several pullers of one topic, read in turn; see the module comment.
pub struct Ahead {
    /// The pullers, each with its read in flight, in the order sent.
    queue: FuturesOrdered<Pending>,
    /// How long each read waits before it gives up (and is sent again).
    tick: Duration,
    /// Pullers that saw the end.
    done: Vec<Puller>,
}

fn read(mut p: Puller, tick: Duration) -> Pending {
    Box::pin(async move {
        let r = p.next_timeout(tick).await;
        (p, r)
    })
}

impl Ahead {
    /// Open `n` pullers of `topic`, each waiting at most `tick` at a time.
    pub async fn open(client: &Client, topic: &str, n: usize, tick: Duration) -> Result<Ahead> {
        let mut queue = FuturesOrdered::new();
        for _ in 0..n.max(1) {
            queue.push_back(read(client.open_data(topic).await?, tick));
        }
        Ok(Ahead {
            queue,
            tick,
            done: Vec::new(),
        })
    }

    /// The next message in order; `None` at the end; [`Error::TimedOut`]
    /// when none came within the tick (ask again: nothing is lost).
    /// Dropping this future loses nothing either: the reads stay here.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        let Some((p, r)) = self.queue.next().await else {
            return Ok(None);
        };
        match r {
            Ok(Some(m)) => {
                self.queue.push_back(read(p, self.tick));
                Ok(Some(m))
            }
            Err(Error::TimedOut) => {
                self.queue.push_back(read(p, self.tick));
                Err(Error::TimedOut)
            }
            // The end: every read sent after this one ends too.
            Ok(None) => {
                self.done.push(p);
                Ok(None)
            }
            Err(e) => {
                self.done.push(p);
                Err(e)
            }
        }
    }

    /// Read again after the end: each puller that saw it sends a Tread
    /// again (a message given back to the group after the topic ended comes
    /// that way; else the end comes again).
    pub fn resume(&mut self) {
        for p in std::mem::take(&mut self.done) {
            self.queue.push_back(read(p, self.tick));
        }
    }

    /// Stop reading: wait for the reads in flight (each ends within a
    /// tick), and return the messages they brought, in order, then close
    /// every file (acknowledging what was read).
    /// (Once finished, it reads nothing more: [`Ahead::next`] says end.)
    pub async fn finish(&mut self) -> Result<Vec<Bytes>> {
        let mut left = Vec::new();
        while let Some((p, r)) = self.queue.next().await {
            if let Ok(Some(m)) = r {
                left.push(m);
            }
            self.done.push(p);
        }
        for p in std::mem::take(&mut self.done) {
            p.close().await?;
        }
        Ok(left)
    }
}
