//! A connection to a 9P server: dialing an address, the Tversion that
//! settles the dialect and msize, and attaching to the served tree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;

use super::error::{Error, Result};
use super::file::File;
use super::mux::{Mux, Reply};
use crate::engine::Addr;
use crate::proto::codec;
use crate::proto::frame::{FrameDecoder, FrameError};
use crate::proto::{Dialect, Fcall, Fid, Msg, NOFID, NONUNAME, NOTAG, Qid};
use crate::tls::TlsFiles;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Dial `host:port` and speak TLS over it with `files`: the server's
/// certificate must chain to `files.ca` and name `host`.
pub async fn tls_connect(host: &str, port: u16, files: &TlsFiles) -> Result<TlsStream<TcpStream>> {
    let config = files.client_config().map_err(Error::Tls)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| Error::Tls(e.to_string()))
}

/// Where the server listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "tcp!127.0.0.1!5640";

/// The smallest msize worth speaking: room for a header and a few names.
const MIN_MSIZE: u32 = 256;

/// What to ask for when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The dialect to propose; the server may answer with plain 9P2000.
    pub dialect: Dialect,
    /// The largest message to propose; the server may lower it.
    pub msize: u32,
    /// Requests this connection has in flight at once; more wait in the
    /// client for one to finish. 9P cannot tell a client the server's
    /// limit, so this defaults to dchan's (`Limits::max_in_flight`, 1024),
    /// beyond which the server refuses a waiting request with EAGAIN; set
    /// it to a server's own limit if lower. At most 16384. A request that
    /// waits at the server (a pull with nothing to pull) holds its place
    /// until answered, so when every place is held by such waits, a push on
    /// the same connection waits for one too: push on another connection
    /// than more pulls than this wait on.
    pub max_in_flight: usize,
    /// For a `tls!` address: the CA that signed the server's certificate,
    /// and this client's certificate and key if the server asks for one.
    pub tls: TlsFiles,
}

/// dchan's default `Limits::max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

impl Default for ConnectOptions {
    /// 9P2000.u (its Rerror carries both the server's text and an errno, and
    /// dchan serves it Linux-style reads), an msize of 1 MiB, and 1024
    /// requests in flight.
    fn default() -> Self {
        ConnectOptions {
            dialect: Dialect::P2000u,
            msize: 1 << 20,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            tls: TlsFiles::default(),
        }
    }
}

/// One 9P connection; clones share it. Requests from any clone or task run
/// concurrently. The connection closes when the last clone, and the last
/// [`File`] made from it, is dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    /// The requests in flight and the tasks that carry them.
    mux: Mux,
    /// The next fid to hand out; fids are not reused (2³² of them).
    next_fid: AtomicU32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("dialect", &self.dialect())
            .field("msize", &self.msize())
            .finish()
    }
}

