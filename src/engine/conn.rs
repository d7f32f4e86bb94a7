//! One connection: a reader loop that decodes frames and runs every request
//! concurrently inside the connection's own task, Tflush and the other
//! cancellations, and a writer task that sends the replies in order.
//!
//! Requests that wait on the file tree are futures in a `FuturesUnordered`
//! polled by the same `select!` that reads frames, so a read blocked for
//! minutes delays nothing else, and no task is spawned per message. Because
//! one task both completes requests and handles Tflush, the flush race
//! resolves itself: when a Tflush is handled, the old request has either
//! completed (its reply is already queued, so the Rflush follows it) or has
//! not (its future is dropped on the spot: the operation did not happen, and
//! no reply is sent).
//!
//! Protocol breaches that leave no tag to answer on close the connection:
//! a frame whose size is under 7 or over msize, and a request whose tag is
//! still busy (an error on that tag would read as the old request's reply).
//! A malformed message with a readable, free tag gets an error and the
//! connection goes on.
//!
//! Replies go through a small outbox to a bounded channel drained by the
//! writer task. A client that does not read its replies cannot make the
//! server hold them: while the outbox is full, or the replies not yet
//! written pass `BACKLOG_MAX` bytes, the connection reads no more frames and
//! completes no more requests until the writer catches up.

use std::collections::VecDeque;

use foldhash::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

use crate::fs::{self, Clunk, FileTree, errno};
use crate::proto::codec::{decode, encode_head};
use crate::proto::frame::FrameDecoder;
use crate::proto::{Dialect, Fcall, Fid, Msg, NOFID, Tag};

use super::Limits;
use super::listen::{ReadHalf, WriteHalf};
use super::session::{Action, Done, Session};

/// Replies the writer may have queued but not yet written.
const REPLY_QUEUE: usize = 256;
/// Replies waiting for room in the writer's queue before reading stops.
const OUTBOX_MAX: usize = 64;
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
    /// The waker of the set's entry, to get a cancelled shell reaped.
    waker: Option<Waker>,
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
    /// The tag, and the outcome unless the request was cancelled.
    type Output = (Tag, Option<Done<T>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let tag = self.tag;
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready((tag, None));
        };
        let done = fut.as_mut().poll(cx);
        if done.is_pending() && !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        done.map(|d| (tag, Some(d)))
    }
}

/// The bytes of replies made and not yet written, shared by the connection
/// and its writer.
#[derive(Default)]
struct Backlog {
    /// Their approximate size (see `weight`).
    bytes: AtomicUsize,
    /// Signalled by the writer after each write, for a connection waiting
    /// for the backlog to shrink.
    drained: Notify,
}

impl Backlog {
    fn over(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > BACKLOG_MAX
    }
}

