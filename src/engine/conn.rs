//! One connection: a single task that decodes frames, runs every request
//! concurrently, handles Tflush and the other cancellations, and writes the
//! replies in order.
//!
//! Requests that wait on the file tree are futures in a `FuturesUnordered`
//! polled by the same `select!` that reads frames, so a read blocked for
//! minutes delays nothing else, and no task is spawned per message. Because
//! one task both completes requests and handles Tflush, the flush race
//! resolves itself: when a Tflush is handled, the old request has either
//! completed (its reply is already queued, so the Rflush follows it) or has
//! not. Then it gets one last poll, cut short (`cut::poll_patiently`),
//! where a broker wait decides at once: if the request succeeded after all
//! (a push a reader took), its reply goes out before the Rflush, as
//! flush(5) allows, so the client learns it happened; otherwise its future
//! is dropped on the spot, having withdrawn what it had not done, and no
//! reply is sent. A request whose outcome is on its way (a publish sent to
//! NATS, not yet acknowledged) says so (`cut::defer`): it stays, polled
//! cut short until it decides, and the Rflush waits for that, after its
//! reply if it succeeded, as lib9p holds an Rflush back. (A Tclunk
//! cancelling its fid's requests cannot wait: it decides at once, with an
//! EINTR error for those that did not happen.)
//!
//! Protocol breaches that leave no tag to answer on close the connection:
//! a frame whose size is under 7 or over msize, and a request whose tag is
//! still busy (an error on that tag would read as the old request's reply).
//! A malformed message with a readable, free tag gets an error and the
//! connection goes on.
//!
//! Each reply is encoded the moment it is made, in the dialect of that
//! moment, onto the end of the connection's `Outgoing` bytes, so replies
//! leave in the order they were made (an Rflush after the reply of the
//! request it flushed). The same task writes them, without a hand-over to
//! another task: a reply costs no task wake-up. Writing waits until nothing
//! else is ready (frames already received are read first, so the replies to
//! a burst of requests leave in one vectored write), unless `WRITE_SOON`
//! bytes or `STREAK_MAX` turns have piled up. A client that does not read
//! its replies cannot make the server hold them: while the bytes not yet
//! written pass `BACKLOG_MAX`, the connection reads no more frames and
//! completes no more requests until the socket takes them.
//!
//! Shutdown is the last branch of the `select!`, so a busy connection does
//! not poll it on every turn (the server's one cancellation token takes a
//! lock shared by every connection on each poll: 4 % of the server's time
//! at pipe depth 64 when it came first); every `SHUTDOWN_EVERY` turns the
//! loop looks at it directly, so a client that keeps it busy cannot hold
//! a shutdown off.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, debug_span, warn};

use crate::cut;
use crate::fs::{self, Clunk, FileTree, errno};
use crate::proto::codec::{decode, encode_head};
use crate::proto::frame::{FrameDecoder, FrameError};
use crate::proto::{Dialect, Fcall, Fid, Msg, NOFID, Tag};

use super::listen::{ReadHalf, Who, WriteHalf};
use super::session::{Action, Done, Session};
use super::{Limits, Observer};

/// Bytes of replies not yet written from which the connection writes
/// before reading more frames.
const WRITE_SOON: usize = 64 << 10;
/// Loop turns with replies waiting after which the connection writes before
/// reading more frames.
const STREAK_MAX: usize = 64;
/// Loop turns after which a connection looks at the shutdown token even
/// while other branches are always ready.
const SHUTDOWN_EVERY: u32 = 256;
/// Slices gathered into one vectored write.
const SLICES_MAX: usize = 64;
/// Bytes of replies made but not yet written above which the connection
/// stops reading requests and completing them (a client that does not read
/// its replies cannot make the server hold more).
const BACKLOG_MAX: usize = 8 << 20;
/// Payloads up to this size are copied next to their header (one buffer,
/// one write); larger ones are written from where they are (vectored).
const COPY_MAX: usize = 4096;
/// How long a closing connection waits for its last replies to be written.
const LINGER: Duration = Duration::from_secs(5);

