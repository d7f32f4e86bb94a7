//! One connection's 9P session: the agreed dialect and msize, the fids, and
//! the translation of each request into `FileTree` calls. A request is
//! answered at once, or becomes a future (anything that may wait on the
//! tree) that the connection runs and may cancel; [`Session::complete`] turns
//! its outcome into the reply.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::fs::{self, Attach, Changes, Clunk, DirPos, FileTree, OpenMode, ReadReq, errno};
use crate::proto::{DMDIR, Dialect, Fcall, Fid, Flock, IOHDRSZ, MAXWELEM, NOFID, Qid};

use super::dialect;
use super::dir::{self, DirReader};
use super::fids::{FidEntry, FidState, Fids, OpenFile, take_handle};
use super::listen::Who;
use super::{Limits, MIN_MSIZE};

/// What a request became.
pub enum Action<T: FileTree> {
    /// Answered at once.
    Reply(Fcall),
    /// Waits on the tree. `fid` is the fid whose operations a Tclunk must
    /// cancel first (`NOFID` for none).
    Wait {
        fid: Fid,
        fut: BoxFuture<'static, Done<T>>,
    },
    /// Releases a fid already taken from the table (a remove, an ORCLOSE
    /// clunk): run even past the limit on requests in flight, because
    /// dropping it unrun would skip the remove.
    Release(BoxFuture<'static, Done<T>>),
}

/// The outcome of a request that waited.
pub enum Done<T: FileTree> {
    Reply(Fcall),
    /// A walk that found nothing, to be walked once more now that the
    /// tree asked (see [`FileTree::recheck`]).
    Walk {
        fid: Fid,
        newfid: Fid,
        wnames: Vec<String>,
    },
    Fail(fs::Error),
    /// An open or create succeeded: the fid becomes open.
    Opened {
        fid: Fid,
        /// The file opened, or created (the fid moves to it).
        node: T::Node,
        qid: Qid,
        handle: T::Handle,
        mode: OpenMode,
        orclose: bool,
        reply: Fcall,
    },
}

/// Which reply an open or create gets.
#[derive(Clone, Copy)]
enum OpenReply {
    Open,
    Lopen,
    Create,
    Lcreate,
}

impl OpenReply {
    fn reply(self, qid: Qid, iounit: u32) -> Fcall {
        match self {
            OpenReply::Open => Fcall::Ropen { qid, iounit },
            OpenReply::Lopen => Fcall::Rlopen { qid, iounit },
            OpenReply::Create => Fcall::Rcreate { qid, iounit },
            OpenReply::Lcreate => Fcall::Rlcreate { qid, iounit },
        }
    }
}

/// A fid taken out of the table, clunked when this is dropped: after its
/// remove, even one cancelled half-way.
struct Release<T: FileTree> {
    /// The tree to tell.
    tree: Arc<T>,
    /// The file the fid named.
    node: T::Node,
    /// Its open state, if it was open.
    handle: Option<Arc<T::Handle>>,
    /// Why it goes.
    how: Clunk,
}

impl<T: FileTree> Drop for Release<T> {
    fn drop(&mut self) {
        let handle = take_handle(self.handle.take());
        self.tree.clunk(&self.node, handle, self.how);
    }
}

type Res<T> = fs::Result<Action<T>>;

fn err(errno: u32, msg: &'static str) -> fs::Error {
    fs::Error::new(errno, msg)
}

fn reply<T: FileTree>(f: Fcall) -> Res<T> {
    Ok(Action::Reply(f))
}

fn not_open() -> fs::Error {
    err(errno::EBADF, "fid not open")
}

/// A name for a new file: not empty, ".", "..", nor with a '/'.
fn check_name(name: &str) -> fs::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(err(errno::EINVAL, "invalid file name"));
    }
    Ok(())
}

/// The session of one connection.
pub struct Session<T: FileTree> {
    /// What is served.
    tree: Arc<T>,
    /// The server's limits (max msize, fids).
    limits: Limits,
    /// The dialect agreed by Tversion; `None` before one succeeded.
    dialect: Option<Dialect>,
    /// The agreed message size.
    msize: u32,
    /// The fids of this session.
    fids: Fids<T>,
    /// Who the listener says the client is, passed to each attach.
    who: Who,
}

impl<T: FileTree> Session<T> {
    pub fn new(tree: Arc<T>, limits: Limits, who: Who) -> Session<T> {
        Session {
            who,
            fids: Fids::new(limits.max_fids),
            msize: limits.max_msize,
            tree,
            limits,
            dialect: None,
        }
    }

