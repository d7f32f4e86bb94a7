//! A small in-memory [`FileTree`]: directories and files, for the tests and
//! for `dchan serve --ramfs` until the topic tree lands.
//!
//! Like lib9p's ramfs, everything lives in one table of inodes behind one
//! lock (a `parking_lot` mutex, never held across an `.await`). One special
//! file, `/block`, is a queue: a write appends one message, a read takes the
//! oldest one and waits while there is none. Tests use it to block a read and
//! flush it; taking a message happens in the same poll that returns it, so a
//! dropped read never loses one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::fs::{self, Attach, Changes, Clunk, FileInfo, FileTree, OpenMode, ReadReq, errno};
use crate::proto::{DMDIR, QTDIR, QTFILE, Qid};

/// The name of the blocking queue file at the root.
pub const BLOCK_FILE: &str = "block";

/// An in-memory file tree. Cheap to share: clone the `Arc` it lives in.
pub struct RamFs {
    /// Every inode by number (the qid path); the root is 0. Never held across
    /// an `.await`.
    inodes: Mutex<Inodes>,
    /// Wakes readers of `/block` when a message is written to it.
    block_written: Notify,
}

/// The table of inodes and the next free number.
struct Inodes {
    /// Inode number → inode.
    map: HashMap<u64, Inode>,
    /// The number the next created file gets.
    next: u64,
}

/// One file or directory.
struct Inode {
    /// Its name in its directory ("/" for the root).
    name: String,
    /// The directory holding it (the root is its own parent).
    parent: u64,
    /// Permission bits and DMDIR.
    mode: u32,
    /// Bumped on every change of content, for the qid version.
    version: u32,
    /// Seconds since the epoch of the last change.
    mtime: u32,
    /// What it holds.
    body: Body,
}

/// The content of an inode.
enum Body {
    /// Children by name.
    Dir(BTreeMap<String, u64>),
    /// Bytes of a regular file.
    File(Vec<u8>),
    /// The `/block` queue: messages written and not yet read.
    Queue(VecDeque<Bytes>),
}

/// An open file: which inode, and how it was opened.
pub struct RamHandle {
    /// The inode number.
    ino: u64,
    /// Writes go to the end (O_APPEND).
    append: bool,
    /// O_NONBLOCK: a read of an empty `/block` fails instead of waiting.
    nonblock: bool,
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn enoent() -> fs::Error {
    fs::Error::new(errno::ENOENT, "file does not exist")
}

impl Default for RamFs {
    fn default() -> Self {
        Self::new()
    }
}

impl RamFs {
    /// An empty root directory holding only the `/block` queue.
    pub fn new() -> RamFs {
        let mut map = HashMap::new();
        let root = Inode {
            name: "/".into(),
            parent: 0,
            mode: DMDIR | 0o777,
            version: 0,
            mtime: now(),
            body: Body::Dir(BTreeMap::from([(BLOCK_FILE.to_string(), 1)])),
        };
        let block = Inode {
            name: BLOCK_FILE.into(),
            parent: 0,
            mode: 0o666,
            version: 0,
            mtime: now(),
            body: Body::Queue(VecDeque::new()),
        };
        map.insert(0, root);
        map.insert(1, block);
        RamFs {
            inodes: Mutex::new(Inodes { map, next: 2 }),
            block_written: Notify::new(),
        }
    }

    fn info(ino: u64, inode: &Inode) -> FileInfo {
        let (ty, length) = match &inode.body {
            Body::Dir(_) => (QTDIR, 0),
            Body::File(data) => (QTFILE, data.len() as u64),
            Body::Queue(q) => (QTFILE, q.iter().map(|m| m.len() as u64).sum()),
        };
        FileInfo {
            qid: Qid {
                ty,
                version: inode.version,
                path: ino,
            },
            mode: inode.mode,
            length,
            name: inode.name.clone(),
            uid: "ram".into(),
            gid: "ram".into(),
            muid: "ram".into(),
            atime: inode.mtime,
            mtime: inode.mtime,
        }
    }
}

impl FileTree for RamFs {
    type Node = u64;
    type Handle = RamHandle;

    fn attach(&self, _who: &Attach) -> fs::Result<u64> {
        Ok(0)
    }

    fn walk(&self, dir: &u64, name: &str) -> fs::Result<u64> {
        let t = self.inodes.lock();
        let inode = t.map.get(dir).ok_or_else(enoent)?;
        match &inode.body {
            Body::Dir(_) if name == ".." => Ok(inode.parent),
            Body::Dir(children) => children.get(name).copied().ok_or_else(enoent),
            _ => Err(fs::Error::new(errno::ENOTDIR, "not a directory")),
        }
    }

    fn stat(&self, node: &u64) -> fs::Result<FileInfo> {
        let t = self.inodes.lock();
        t.map
            .get(node)
            .map(|i| Self::info(*node, i))
            .ok_or_else(enoent)
    }

    fn readdir(&self, dir: &u64) -> fs::Result<Vec<FileInfo>> {
        let t = self.inodes.lock();
        match t.map.get(dir).map(|i| &i.body) {
            Some(Body::Dir(children)) => Ok(children
                .values()
                .filter_map(|c| t.map.get(c).map(|i| Self::info(*c, i)))
                .collect()),
            Some(_) => Err(fs::Error::new(errno::ENOTDIR, "not a directory")),
            None => Err(enoent()),
        }
    }

    async fn open(&self, node: &u64, mode: OpenMode) -> fs::Result<RamHandle> {
        let mut t = self.inodes.lock();
        let inode = t.map.get_mut(node).ok_or_else(enoent)?;
        if let (Body::File(data), true) = (&mut inode.body, mode.truncate && mode.writes()) {
            data.clear();
            inode.version += 1;
            inode.mtime = now();
        }
        Ok(RamHandle {
            ino: *node,
            append: mode.append,
            nonblock: mode.nonblock,
        })
    }

