//! What a topic tells the engine that keeps it somewhere (a disk): the
//! changes a restart must find again, each told under the topic's lock, in
//! the order they happen.
//!
//! The memory engine has no store; the durable engine (`durable`) writes
//! each change to the topic's log. Only `append` can refuse (a message the
//! store cannot keep is not taken); the others record what already
//! happened; a store that fails to keep one holds it and says so at the
//! group's next delivery (`before_delivery`), which then fails: a reader
//! never reads on past acks the store does not have.
//!
//! A store that keeps the messages themselves also lets the topic hold
//! more than memory: past `memory` bytes the topic lets its oldest
//! messages go from memory (`Log::spill`) and asks `read` for them when a
//! reader gets there.

use bytes::Bytes;

use super::{Result, Seq, TopicConfig};

/// A topic's keeper.
pub(crate) trait Store: Send {
    /// Keep message `seq` (the next in the log) before it is taken.
    fn append(&mut self, seq: Seq, data: &Bytes) -> Result<()>;
    /// `group` acknowledged `seq`.
    fn ack(&mut self, group: &str, seq: Seq);
    /// `group` (new, or starting over) reads next at `offset`.
    fn start_group(&mut self, group: &str, offset: Seq);
    /// `group` is gone; the log's first held message is `first`.
    fn forget_group(&mut self, group: &str, first: Seq);
    /// Every message is dropped and every group goes on from `next`.
    fn reset(&mut self, next: Seq);
    /// The topic's settings, or its closed flag, changed.
    fn settings(&mut self, config: &TopicConfig, closed: bool);
    /// The messages before `first` are dropped.
    fn trimmed(&mut self, first: Seq);
    /// A message is about to be handed to a reader: what the store holds
    /// back (acks) must be kept first, so that a reader never sees a
    /// message before the acks that preceded it are kept. An error fails
    /// the pull (nothing is taken): acks not kept are never read past.
    fn before_delivery(&mut self) -> Result<()>;
    /// The topic is removed.
    fn removed(&mut self);
    /// How many bytes of messages the topic keeps in memory at most,
    /// beyond those readers have out (`None`: all it holds).
    fn memory(&self) -> Option<u64>;
    /// Held message `seq`, which the topic no longer has in memory, read
    /// back. Called under the topic's lock: it must be quick (a read of
    /// a few hundred KiB at most, cached ahead for the next ones).
    fn read(&mut self, seq: Seq) -> Result<Bytes>;
    /// The payload bytes of the held messages from `seq` on, if the store
    /// can tell without reading each of them back (`None`: count them).
    fn bytes_from(&mut self, seq: Seq) -> Option<u64> {
        let _ = seq;
        None
    }
}
