//! The seam between the connection engine and what it serves: the
//! [`FileTree`] trait, written once for all three 9P dialects.
//!
//! Like lib9p's `Srv` callbacks, a file tree sees files, not messages: the
//! engine owns framing, tags, fids, flush and validation, translates
//! Topen/Tlopen, Tstat/Tgetattr, Twstat/Tsetattr, Tcreate/Tlcreate/Tmkdir,
//! directory reads and Treaddir into the calls below, and maps [`Error`] to
//! Rerror (with errno on 9P2000.u) or Rlerror.
//!
//! Blocking operations are futures. The engine cancels one (Tflush, a
//! dropped connection, shutdown) by dropping it, so every future here must be
//! cancellation-safe: dropped before it returns, the operation did not
//! happen. Walk, stat and clunk never block and are plain functions; what a
//! file must finish before a Tclunk lets it go is [`FileTree::close`].

use std::borrow::Cow;
use std::future::Future;

use bytes::Bytes;

pub use crate::proto::{Dialect, Qid};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a file tree reports: a Linux errno (sent as is in Rlerror and in
/// the 9P2000.u Rerror) and a message (the Rerror text of 9P2000 and .u).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub errno: u32,
    pub message: Cow<'static, str>,
}

impl Error {
    pub fn new(errno: u32, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            errno,
            message: message.into(),
        }
    }
}

/// Linux errno values, the numbers Rlerror and 9P2000.u carry.
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const ENOENT: u32 = 2;
    pub const EINTR: u32 = 4;
    pub const EIO: u32 = 5;
    pub const EBADF: u32 = 9;
    pub const EAGAIN: u32 = 11;
    pub const ENOMEM: u32 = 12;
    pub const EACCES: u32 = 13;
    pub const EBUSY: u32 = 16;
    pub const EEXIST: u32 = 17;
    pub const EXDEV: u32 = 18;
    pub const ENOTDIR: u32 = 20;
    pub const EISDIR: u32 = 21;
    pub const EINVAL: u32 = 22;
    pub const EMFILE: u32 = 24;
    pub const EFBIG: u32 = 27;
    pub const ENOSPC: u32 = 28;
    pub const ESPIPE: u32 = 29;
    pub const EROFS: u32 = 30;
    pub const EPIPE: u32 = 32;
    pub const ERANGE: u32 = 34;
    pub const ENAMETOOLONG: u32 = 36;
    pub const ENOSYS: u32 = 38;
    pub const ENOTEMPTY: u32 = 39;
    pub const ENODATA: u32 = 61;
    pub const EPROTO: u32 = 71;
    pub const EUSERS: u32 = 87;
    pub const EMSGSIZE: u32 = 90;
    pub const EOPNOTSUPP: u32 = 95;
    pub const ECONNRESET: u32 = 104;
    pub const ENOBUFS: u32 = 105;
    pub const ESHUTDOWN: u32 = 108;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECANCELED: u32 = 125;
}

/// Who attached, as Tattach said it. The tree decides what uname and aname
/// mean (dchan's topic tree takes aname as the reader group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub uname: String,
    pub aname: String,
    /// The numeric uid of 9P2000.u/.L, `proto::NONUNAME` when absent.
    pub n_uname: u32,
    pub dialect: Dialect,
    /// Who the listener proved the client to be — a TLS client
    /// certificate's name, a Unix-socket peer's user — or `None` where
    /// only `uname`, which the client asserts, says who it is.
    pub user: Option<String>,
    /// The client's address, for logs (`IP:PORT`, or `unix`).
    pub peer: String,
}

impl Attach {
    /// The user the tree should take this client for: the proven one, else
    /// the asserted `uname`.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(&self.uname)
    }
}

/// Where a directory listing carries on (see [`FileTree::readdir_page`]):
/// made by the tree, kept by the engine between reads.
pub type DirPos = String;

/// A file's metadata, dialect-neutral; the engine turns it into a 9P2000
/// stat, a 9P2000.u stat or an Rgetattr.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileInfo {
    pub qid: Qid,
    /// 9P2000 mode: `proto::DMDIR` and friends in the high bits, permissions
    /// in the low nine.
    pub mode: u32,
    pub length: u64,
    pub name: String,
    pub uid: String,
    pub gid: String,
    pub muid: String,
    /// Seconds since the epoch.
    pub atime: u32,
    pub mtime: u32,
}

/// What an open asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Exec,
}

/// An open or create, dialect-neutral (from a Topen mode or Tlopen flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMode {
    pub access: Access,
    /// OTRUNC / O_TRUNC.
    pub truncate: bool,
    /// O_APPEND (9P2000.L only).
    pub append: bool,
    /// O_NONBLOCK (9P2000.L only): never wait, fail with EAGAIN instead.
    pub nonblock: bool,
}

impl OpenMode {
    pub fn reads(&self) -> bool {
        matches!(self.access, Access::Read | Access::ReadWrite | Access::Exec)
    }
    pub fn writes(&self) -> bool {
        matches!(self.access, Access::Write | Access::ReadWrite)
    }
}

