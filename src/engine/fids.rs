//! The fid table of one connection: what each fid points at, whether it is
//! open and how, and the 9P errors for fids that are unknown, in use or in
//! the wrong state.

use foldhash::HashMap;
use std::sync::Arc;

use crate::fs::{self, FileTree, OpenMode, errno};
use crate::proto::{Fid, QTDIR, Qid};

use super::dir::DirReader;

/// One fid.
pub struct FidEntry<T: FileTree> {
    /// The file it names.
    pub node: T::Node,
    /// That file's qid when the fid reached it (its type says directory).
    pub qid: Qid,
    /// The numeric user of the Tattach this fid descends from, for the
    /// owner shown in stat and getattr.
    pub n_uname: u32,
    /// Walked, being opened, or open.
    pub state: FidState<T>,
}

/// Where a fid is in its life.
pub enum FidState<T: FileTree> {
    /// Attached or walked to; may be walked, opened, or created in.
    Walked,
    /// A Topen/Tcreate on it waits on the tree: no other open, no walk.
    Opening,
    /// Open for I/O.
    Open(OpenFile<T>),
}

/// An open fid.
pub struct OpenFile<T: FileTree> {
    /// The tree's open state (always set once open; an `Option` so a clunk
    /// can take it). Shared with the reads and writes in flight on the fid,
    /// which a clunk cancels before taking it back by value.
    pub handle: Option<Arc<T::Handle>>,
    /// How it was opened, to refuse reads of write-only fids and the like.
    pub mode: OpenMode,
    /// Remove the file at clunk (9P2000 ORCLOSE).
    pub orclose: bool,
    /// Where a directory read is in its listing (a page held at most).
    pub dir: Option<DirReader>,
}

impl<T: FileTree> FidEntry<T> {
    pub fn is_dir(&self) -> bool {
        self.qid.ty & QTDIR != 0
    }

    /// The open state, or the error for I/O on an unopened fid.
    pub fn open_file(&mut self) -> fs::Result<&mut OpenFile<T>> {
        match &mut self.state {
            FidState::Open(o) => Ok(o),
            _ => Err(fs::Error::new(errno::EBADF, "fid not open")),
        }
    }

    /// Ok if the fid may still be walked or opened.
    pub fn check_unopened(&self) -> fs::Result<()> {
        match self.state {
            FidState::Walked => Ok(()),
            _ => Err(fs::Error::new(errno::EBADF, "fid already open")),
        }
    }
}

/// All fids of a connection.
pub struct Fids<T: FileTree> {
    /// Fid number → entry.
    map: HashMap<Fid, FidEntry<T>>,
    /// The most fids the connection may hold (`Limits::max_fids`).
    max: usize,
}

impl<T: FileTree> Fids<T> {
    pub fn new(max: usize) -> Fids<T> {
        Fids {
            map: HashMap::default(),
            max,
        }
    }

    pub fn get(&self, fid: Fid) -> fs::Result<&FidEntry<T>> {
        self.map.get(&fid).ok_or_else(unknown)
    }

    pub fn get_mut(&mut self, fid: Fid) -> fs::Result<&mut FidEntry<T>> {
        self.map.get_mut(&fid).ok_or_else(unknown)
    }

    /// The error if `fid` cannot be added: in use, or one too many.
    pub fn check_free(&self, fid: Fid) -> fs::Result<()> {
        if self.map.contains_key(&fid) {
            return Err(fs::Error::new(errno::EBADF, "fid taken"));
        }
        if self.map.len() >= self.max {
            return Err(fs::Error::new(errno::EMFILE, "too many fids"));
        }
        Ok(())
    }

    /// Adds a fid that `check_free` allowed.
    pub fn insert(&mut self, fid: Fid, entry: FidEntry<T>) {
        self.map.insert(fid, entry);
    }

    pub fn remove(&mut self, fid: Fid) -> fs::Result<FidEntry<T>> {
        self.map.remove(&fid).ok_or_else(unknown)
    }

    /// Takes every fid (a new Tversion, a closed connection).
    pub fn drain(&mut self) -> impl Iterator<Item = FidEntry<T>> + '_ {
        self.map.drain().map(|(_, e)| e)
    }

    /// A fid whose open or create did not complete goes back to walked.
    pub fn open_abandoned(&mut self, fid: Fid) {
        if let Some(e) = self.map.get_mut(&fid)
            && matches!(e.state, FidState::Opening)
        {
            e.state = FidState::Walked;
        }
    }
}

fn unknown() -> fs::Error {
    fs::Error::new(errno::EBADF, "unknown fid")
}

/// The handle back by value from an open fid whose operations have all
/// ended. Anything else holding it would be an engine bug: it is logged and
/// the tree then gets `None`.
pub fn take_handle<H>(handle: Option<Arc<H>>) -> Option<H> {
    let arc = handle?;
    match Arc::try_unwrap(arc) {
        Ok(h) => Some(h),
        Err(_) => {
            tracing::error!("clunk while an operation still holds the fid's handle");
            None
        }
    }
}