/// A request waiting on the file tree. Cancelling it drops its future at
/// once, so its operation ends (and releases the fid's handle) before the
/// connection goes on; the empty shell is then reaped by the set.
struct Request<T: FileTree> {
    /// Its tag.
    tag: Tag,
    /// The request's work; `None` once cancelled.
    fut: Option<BoxFuture<'static, Done<T>>>,
    /// Flushed while its outcome was on its way: polled cut short.
    cut: Option<cut::Cut>,
    /// The waker of the set's entry, to get a cancelled shell reaped.
    waker: Option<Waker>,
}

/// How a request in the set ended. (As large as the `Option<Done>` it
/// replaced; boxing `Done` would cost every request an allocation.)
#[allow(clippy::large_enum_variant)]
enum Ended<T: FileTree> {
    /// It finished: its outcome.
    Done(Done<T>),
    /// Flushed while deciding, it withdrew: nothing happened.
    Withdrew,
    /// The shell of a request cancelled earlier.
    Shell,
}

/// What cancelling a request did.
enum Cancelled {
    /// It ended: its fid and its reply if it succeeded after all.
    Ended(Option<(Fid, Fcall)>),
    /// Its outcome is on its way: it stays until it decides.
    Deciding,
}

impl<T: FileTree> Request<T> {
    fn cancel(&mut self) {
        self.fut = None;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl<T: FileTree> Future for Request<T> {
    /// The tag, and how the request ended.
    type Output = (Tag, Ended<T>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let tag = self.tag;
        let cut = self.cut;
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready((tag, Ended::Shell));
        };
        let done = match cut {
            None => fut.as_mut().poll(cx),
            Some(c) => match cut::poll_patiently(c, fut.as_mut(), cx) {
                cut::Patient::Done(d) => Poll::Ready(d),
                cut::Patient::Deciding => Poll::Pending,
                cut::Patient::Nothing => {
                    self.fut = None;
                    return Poll::Ready((tag, Ended::Withdrew));
                }
            },
        };
        if done.is_pending() && !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        done.map(|d| (tag, Ended::Done(d)))
    }
}

/// Replies encoded and not yet written, in order.
#[derive(Default)]
struct Outgoing {
    /// The tail being encoded: headers and small payloads.
    buf: BytesMut,
    /// Sealed pieces before `buf`: encoded replies and large payloads.
    chunks: VecDeque<Bytes>,
    /// The bytes in `chunks`.
    sealed: usize,
    /// Bytes of replies encoded since the connection began: the position
    /// in its output where the last reply ends.
    pushed: u64,
}

impl Outgoing {
    /// Bytes not yet written.
    fn len(&self) -> usize {
        self.sealed + self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of replies written since the connection began.
    fn written(&self) -> u64 {
        self.pushed - self.len() as u64
    }

    /// Encodes `msg` after the replies already here.
    fn push(&mut self, msg: &Msg, dialect: Dialect) {
        let before = self.len();
        self.encode(msg, dialect);
        self.pushed += (self.len() - before) as u64;
    }

    fn encode(&mut self, msg: &Msg, dialect: Dialect) {
        if let Some(payload) = encode_head(msg, dialect, &mut self.buf) {
            if payload.len() <= COPY_MAX {
                self.buf.extend_from_slice(&payload);
            } else {
                self.seal();
                self.sealed += payload.len();
                self.chunks.push_back(payload);
            }
        }
    }

    /// Moves the encoded tail to the sealed pieces.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.sealed += self.buf.len();
            self.chunks.push_back(self.buf.split().freeze());
        }
    }

    /// Writes until everything is written (`Ready(Ok)`), the socket fails,
    /// or it would block (`Pending`, with `cx` woken when it can take more).
    /// What was written stays written: dropping the call loses nothing.
    fn poll_drain(&mut self, w: &mut WriteHalf, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.seal();
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES_MAX];
            let mut n = 0;
            for (slot, c) in slices.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(c);
                n += 1;
            }
            let written = match Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.sealed -= written;
            let mut left = written;
            while left > 0 {
                let first = self.chunks.front_mut().expect("wrote no more than queued");
                if first.len() <= left {
                    left -= first.len();
                    self.chunks.pop_front();
                } else {
                    let _ = first.split_to(left);
                    left = 0;
                }
            }
        }
        Pin::new(&mut *w).poll_flush(cx)
    }
}