impl Connection {
    /// Dial `addr` (`tcp!HOST!PORT`, `HOST:PORT`, `unix!PATH`, parsed by
    /// the engine's [`Addr`], so client and server read addresses alike)
    /// and do Tversion.
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<Connection> {
        let addr: Addr = addr.parse().map_err(Error::Address)?;
        match &addr {
            Addr::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                let (r, w) = stream.into_split();
                Connection::handshake(r, w, opts).await
            }
            Addr::Tls { host, port } => {
                let (r, w) = tokio::io::split(tls_connect(host, *port, &opts.tls).await?);
                Connection::handshake(r, w, opts).await
            }
            Addr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                let (r, w) = stream.into_split();
                Connection::handshake(r, w, opts).await
            }
        }
    }

    /// Do Tversion over an already open byte stream, then start the
    /// multiplexer on it.
    pub async fn handshake<R, W>(read: R, mut write: W, opts: &ConnectOptions) -> Result<Connection>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let msize = opts.msize.max(MIN_MSIZE);
        let mut buf = BytesMut::new();
        let tversion = Msg {
            tag: NOTAG,
            body: Fcall::Tversion {
                msize,
                version: opts.dialect.as_str().to_string(),
            },
        };
        codec::encode(&tversion, opts.dialect, &mut buf);
        write.write_all(&buf).await?;
        let mut reader = FramedRead::new(read, FrameDecoder::new(msize));
        let frame = match reader.next().await {
            // A TLS listener answers a Tversion with an alert and hangs
            // up: bytes that are no 9P frame. Say what it likely is.
            Some(frame) => frame.map_err(|e| match &e {
                // The server went away (killed, restarted): no sign of TLS.
                FrameError::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    Error::Disconnected(format!("server hung up during Tversion: {e}"))
                }
                _ => Error::Protocol(format!(
                    "no 9P reply to Tversion ({e}): is this a TLS listener? use tls!host!port"
                )),
            })?,
            None => return Err(Error::Disconnected("server hung up during Tversion".into())),
        };
        let reply = codec::decode(frame, opts.dialect).map_err(|e| {
            Error::Protocol(format!(
                "bad Rversion: {e} (is this a TLS listener? use tls!host!port)"
            ))
        })?;
        let (smsize, version) = match reply.body {
            Fcall::Rversion { msize, version } => (msize, version),
            Fcall::Rerror { ename, errno } => return Err(Error::from_rerror(ename, errno)),
            Fcall::Rlerror { ecode } => return Err(Error::from_errno(ecode)),
            other => return Err(Error::Protocol(format!("expected Rversion, got {other:?}"))),
        };
        let dialect = match Dialect::from_version(&version) {
            Some(d) if d == opts.dialect || d == Dialect::P2000 => d,
            _ => {
                return Err(Error::Protocol(format!(
                    "server speaks {version:?}, not {}",
                    opts.dialect.as_str()
                )));
            }
        };
        if !(MIN_MSIZE..=msize).contains(&smsize) {
            return Err(Error::Protocol(format!("server chose msize {smsize}")));
        }
        reader.decoder_mut().set_max(smsize);
        tracing::debug!(version, msize = smsize, "9P session");
        Ok(Connection {
            inner: Arc::new(Inner {
                mux: Mux::start(reader, write, dialect, smsize, opts.max_in_flight),
                next_fid: AtomicU32::new(1),
            }),
        })
    }

    /// The dialect the server agreed to.
    pub fn dialect(&self) -> Dialect {
        self.inner.mux.dialect
    }

    /// The largest message the connection carries.
    pub fn msize(&self) -> u32 {
        self.inner.mux.msize
    }

    /// Attach to the tree as `uname`, naming `aname` (dchan: the reader group).
    pub async fn attach(&self, uname: &str, aname: &str) -> Result<File> {
        // Made first, so that a drop after the reply still clunks the fid.
        let mut root = File::new(self.clone(), self.new_fid(), Qid::default());
        let reply = self.rpc(Fcall::Tattach {
            fid: root.fid(),
            afid: NOFID,
            uname: uname.to_string(),
            aname: aname.to_string(),
            n_uname: NONUNAME,
        });
        match reply.await {
            Ok(Fcall::Rattach { qid }) => {
                root.set_qid(qid);
                Ok(root)
            }
            Ok(other) => Err(unexpected("Rattach", &other)),
            Err(e) => {
                root.forget();
                Err(e)
            }
        }
    }

    /// Send one request and await its reply (Rerror/Rlerror become `Err`).
    /// Dropping the future before the reply sends Tflush.
    pub async fn rpc(&self, body: Fcall) -> Result<Fcall> {
        self.inner.mux.rpc(body).await
    }

    /// Send one request and await its reply, unless `cancel` completes
    /// first: then send Tflush and wait for the server's verdict. `Ok(None)`:
    /// flushed, the request never happened; otherwise the server answered it
    /// before the Rflush and that answer is its real outcome (flush(5)).
    pub async fn rpc_unless(
        &self,
        body: Fcall,
        cancel: impl Future<Output = ()>,
    ) -> Result<Option<Fcall>> {
        self.inner.mux.rpc_unless(body, cancel).await
    }

    /// Send a request that is not flushed when its waiter goes: its
    /// [`Reply`] may be awaited again by a later call (see `mux`).
    pub(crate) async fn send_detached(&self, body: Fcall) -> Result<Reply> {
        self.inner.mux.send_detached(body).await
    }

    /// Await a detached request's reply (Rerror/Rlerror become `Err`). Once
    /// this returned, the `Reply` is spent: drop it.
    pub(crate) async fn wait(&self, reply: &mut Reply) -> Result<Fcall> {
        self.inner.mux.wait(reply).await
    }

    /// Send a request nobody awaits the reply of.
    pub(crate) fn send_and_forget(&self, body: Fcall) {
        self.inner.mux.send_and_forget(body)
    }

    /// A fid not used on this connection before.
    pub(crate) fn new_fid(&self) -> Fid {
        let fid = self.inner.next_fid.fetch_add(1, Ordering::Relaxed);
        if fid == NOFID {
            // After 2³² fids: start over; the ones from long ago are clunked.
            self.inner.next_fid.store(1, Ordering::Relaxed);
        }
        fid
    }
}

/// The error for a reply of the wrong type.
pub(crate) fn unexpected(want: &str, got: &Fcall) -> Error {
    Error::Protocol(format!("expected {want}, got {got:?}"))
}
