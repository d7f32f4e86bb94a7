//! A topic's `data` file held open: [`Puller`] reads whole messages one
//! after another, [`Pusher`] writes them, each over a single fid.
//!
//! Message boundaries. dchan returns at most one message per Tread (a
//! `:batch` session, [`Options::batch`](super::Options::batch), returns a
//! batch instead, which a [`Puller`] returns as it would one message), and
//! the client attaches with the `:short` option: a reply shorter than its
//! count ends a message, and a message whose last reply filled its Tread
//! exactly is followed by one 0-byte reply. So a puller issues
//! largest-count Treads (msize − 24, or the iounit) until one returns 0
//! bytes or fewer than it asked for: the bytes up to there are exactly one
//! message, whatever its size or framing, for one Tread per message that
//! fits in one. A 0-byte first reply is end of file (the topic closed and
//! drained). The server acknowledges a message when the Tread after it
//! arrives, so a message is acknowledged only once its reader asks for the
//! next, or closes. A client made with
//! [`Options::linux_reads`](super::Options::linux_reads) attaches without
//! `:short` and reads as a Linux mount does: a zero follows every message,
//! and is read at the start of the next pull (two Treads a message).

//! Giving up. A pull or push given up by dropping its future sends Tflush
//! but cannot wait for the answer, and a reply already on its way is lost
//! (see [`Puller`]). That holds only until a message starts to arrive: the
//! Treads that follow a full-size first reply (the rest of the message, and
//! the 0 that ends it) are answered at once, so they are never flushed. A
//! `next()` dropped while one is in flight leaves it to the [`Puller`], and
//! the next call takes its reply first; had it sent a fresh Tread instead,
//! the server, whose 0 went to the dropped call, would answer with the next
//! message, and the two would come back as one. [`Puller::next_timeout`] and
//! [`Pusher::push_timeout`] give up by flushing and waiting: a reply that
//! beat the Rflush is the request's real outcome (flush(5)), so the message
//! is returned, or the push reported done, rather than a timeout that is
//! not true.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, sleep_until};

use super::error::{Error, Result};
use super::file::{File, concat};
use super::mux::Reply;
use super::topics::Framing;

/// A topic's data file open for reading, as one member of the client's group.
///
/// Close it with [`Puller::close`] when done: dropped, it is clunked in the
/// background, and if the connection ends before that clunk reaches the
/// server, the server gives the last message read back to the group (it
/// cannot tell that it arrived), so it may be delivered twice.
///
/// Timeouts. Use [`Puller::next_timeout`], not a `tokio::time::timeout` (or
/// `select!`) around [`Puller::next`]. Dropping a pending `next()` sends
/// Tflush for its Tread, but if the server had already answered that Tread
/// (a message arrived just as the future was dropped), the server counts the
/// message as delivered (flush(5): the reply, not the flush, is the outcome)
/// and acknowledges it on the fid's next read or clunk, while the dropped
/// future can no longer hand it to anyone: that message is lost. With no
/// reply in flight, a drop loses nothing (the message stays for the next
/// reader). Once a message has begun to arrive, a drop loses nothing
/// either: what was read, and the Tread in flight for the rest, stay with
/// the `Puller`, and the next call returns that message, whole and alone.
/// `next_timeout` flushes and waits for the verdict instead, so a message
/// the server let go reaches the caller exactly once.
#[derive(Debug)]
pub struct Puller {
    /// The open fid.
    file: File,
    /// The offset of the next Tread; the server sees it advance by what we read.
    offset: u64,
    /// What is read of a message not yet complete: kept here, so a `next`
    /// dropped halfway (say by a timeout) loses nothing the next call needs.
    partial: Vec<Bytes>,
    /// The Tread for the rest of that message (or the 0 that ends it),
    /// sent and not yet collected: a `next` dropped while it was in flight
    /// leaves it here, and the next call takes its reply rather than send
    /// another Tread, which would find the message's 0 used up.
    reading: Option<Reply>,
    /// On a session without `:short` (the Linux read loop): every message
    /// that ended short is followed by a 0 the next call reads first.
    zero_after_short: bool,
    /// The last message ended short and its 0 is still to be read: the
    /// next Tread gets it, and only then does the server acknowledge that
    /// message.
    zero_due: bool,
}

impl Puller {
    pub(crate) fn new(file: File, zero_after_short: bool) -> Puller {
        Puller {
            file,
            offset: 0,
            partial: Vec::new(),
            reading: None,
            zero_after_short,
            zero_due: false,
        }
    }