/// One Tread, with what the tree needs to know about the client's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReq {
    pub offset: u64,
    pub count: u32,
    /// The largest count this connection allows (msize − IOHDRSZ, or the
    /// iounit): a Tread of this count is not a sign of a full buffer.
    pub max_count: u32,
    /// Another Tread on this fid is in flight, or the reply to its last
    /// one is not yet written to the connection: this Tread was sent
    /// before the client could have seen what earlier reads returned.
    pub overlaps: bool,
}

/// A change of metadata (Twstat, Tsetattr); `None` leaves a field alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub mode: Option<u32>,
    pub length: Option<u64>,
    /// A new name in the same directory (Twstat; Trename within a directory).
    pub name: Option<String>,
    pub mtime: Option<u32>,
    pub atime: Option<u32>,
    pub uid: Option<String>,
    pub gid: Option<String>,
}

/// Why a fid goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clunk {
    /// Tclunk or Tremove: the client is done with it.
    Client,
    /// The connection dropped, or a new Tversion reset the session: what the
    /// client last read on it may never have arrived.
    Lost,
}

/// A file tree served over 9P.
///
/// `Node` is what a fid points at (a path in the tree); `Handle` is the state
/// of an open fid, alive from open or create until clunk. The engine may run
/// several operations on the same handle at once, so a handle keeps its state
/// behind its own lock, never held across an `.await`.
pub trait FileTree: Send + Sync + 'static {
    type Node: Clone + Send + Sync + 'static;
    type Handle: Send + Sync + 'static;

    /// The root, for one Tattach.
    fn attach(&self, who: &Attach) -> Result<Self::Node>;

    /// One step of a walk: `name` is never empty, ".", or contains '/';
    /// ".." is passed through for the tree to resolve.
    fn walk(&self, dir: &Self::Node, name: &str) -> Result<Self::Node>;

    /// A walk of `name` from `dir` found nothing: if the tree may learn of
    /// it by asking (a namespace shared with other servers, which this one
    /// hears of a moment later), the asking, after which the engine walks
    /// once more. By default nothing to ask.
    fn recheck(
        &self,
        dir: &Self::Node,
        name: &str,
    ) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let _ = (dir, name);
        None
    }

    fn stat(&self, node: &Self::Node) -> Result<FileInfo>;

    /// The entries of a directory, in a stable order.
    fn readdir(&self, dir: &Self::Node) -> Result<Vec<FileInfo>>;

    /// Up to about `limit` entries of a directory from position `from`
    /// (`None`: its start), in the order of [`FileTree::readdir`], and the
    /// position after them (`None`: no more). The engine reads directories
    /// through this, a page at a time as the client reads, so that a
    /// directory of many entries is never held whole. A position is the
    /// tree's own text, opaque to the engine; a tree whose directories are
    /// small need not write this: by default the first page is the whole
    /// of `readdir`.
    fn readdir_page(
        &self,
        dir: &Self::Node,
        from: Option<&DirPos>,
        _limit: usize,
    ) -> Result<(Vec<FileInfo>, Option<DirPos>)> {
        match from {
            None => Ok((self.readdir(dir)?, None)),
            Some(_) => Ok((Vec::new(), None)),
        }
    }

    fn open(
        &self,
        node: &Self::Node,
        mode: OpenMode,
    ) -> impl Future<Output = Result<Self::Handle>> + Send;

    /// Create `name` in `dir` and open it. `perm` is a 9P2000 mode (DMDIR
    /// for a directory).
    fn create(
        &self,
        dir: &Self::Node,
        name: &str,
        perm: u32,
        mode: OpenMode,
    ) -> impl Future<Output = Result<(Self::Node, Self::Handle)>> + Send;

    /// Read of a file (directories are read by the engine from `readdir`).
    /// An empty result is end of file.
    fn read(
        &self,
        handle: &Self::Handle,
        req: ReadReq,
    ) -> impl Future<Output = Result<Bytes>> + Send;

    /// Returns the count written.
    fn write(
        &self,
        handle: &Self::Handle,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = Result<u32>> + Send;

    fn wstat(&self, node: &Self::Node, changes: Changes)
    -> impl Future<Output = Result<()>> + Send;

    /// Remove the file. The engine clunks the fid afterwards, whatever the result.
    fn remove(&self, node: &Self::Node) -> impl Future<Output = Result<()>> + Send;

    /// Whether an open file holds work that its Tclunk must finish first
    /// (dchan: a partial line to push). If so the engine runs
    /// [`FileTree::close`] as a request like a write (it counts against the
    /// connection's requests in flight, a Tflush cancels it) and answers
    /// the Tclunk with its outcome; the fid is gone whatever that is.
    fn unfinished(&self, _handle: &Self::Handle) -> bool {
        false
    }

    /// Finish an open file before its Tclunk (see [`FileTree::unfinished`]).
    /// Dropped before it returns, nothing happened; [`FileTree::clunk`]
    /// follows either way.
    fn close(&self, _handle: &Self::Handle) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// The fid is gone; `handle` is its open state, if it was opened. The
    /// engine calls this once no other operation on the fid is running (a
    /// Tclunk that finds requests in flight on its fid cancels them first,
    /// answering them with an error), so the tree gets the handle by value.
    fn clunk(&self, node: &Self::Node, handle: Option<Self::Handle>, how: Clunk);
}
