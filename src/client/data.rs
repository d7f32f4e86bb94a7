//! A topic's `data` file held open: [`Puller`] reads whole messages one
//! after another, [`Pusher`] writes them, each over a single fid.
//!
//! Message boundaries. dchan returns at most one message per Tread. On a
//! 9P2000.L or .u session it also follows "the Linux read loop" rule: once a
//! Tread of the largest count (msize − 24, or the iounit) returned the end of
//! a message, the next Tread at that offset returns 0 bytes, once. So a
//! puller issues largest-count Treads until one returns 0 bytes: the bytes
//! before it are exactly one message, whatever its size or framing, and a
//! 0-byte first reply is end of file (the topic was closed and drained).
//! On plain 9P2000 (no such rule) a reply shorter than the count ends the
//! message, so a message that fills a whole number of Treads runs on into
//! the next; use .u or .L for messages that large.

use bytes::Bytes;

use super::error::Result;
use super::file::{File, concat};
use crate::proto::Dialect;

/// A topic's data file open for reading, as one member of the client's group.
///
/// Close it with [`Puller::close`] when done: dropped, it is clunked in the
/// background, and if the connection ends before that clunk reaches the
/// server, the server gives the last message read back to the group (it
/// cannot tell that it arrived), so it may be delivered twice.
#[derive(Debug)]
pub struct Puller {
    /// The open fid.
    file: File,
    /// The offset of the next Tread; the server sees it advance by what we read.
    offset: u64,
    /// What is read of a message not yet complete: kept here, so a `next`
    /// dropped halfway (say by a timeout) loses nothing the next call needs.
    partial: Vec<Bytes>,
}

impl Puller {
    pub(crate) fn new(file: File) -> Puller {
        Puller {
            file,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The next message, waiting for one; `None` once the topic is closed
    /// and drained. Dropping the future while it waits sends Tflush, and the
    /// message it would have taken stays for the next reader.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        let max = self.file.max_io();
        let loop_rule = self.file.connection().dialect() != Dialect::P2000;
        loop {
            let chunk = self.file.read(self.offset, max).await?;
            self.offset += chunk.len() as u64;
            let n = chunk.len();
            if n == 0 {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(concat(std::mem::take(&mut self.partial))));
            }
            self.partial.push(chunk);
            if !loop_rule && n < max as usize {
                return Ok(Some(concat(std::mem::take(&mut self.partial))));
            }
        }
    }

    /// Clunk the fid and wait for the server to have done so.
    pub async fn close(self) -> Result<()> {
        self.file.clunk().await
    }
}

/// A topic's data file open for writing.
#[derive(Debug)]
pub struct Pusher {
    /// The open fid.
    file: File,
}

impl Pusher {
    pub(crate) fn new(file: File) -> Pusher {
        Pusher { file }
    }

    /// Push `msg`: one Twrite (several if it is larger than the connection's
    /// largest write, which on a `write`-framed topic splits it). Returns
    /// once the server has taken it, which with capacity 0 means a reader
    /// has. With `line` framing the server cuts messages at newlines, and a
    /// last line without one waits for the next push or for `close`.
    pub async fn push(&self, msg: impl Into<Bytes>) -> Result<()> {
        self.file.write_all(0, msg.into()).await
    }

    /// Clunk the fid (pushing any unterminated last line) and wait for it.
    pub async fn close(self) -> Result<()> {
        self.file.clunk().await
    }
}
