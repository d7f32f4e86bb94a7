//! The multiplexer: many requests in flight on one 9P connection, each
//! waiting for the reply with its tag, and Tflush for the ones given up.
//!
//! Three parts share a [`TagTable`]:
//! - a request ([`Mux::rpc`]) takes a free tag, parks a oneshot sender under
//!   it, hands its message to the writer task and awaits the oneshot;
//! - the writer task encodes messages from a channel and writes them, so no
//!   request holds a lock (or the socket) across an `.await`;
//! - the reader task decodes replies and sends each to the waiter of its tag.
//!
//! A request future dropped before its reply (a timeout, a `select!`, a
//! killed task) cannot await in `Drop`, so it turns its tag into a
//! [`State::Flushed`] slot and queues a Tflush on a fresh tag. The old tag
//! stays reserved until the Rflush, as flush(5) demands: a late reply to the
//! old request is thrown away, and the tag is reused only once the server has
//! forgotten it. A reply already on its way when the future was dropped is
//! lost to the caller; for a pull, that message was delivered.
//!
//! In flight. dchan answers a request beyond `Limits::max_in_flight` (1024
//! by default) waiting on one connection with EAGAIN, and 9P has no way to
//! learn a server's limit. So requests beyond the client's own bound
//! ([`ConnectOptions::max_in_flight`], 1024 by default) queue here for a
//! permit instead of failing at the server; a tag's permit is given back
//! when the tag is free again. Clunks sent from `Drop` (which the server
//! takes beyond its limit, and which cannot wait) draw on a separate
//! reserve of tags instead, so a dropped `File` is clunked however busy
//! the connection is.
//!
//! A request may also be sent detached ([`Mux::send_detached`]): nothing
//! flushes it when its waiter goes, and its [`Reply`] can be awaited again
//! by a later call. The puller uses it for reads the server answers at once.
//!
//! [`ConnectOptions::max_in_flight`]: super::ConnectOptions::max_in_flight
//!
//! [`Mux::rpc_unless`] is the cancellation that keeps the outcome: when its
//! `cancel` future completes first it sends the Tflush itself and waits for
//! the Rflush, and a reply to the old tag that arrives before the Rflush is
//! the request's real outcome (flush(5)), so it is returned, not dropped.
//! Inside the table the waiter's slot becomes [`State::Cancelling`], whose
//! oneshot gets that late reply, or `Rflush` itself when the flush won.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::codec::FramedRead;

use super::error::{Error, Result};
use crate::proto::codec;
use crate::proto::frame::FrameDecoder;
use crate::proto::{Dialect, Fcall, Msg, NOTAG, Tag};

/// The largest in-flight bound a connection takes. Each request may need a
/// second tag for its Tflush, so twice this plus [`FORGET_TAGS`] stays
/// below the 65535 usable tags.
pub(crate) const MAX_IN_FLIGHT: usize = 16384;

/// Tags for requests sent from `Drop` (clunks), outside the in-flight bound.
const FORGET_TAGS: usize = 16384;

/// Bytes of queued messages the writer gathers into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// Payloads smaller than this are copied next to their header; larger ones
/// are written from where they are.
const COPY_BELOW: usize = 4096;

/// The client's side of one connection's requests; cheap to share in an `Arc`.
pub(crate) struct Mux {
    /// Messages for the writer task. Unbounded so that `Drop` can queue a
    /// Tflush or Tclunk without waiting; the tags bound what is in it.
    out: mpsc::UnboundedSender<Msg>,
    /// The tags in use and who waits on each; shared with the reader task.
    table: Arc<TagTable>,
    /// One permit per request in flight, released when its tag is free
    /// again; requests beyond the bound wait here (see the module doc).
    permits: Arc<Semaphore>,
    /// Permits for requests sent from `Drop`, which cannot wait.
    forget: Arc<Semaphore>,
    /// Dropped with the `Mux`, which tells the reader task to stop.
    _stop: oneshot::Sender<()>,
    /// The dialect agreed in Tversion.
    pub dialect: Dialect,
    /// The msize agreed in Tversion.
    pub msize: u32,
}

/// Tags in use, behind a parking_lot mutex never held across an `.await`.
struct TagTable {
    inner: Mutex<Tags>,
}