    /// The dialect to decode and answer in (9P2000 before Tversion).
    pub fn dialect(&self) -> Dialect {
        self.dialect.unwrap_or(Dialect::P2000)
    }

    /// Whether a Tversion has set the dialect.
    pub fn versioned(&self) -> bool {
        self.dialect.is_some()
    }

    /// The largest frame the client may send now.
    pub fn max_frame(&self) -> u32 {
        match self.dialect {
            Some(_) => self.msize,
            None => self.limits.max_msize,
        }
    }

    /// The error reply for `e` in this session's dialect.
    pub fn error(&self, e: &fs::Error) -> Fcall {
        dialect::error(self.dialect(), e)
    }

    /// Tversion; the connection has already cancelled every request in
    /// flight. Returns the reply and the removals of ORCLOSE fids the reset
    /// clunked, to be run to completion.
    pub fn version(&mut self, msize: u32, version: &str) -> (Fcall, Vec<BoxFuture<'static, ()>>) {
        let removals = self.clunk_all(Clunk::Lost);
        self.dialect = None;
        let msize = msize.min(self.limits.max_msize);
        let reply = match Dialect::from_version(version) {
            _ if msize < MIN_MSIZE => self.error(&err(errno::EMSGSIZE, "msize too small")),
            Some(d) => {
                self.dialect = Some(d);
                self.msize = msize;
                Fcall::Rversion {
                    msize,
                    version: d.as_str().into(),
                }
            }
            None => Fcall::Rversion {
                msize,
                version: "unknown".into(),
            },
        };
        (reply, removals)
    }

