//! The accept loops: one per listener, a connection slot per client (a
//! semaphore caps them), and shutdown, which stops accepting, has every
//! connection answer its blocked requests with an error, and waits for the
//! connections to close.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use bytes::BytesMut;
use tokio_util::codec::FramedRead;

use crate::fs::{self, FileTree, errno};
use crate::proto::codec::{decode, encode};
use crate::proto::frame::FrameDecoder;
use crate::proto::{Dialect, Fcall, Msg};

use super::listen::{Entrance, ReadHalf, WriteHalf};
use super::{Limits, MIN_MSIZE, Observer, conn};

/// How many clients are connected now: the engine counts, whoever reports
/// it (the root ctl, the metrics) reads. Clones share the count. It also
/// carries the [`Observer`] told of each request, if any.
#[derive(Clone, Default)]
pub struct Connections(Arc<AtomicU64>, Option<Arc<dyn Observer>>);

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Connections").field(&self.count()).finish()
    }
}

impl Connections {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A count whose connections tell `observer` of their requests.
    pub fn observed(observer: Arc<dyn Observer>) -> Connections {
        Connections(Arc::default(), Some(observer))
    }

    fn refused(&self, why: &'static str) {
        if let Some(o) = &self.1 {
            o.refused(why);
        }
    }
}

/// One connection counted in [`Connections`] while it lives.
struct Counted(Connections);

impl Counted {
    fn new(c: &Connections) -> Counted {
        c.0.fetch_add(1, Ordering::Relaxed);
        Counted(c.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything an accept loop needs, shared by all of them.
struct Shared<T> {
    /// What is served.
    tree: Arc<T>,
    /// Per-connection limits.
    limits: Limits,
    /// One permit per connection; a client accepted when none is left is
    /// disconnected at once. A permit is returned when its connection ends.
    slots: Arc<Semaphore>,
    /// Cancelled at shutdown; every accept loop and connection watches it.
    shutdown: CancellationToken,
    /// The accept loops and connections, to wait for them at shutdown.
    tasks: TaskTracker,
    /// Numbers connections for the logs.
    next_id: AtomicU64,
    /// Connections open now.
    connections: Connections,
    /// Connections open now per client IP address (an entry only while
    /// it has one). A sync mutex, never held across an await.
    per_address: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
    /// One permit per client being told "too many connections"; past
    /// [`REFUSING`] of them a new one is closed unanswered, so a flood of
    /// idle sockets cannot hold descriptors for long.
    refusing: Arc<Semaphore>,
}

/// Serves `tree` on every listener until `shutdown` completes, then stops
/// accepting, ends every connection (blocked requests are answered "server
/// shutting down") and returns once they are all closed.
pub async fn serve<T: FileTree>(
    listeners: Vec<impl Into<Entrance>>,
    tree: Arc<T>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_counted(listeners, tree, limits, Connections::default(), shutdown).await
}

/// [`serve`], counting the open connections in `connections` (the root
/// ctl's `connections` figure).
pub async fn serve_counted<T: FileTree>(
    listeners: Vec<impl Into<Entrance>>,
    tree: Arc<T>,
    limits: Limits,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        tree,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        next_id: AtomicU64::new(1),
        connections,
        refusing: Arc::new(Semaphore::new(REFUSING)),
        per_address: Arc::default(),
    });
    for listener in listeners {
        let listener: Entrance = listener.into();
        let name = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let span = info_span!("listen", addr = %name);
        shared
            .tasks
            .spawn(accept_loop(listener, shared.clone()).instrument(span));
    }
    shutdown.await;
    info!("shutting down");
    shared.shutdown.cancel();
    shared.tasks.close();
    shared.tasks.wait().await;
}

async fn accept_loop<T: FileTree>(entrance: Entrance, shared: Arc<Shared<T>>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = entrance.listener.accept() => a,
        };
        let arriving = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = arriving.peer();
        if !entrance.guard.admits(&arriving) {
            warn!(%peer, "address not allowed by this listener's rules: closed");
            shared.connections.refused("address");
            continue;
        }
        let admitted = match shared.slots.clone().try_acquire_owned() {
            Err(_) => {
                let max = shared.limits.max_connections;
                Err(format!(
                    "too many connections (the server serves {max} at once)"
                ))
            }
            Ok(permit) => match FromAddress::take(&shared, arriving.ip()) {
                Ok(from) => Ok((permit, from)),
                Err(()) => {
                    let max = shared.limits.max_per_address;
                    Err(format!(
                        "too many connections from your address (the server serves {max} at once from one address)"
                    ))
                }
            },
        };
        let (permit, from) = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                warn!(%peer, why, "refusing a connection");
                shared.connections.refused("full");
                if let Ok(permit) = shared.refusing.clone().try_acquire_owned() {
                    let guard = entrance.guard.clone();
                    tokio::spawn(async move {
                        if let Ok((reader, writer, _)) = guard.enter(arriving).await {
                            refuse(reader, writer, why).await;
                        }
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, %peer);
        let (tree, limits, stop) = (
            shared.tree.clone(),
            shared.limits.clone(),
            shared.shutdown.clone(),
        );
        let guard = entrance.guard.clone();
        let counted = Counted::new(&shared.connections);
        let observer = shared.connections.1.clone();
        shared.tasks.spawn(
            async move {
                let entered = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = guard.enter(arriving) => e,
                };
                match entered {
                    Ok((reader, writer, who)) => {
                        debug!(user = who.user.as_deref().unwrap_or(""), "connected");
                        conn::run(reader, writer, tree, limits, who, observer, stop).await;
                        debug!("disconnected");
                    }
                    Err(e) => {
                        warn!(error = %e, "refused: TLS handshake failed");
                        counted.0.refused("tls");
                    }
                }
                drop(permit);
                drop(from);
                drop(counted);
            }
            .instrument(span),
        );
    }
}