struct Tags {
    /// Every tag in use and what its reply is for.
    slots: HashMap<Tag, Slot>,
    /// Where the search for a free tag starts, so tags are not reused at once.
    next_tag: Tag,
    /// Tells a request's own slot from a later one that reuses its tag.
    next_id: u64,
    /// Why the connection ended, once it has: no new request is accepted.
    closed: Option<String>,
}

struct Slot {
    /// Which request this is (see `Tags::next_id`).
    id: u64,
    state: State,
    /// The request's place under the in-flight bound (or in the reserve for
    /// `Drop`), given back with the tag.
    _permit: Option<OwnedSemaphorePermit>,
}

enum State {
    /// A request awaits its reply here.
    Waiting(oneshot::Sender<Fcall>),
    /// Its request was given up and a Tflush sent: a reply here is dropped,
    /// and the tag stays reserved until the Rflush.
    Flushed,
    /// Its request is being cancelled by a waiter that wants the outcome: a
    /// reply here is sent on (the request happened), and the Rflush of
    /// the Tflush for it sends `Rflush` (it did not). The tag stays reserved
    /// until the Rflush either way.
    Cancelling(oneshot::Sender<Fcall>),
    /// A Tflush of `oldtag`: its reply frees both tags.
    Flush { oldtag: Tag },
    /// A request nobody waits for (a clunk from `Drop`): the reply is dropped.
    Discard,
}

impl Tags {
    /// A free tag for `state`. Callers hold a permit or are a flush, so one exists.
    fn insert(&mut self, state: State, permit: Option<OwnedSemaphorePermit>) -> (Tag, u64) {
        let mut tag = self.next_tag;
        while tag == NOTAG || self.slots.contains_key(&tag) {
            tag = tag.wrapping_add(1);
        }
        self.next_tag = tag.wrapping_add(1);
        let id = self.next_id;
        self.next_id += 1;
        let slot = Slot {
            id,
            state,
            _permit: permit,
        };
        self.slots.insert(tag, slot);
        (tag, id)
    }
}

impl TagTable {
    fn closed_reason(&self) -> String {
        let t = self.inner.lock();
        t.closed.clone().unwrap_or_else(|| "closed".into())
    }

    /// The connection is over: wake every waiter (their senders drop).
    fn close(&self, reason: String) {
        let slots = {
            let mut t = self.inner.lock();
            t.closed.get_or_insert(reason);
            std::mem::take(&mut t.slots)
        };
        drop(slots);
    }

    /// Hand a reply to whoever waits for its tag.
    fn dispatch(&self, msg: Msg) {
        let mut t = self.inner.lock();
        let Some(slot) = t.slots.get_mut(&msg.tag) else {
            tracing::debug!(tag = msg.tag, "reply to a tag not in use");
            return;
        };
        match std::mem::replace(&mut slot.state, State::Discard) {
            State::Waiting(tx) => {
                t.slots.remove(&msg.tag);
                let _ = tx.send(msg.body);
            }
            State::Flushed => slot.state = State::Flushed,
            State::Cancelling(tx) => {
                // The request's outcome came before the Rflush: it is real.
                slot.state = State::Flushed;
                let _ = tx.send(msg.body);
            }
            State::Flush { oldtag } => {
                t.slots.remove(&msg.tag);
                if let Some(old) = t.slots.remove(&oldtag)
                    && let State::Cancelling(tx) = old.state
                {
                    // No reply came before the Rflush: the request never happened.
                    let _ = tx.send(Fcall::Rflush);
                }
            }
            State::Discard => {
                t.slots.remove(&msg.tag);
            }
        }
    }
}

/// The reply to come to a request sent with [`Mux::send_detached`].
#[derive(Debug)]
pub(crate) struct Reply(oneshot::Receiver<Fcall>);

/// A request awaiting its reply; dropped while still armed, it sends Tflush.
struct Pending<'a> {
    mux: &'a Mux,
    tag: Tag,
    id: u64,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.mux.flush(self.tag, self.id);
        }
    }
}