    /// The next message, waiting for one; `None` once the topic is closed
    /// and drained. Dropping the future while it waits sends Tflush, and the
    /// message it would have taken usually stays for the next reader, but
    /// one whose reply was already on its way is lost: see [`Puller`] and
    /// use [`Puller::next_timeout`] to bound the wait.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        self.next_unless(std::future::pending()).await
    }

    /// [`Puller::next`], waiting at most `limit` for a message to start
    /// arriving: [`Error::TimedOut`] if none came. When the limit passes the
    /// Tread is flushed and the server's verdict awaited; a message it sent
    /// anyway is returned, not lost. Once part of a message has come, the
    /// rest is read however long it takes (the message is ours by then).
    pub async fn next_timeout(&mut self, limit: Duration) -> Result<Option<Bytes>> {
        self.next_deadline(Instant::now() + limit).await
    }

    /// [`Puller::next_timeout`] with a point in time rather than a duration.
    pub async fn next_deadline(&mut self, deadline: Instant) -> Result<Option<Bytes>> {
        self.next_unless(sleep_until(deadline)).await
    }

    /// The next message, giving up (with [`Error::TimedOut`]) if `cancel`
    /// completes before its first bytes came: the Tread is flushed and the
    /// server's verdict awaited, as for [`Puller::next_timeout`].
    pub async fn next_unless(&mut self, cancel: impl Future<Output = ()>) -> Result<Option<Bytes>> {
        let max = self.file.max_io();
        // Fused: once it has fired, no further read waits on it (a read
        // it cut may still have been answered, and the loop goes on).
        let mut cancel = std::pin::pin!(futures_util::FutureExt::fuse(cancel));
        loop {
            let chunk = if let Some(reading) = &mut self.reading {
                let chunk = self.file.read_reply(reading, max).await;
                self.reading = None;
                chunk?
            } else if self.partial.is_empty() {
                if futures_util::future::FusedFuture::is_terminated(&cancel) {
                    return Err(Error::TimedOut);
                }
                match self.file.read_unless(self.offset, max, &mut cancel).await? {
                    Some(chunk) => chunk,
                    None => return Err(Error::TimedOut),
                }
            } else {
                // The rest of a message, or the 0 that ends it: answered at
                // once, and never flushed (see the module doc).
                self.reading = Some(self.file.read_detached(self.offset, max).await?);
                continue;
            };
            self.offset += chunk.len() as u64;
            let n = chunk.len();
            if n == 0 {
                if std::mem::take(&mut self.zero_due) {
                    continue;
                }
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(concat(std::mem::take(&mut self.partial))));
            }
            self.zero_due = false;
            self.partial.push(chunk);
            // A reply shorter than the count ends the message (the server
            // sends no more than one).
            if n < max as usize {
                self.zero_due = self.zero_after_short;
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
///
/// One message is one Twrite on a `write`-framed topic, so a message larger
/// than the connection's largest write ([`File::max_io`]) cannot go there
/// whole: it is refused ([`Error::TooLarge`]) and nothing is pushed. On a
/// `line`-framed topic it goes out in several Twrites (the server joins a
/// line written in parts). The pusher learns the framing from the topic's
/// ctl as it opens the data file (the server too takes the framing at open);
/// when it could not read it, it refuses such a message whatever the framing.
#[derive(Debug)]
pub struct Pusher {
    /// The open fid.
    file: File,
    /// The topic's framing when it was opened, if known.
    framing: Option<Framing>,
}

impl Pusher {
    pub(crate) fn new(file: File, framing: Option<Framing>) -> Pusher {
        Pusher { file, framing }
    }

    /// Push `msg`: one Twrite, or several for a line longer than the
    /// connection's largest write on a `line`-framed topic; such a message
    /// is refused on a `write`-framed one (see [`Pusher`]). Returns once the
    /// server has taken it, which with capacity 0 means a reader has. With
    /// `line` framing the server cuts messages at newlines, and a last line
    /// without one waits for the next push or for `close`.
    ///
    /// Dropping the future while it waits sends Tflush, but cannot learn
    /// whether the server took the message first; use
    /// [`Pusher::push_timeout`] to bound the wait and know.
    pub async fn push(&self, msg: impl Into<Bytes>) -> Result<()> {
        let msg = msg.into();
        self.check_size(msg.len())?;
        self.file.write_all(0, msg).await
    }

    /// [`Pusher::push`], waiting at most `limit` for the server to take the
    /// message: [`Error::TimedOut`] if it did not, and then nothing was
    /// pushed. When the limit passes the Twrite is flushed and the server's
    /// verdict awaited: a Twrite it accepted anyway counts as pushed (`Ok`),
    /// so a caller never pushes again what was already pushed. Once part of
    /// a message larger than one Twrite was taken, the rest is written
    /// however long it takes.
    pub async fn push_timeout(&self, msg: impl Into<Bytes>, limit: Duration) -> Result<()> {
        self.push_deadline(msg, Instant::now() + limit).await
    }

    /// [`Pusher::push_timeout`] with a point in time rather than a duration.
    pub async fn push_deadline(&self, msg: impl Into<Bytes>, deadline: Instant) -> Result<()> {
        match self.push_unless(msg, sleep_until(deadline)).await? {
            true => Ok(()),
            false => Err(Error::TimedOut),
        }
    }

    /// [`Pusher::push`], given up if `stop` completes before the server
    /// took the message (a deadline, an interrupt): `Ok(false)`, and then
    /// nothing was pushed. As for [`Pusher::push_timeout`], the Twrite is
    /// flushed and the server's verdict awaited, and once part of a
    /// message was taken the rest is written however long it takes.
    pub async fn push_unless(
        &self,
        msg: impl Into<Bytes>,
        stop: impl Future<Output = ()>,
    ) -> Result<bool> {
        let mut data: Bytes = msg.into();
        self.check_size(data.len())?;
        let max = self.file.max_io() as usize;
        let first = data.split_to(data.len().min(max));
        let len = first.len();
        let n = match self.file.write_unless(0, first.clone(), stop).await? {
            Some(n) => n as usize,
            None => return Ok(false),
        };
        if n == 0 && len > 0 {
            return Err(Error::Protocol("the server took 0 bytes of a write".into()));
        }
        // Taken, in part at least: what is left goes out without a deadline.
        if n < len {
            self.file.write_all(0, first.slice(n..)).await?;
        }
        if !data.is_empty() {
            self.file.write_all(0, data).await?;
        }
        Ok(true)
    }

    /// The topic's framing when it was opened, if the pusher could read it.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Push whole lines (`lines` ends in a newline) to a `line`-framed
    /// topic, each line one message, in order, in as few Twrites as fit:
    /// each carries as many whole lines as fit [`File::max_io`] (a longer
    /// line goes alone, in parts). One Twrite is in flight at a time, so
    /// the server pushes the lines in the order written. Returns how many
    /// lines went out, and the error that stopped the rest (the server
    /// answers a write whose later lines cannot go a short count ending at
    /// a line, and the rest, written again, gets the error): the lines
    /// after that count did not go out, unless the connection was lost
    /// ([`Error::Disconnected`], [`Error::Io`]). With capacity 0 it returns
    /// once readers took every line. Cancelling it (dropping the future)
    /// leaves the count unknown; there is no timeout variant for that
    /// reason (see [`Pusher::push_timeout`] for one line at a time).
    pub async fn push_lines(&self, lines: Bytes) -> (u64, Result<()>) {
        self.push_lines_unless(lines, std::future::pending()).await
    }

    /// [`Pusher::push_lines`], stopped when `stop` completes: the Twrite
    /// in flight is flushed and the server's verdict awaited (a Twrite it
    /// took counts), and [`Error::Interrupted`] comes with the count of
    /// lines pushed. A line longer than one Twrite, once begun, is
    /// written whole.
    pub async fn push_lines_unless(
        &self,
        mut lines: Bytes,
        stop: impl Future<Output = ()>,
    ) -> (u64, Result<()>) {
        let stop = std::pin::pin!(stop);
        let mut stop = futures_util::FutureExt::fuse(stop);
        let max = self.file.max_io() as usize;
        let mut pushed = 0u64;
        while !lines.is_empty() {
            // Stopped, and the server answered the Twrite in flight with
            // the lines it took before the flush: no more go out.
            if futures_util::future::FusedFuture::is_terminated(&stop) {
                return (pushed, Err(Error::Interrupted));
            }
            let head = &lines[..lines.len().min(max)];
            let end = match memchr::memrchr(b'\n', head) {
                Some(nl) => nl + 1,
                // A line longer than one Twrite: alone, in parts.
                None => memchr::memchr(b'\n', &lines).map_or(lines.len(), |nl| nl + 1),
            };
            let piece = lines.split_to(end);
            if piece.len() > max {
                if let Err(e) = self.file.write_all(0, piece).await {
                    return (pushed, Err(e));
                }
                pushed += 1;
                continue;
            }
            let mut rest = piece;
            while !rest.is_empty() {
                let n = match self.file.write_unless(0, rest.clone(), &mut stop).await {
                    Ok(Some(n)) => (n as usize).min(rest.len()),
                    Ok(None) => return (pushed, Err(Error::Interrupted)),
                    Err(e) => return (pushed, Err(e)),
                };
                if n == 0 {
                    let e = Error::Protocol("the server took 0 bytes of a write".into());
                    return (pushed, Err(e));
                }
                pushed += memchr::memchr_iter(b'\n', &rest[..n]).count() as u64;
                rest = rest.slice(n..);
                if futures_util::future::FusedFuture::is_terminated(&stop) && !rest.is_empty() {
                    return (pushed, Err(Error::Interrupted));
                }
            }
        }
        (pushed, Ok(()))
    }

    /// Clunk the fid (pushing any unterminated last line) and wait for it.
    pub async fn close(self) -> Result<()> {
        self.file.clunk().await
    }

    /// A message of `len` bytes can go out as one message: it fits one
    /// Twrite, or the topic is line-framed.
    fn check_size(&self, len: usize) -> Result<()> {
        let max = self.file.max_io();
        if len <= max as usize || self.framing == Some(Framing::Line) {
            return Ok(());
        }
        Err(Error::TooLarge { len, max })
    }
}