    /// Clunks every fid (a new Tversion, the end of the connection). The
    /// removals of ORCLOSE fids are returned, to be awaited.
    pub fn clunk_all(&mut self, how: Clunk) -> Vec<BoxFuture<'static, ()>> {
        let entries: Vec<_> = self.fids.drain().collect();
        entries
            .into_iter()
            .filter_map(|e| self.release(e, how))
            .map(|(fut, _)| fut.map(drop).boxed())
            .collect()
    }

    /// Clunks one fid taken from the table. The returned future, if any,
    /// must run first: the file's [`FileTree::close`] (a Tclunk of an
    /// unfinished file), then the remove of an ORCLOSE fid; with it, whether
    /// it must run (a remove) or may be dropped unrun (only a close).
    #[allow(clippy::type_complexity)]
    fn release(
        &self,
        e: FidEntry<T>,
        how: Clunk,
    ) -> Option<(BoxFuture<'static, fs::Result<()>>, bool)> {
        let (handle, orclose) = match e.state {
            FidState::Open(o) => (o.handle, o.orclose),
            _ => (None, false),
        };
        let closing =
            how == Clunk::Client && handle.as_ref().is_some_and(|h| self.tree.unfinished(h));
        let release = Release {
            tree: self.tree.clone(),
            node: e.node,
            handle,
            how,
        };
        (closing || orclose).then(|| {
            let fut = async move {
                let mut r = Ok(());
                if closing && let Some(h) = release.handle.clone() {
                    r = release.tree.close(&h).await;
                }
                if orclose {
                    let _ = release.tree.remove(&release.node).await;
                }
                drop(release);
                r
            };
            (fut.boxed(), orclose)
        })
    }

    /// The request that waited on `fid` ended or was cancelled.
    pub fn ended(&mut self, fid: Fid) {
        self.fids.open_abandoned(fid);
    }

    /// Turns the outcome of a request that waited into its reply.
    pub fn complete(&mut self, done: Done<T>) -> Fcall {
        match done {
            Done::Reply(f) => f,
            Done::Fail(e) => self.error(&e),
            Done::Walk {
                fid,
                newfid,
                wnames,
            } => match self.walk_again(fid, newfid, &wnames, false) {
                Ok(Action::Reply(f)) => f,
                Ok(_) => self.error(&err(errno::ENOENT, "file does not exist")),
                Err(e) => self.error(&e),
            },
            Done::Opened {
                fid,
                node,
                qid,
                handle,
                mode,
                orclose,
                reply,
            } => {
                let Ok(entry) = self.fids.get_mut(fid) else {
                    // Cannot happen (a clunk cancels the fid's open first),
                    // but the tree still gets its handle back.
                    self.tree.clunk(&node, Some(handle), Clunk::Lost);
                    return self.error(&err(errno::EBADF, "unknown fid"));
                };
                entry.node = node;
                entry.qid = qid;
                entry.state = FidState::Open(OpenFile {
                    handle: Some(Arc::new(handle)),
                    mode,
                    orclose,
                    dir: None,
                });
                reply
            }
        }
    }

    /// Handles any request but Tversion and Tflush (the connection's);
    /// `overlaps` is [`ReadReq::overlaps`] for a Tread.
    pub fn handle(&mut self, body: Fcall, overlaps: bool) -> Action<T> {
        let Some(d) = self.dialect else {
            return Action::Reply(self.error(&err(errno::EPROTO, "no Tversion yet")));
        };
        self.request(d, body, overlaps)
            .unwrap_or_else(|e| Action::Reply(self.error(&e)))
    }

    fn request(&mut self, d: Dialect, body: Fcall, overlaps: bool) -> Res<T> {
        use Fcall::*;
        let iounit = self.msize - IOHDRSZ;
        match body {
            Tauth { .. } => Err(err(errno::ENOSYS, "authentication not required")),
            Tattach {
                fid,
                afid,
                uname,
                aname,
                n_uname,
            } => {
                if afid != NOFID {
                    return Err(err(errno::EINVAL, "authentication not required"));
                }
                self.fids.check_free(fid)?;
                let who = Attach {
                    uname,
                    aname,
                    n_uname,
                    dialect: d,
                    user: self.who.user.clone(),
                    peer: self.who.addr.clone(),
                };
                let node = self.tree.attach(&who)?;
                let qid = self.tree.stat(&node)?.qid;
                self.fids.insert(
                    fid,
                    FidEntry {
                        node,
                        qid,
                        n_uname,
                        state: FidState::Walked,
                    },
                );
                reply(Rattach { qid })
            }
            Twalk {
                fid,
                newfid,
                wnames,
            } => self.walk(fid, newfid, &wnames),
            Topen { fid, mode } => {
                let orclose = mode & crate::proto::ORCLOSE != 0;
                self.open(
                    fid,
                    dialect::open_mode(mode),
                    orclose,
                    OpenReply::Open,
                    iounit,
                )
            }
            Tlopen { fid, flags } => self.open(
                fid,
                dialect::lopen_mode(flags),
                false,
                OpenReply::Lopen,
                iounit,
            ),
            Tcreate {
                fid,
                name,
                perm,
                mode,
                ..
            } => {
                let orclose = mode & crate::proto::ORCLOSE != 0;
                let omode = dialect::open_mode(mode);
                self.create(fid, name, perm, omode, orclose, OpenReply::Create, iounit)
            }
            Tlcreate {
                fid,
                name,
                flags,
                mode,
                ..
            } => {
                let omode = dialect::lopen_mode(flags);
                self.create(
                    fid,
                    name,
                    mode & 0o777,
                    omode,
                    false,
                    OpenReply::Lcreate,
                    iounit,
                )
            }
            Tmkdir {
                dfid, name, mode, ..
            } => self.mkdir(dfid, name, mode),
            Tread { fid, offset, count } => self.read(d, fid, offset, count, overlaps),
            Treaddir { fid, offset, count } => self.readdir(fid, offset, count),
            Twrite { fid, offset, data } => {
                let e = self.fids.get_mut(fid)?;
                let is_dir = e.is_dir();
                let o = e.open_file()?;
                if is_dir {
                    return Err(err(errno::EISDIR, "is a directory"));
                }
                if !o.mode.writes() {
                    return Err(err(errno::EBADF, "fid not open for writing"));
                }
                let handle = o.handle.clone().ok_or_else(not_open)?;
                let tree = self.tree.clone();
                self.wait(fid, async move {
                    match tree.write(&handle, offset, data).await {
                        Ok(count) => Done::Reply(Rwrite { count }),
                        Err(e) => Done::Fail(e),
                    }
                })
            }
            Tclunk { fid } => {
                let entry = self.fids.remove(fid)?;
                let Some((fut, must_run)) = self.release(entry, Clunk::Client) else {
                    return reply(Rclunk);
                };
                let fut = async move {
                    match fut.await {
                        Ok(()) => Done::Reply(Rclunk),
                        Err(e) => Done::Fail(e),
                    }
                };
                match must_run {
                    true => Ok(Action::Release(fut.boxed())),
                    false => self.wait(NOFID, fut),
                }
            }
            Tremove { fid } => {
                let entry = self.fids.remove(fid)?;
                let handle = match entry.state {
                    FidState::Open(o) => o.handle,
                    _ => None,
                };
                let release = Release {
                    tree: self.tree.clone(),
                    node: entry.node,
                    handle,
                    how: Clunk::Client,
                };
                Ok(Action::Release(
                    async move {
                        let r = release.tree.remove(&release.node).await;
                        drop(release);
                        match r {
                            Ok(()) => Done::Reply(Rremove),
                            Err(e) => Done::Fail(e),
                        }
                    }
                    .boxed(),
                ))
            }
            Tstat { fid } => {
                let e = self.fids.get(fid)?;
                let info = self.tree.stat(&e.node)?;
                reply(Rstat {
                    stat: dialect::stat(&info, e.n_uname),
                })
            }
            Tgetattr { fid, .. } => {
                let e = self.fids.get(fid)?;
                let info = self.tree.stat(&e.node)?;
                reply(Rgetattr {
                    attr: dialect::attr(&info, e.n_uname),
                })
            }
            Twstat { fid, stat } => {
                let changes = dialect::wstat_changes(&stat)?;
                self.wstat(fid, changes, Rwstat)
            }
            Tsetattr { fid, attr } => self.wstat(fid, dialect::setattr_changes(&attr), Rsetattr),
            Tstatfs { fid } => {
                self.fids.get(fid)?;
                reply(Rstatfs {
                    statfs: dialect::statfs(),
                })
            }
            Tfsync { fid, .. } => {
                self.fids.get(fid)?;
                reply(Rfsync)
            }
            Tlock { fid, .. } => {
                self.fids.get(fid)?;
                reply(Rlock { status: 0 })
            }
            Tgetlock { fid, flock } => {
                self.fids.get(fid)?;
                const F_UNLCK: u8 = 2;
                reply(Rgetlock {
                    flock: Flock {
                        ty: F_UNLCK,
                        ..flock
                    },
                })
            }
            Txattrwalk { fid, name, .. } => {
                self.fids.get(fid)?;
                match name.as_str() {
                    "" => Err(err(errno::EOPNOTSUPP, "extended attributes not supported")),
                    _ => Err(err(errno::ENODATA, "attribute not set")),
                }
            }
            Txattrcreate { .. } => Err(err(errno::EOPNOTSUPP, "extended attributes not supported")),
            Tsymlink { .. } | Tmknod { .. } | Tlink { .. } => {
                Err(err(errno::EOPNOTSUPP, "not supported"))
            }
            Treadlink { .. } => Err(err(errno::EINVAL, "not a symbolic link")),
            Trename { fid, dfid, name } => {
                check_name(&name)?;
                let node = self.fids.get(fid)?.node.clone();
                let dir = self.fids.get(dfid)?.qid;
                let parent = self.tree.walk(&node, "..")?;
                self.same_dir(self.tree.stat(&parent)?.qid, dir)?;
                self.rename(node, name, Rrename)
            }
            Trenameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => {
                check_name(&oldname)?;
                check_name(&newname)?;
                let olddir = self.fids.get(olddirfid)?;
                self.same_dir(olddir.qid, self.fids.get(newdirfid)?.qid)?;
                let node = self.tree.walk(&olddir.node, &oldname)?;
                self.rename(node, newname, Rrenameat)
            }
            Tunlinkat {
                dirfid,
                name,
                flags,
            } => {
                const AT_REMOVEDIR: u32 = 0x200;
                check_name(&name)?;
                let node = self.tree.walk(&self.fids.get(dirfid)?.node, &name)?;
                let is_dir = self.tree.stat(&node)?.mode & DMDIR != 0;
                if is_dir && flags & AT_REMOVEDIR == 0 {
                    return Err(err(errno::EISDIR, "is a directory"));
                }
                if !is_dir && flags & AT_REMOVEDIR != 0 {
                    return Err(err(errno::ENOTDIR, "not a directory"));
                }
                let tree = self.tree.clone();
                self.wait(NOFID, async move {
                    match tree.remove(&node).await {
                        Ok(()) => Done::Reply(Runlinkat),
                        Err(e) => Done::Fail(e),
                    }
                })
            }
            Tversion { .. } | Tflush { .. } => Err(err(errno::EPROTO, "misrouted request")),
            _ => Err(err(errno::EPROTO, "not a request")),
        }
    }

    fn wait(
        &self,
        fid: Fid,
        fut: impl std::future::Future<Output = Done<T>> + Send + 'static,
    ) -> Res<T> {
        Ok(Action::Wait {
            fid,
            fut: fut.boxed(),
        })
    }

    fn same_dir(&self, a: Qid, b: Qid) -> fs::Result<()> {
        if a.path != b.path {
            return Err(err(errno::EXDEV, "cannot rename across directories"));
        }
        Ok(())
    }

    fn rename(&self, node: T::Node, name: String, ok: Fcall) -> Res<T> {
        let changes = Changes {
            name: Some(name),
            ..Changes::default()
        };
        let tree = self.tree.clone();
        self.wait(NOFID, async move {
            match tree.wstat(&node, changes).await {
                Ok(()) => Done::Reply(ok),
                Err(e) => Done::Fail(e),
            }
        })
    }

    fn walk(&mut self, fid: Fid, newfid: Fid, wnames: &[String]) -> Res<T> {
        self.walk_again(fid, newfid, wnames, true)
    }

    /// A walk; `recheck`: a name not found may be asked of the tree
    /// (see [`FileTree::recheck`]) and the walk done once more.
    fn walk_again(&mut self, fid: Fid, newfid: Fid, wnames: &[String], recheck: bool) -> Res<T> {
        if wnames.len() > MAXWELEM {
            return Err(err(errno::EINVAL, "too many names in walk"));
        }
        let e = self.fids.get(fid)?;
        e.check_unopened()?;
        if newfid != fid {
            self.fids.check_free(newfid)?;
        }
        let (mut node, mut qid, n_uname) = (e.node.clone(), e.qid, e.n_uname);
        let mut wqids = Vec::with_capacity(wnames.len());
        for name in wnames {
            let step = match name.as_str() {
                "." => Ok(node.clone()),
                n if n.is_empty() || n.contains('/') => {
                    Err(err(errno::ENOENT, "file does not exist"))
                }
                n => match self.tree.walk(&node, n) {
                    Err(e) if recheck && e.errno == errno::ENOENT => {
                        if let Some(asking) = self.tree.recheck(&node, n) {
                            let (fid, newfid) = (fid, newfid);
                            let wnames = wnames.to_vec();
                            return self.wait(NOFID, async move {
                                asking.await;
                                Done::Walk {
                                    fid,
                                    newfid,
                                    wnames,
                                }
                            });
                        }
                        Err(e)
                    }
                    r => r,
                },
            };
            let step = step.and_then(|n| Ok((self.tree.stat(&n)?.qid, n)));
            match step {
                Ok((q, n)) => {
                    node = n;
                    qid = q;
                    wqids.push(q);
                }
                Err(e) if wqids.is_empty() => return Err(e),
                Err(_) => return reply(Fcall::Rwalk { wqids }),
            }
        }
        let entry = FidEntry {
            node,
            qid,
            n_uname,
            state: FidState::Walked,
        };
        if newfid == fid {
            *self.fids.get_mut(fid)? = entry;
        } else {
            self.fids.insert(newfid, entry);
        }
        reply(Fcall::Rwalk { wqids })
    }

    fn open(
        &mut self,
        fid: Fid,
        mode: OpenMode,
        orclose: bool,
        kind: OpenReply,
        iounit: u32,
    ) -> Res<T> {
        let e = self.fids.get_mut(fid)?;
        e.check_unopened()?;
        let qid = e.qid;
        if e.is_dir() && (mode.writes() || mode.truncate) {
            return Err(err(errno::EISDIR, "is a directory"));
        }
        e.state = FidState::Opening;
        let (tree, node) = (self.tree.clone(), e.node.clone());
        self.wait(fid, async move {
            match tree.open(&node, mode).await {
                Ok(handle) => Done::Opened {
                    fid,
                    node,
                    qid,
                    handle,
                    mode,
                    orclose,
                    reply: kind.reply(qid, iounit),
                },
                Err(e) => Done::Fail(e),
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        fid: Fid,
        name: String,
        perm: u32,
        mode: OpenMode,
        orclose: bool,
        kind: OpenReply,
        iounit: u32,
    ) -> Res<T> {
        check_name(&name)?;
        /// 9P2000.u special files: symlink, hard link, device, pipe, socket.
        const DMSPECIAL: u32 = 0x0200_0000 | 0x0100_0000 | 0x0080_0000 | 0x0020_0000 | 0x0010_0000;
        if perm & DMSPECIAL != 0 {
            return Err(err(errno::EOPNOTSUPP, "special files not supported"));
        }
        let e = self.fids.get_mut(fid)?;
        e.check_unopened()?;
        if !e.is_dir() {
            return Err(err(errno::ENOTDIR, "not a directory"));
        }
        e.state = FidState::Opening;
        let (tree, dir) = (self.tree.clone(), e.node.clone());
        self.wait(fid, async move {
            match tree.create(&dir, &name, perm, mode).await {
                Ok((node, handle)) => {
                    let qid = tree.stat(&node).map(|i| i.qid).unwrap_or_default();
                    Done::Opened {
                        fid,
                        node,
                        qid,
                        handle,
                        mode,
                        orclose,
                        reply: kind.reply(qid, iounit),
                    }
                }
                Err(e) => Done::Fail(e),
            }
        })
    }

    fn mkdir(&mut self, dfid: Fid, name: String, mode: u32) -> Res<T> {
        check_name(&name)?;
        let e = self.fids.get(dfid)?;
        if !e.is_dir() {
            return Err(err(errno::ENOTDIR, "not a directory"));
        }
        let (tree, dir) = (self.tree.clone(), e.node.clone());
        let read = dialect::open_mode(crate::proto::OREAD);
        self.wait(NOFID, async move {
            match tree.create(&dir, &name, DMDIR | (mode & 0o777), read).await {
                Ok((node, handle)) => {
                    let qid = tree.stat(&node).map(|i| i.qid).unwrap_or_default();
                    tree.clunk(&node, Some(handle), Clunk::Client);
                    Done::Reply(Fcall::Rmkdir { qid })
                }
                Err(e) => Done::Fail(e),
            }
        })
    }

    fn read(&mut self, d: Dialect, fid: Fid, offset: u64, count: u32, overlaps: bool) -> Res<T> {
        let max_count = self.msize - IOHDRSZ;
        let count = count.min(max_count);
        let e = self.fids.get_mut(fid)?;
        let (is_dir, n_uname) = (e.is_dir(), e.n_uname);
        let node = e.node.clone();
        let o = e.open_file()?;
        if !o.mode.reads() {
            return Err(err(errno::EBADF, "fid not open for reading"));
        }
        if is_dir {
            let tree = &self.tree;
            let mut fetch = |from: Option<&DirPos>| tree.readdir_page(&node, from, dir::PAGE);
            let dir = o.dir.get_or_insert_with(DirReader::new);
            let data = dir.read_stats(offset, count, d, n_uname, &mut fetch)?;
            return reply(Fcall::Rread { data });
        }
        let handle = o.handle.clone().ok_or_else(not_open)?;
        let tree = self.tree.clone();
        let req = ReadReq {
            offset,
            count,
            max_count,
            overlaps,
        };
        self.wait(fid, async move {
            match tree.read(&handle, req).await {
                Ok(mut data) => {
                    data.truncate(count as usize);
                    Done::Reply(Fcall::Rread { data })
                }
                Err(e) => Done::Fail(e),
            }
        })
    }

    fn readdir(&mut self, fid: Fid, offset: u64, count: u32) -> Res<T> {
        let count = count.min(self.msize - IOHDRSZ);
        let e = self.fids.get_mut(fid)?;
        if !e.is_dir() {
            return Err(err(errno::ENOTDIR, "not a directory"));
        }
        let (node, dot) = (e.node.clone(), e.qid);
        let o = e.open_file()?;
        let tree = &self.tree;
        let dotdot = tree
            .walk(&node, "..")
            .and_then(|p| tree.stat(&p))
            .map_or(dot, |i| i.qid);
        let mut fetch = |from: Option<&DirPos>| tree.readdir_page(&node, from, dir::PAGE);
        let dir = o.dir.get_or_insert_with(DirReader::new);
        let data = dir.read_dirents(offset, count, dot, dotdot, &mut fetch)?;
        reply(Fcall::Rreaddir { data })
    }

    fn wstat(&mut self, fid: Fid, changes: Changes, ok: Fcall) -> Res<T> {
        let node = self.fids.get(fid)?.node.clone();
        if dialect::is_empty(&changes) {
            return reply(ok);
        }
        let tree = self.tree.clone();
        self.wait(fid, async move {
            match tree.wstat(&node, changes).await {
                Ok(()) => Done::Reply(ok),
                Err(e) => Done::Fail(e),
            }
        })
    }
}