/// What a reply counts for in the backlog: its payload and a header.
fn weight(body: &Fcall) -> usize {
    match body {
        Fcall::Rread { data } | Fcall::Rreaddir { data } => 64 + data.len(),
        _ => 64,
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client closed it.
    Eof,
    /// The server is shutting down.
    Shutdown,
    /// The client broke the protocol beyond an error reply.
    Violation(String),
    /// The socket failed.
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
    /// Replies not yet handed to the writer, in order, each with the
    /// dialect it was made in (a Tversion may change it meanwhile).
    outbox: VecDeque<(Msg, Dialect)>,
    /// How many requests may wait at once.
    max_in_flight: usize,
    /// Replies not yet written, in bytes.
    backlog: Arc<Backlog>,
}

/// Serves one connection until the client leaves, breaks the protocol, or
/// `shutdown` is cancelled; then clunks every fid with `Clunk::Lost`.
pub async fn run<T: FileTree>(
    reader: ReadHalf,
    writer: WriteHalf,
    tree: Arc<T>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let backlog = Arc::new(Backlog::default());
    let writer = tokio::spawn(write_loop(writer, rx, backlog.clone()).in_current_span());
    let mut frames = FramedRead::new(reader, FrameDecoder::new(limits.max_msize));
    let mut conn = Conn {
        max_in_flight: limits.max_in_flight,
        session: Session::new(tree, limits),
        inflight: FuturesUnordered::new(),
        busy: HashMap::default(),
        outbox: VecDeque::new(),
        backlog,
    };
    let end = loop {
        if let Err(e) = conn.flush_outbox(&tx) {
            break e;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break End::Shutdown,
            permit = tx.reserve(), if !conn.outbox.is_empty() => match permit {
                Ok(p) => p.send(conn.pop_reply()),
                Err(_) => break End::Io("writer gone".into()),
            },
            _ = conn.backlog.drained.notified(), if conn.backlog.over() => {}
            Some((tag, done)) = conn.inflight.next(), if !conn.backlog.over() => {
                conn.finish(tag, done)
            }
            frame = frames.next(), if conn.outbox.len() < OUTBOX_MAX && !conn.backlog.over() => match frame {
                None => break End::Eof,
                Some(Err(e)) => break End::Violation(e.to_string()),
                Some(Ok(frame)) => {
                    if let Err(e) = conn.request(frame, frames.decoder_mut()) {
                        break e;
                    }
                }
            },
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
        while !conn.outbox.is_empty() {
            if tx.send(conn.pop_reply()).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    };
    let _ = tokio::time::timeout(LINGER, last).await;
}

impl<T: FileTree> Conn<T> {
    fn reply(&mut self, tag: Tag, body: Fcall) {
        debug!(tag, reply = ?Brief(&body), "reply");
        let dialect = self.session.dialect();
        self.backlog
            .bytes
            .fetch_add(weight(&body), Ordering::Relaxed);
        self.outbox.push_back((Msg { tag, body }, dialect));
    }

    fn pop_reply(&mut self) -> (Msg, Dialect) {
        (self.outbox.pop_front()).expect("reserve only when not empty")
    }

    /// Moves replies to the writer while it has room.
    fn flush_outbox(&mut self, tx: &mpsc::Sender<(Msg, Dialect)>) -> Result<(), End> {
        while !self.outbox.is_empty() {
            match tx.try_reserve() {
                Ok(p) => p.send(self.pop_reply()),
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Err(End::Io("writer gone".into()));
                }
            }
        }
        Ok(())
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
        if self.busy.contains_key(&tag) {
            return Err(End::Violation(format!("tag {tag} reused while busy")));
        }
        let span = debug_span!("req", tag);
        let _enter = span.enter();
        debug!(msg = ?Brief(&msg.body), "request");
        match msg.body {
            Fcall::Tversion { msize, version } => {
                self.cancel_all(None);
                let (reply, removals) = self.session.version(msize, &version);
                decoder.set_max(self.session.max_frame());
                if !removals.is_empty() {
                    // Off the hot path: a reset with ORCLOSE fids open.
                    tokio::spawn(futures_util::future::join_all(removals).in_current_span());
                }
                self.reply(tag, reply);
            }
            Fcall::Tflush { oldtag } => {
                self.cancel(oldtag);
                self.reply(tag, Fcall::Rflush);
            }
            body => {
                let releases = matches!(body, Fcall::Tclunk { .. } | Fcall::Tremove { .. });
                if let Fcall::Tclunk { fid } | Fcall::Tremove { fid } = body {
                    let err = fs::Error::new(errno::EINTR, "fid clunked");
                    self.cancel_fid(fid, &err);
                }
                match self.session.handle(body) {
                    Action::Reply(reply) => self.reply(tag, reply),
                    Action::Wait { fid, fut } => {
                        if self.busy.len() >= self.max_in_flight && !releases {
                            drop(fut);
                            self.session.ended(fid);
                            let err = fs::Error::new(errno::EAGAIN, "too many requests in flight");
                            let reply = self.session.error(&err);
                            self.reply(tag, reply);
                        } else {
                            self.busy.insert(tag, fid);
                            let fut = fut.instrument(span.clone()).boxed();
                            self.inflight.push(Request {
                                tag,
                                fut: Some(fut),
                                waker: None,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A request finished, or the shell of a cancelled one was reaped.
    fn finish(&mut self, tag: Tag, done: Option<Done<T>>) {
        let Some(done) = done else { return };
        let fid = self.busy.remove(&tag).unwrap_or(NOFID);
        let reply = self.session.complete(done);
        self.session.ended(fid);
        self.reply(tag, reply);
    }

    /// Cancels the request `tag` if it is still waiting: it gets no reply.
    fn cancel(&mut self, tag: Tag) -> bool {
        let Some(fid) = self.busy.remove(&tag) else {
            return false;
        };
        if let Some(r) = self
            .inflight
            .iter_mut()
            .find(|r| r.tag == tag && r.fut.is_some())
        {
            r.cancel();
        }
        self.session.ended(fid);
        debug!(tag, "cancelled");
        true
    }

    /// Cancels every request on `fid`, answering each with `err`.
    fn cancel_fid(&mut self, fid: Fid, err: &fs::Error) {
        let tags: Vec<Tag> = (self.busy.iter())
            .filter(|(_, f)| **f == fid && fid != NOFID)
            .map(|(t, _)| *t)
            .collect();
        for tag in tags {
            self.cancel(tag);
            let reply = self.session.error(err);
            self.reply(tag, reply);
        }
    }

    /// Cancels every request, answering each with `err` if given.
    fn cancel_all(&mut self, err: Option<fs::Error>) {
        let tags: Vec<Tag> = self.busy.keys().copied().collect();
        for tag in tags {
            self.cancel(tag);
            if let Some(err) = &err {
                let reply = self.session.error(err);
                self.reply(tag, reply);
            }
        }
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

/// The writer: drains the reply queue, encodes each batch into one buffer
/// (large payloads stay where they are) and writes it with as few
/// (vectored) writes as it takes.
async fn write_loop(
    mut w: WriteHalf,
    mut rx: mpsc::Receiver<(Msg, Dialect)>,
    backlog: Arc<Backlog>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut buf = BytesMut::new();
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    while rx.recv_many(&mut batch, 64).await > 0 {
        let written: usize = batch.iter().map(|(m, _)| weight(&m.body)).sum();
        for (msg, dialect) in batch.drain(..) {
            if let Some(payload) = encode_head(&msg, dialect, &mut buf) {
                if payload.len() <= COPY_MAX {
                    buf.extend_from_slice(&payload);
                } else {
                    chunks.push_back(buf.split().freeze());
                    chunks.push_back(payload);
                }
            }
        }
        if !buf.is_empty() {
            chunks.push_back(buf.split().freeze());
        }
        if let Err(e) = write_all(&mut w, &mut chunks).await {
            debug!(error = %e, "write failed");
            return;
        }
        backlog.bytes.fetch_sub(written, Ordering::Relaxed);
        backlog.drained.notify_one();
    }
    let _ = w.shutdown().await;
}

/// Writes every chunk, in order, gathering up to 64 per system call.
async fn write_all(
    w: &mut (impl AsyncWrite + Unpin + ?Sized),
    chunks: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !chunks.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks
                .iter()
                .take(64)
                .filter(|c| !c.is_empty())
                .map(|c| IoSlice::new(c))
                .collect();
            if slices.is_empty() {
                chunks.clear();
                break;
            }
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let first = chunks.front_mut().expect("wrote no more than queued");
            if first.len() <= left {
                left -= first.len();
                chunks.pop_front();
            } else {
                let _ = first.split_to(left);
                left = 0;
            }
        }
        while chunks.front().is_some_and(|c| c.is_empty()) {
            chunks.pop_front();
        }
    }
    w.flush().await
}