impl Mux {
    /// Start the reader and writer tasks on a connection whose Tversion is done.
    pub(crate) fn start<R, W>(
        reader: FramedRead<R, FrameDecoder>,
        writer: W,
        dialect: Dialect,
        msize: u32,
        max_in_flight: usize,
    ) -> Mux
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let table = Arc::new(TagTable {
            inner: Mutex::new(Tags {
                slots: HashMap::new(),
                next_tag: 0,
                next_id: 0,
                closed: None,
            }),
        });
        let (out, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(write_loop(writer, rx, dialect, table.clone()));
        tokio::spawn(read_loop(reader, dialect, table.clone(), stopped));
        Mux {
            out,
            table,
            permits: Arc::new(Semaphore::new(max_in_flight.clamp(1, MAX_IN_FLIGHT))),
            forget: Arc::new(Semaphore::new(FORGET_TAGS)),
            _stop: stop,
            dialect,
            msize,
        }
    }

    /// Take a tag, register the request's waiter and send it. Until the
    /// returned `Pending` is disarmed, dropping it flushes the request.
    async fn send(&self, body: Fcall) -> Result<(Pending<'_>, oneshot::Receiver<Fcall>)> {
        let (tag, id, rx) = self.register(body).await?;
        let pending = Pending {
            mux: self,
            tag,
            id,
            armed: true,
        };
        Ok((pending, rx))
    }

    /// Take a permit and a tag, register a waiter and queue the request.
    async fn register(&self, body: Fcall) -> Result<(Tag, u64, oneshot::Receiver<Fcall>)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tx, rx) = oneshot::channel();
        let (tag, id) = {
            let mut t = self.table.inner.lock();
            if let Some(reason) = &t.closed {
                return Err(Error::Disconnected(reason.clone()));
            }
            t.insert(State::Waiting(tx), Some(permit))
        };
        if self.out.send(Msg { tag, body }).is_err() {
            return Err(Error::Disconnected(self.table.closed_reason()));
        }
        Ok((tag, id, rx))
    }

    /// Send a request that nothing flushes: dropping the returned [`Reply`]
    /// or a future awaiting it leaves the request to complete at the server,
    /// and the reply can be awaited again with [`Mux::wait`]. For requests
    /// the server answers at once.
    pub(crate) async fn send_detached(&self, body: Fcall) -> Result<Reply> {
        let (_, _, rx) = self.register(body).await?;
        Ok(Reply(rx))
    }

    /// Await a detached request's reply; Rerror and Rlerror become `Err`.
    /// Dropped before the reply, the `Reply` still holds it.
    pub(crate) async fn wait(&self, reply: &mut Reply) -> Result<Fcall> {
        let r = (&mut reply.0).await;
        self.outcome(r)
    }

    /// Send a request and await its reply; Rerror and Rlerror become `Err`.
    /// Dropping the future before the reply sends Tflush (see the module doc).
    pub(crate) async fn rpc(&self, body: Fcall) -> Result<Fcall> {
        let (mut pending, rx) = self.send(body).await?;
        let reply = rx.await;
        pending.armed = false;
        self.outcome(reply)
    }

    /// Send a request and await its reply, unless `cancel` completes first:
    /// then flush the request and wait for the server's verdict. `Ok(None)`:
    /// the server flushed it, it never happened. `Ok(Some(reply))` (or an
    /// `Err` from an Rerror): the server answered it, before or despite the
    /// flush, and that answer is the request's real outcome (flush(5)).
    /// Dropping this future itself behaves as dropping [`Mux::rpc`]'s.
    pub(crate) async fn rpc_unless(
        &self,
        body: Fcall,
        cancel: impl Future<Output = ()>,
    ) -> Result<Option<Fcall>> {
        let (mut pending, mut rx) = self.send(body).await?;
        let (tag, id) = (pending.tag, pending.id);
        tokio::select! {
            biased;
            reply = &mut rx => {
                pending.armed = false;
                return self.outcome(reply).map(Some);
            }
            () = cancel => {}
        }
        // From here on the slot is Cancelling (or already answered), so a
        // drop of this future needs no second Tflush.
        pending.armed = false;
        self.cancel(tag, id);
        match rx.await {
            Ok(Fcall::Rflush) => Ok(None),
            reply => self.outcome(reply).map(Some),
        }
    }

    /// A reply as the caller sees it; Rerror and Rlerror become `Err`.
    fn outcome(&self, reply: Result<Fcall, oneshot::error::RecvError>) -> Result<Fcall> {
        match reply {
            Ok(Fcall::Rerror { ename, errno }) => Err(Error::from_rerror(ename, errno)),
            Ok(Fcall::Rlerror { ecode }) => Err(Error::from_errno(ecode)),
            Ok(body) => Ok(body),
            Err(_) => Err(Error::Disconnected(self.table.closed_reason())),
        }
    }

    /// Send a request whose reply nobody awaits (a clunk from `Drop`).
    pub(crate) fn send_and_forget(&self, body: Fcall) {
        let Ok(permit) = self.forget.clone().try_acquire_owned() else {
            tracing::warn!("too many requests in flight; {body:?} not sent");
            return;
        };
        let tag = {
            let mut t = self.table.inner.lock();
            if t.closed.is_some() {
                return;
            }
            t.insert(State::Discard, Some(permit)).0
        };
        let _ = self.out.send(Msg { tag, body });
    }

    /// Give up the request `(tag, id)`: keep its tag and send a Tflush for
    /// it; a reply that comes before the Rflush is dropped.
    fn flush(&self, tag: Tag, id: u64) {
        self.send_flush(tag, id, false);
    }

    /// Cancel the request `(tag, id)` keeping its outcome: send a Tflush,
    /// and pass its waiter the reply that comes before the Rflush, or Rflush.
    fn cancel(&self, tag: Tag, id: u64) {
        self.send_flush(tag, id, true);
    }

    fn send_flush(&self, tag: Tag, id: u64, keep_outcome: bool) {
        let flush_tag = {
            let mut t = self.table.inner.lock();
            match t.slots.get_mut(&tag) {
                // Still waiting: the reply has not come (or came and is
                // ours, unread, in which case the tag is already free).
                Some(slot) if slot.id == id && matches!(slot.state, State::Waiting(_)) => {
                    let State::Waiting(tx) = std::mem::replace(&mut slot.state, State::Flushed)
                    else {
                        unreachable!("matched just above");
                    };
                    if keep_outcome {
                        slot.state = State::Cancelling(tx);
                    }
                }
                _ => return,
            }
            t.insert(State::Flush { oldtag: tag }, None).0
        };
        tracing::debug!(
            oldtag = tag,
            keep_outcome,
            "request given up; sending Tflush"
        );
        let _ = self.out.send(Msg {
            tag: flush_tag,
            body: Fcall::Tflush { oldtag: tag },
        });
    }
}