    async fn create(
        &self,
        dir: &u64,
        name: &str,
        perm: u32,
        mode: OpenMode,
    ) -> fs::Result<(u64, RamHandle)> {
        let mut t = self.inodes.lock();
        let ino = t.next;
        let Some(Body::Dir(children)) = t.map.get_mut(dir).map(|i| &mut i.body) else {
            return Err(fs::Error::new(errno::ENOTDIR, "not a directory"));
        };
        if children.contains_key(name) {
            return Err(fs::Error::new(errno::EEXIST, "file already exists"));
        }
        children.insert(name.to_string(), ino);
        let body = if perm & DMDIR != 0 {
            Body::Dir(BTreeMap::new())
        } else {
            Body::File(Vec::new())
        };
        let inode = Inode {
            name: name.to_string(),
            parent: *dir,
            mode: perm & (DMDIR | 0o777),
            version: 0,
            mtime: now(),
            body,
        };
        t.map.insert(ino, inode);
        t.next += 1;
        let handle = RamHandle {
            ino,
            append: mode.append,
            nonblock: mode.nonblock,
        };
        Ok((ino, handle))
    }

    async fn read(&self, handle: &RamHandle, req: ReadReq) -> fs::Result<Bytes> {
        loop {
            let written = self.block_written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                let mut t = self.inodes.lock();
                match t.map.get_mut(&handle.ino).map(|i| &mut i.body) {
                    Some(Body::File(data)) => {
                        let start = (req.offset.min(data.len() as u64)) as usize;
                        let end = (start + req.count as usize).min(data.len());
                        return Ok(Bytes::copy_from_slice(&data[start..end]));
                    }
                    Some(Body::Queue(q)) => {
                        if let Some(mut msg) = q.pop_front() {
                            if msg.len() > req.count as usize {
                                q.push_front(msg.split_off(req.count as usize));
                            }
                            return Ok(msg);
                        }
                    }
                    Some(Body::Dir(_)) => {
                        return Err(fs::Error::new(errno::EISDIR, "is a directory"));
                    }
                    None => return Err(enoent()),
                }
            }
            if handle.nonblock {
                return Err(fs::Error::new(errno::EAGAIN, "no message"));
            }
            written.await;
        }
    }

    async fn write(&self, handle: &RamHandle, offset: u64, data: Bytes) -> fs::Result<u32> {
        let mut t = self.inodes.lock();
        let inode = t.map.get_mut(&handle.ino).ok_or_else(enoent)?;
        inode.version += 1;
        inode.mtime = now();
        let n = data.len() as u32;
        match &mut inode.body {
            Body::File(file) => {
                let start = if handle.append {
                    file.len()
                } else {
                    usize::try_from(offset)
                        .ok()
                        .filter(|o| *o <= 1 << 30)
                        .ok_or_else(|| fs::Error::new(errno::EFBIG, "file too large"))?
                };
                let end = start + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[start..end].copy_from_slice(&data);
            }
            Body::Queue(q) => {
                q.push_back(data);
                self.block_written.notify_waiters();
            }
            Body::Dir(_) => return Err(fs::Error::new(errno::EISDIR, "is a directory")),
        }
        Ok(n)
    }

    async fn wstat(&self, node: &u64, changes: Changes) -> fs::Result<()> {
        let mut guard = self.inodes.lock();
        let t = &mut *guard;
        let inode = t.map.get(node).ok_or_else(enoent)?;
        let parent = inode.parent;
        let old_name = inode.name.clone();
        if let Some(name) = changes.name.as_ref().filter(|n| **n != old_name) {
            if *node == 0 {
                return Err(fs::Error::new(errno::EBUSY, "cannot rename the root"));
            }
            let Some(Body::Dir(siblings)) = t.map.get_mut(&parent).map(|i| &mut i.body) else {
                return Err(enoent());
            };
            if siblings.contains_key(name) {
                return Err(fs::Error::new(errno::EEXIST, "file already exists"));
            }
            siblings.remove(&old_name);
            siblings.insert(name.clone(), *node);
        }
        let inode = t.map.get_mut(node).ok_or_else(enoent)?;
        if let Some(name) = changes.name {
            inode.name = name;
        }
        if let Some(mode) = changes.mode {
            inode.mode = (inode.mode & DMDIR) | (mode & 0o777);
        }
        if let Some(length) = changes.length {
            match &mut inode.body {
                Body::File(data) if length <= 1 << 30 => data.resize(length as usize, 0),
                Body::Queue(q) if length == 0 => q.clear(),
                _ => return Err(fs::Error::new(errno::EINVAL, "cannot set this length")),
            }
            inode.version += 1;
        }
        inode.mtime = changes.mtime.unwrap_or_else(now);
        Ok(())
    }

    async fn remove(&self, node: &u64) -> fs::Result<()> {
        let mut t = self.inodes.lock();
        let inode = t.map.get(node).ok_or_else(enoent)?;
        if *node == 0 {
            return Err(fs::Error::new(errno::EBUSY, "cannot remove the root"));
        }
        if matches!(&inode.body, Body::Dir(c) if !c.is_empty()) {
            return Err(fs::Error::new(errno::ENOTEMPTY, "not empty"));
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        t.map.remove(node);
        if let Some(Body::Dir(siblings)) = t.map.get_mut(&parent).map(|i| &mut i.body) {
            siblings.remove(&name);
        }
        Ok(())
    }

    fn clunk(&self, _node: &u64, _handle: Option<RamHandle>, _how: Clunk) {}
}
