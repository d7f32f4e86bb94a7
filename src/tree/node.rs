//! What a fid points at (a [`Node`]: a place in the tree, seen through one
//! attach) and what an open file holds (a [`Handle`]), with the numbers
//! that give every place its qid.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::data::{Reader, Writer, Zeros};
use super::error::linux_text;
use super::listing::Listing;
use crate::broker::{Target, TopicId, Wait};
use crate::fs::Error;
use crate::proto::Dialect;

/// Reader counts of topics, kept by the tree (an entry per topic with a
/// reader open, dropped with the topic).
#[derive(Default)]
pub(super) struct Places {
    /// Open data files that read, per topic: (topic's identity, count).
    pub(super) readers: HashMap<String, (TopicId, u64)>,
}

/// The qid path of a directory that is not a topic but leads to topics:
/// a hash of its path with the top bit set (topics' paths come from their
/// identities, small numbers) and the low two bits clear (its would-be
/// files'). Stable, and stored nowhere.
pub(super) fn path_qid(path: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(path);
    (1 << 63) | (hash & !3)
}

/// A file of a topic directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Ctl,
    Data,
    Offset,
}

impl FileKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            FileKind::Ctl => "ctl",
            FileKind::Data => "data",
            FileKind::Offset => "offset",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<FileKind> {
        match name {
            "ctl" => Some(FileKind::Ctl),
            "data" => Some(FileKind::Data),
            "offset" => Some(FileKind::Offset),
            _ => None,
        }
    }

    /// The offset of its qid path from its directory's.
    pub(super) fn qid_offset(self) -> u64 {
        match self {
            FileKind::Ctl => 1,
            FileKind::Data => 2,
            FileKind::Offset => 3,
        }
    }
}

/// Where in the tree a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum At {
    Root,
    RootCtl,
    /// The root `topics` file: every topic's status (see `listing`).
    RootTopics,
    /// A directory: a topic, or a path leading to topics.
    Dir(Arc<str>),
    /// A file of the topic named.
    File(Arc<str>, FileKind),
}

/// What an attach said, shared by every node walked from it.
#[derive(Debug)]
pub(super) struct Session {
    /// The reader group: the attach name, less its `:linux`, `:short` and
    /// `:batch` suffixes.
    pub(super) group: String,
    /// Whether the client is Linux (errors in its words on plain 9P2000).
    pub(super) linux: bool,
    /// Where its data reads get a 0-byte reply (`data`'s module comment).
    pub(super) zeros: Zeros,
    /// Whether a read takes every whole message available (`:batch`).
    pub(super) batch: bool,
    /// Who attached (the proven identity, else the attach's uname): the
    /// owner stat shows, and whom the access rules judge.
    pub(super) uname: String,
    /// The client's address, for the log of a denied or admin operation.
    pub(super) peer: String,
    /// The session's dialect: plain 9P2000 errors carry text only.
    pub(super) dialect: Dialect,
}

impl Session {
    /// An error as this session's client best understands it. Linux on
    /// plain 9P2000 (a `:linux` session) turns an error's text back into an
    /// errno through its table of strerror texts (net/9p/error.c), so it
    /// gets those; everyone else gets dchan's words.
    pub(super) fn error(&self, e: Error) -> Error {
        match linux_text(e.errno) {
            Some(text) if self.linux && self.dialect == Dialect::P2000 => Error::new(e.errno, text),
            _ => e,
        }
    }
}

/// A place in the tree, as one attach sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The place.
    pub(super) at: At,
    /// The attach it was walked from.
    pub(super) session: Arc<Session>,
    /// For a topic's directory or file, the identity of the topic it was
    /// walked to: once that topic is removed, the node is stale for good,
    /// like an open file (see `Handle::topic_id`), even if a topic of the
    /// same name is created.
    pub(super) topic_id: Option<TopicId>,
}

/// An open file.
pub struct Handle<D> {
    /// What was opened.
    pub(super) node: Node,
    /// For a topic's file, the identity of the topic it was opened on:
    /// once that topic is removed, the handle is stale for good, even if a
    /// topic of the same name is created (issue 14.7).
    pub(super) topic_id: Option<TopicId>,
    /// Its open state.
    pub(super) kind: HandleKind<D>,
}

impl<D> Handle<D> {
    /// The topic this handle's operations are for.
    pub(super) fn target<'a>(&self, topic: &'a str) -> Target<'a> {
        Target {
            name: topic,
            id: self.topic_id,
        }
    }
}

impl<D> std::fmt::Debug for Handle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            HandleKind::Dir => "dir",
            HandleKind::Text(..) => "text",
            HandleKind::Listing(_) => "listing",
            HandleKind::Data(_) => "data",
        };
        f.debug_struct("Handle")
            .field("node", &self.node)
            .field("kind", &kind)
            .finish()
    }
}

pub(super) enum HandleKind<D> {
    /// A directory: the engine reads it through `readdir`.
    Dir,
    /// A ctl or offset file: the text of the last read at offset 0, and
    /// (the root ctl) the cut last line its writes left (see
    /// `TopicTree::write_file`).
    Text(Mutex<Option<Bytes>>, Mutex<Vec<u8>>),
    /// The root `topics` file: where its reader is in the listing; an
    /// async mutex, as a read's statuses may be awaited (held across them).
    Listing(tokio::sync::Mutex<Listing>),
    Data(Box<DataFile<D>>),
}

/// An open data file.
pub(super) struct DataFile<D> {
    /// Whether a pull waits.
    pub(super) wait: Wait,
    /// Whether it was opened for reading (counted in the topic's readers),
    /// and the topic's number then.
    pub(super) reads: Option<u64>,
    /// Whether it was opened for writing.
    pub(super) writes: bool,
    /// The reading state; an async mutex so concurrent Treads on one open
    /// file take turns (held across the pull).
    pub(super) reader: tokio::sync::Mutex<Reader<D>>,
    /// The writing state; an async mutex so writes on one open file push in
    /// order (held across the pushes).
    pub(super) writer: tokio::sync::Mutex<Writer>,
}