/// One connection counted against its address's `max_per_address`.
struct FromAddress {
    ip: IpAddr,
    counts: Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>,
}

impl FromAddress {
    /// Count a connection from `ip`: `None` for a Unix socket, `Err` if
    /// the address has its most already.
    fn take<T>(shared: &Shared<T>, ip: Option<IpAddr>) -> Result<Option<FromAddress>, ()> {
        let Some(ip) = ip else { return Ok(None) };
        let mut counts = shared.per_address.lock();
        let n = counts.entry(ip).or_default();
        if *n >= shared.limits.max_per_address {
            return Err(());
        }
        *n += 1;
        Ok(Some(FromAddress {
            ip,
            counts: shared.per_address.clone(),
        }))
    }
}

impl Drop for FromAddress {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Clients being refused at once, at most.
const REFUSING: usize = 64;

/// How long a refused client has to send its Tversion.
const REFUSE_WAIT: Duration = Duration::from_secs(10);

/// A client past `max_connections` or `max_per_address`: answer its
/// Tversion with an error that says `why` (EAGAIN), in its dialect, then hang up (rather than hang up unexplained).
async fn refuse(reader: ReadHalf, mut writer: WriteHalf, why: String) {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut frames = FramedRead::new(reader, FrameDecoder::new(MIN_MSIZE));
    let Ok(Some(Ok(frame))) = tokio::time::timeout(REFUSE_WAIT, frames.next()).await else {
        return;
    };
    let Ok(msg) = decode(frame, Dialect::P2000) else {
        return;
    };
    let dialect = match &msg.body {
        Fcall::Tversion { version, .. } => Dialect::from_version(version),
        _ => None,
    };
    let dialect = dialect.unwrap_or(Dialect::P2000);
    let reply = super::dialect::error(dialect, &fs::Error::new(errno::EAGAIN, why));
    let mut buf = BytesMut::new();
    encode(
        &Msg {
            tag: msg.tag,
            body: reply,
        },
        dialect,
        &mut buf,
    );
    let _ = writer.write_all(&buf).await;
    let _ = writer.shutdown().await;
}