/// Encode queued messages and write them, several to a syscall when they
/// queue up; large payloads go out by reference in a vectored write.
async fn write_loop<W>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    dialect: Dialect,
    table: Arc<TagTable>,
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    let mut chunks = VecDeque::new();
    while let Some(msg) = rx.recv().await {
        let mut queued = 0;
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            if let Some(payload) = codec::encode_head(&msg, dialect, &mut buf) {
                if payload.len() < COPY_BELOW {
                    buf.extend_from_slice(&payload);
                } else {
                    queued += payload.len();
                    chunks.push_back(buf.split().freeze());
                    chunks.push_back(payload);
                }
            }
            if queued + buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            chunks.push_back(buf.split().freeze());
        }
        if let Err(e) = write_chunks(&mut w, &mut chunks).await {
            table.close(super::error::io_reason(&e));
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Write every chunk, in order, with as few syscalls as the socket allows.
async fn write_chunks<W>(w: &mut W, chunks: &mut VecDeque<Bytes>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while !chunks.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> =
                chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let front = chunks.front_mut().expect("wrote no more than was queued");
            if n >= front.len() {
                n -= front.len();
                chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Decode replies and dispatch them by tag until the server hangs up or the
/// `Mux` is dropped.
async fn read_loop<R>(
    mut reader: FramedRead<R, FrameDecoder>,
    dialect: Dialect,
    table: Arc<TagTable>,
    mut stop: oneshot::Receiver<()>,
) where
    R: AsyncRead + Unpin,
{
    let reason = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            _ = &mut stop => break "client closed".to_string(),
        };
        match frame {
            None => break "server hung up".to_string(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(frame)) => match codec::decode(frame, dialect) {
                Ok(msg) => table.dispatch(msg),
                Err(e) => break format!("bad reply from server: {e}"),
            },
        }
    };
    tracing::debug!(%reason, "9P connection ended");
    table.close(reason);
}
