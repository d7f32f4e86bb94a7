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

/// A topic's store, its journal made at its first write. Small: an idle
/// durable topic costs this beyond a memory topic.
pub(crate) struct Lazy {
    id: TopicId,
    name: Box<str>,
    config: TopicConfig,
    disk: Arc<Disk>,
    journal: Option<Box<Journal>>,
    /// The topic is removed: nothing is made again.
    removed: bool,
}

impl Lazy {
    pub(crate) fn new(id: TopicId, name: &str, config: TopicConfig, disk: Arc<Disk>) -> Lazy {
        Lazy {
            id,
            name: name.into(),
            config,
            disk,
            journal: None,
            removed: false,
        }
    }

    /// A topic read back from its directory, its journal made.
    pub(crate) fn made(
        id: TopicId,
        name: &str,
        config: TopicConfig,
        disk: Arc<Disk>,
        journal: Journal,
    ) -> Lazy {
        Lazy {
            journal: Some(Box::new(journal)),
            ..Lazy::new(id, name, config, disk)
        }
    }

    /// The journal, made now if the topic has none yet (an open file
    /// more: refused past `Disk::take_journal`'s limit).
    fn journal(&mut self) -> Result<&mut Journal> {
        if self.removed {
            return Err(Error::Removed);
        }
        if self.journal.is_none() {
            let disk = &self.disk;
            disk.take_journal()?;
            let journal = Journal::create(
                disk.topics_dir.join(self.id.to_string()),
                &self.name,
                &self.config,
                disk.keeping.clone(),
                &disk.catalog_sync,
            )
            .inspect_err(|_| disk.give_journal())?;
            disk.track(self.id, journal.syncer());
            self.journal = Some(Box::new(journal));
        }
        Ok(self.journal.as_mut().expect("just made"))
    }
}

impl Store for Lazy {
    fn append(&mut self, seq: Seq, data: &Bytes) -> Result<()> {
        self.journal()?.append(seq, data)
    }

    fn ack(&mut self, group: &str, seq: Seq) {
        if let Some(j) = &mut self.journal {
            j.ack(group, seq);
        }
    }

    fn start_group(&mut self, group: &str, offset: Seq) {
        match self.journal() {
            Ok(j) => j.start_group(group, offset),
            // As a journal's own failed writes: the group is there, and a
            // restart does not find it (it starts again at the oldest
            // message, which an empty topic's group does anyway).
            Err(e) => tracing::warn!(topic = %self.name, "{e}"),
        }
    }

    fn forget_group(&mut self, group: &str, first: Seq) {
        if let Some(j) = &mut self.journal {
            j.forget_group(group, first);
        }
    }

    fn reset(&mut self, next: Seq) {
        if let Some(j) = &mut self.journal {
            j.reset(next);
        }
    }

    fn settings(&mut self, config: &TopicConfig, closed: bool) {
        self.config = *config;
        match self.journal() {
            Ok(j) => j.settings(config, closed),
            Err(e) => tracing::warn!(topic = %self.name, "{e}"),
        }
    }

    fn trimmed(&mut self, first: Seq) {
        if let Some(j) = &mut self.journal {
            j.trimmed(first);
        }
    }

    fn before_delivery(&mut self) -> Result<()> {
        match &mut self.journal {
            Some(j) => j.before_delivery(),
            None => Ok(()),
        }
    }

    fn removed(&mut self) {
        self.removed = true;
        if let Some(mut j) = self.journal.take() {
            j.removed();
            drop(j);
            self.disk.give_journal();
        }
    }

    fn memory(&self) -> Option<u64> {
        Some(self.disk.keeping.memory)
    }

    fn read(&mut self, seq: Seq) -> Result<Bytes> {
        match &mut self.journal {
            Some(j) => j.read(seq),
            None => Err(Error::Storage {
                kind: std::io::ErrorKind::NotFound,
                reason: format!("message {seq}: the topic has written nothing"),
            }),
        }
    }

    fn bytes_from(&mut self, seq: Seq) -> Option<u64> {
        match &mut self.journal {
            Some(j) => j.bytes_from(seq),
            None => Some(0),
        }
    }
}