/// Why a connection ended.
/// How long a connection has to complete Tversion (plain TCP or Unix;
/// a TLS handshake has its own bound before this).
pub const VERSION_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]

enum End {
    /// The client closed it.
    Eof,
    /// The server is shutting down.
    Shutdown,
    /// The client broke the protocol beyond an error reply.
    Violation(String),
    /// The socket failed, or the client reset it: a disconnect, logged at
    /// debug level.
    Io(String),
}

/// The state of one connection, owned by its task.
struct Conn<T: FileTree> {
    /// Dialect, msize, fids.
    session: Session<T>,
    /// Requests waiting on the tree, polled by the connection's loop.
    inflight: FuturesUnordered<Request<T>>,
    /// Tag → the fid of each request in `inflight` (not cancelled).
    busy: HashMap<Tag, Fid>,
    /// Tag → the fid of each Tread in `busy`.
    reading: HashMap<Tag, Fid>,
    /// Fid → how many Treads in `busy` are on it.
    fid_busy: HashMap<Fid, u32>,
    /// Fid → where in the output its last Rread ends, while that may be
    /// unwritten: with `fid_busy`, whether a Tread overlaps (see
    /// `fs::ReadReq::overlaps`), so the tree acks only what was written.
    read_ends: HashMap<Fid, u64>,
    /// Replies made and not yet written, encoded.
    out: Outgoing,
    /// How many requests may wait at once.
    max_in_flight: usize,
    /// Told of each request answered, if anyone watches.
    observer: Option<Arc<dyn Observer>>,
    /// With an observer: each request in flight, its type and start.
    started: HashMap<Tag, (&'static str, Instant)>,
    /// (old tag, Tflush's tag) of each flush waiting for a request that
    /// is deciding: its Rflush follows that request's end.
    flushing: Vec<(Tag, Tag)>,
}

/// Serves one connection until the client leaves, breaks the protocol, or
/// `shutdown` is cancelled; then clunks every fid with `Clunk::Lost`.
pub async fn run<T: FileTree>(
    reader: ReadHalf,
    writer: WriteHalf,
    tree: Arc<T>,
    limits: Limits,
    who: Who,
    observer: Option<Arc<dyn Observer>>,
    shutdown: CancellationToken,
) {
    let mut w = writer;
    let mut frames = FramedRead::new(reader, FrameDecoder::new(limits.max_msize));
    let mut conn = Conn {
        max_in_flight: limits.max_in_flight,
        session: Session::new(tree, limits, who),
        inflight: FuturesUnordered::new(),
        busy: HashMap::default(),
        reading: HashMap::default(),
        fid_busy: HashMap::default(),
        read_ends: HashMap::default(),
        out: Outgoing::default(),
        observer,
        started: HashMap::default(),
        flushing: Vec::new(),
    };
    let mut cancelled = pin!(shutdown.cancelled());
    // A connection that has not completed Tversion within this is closed:
    // a silent or half-sent greeting must not hold a connection slot.
    let mut greeting = pin!(tokio::time::sleep(VERSION_WITHIN));
    // Turns taken with replies waiting and no write.
    let mut streak = 0;
    let mut turns = 0u32;
    let end = loop {
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(SHUTDOWN_EVERY) && shutdown.is_cancelled() {
            break End::Shutdown;
        }
        if !conn.out.is_empty() && (conn.out.len() >= WRITE_SOON || streak >= STREAK_MAX) {
            streak = 0;
            let drained = poll_fn(|cx| Poll::Ready(conn.out.poll_drain(&mut w, cx))).await;
            if let Poll::Ready(Err(e)) = drained {
                break End::Io(e.to_string());
            }
        }
        if !conn.out.is_empty() {
            streak += 1;
        }
        let over = conn.out.len() > BACKLOG_MAX;
        tokio::select! {
            biased;
            _ = &mut greeting, if !conn.session.versioned() => break End::Violation(format!(
                "no Tversion within {}s of connecting", VERSION_WITHIN.as_secs()
            )),
            Some((tag, done)) = conn.inflight.next(), if !over => conn.finish(tag, done),
            frame = frames.next(), if !over => match frame {
                None => break End::Eof,
                // A reset, or an EOF inside a frame: the client went away.
                Some(Err(FrameError::Io(e))) => break End::Io(e.to_string()),
                Some(Err(e)) => break End::Violation(e.to_string()),
                Some(Ok(frame)) => {
                    if let Err(e) = conn.request(frame, frames.decoder_mut()) {
                        break e;
                    }
                }
            },
            drained = poll_fn(|cx| conn.out.poll_drain(&mut w, cx)), if !conn.out.is_empty() => {
                streak = 0;
                if let Err(e) = drained {
                    break End::Io(e.to_string());
                }
            }
            _ = &mut cancelled => break End::Shutdown,
        }
    };
    match &end {
        End::Eof | End::Shutdown => debug!(?end, "connection ends"),
        End::Violation(why) => warn!(%why, "protocol violation: closing the connection"),
        End::Io(error) => debug!(%error, "connection lost"),
    }
    let answer = matches!(end, End::Shutdown);
    conn.cancel_all(answer.then(|| fs::Error::new(errno::ESHUTDOWN, "server shutting down")));
    for removal in conn.session.clunk_all(Clunk::Lost) {
        removal.await;
    }
    let last = async {
        poll_fn(|cx| conn.out.poll_drain(&mut w, cx)).await?;
        w.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(LINGER, last).await {
        debug!(error = %e, "last replies not written");
    }
}

impl<T: FileTree> Conn<T> {
    fn reply(&mut self, tag: Tag, body: Fcall) {
        debug!(tag, reply = ?Brief(&body), "reply");
        if let Some(o) = &self.observer
            && let Some((kind, t0)) = self.started.remove(&tag)
        {
            let errno = match &body {
                Fcall::Rerror { errno, .. } => Some(*errno),
                Fcall::Rlerror { ecode } => Some(*ecode),
                _ => None,
            };
            o.answered(kind, t0.elapsed(), errno);
        }
        let dialect = self.session.dialect();
        self.out.push(&Msg { tag, body }, dialect);
    }

    /// One frame from the client.
    fn request(&mut self, frame: Bytes, decoder: &mut FrameDecoder) -> Result<(), End> {
        let msg = match decode(frame, self.session.dialect()) {
            Ok(msg) => msg,
            Err(e) => {
                return match e.tag {
                    Some(tag) if !self.busy.contains_key(&tag) => {
                        debug!(tag, error = %e, "bad message");
                        let err = fs::Error::new(errno::EPROTO, e.to_string());
                        let reply = self.session.error(&err);
                        self.reply(tag, reply);
                        Ok(())
                    }
                    _ => Err(End::Violation(e.to_string())),
                };
            }
        };
        let tag = msg.tag;
        if self.busy.contains_key(&tag) || self.flushing.iter().any(|(_, f)| *f == tag) {
            return Err(End::Violation(format!("tag {tag} reused while busy")));
        }
        if self.observer.is_some() {
            self.started.insert(tag, (msg.body.name(), Instant::now()));
        }
        let span = debug_span!("req", tag);
        let _enter = span.enter();
        debug!(msg = ?Brief(&msg.body), "request");
        match msg.body {
            Fcall::Tversion { msize, version } => {
                self.cancel_all(None);
                self.read_ends.clear();
                let (reply, removals) = self.session.version(msize, &version);
                decoder.set_max(self.session.max_frame());
                if !removals.is_empty() {
                    // Off the hot path: a reset with ORCLOSE fids open.
                    tokio::spawn(futures_util::future::join_all(removals).in_current_span());
                }
                self.reply(tag, reply);
            }
            Fcall::Tflush { oldtag } => {
                if self.flushing.iter().any(|(old, _)| *old == oldtag) {
                    self.flushing.push((oldtag, tag));
                } else {
                    match self.cancel(oldtag, true) {
                        Cancelled::Deciding => self.flushing.push((oldtag, tag)),
                        Cancelled::Ended(answer) => {
                            if let Some((fid, reply)) = answer {
                                self.answer(oldtag, fid, reply);
                            }
                            self.reply(tag, Fcall::Rflush);
                        }
                    }
                }
            }
            body => {
                if let Fcall::Tclunk { fid } | Fcall::Tremove { fid } = body {
                    let err = fs::Error::new(errno::EINTR, "fid clunked");
                    self.cancel_fid(fid, &err);
                    self.read_ends.remove(&fid);
                }
                let read = match body {
                    Fcall::Tread { fid, .. } => Some(fid),
                    _ => None,
                };
                let overlaps = read.is_some_and(|fid| self.overlaps(fid));
                match self.session.handle(body, overlaps) {
                    Action::Reply(reply) => self.reply(tag, reply),
                    Action::Release(fut) => self.start(tag, NOFID, fut, &span),
                    Action::Wait { fid, fut } if self.busy.len() < self.max_in_flight => {
                        if let Some(fid) = read {
                            self.reading.insert(tag, fid);
                            *self.fid_busy.entry(fid).or_default() += 1;
                        }
                        self.start(tag, fid, fut, &span);
                    }
                    Action::Wait { fid, fut } => {
                        drop(fut);
                        self.session.ended(fid);
                        let err = fs::Error::new(errno::EAGAIN, "too many requests in flight");
                        let reply = self.session.error(&err);
                        self.reply(tag, reply);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a Tread on `fid` now overlaps an earlier Tread on it.
    fn overlaps(&mut self, fid: Fid) -> bool {
        if self.fid_busy.contains_key(&fid) {
            return true;
        }
        match self.read_ends.get(&fid) {
            Some(end) if *end > self.out.written() => true,
            Some(_) => {
                self.read_ends.remove(&fid);
                false
            }
            None => false,
        }
    }

    /// `tag` is no longer in flight; its fid.
    fn unbusy(&mut self, tag: Tag) -> Option<Fid> {
        let fid = self.busy.remove(&tag)?;
        if let Some(read) = self.reading.remove(&tag)
            && let Some(n) = self.fid_busy.get_mut(&read)
        {
            *n -= 1;
            if *n == 0 {
                self.fid_busy.remove(&read);
            }
        }
        Some(fid)
    }

    /// Runs a request that waits.
    fn start(&mut self, tag: Tag, fid: Fid, fut: BoxFuture<'static, Done<T>>, span: &Span) {
        self.busy.insert(tag, fid);
        // The span only where tracing asks for it: wrapping costs each
        // request a second allocation.
        let fut = match span.is_disabled() {
            true => fut,
            false => fut.instrument(span.clone()).boxed(),
        };
        self.inflight.push(Request {
            tag,
            fut: Some(fut),
            cut: None,
            waker: None,
        });
    }

    /// A request finished, or the shell of a cancelled one was reaped.
    fn finish(&mut self, tag: Tag, ended: Ended<T>) {
        let done = match ended {
            Ended::Shell => return,
            Ended::Done(done) => Some(done),
            Ended::Withdrew => None,
        };
        let fid = self.unbusy(tag).unwrap_or(NOFID);
        let flushed = self.flushing.iter().any(|(old, _)| *old == tag);
        match done.map(|d| self.session.complete(d)) {
            // Flushed: only a success is told, before the Rflush.
            Some(Fcall::Rerror { .. } | Fcall::Rlerror { .. }) if flushed => {
                self.started.remove(&tag);
            }
            Some(reply) => self.answer(tag, fid, reply),
            None => {
                self.started.remove(&tag);
            }
        }
        self.session.ended(fid);
        self.flushed(tag);
    }

    /// The request `tag` ended: the Rflush of each flush waiting for it.
    fn flushed(&mut self, tag: Tag) {
        if self.flushing.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushing)
            .into_iter()
            .partition(|(old, _)| *old == tag);
        self.flushing = waiting;
        for (_, flush) in done {
            self.reply(flush, Fcall::Rflush);
        }
    }

    /// Send a finished request's reply; a read's end is remembered, so the
    /// next Tread on its fid waits until it is written.
    fn answer(&mut self, tag: Tag, fid: Fid, reply: Fcall) {
        let read = matches!(reply, Fcall::Rread { .. });
        self.reply(tag, reply);
        if read && fid != NOFID {
            self.read_ends.insert(fid, self.out.pushed);
        }
    }

    /// Cancels the request `tag` if it is still waiting, after one last
    /// poll (see the module comment): its fid and the reply to send if it
    /// succeeded after all, else `None` (nothing happened; no reply). A
    /// `patient` caller (a flush) lets a request whose outcome is on its
    /// way decide first.
    fn cancel(&mut self, tag: Tag, patient: bool) -> Cancelled {
        let Some(&fid) = self.busy.get(&tag) else {
            return Cancelled::Ended(None);
        };
        let mut reply = None;
        if let Some(r) = self
            .inflight
            .iter_mut()
            .find(|r| r.tag == tag && r.fut.is_some())
        {
            let fut = r.fut.as_mut().expect("found with a future");
            let mut cx = Context::from_waker(Waker::noop());
            let outcome = match patient && r.cut.is_none() {
                true => cut::poll_patiently(cut::Cut::Cancel, fut.as_mut(), &mut cx),
                false => match cut::last_poll(cut::Cut::Cancel, fut.as_mut()) {
                    Some(done) => cut::Patient::Done(done),
                    None => cut::Patient::Nothing,
                },
            };
            match outcome {
                cut::Patient::Deciding => {
                    // Polled again, cut short, with the set's waker.
                    r.cut = Some(cut::Cut::Cancel);
                    if let Some(w) = r.waker.take() {
                        w.wake();
                    }
                    debug!(tag, "flushed while deciding");
                    return Cancelled::Deciding;
                }
                cut::Patient::Done(done) => {
                    let done = self.session.complete(done);
                    if !matches!(done, Fcall::Rerror { .. } | Fcall::Rlerror { .. }) {
                        reply = Some((fid, done));
                    }
                }
                cut::Patient::Nothing => {}
            }
            r.cancel();
        }
        self.unbusy(tag);
        self.started.remove(&tag);
        self.session.ended(fid);
        debug!(tag, answered = reply.is_some(), "cancelled");
        Cancelled::Ended(reply)
    }

    /// Cancels every request on `fid`, answering each with `err`.
    fn cancel_fid(&mut self, fid: Fid, err: &fs::Error) {
        let tags: Vec<Tag> = (self.busy.iter())
            .filter(|(_, f)| **f == fid && fid != NOFID)
            .map(|(t, _)| *t)
            .collect();
        for tag in tags {
            let reply = match self.cancel(tag, false) {
                Cancelled::Ended(Some((_, reply))) => reply,
                _ => self.session.error(err),
            };
            self.reply(tag, reply);
            self.flushed(tag);
        }
    }

    /// Cancels every request, answering each with `err` if given.
    fn cancel_all(&mut self, err: Option<fs::Error>) {
        let tags: Vec<Tag> = self.busy.keys().copied().collect();
        for tag in tags {
            self.cancel(tag, false);
            if let Some(err) = &err {
                let reply = self.session.error(err);
                self.reply(tag, reply);
                self.flushed(tag);
            }
        }
        self.flushing.clear();
        self.inflight.clear();
    }
}

/// A message for the debug log, with payloads shown by their length.
struct Brief<'a>(&'a Fcall);

impl std::fmt::Debug for Brief<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Fcall::Rread { data } => write!(f, "Rread[{}]", data.len()),
            Fcall::Rreaddir { data } => write!(f, "Rreaddir[{}]", data.len()),
            Fcall::Twrite { fid, offset, data } => {
                write!(
                    f,
                    "Twrite {{ fid: {fid}, offset: {offset}, [{}] }}",
                    data.len()
                )
            }
            Fcall::Rerror { ename, .. } => write!(f, "Rerror({ename})"),
            Fcall::Rlerror { ecode } => write!(f, "Rlerror({ecode})"),
            other => write!(f, "{other:?}"),
        }
    }
}

use futures_util::FutureExt as _;
