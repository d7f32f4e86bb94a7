//! A durable topic's store before its first write: nothing on disk but
//! its line in the catalog (`catalog`), and no open file. The first change
//! a restart must find (a message, a group, a setting) makes its directory
//! (`Journal::create`), and from then on the store is that journal.
//!
//! So making a topic costs one catalog line, and an idle topic neither an
//! inode nor a file descriptor; a topic that is used costs a directory,
//! two files and one open file, as before.

use std::sync::Arc;

use bytes::Bytes;

use super::Disk;
use super::journal::Journal;
use crate::broker::store::Store;
use crate::broker::{Error, Result, Seq, TopicConfig, TopicId};

/// A topic's store, its journal made at its first write. Small (32
/// bytes): an idle durable topic costs this beyond a memory topic; its
/// name and settings are its catalog line, read back when the journal is
/// made (a setting changed makes the journal first).
pub(crate) struct Lazy {
    id: TopicId,
    disk: Arc<Disk>,
    kept: Kept,
}

enum Kept {
    /// No journal yet: the topic's line is at this offset of the catalog.
    Idle(u64),
    Made(Box<Journal>),
    /// The topic is removed: nothing is made again.
    Removed,
}

impl Lazy {
    /// A topic whose catalog line is at `at`.
    pub(crate) fn new(id: TopicId, at: u64, disk: Arc<Disk>) -> Lazy {
        Lazy {
            id,
            disk,
            kept: Kept::Idle(at),
        }
    }

    /// A topic read back from its directory, its journal made.
    pub(crate) fn made(id: TopicId, disk: Arc<Disk>, journal: Journal) -> Lazy {
        Lazy {
            id,
            disk,
            kept: Kept::Made(Box::new(journal)),
        }
    }

    /// The journal, made now if the topic has none yet (an open file
    /// more: refused past `Disk::take_journal`'s limit).
    fn journal(&mut self) -> Result<&mut Journal> {
        if let Kept::Idle(at) = self.kept {
            let disk = &self.disk;
            let meta = disk.catalog().meta_at(at, self.id)?;
            disk.take_journal()?;
            let journal = Journal::create(
                disk.topics_dir.join(self.id.to_string()),
                &meta.name,
                &meta.config(),
                disk.keeping.clone(),
                &disk.catalog_sync,
            )
            .inspect_err(|_| disk.give_journal())?;
            disk.track(self.id, journal.syncer());
            self.kept = Kept::Made(Box::new(journal));
        }
        match &mut self.kept {
            Kept::Made(j) => Ok(j),
            Kept::Removed => Err(Error::Removed),
            Kept::Idle(_) => unreachable!("made above"),
        }
    }

    /// The journal, if the topic has one.
    fn made_journal(&mut self) -> Option<&mut Journal> {
        match &mut self.kept {
            Kept::Made(j) => Some(j),
            _ => None,
        }
    }
}

impl Store for Lazy {
    fn append(&mut self, seq: Seq, data: &Bytes) -> Result<()> {
        self.journal()?.append(seq, data)
    }

    fn ack(&mut self, group: &str, seq: Seq) {
        if let Some(j) = self.made_journal() {
            j.ack(group, seq);
        }
    }

    fn start_group(&mut self, group: &str, offset: Seq) {
        match self.journal() {
            Ok(j) => j.start_group(group, offset),
            // As a journal's own failed writes: the group is there, and a
            // restart does not find it (it starts again at the oldest
            // message, which an empty topic's group does anyway).
            Err(e) => tracing::warn!(topic_id = self.id, "{e}"),
        }
    }

    fn forget_group(&mut self, group: &str, first: Seq) {
        if let Some(j) = self.made_journal() {
            j.forget_group(group, first);
        }
    }

    fn reset(&mut self, next: Seq) {
        if let Some(j) = self.made_journal() {
            j.reset(next);
        }
    }

    fn settings(&mut self, config: &TopicConfig, closed: bool) {
        match self.journal() {
            Ok(j) => j.settings(config, closed),
            Err(e) => tracing::warn!(topic_id = self.id, "{e}"),
        }
    }

    fn trimmed(&mut self, first: Seq) {
        if let Some(j) = self.made_journal() {
            j.trimmed(first);
        }
    }

    fn before_delivery(&mut self) -> Result<()> {
        match self.made_journal() {
            Some(j) => j.before_delivery(),
            None => Ok(()),
        }
    }

    fn removed(&mut self) {
        if let Kept::Made(mut j) = std::mem::replace(&mut self.kept, Kept::Removed) {
            j.removed();
            drop(j);
            self.disk.give_journal();
        }
    }

    fn memory(&self) -> Option<u64> {
        Some(self.disk.keeping.memory)
    }

    fn read(&mut self, seq: Seq) -> Result<Bytes> {
        match self.made_journal() {
            Some(j) => j.read(seq),
            None => Err(Error::Storage {
                kind: std::io::ErrorKind::NotFound,
                reason: format!("message {seq}: the topic has written nothing"),
            }),
        }
    }

    fn bytes_from(&mut self, seq: Seq) -> Option<u64> {
        match self.made_journal() {
            Some(j) => j.bytes_from(seq),
            None => Some(0),
        }
    }
}
