//! The topic tree: every topic of a [`Broker`] shown as a directory of
//! files, served through [`FileTree`]. Knows files, not sockets or 9P
//! messages, and nothing of how the broker keeps its topics.
//!
//! ```text
//! /ctl            server status (read); "create NAME [opts]", "remove NAME" (write)
//! /topics         every topic's status, one line each (read; see `listing`)
//! /NAME/          one directory per topic; names nest (metrics/eu is /metrics/eu/)
//! /NAME/data      write: push; read: pull (see `data`)
//! /NAME/ctl       topic status (read); reset, close, settings, forget (write; see `ctl`)
//! /NAME/offset    the reader group's next sequence number (read), or a new one (write)
//! ```
//! A directory on the path to a topic that is not itself a topic is just a
//! directory. mkdir makes a topic with the server's defaults, rmdir removes
//! it; no other file can be made or removed (a create of an existing file,
//! as Plan 9's `>` does, opens it).
//!
//! The attach name is the reader group: `mount -o aname=workers`, `9pfuse
//! -a workers`; "" (no aname) is the default group. Sessions of 9P2000.L
//! and 9P2000.u read with the Linux read loop (see `data`); plain 9P2000
//! ones read a plain stream. A Linux mount with `version=9p2000` turns the
//! Linux read loop on with the suffix `:linux` on the attach name:
//! `-o version=9p2000,aname=workers:linux`, or `aname=:linux` for the
//! default group. (The attach name is the only thing a mount option can put
//! in front of the server per session, so the override lives there.)
//! The suffix `:short`, which dchan's own client adds, ends a message at a
//! reply shorter than its Tread and sends a 0-byte reply only after a
//! message that filled its last Tread (see `data`): one Tread per message
//! instead of the Linux loop's two. A Linux mount must not use it.
//! The suffix `:batch` (`aname=workers:batch`, combinable with the others in
//! any order) makes each read take every whole message available at
//! that moment, up to its count (see `data`); without it a read(2) gets
//! one message, so `head -n 1` takes exactly one.
//!
//! A kernel limit the server cannot see (Linux 6.8+, where 9P reads go
//! through netfs; 6.1 is not affected): stat says a data file is empty, but
//! every write through a mount grows that mount's idea of the file's size,
//! and a read(2) there retries a short read until its position reaches that
//! size. So on one mount, a reader that has not read everything written
//! through that mount since it opened (another reader shares the work, or
//! the writing began before it opened) has its read(2) run on into the
//! next messages. Readers and writers of a topic on one machine should use
//! two mounts (or `dchan push`).
//!
//! Construct it with [`TopicTree::new`]:
//! ```
//! # use std::sync::Arc;
//! # use dchan::broker::Broker;
//! # use dchan::tree::{TopicTree, TreeConfig};
//! # fn make<B: Broker>(broker: B) -> TopicTree<B> {
//! TopicTree::new(broker, TreeConfig::default(), || 0)
//! # }
//! ```

pub mod ctl;
mod data;
mod error;
mod listing;
mod node;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;

use crate::access::{Op, Rules};
use crate::broker::{self, Broker, Target, TopicConfig, Wait};
use crate::fs::{
    Access, Attach, Changes, Clunk, DirPos, Error, FileInfo, FileTree, OpenMode, ReadReq, Result,
    errno,
};
use crate::proto::{DMDIR, Dialect, QTDIR, QTFILE, Qid};
use ctl::{RootCmd, TopicCmd};
use data::{Budget, OverBudget, Reader, Step, TooLong, Writer, Zeros};
use error::{broker_error, invalid, not_found};
use node::{At, DataFile, FileKind, HandleKind, Places, Session};
pub use node::{Handle, Node};

/// What the tree needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Settings of topics made by mkdir, or by "create NAME" without options.
    pub defaults: TopicConfig,
    /// The most bytes held in partial lines by all open data files
    /// together (`[limits] max_unfinished_bytes`); no topic's `max_message`
    /// may be above it.
    pub max_unfinished_bytes: u64,
    /// Who may do what to which topic (`[access]`); no rules allow all.
    pub access: Arc<Rules>,
    /// The most topics at once (`[limits] max_topics`).
    pub max_topics: u64,
}

/// The default `max_unfinished_bytes`: 256 MiB, sixteen partial lines of
/// the default `max_message` (16 MiB) at once, and far below what a
/// server's host has.
pub const MAX_UNFINISHED_BYTES: u64 = 256 << 20;

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            defaults: TopicConfig::default(),
            max_unfinished_bytes: MAX_UNFINISHED_BYTES,
            access: Arc::new(Rules::open()),
            max_topics: u64::MAX,
        }
    }
}

/// The topic tree over a broker.
pub struct TopicTree<B: Broker> {
    /// Where the topics live.
    broker: Arc<B>,
    /// Defaults for new topics.
    config: TreeConfig,
    /// How many clients are connected, for the root ctl (the engine knows).
    connections: Box<dyn Fn() -> u64 + Send + Sync>,
    /// When the tree was made: the root ctl's uptime.
    started: Instant,
    /// The same moment in seconds since the epoch: the times stat shows.
    started_unix: u32,
    /// Qid paths and open readers of the places seen. A sync mutex, never
    /// held across an await.
    places: Mutex<Places>,
    /// Held by whatever makes or removes topics (a root ctl write, from
    /// its checks to its last command; a mkdir; an rmdir), so that a
    /// write's commands, checked whole, apply whole, and `max_topics`
    /// holds exactly, however many clients race. A Tokio mutex: held
    /// across the broker's awaits, and never on a message's path.
    admin: tokio::sync::Mutex<()>,
    /// Bytes held in partial lines by every open data file, and the most.
    budget: Arc<Budget>,
}

/// The root ctl's commands of a write, `cut` being the last line the
/// fid's writes before left unfinished. A client's mount cuts a write(2)
/// larger than its 9P writes into several (9pfuse at 4 KiB, Linux at its
/// msize): a write that has line breaks but does not end with one has its
/// last line cut, so that line waits in `cut` for the next write (or the
/// Tclunk) instead of running as a wrong command. A write with no line
/// break at all is one command, as on Plan 9 (`echo -n create x`).
fn whole_lines(cut: &mut Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mut text = std::mem::take(cut);
    text.extend_from_slice(data);
    if let Some(end) = text.iter().rposition(|&b| b == b'\n')
        && end + 1 < text.len()
    {
        *cut = text.split_off(end + 1);
    }
    text
}

/// Removes in one root ctl write after which the freed memory is handed
/// back to the system.
const GIVE_BACK_AFTER: usize = 1024;

/// The topics file's statuses asked of the broker at once: on JetStream
/// each is a few round trips to NATS, so a listing of many topics waits
/// for 32 at a time instead of one.
const LISTING_IN_FLIGHT: usize = 32;

/// Hand the allocator's free memory back to the system. glibc's malloc
/// keeps what many removed topics freed (about 0.9 KiB each) for reuse,
/// so a server that held a million topics would go on showing their RSS
/// after they are gone; `malloc_trim` returns the free pages. A few
/// milliseconds, after a write that removed many topics only.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn parent(path: &str) -> At {
    match path.rsplit_once('/') {
        Some((p, _)) => At::Dir(p.into()),
        None => At::Root,
    }
}

impl<B: Broker> TopicTree<B> {
    /// A tree over `broker`. New topics get `config.defaults`;
    /// `connections` tells the root ctl how many clients are connected
    /// (`|| 0` where nobody counts).
    pub fn new(
        broker: impl Into<Arc<B>>,
        config: TreeConfig,
        connections: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        TopicTree {
            broker: broker.into(),
            budget: Budget::new(config.max_unfinished_bytes),
            config,
            connections: Box::new(connections),
            started: Instant::now(),
            started_unix,
            places: Mutex::new(Places::default()),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    /// The broker behind the tree.
    pub fn broker(&self) -> &Arc<B> {
        &self.broker
    }

    /// Whether `path` is a topic: one map look-up, whatever its groups.
    fn is_topic(&self, path: &str) -> bool {
        self.broker.id(path).is_ok()
    }

    /// Whether `path` is a topic or leads to one: two look-ups, however
    /// many topics there are.
    fn dir_exists(&self, path: &str) -> bool {
        self.is_topic(path) || self.broker.leads_to(path)
    }

    fn qid(&self, at: &At) -> Qid {
        let (ty, path) = match at {
            At::Root => (QTDIR, 0),
            At::RootCtl => (QTFILE, 1),
            // Topics' paths are their identities (from 1) times 4.
            At::RootTopics => (QTFILE, 2),
            At::Dir(p) => (QTDIR, self.place(p)),
            At::File(p, k) => (QTFILE, self.place(p) + k.qid_offset()),
        };
        Qid {
            ty,
            version: 0,
            path,
        }
    }

    /// A directory's qid path (its files' are the next three). A topic's
    /// comes from its identity, so a topic created again under a removed
    /// one's name is a new file; a directory that only leads to topics
    /// gets a hash of its path, in the upper half. Nothing is stored, so
    /// nothing grows (issue 15.3).
    fn place(&self, path: &str) -> u64 {
        match self.broker.id(path) {
            Ok(id) => id * 4,
            Err(_) => node::path_qid(path),
        }
    }

    fn info(&self, node: &Node, at: At) -> FileInfo {
        let (name, mode) = match &at {
            At::Root => ("/".to_string(), DMDIR | 0o777),
            At::Dir(p) => (
                p.rsplit('/').next().unwrap_or("").to_string(),
                DMDIR | self.mode(node, p, None),
            ),
            At::RootCtl => ("ctl".to_string(), 0o666),
            At::RootTopics => ("topics".to_string(), 0o444),
            At::File(p, k) => (k.name().to_string(), self.mode(node, p, Some(*k))),
        };
        let owner = match node.session.uname.as_str() {
            "" => "dchan".to_string(),
            u => u.to_string(),
        };
        FileInfo {
            qid: self.qid(&at),
            mode,
            length: 0,
            name,
            uid: owner.clone(),
            gid: owner.clone(),
            muid: owner,
            atime: self.started_unix,
            mtime: self.started_unix,
        }
    }

    /// The permission bits of a topic's directory (`kind` None) or file
    /// for the node's user, so that `test -w` and `ls -l` tell the truth:
    /// the same bits for owner, group and others.
    fn mode(&self, node: &Node, topic: &str, kind: Option<FileKind>) -> u32 {
        if !self.config.access.enforced() {
            return if kind.is_some() { 0o666 } else { 0o777 };
        }
        let p = self.config.access.perms(&node.session.uname, topic);
        let (r, w) = match kind {
            None => (true, p.has(Op::Admin)),
            Some(FileKind::Data) => (p.has(Op::Read), p.has(Op::Write)),
            Some(FileKind::Offset) => (p.has(Op::Read), p.has(Op::Read)),
            Some(FileKind::Ctl) => (true, p.has(Op::Admin)),
        };
        let bits = (r as u32) * 4 + (w as u32) * 2 + (kind.is_none() as u32);
        bits * 0o111
    }

    /// Fail with "permission denied" (EACCES) unless the session's user
    /// may do `op` to `topic`; a refusal is logged with who, from where,
    /// what and on which topic. `what` names the operation for the log.
    fn check(&self, session: &Session, topic: &str, op: Op, what: &str) -> Result<()> {
        if self.config.access.allows(&session.uname, topic, op) {
            return Ok(());
        }
        // Names a client chose are logged as strings (quoted and escaped in
        // the text format) so a user name cannot forge a log line.
        tracing::warn!(
            user = session.uname.as_str(),
            peer = %session.peer,
            %topic,
            op = op.as_str(),
            what,
            "permission denied"
        );
        Err(Error::new(
            errno::EACCES,
            format!(
                "permission denied: {} may not {} topic {topic} ({what})",
                shown(&session.uname),
                op.as_str()
            ),
        ))
    }

    /// Log an admin action that succeeded: the audit trail.
    fn audit(&self, session: &Session, topic: &str, what: &str) {
        let user = session.uname.as_str();
        tracing::info!(user, peer = %session.peer, %topic, what, "admin");
    }

    /// Fail unless the node's place still exists.
    fn check_exists(&self, at: &At) -> Result<()> {
        let ok = match at {
            At::Root | At::RootCtl | At::RootTopics => true,
            At::Dir(p) => self.dir_exists(p),
            At::File(p, _) => self.is_topic(p),
        };
        if ok { Ok(()) } else { Err(not_found()) }
    }

    /// Fail with "topic removed" if the node was walked to a topic that has
    /// since been removed (a topic created again under its name is another).
    fn check_current(&self, node: &Node) -> Result<()> {
        let (Some(id), At::Dir(p) | At::File(p, _)) = (node.topic_id, &node.at) else {
            return Ok(());
        };
        match self.broker.id(p) {
            Ok(now) if now == id => Ok(()),
            _ => Err(broker_error(broker::Error::Removed)),
        }
    }

    /// The text a ctl or offset file reads now.
    async fn text(&self, handle: &Handle<B::Delivery>) -> Result<Bytes> {
        let node = &handle.node;
        let text = match &node.at {
            At::RootCtl => ctl::root_text(&ctl::RootStatus {
                uptime: self.started.elapsed(),
                connections: (self.connections)(),
                totals: self.broker.totals(),
            }),
            At::File(topic, FileKind::Ctl) => {
                let status = self
                    .broker
                    .status(handle.target(topic))
                    .await
                    .map_err(broker_error)?;
                let readers = self.places.lock().readers.get(&**topic).map_or(0, |r| r.1);
                ctl::topic_text(&status, readers)
            }
            At::File(topic, FileKind::Offset) => {
                let seq = self
                    .broker
                    .offset(handle.target(topic), &node.session.group)
                    .await
                    .map_err(broker_error)?;
                format!("{seq}\n")
            }
            _ => return Err(Error::new(errno::EISDIR, "is a directory")),
        };
        Ok(Bytes::from(text))
    }

    /// Refuse a `max_message` above the server's budget for partial
    /// lines: no line that long could be held.
    fn check_max_message(&self, max: u64) -> Result<()> {
        let budget = self.budget.max();
        if max > budget {
            return Err(invalid(format!(
                "max_message {max} is above the server's max_unfinished_bytes {budget}"
            )));
        }
        Ok(())
    }

    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        ctl::check_name(name).map_err(invalid)?;
        self.check_max_message(config.max_message)?;
        // Exact: the caller holds `admin`.
        let max = self.config.max_topics;
        let now = self.broker.totals().topics;
        if now >= max && !self.is_topic(name) {
            return Err(Error::new(
                errno::ENOSPC,
                format!(
                    "no space: the server holds {now} topics, its most (limits.max_topics {max})"
                ),
            ));
        }
        self.broker.create(name, config).await.map_err(broker_error)
    }

    async fn remove_topic(&self, name: &str) -> Result<()> {
        self.broker.remove(name).await.map_err(broker_error)?;
        self.places.lock().readers.remove(name);
        Ok(())
    }

    /// Run a root ctl write: check every command, then apply them; answer
    /// once what was applied is as safe as the engine promises.
    async fn root_ctl(&self, session: &Session, text: &[u8]) -> Result<()> {
        let applied = self.root_ctl_applied(session, text).await;
        // Out of `admin`: the next write's creates share this sync.
        self.broker.settle_topics().await.map_err(broker_error)?;
        applied
    }

    async fn root_ctl_applied(&self, session: &Session, text: &[u8]) -> Result<()> {
        let cmds = ctl::parse_root(text).map_err(invalid)?;
        let _admin = self.admin.lock().await;
        for cmd in &cmds {
            match cmd {
                RootCmd::Create { name, .. } => self.check(session, name, Op::Admin, "create")?,
                RootCmd::Remove(name) => self.check(session, name, Op::Admin, "remove")?,
            }
        }
        // Whether each name the write touches exists once the commands
        // before have run: one look-up per command, not a listing.
        let mut exists: HashMap<String, bool> = HashMap::new();
        let mut flip = |name: &str, to: bool| -> bool {
            let now = exists.get(name).copied();
            let now = now.unwrap_or_else(|| self.is_topic(name));
            exists.insert(name.to_string(), to);
            now != to
        };
        // The most topics there are at any point of the write: checked
        // against max_topics here, so a batch past it makes nothing.
        let (now, mut delta, mut peak) = (self.broker.totals().topics, 0i64, 0i64);
        for cmd in &cmds {
            match cmd {
                RootCmd::Create { name, .. } if !flip(name, true) => {
                    return Err(Error::new(
                        errno::EEXIST,
                        format!("create {name}: topic exists"),
                    ));
                }
                RootCmd::Create {
                    max_message: Some(max),
                    ..
                } => self.check_max_message(*max)?,
                RootCmd::Remove(name) if !flip(name, false) => {
                    return Err(Error::new(
                        errno::ENOENT,
                        format!("remove {name}: no such topic"),
                    ));
                }
                _ => {}
            }
            delta += match cmd {
                RootCmd::Create { .. } => 1,
                RootCmd::Remove(_) => -1,
            };
            peak = peak.max(delta);
        }
        let max = self.config.max_topics;
        if peak > 0 && now.saturating_add(peak as u64) > max {
            return Err(Error::new(
                errno::ENOSPC,
                format!(
                    "no space: the server holds {now} topics and this write would make {peak} more (limits.max_topics {max}); nothing was made"
                ),
            ));
        }
        let mut removed = 0;
        for cmd in cmds {
            match cmd {
                RootCmd::Create {
                    name,
                    capacity,
                    framing,
                    timeout,
                    max_message,
                    retain,
                    max_bytes,
                    rate,
                } => {
                    let d = self.config.defaults;
                    let config = ctl::create_config(
                        d,
                        capacity,
                        framing,
                        timeout,
                        max_message,
                        retain,
                        max_bytes,
                        rate,
                    );
                    self.create_topic(&name, config).await?;
                    self.audit(session, &name, "create");
                }
                RootCmd::Remove(name) => {
                    self.remove_topic(&name).await?;
                    self.audit(session, &name, "remove");
                    removed += 1;
                }
            }
        }
        if removed >= GIVE_BACK_AFTER {
            give_back_memory();
        }
        Ok(())
    }

    /// Run a topic ctl write: check every command, then apply them.
    async fn topic_ctl(&self, session: &Session, topic: Target<'_>, text: &[u8]) -> Result<()> {
        let cmds = ctl::parse_topic(text).map_err(invalid)?;
        let status = self.broker.status(topic).await.map_err(broker_error)?;
        for cmd in &cmds {
            if let TopicCmd::Set(broker::Setting::MaxMessage(max)) = cmd {
                self.check_max_message(*max)?;
            }
            if let TopicCmd::Forget(group) = cmd
                && !status.groups.iter().any(|g| &g.name == group)
            {
                return Err(Error::new(
                    errno::ENOENT,
                    format!("forget: no such group {group:?}"),
                ));
            }
        }
        for cmd in cmds {
            match cmd {
                TopicCmd::Reset => self.broker.reset(topic).await,
                TopicCmd::Close => self.broker.close(topic).await,
                TopicCmd::Set(s) => self.broker.set(topic, s).await,
                TopicCmd::Forget(group) => self.broker.forget(topic, &group).await,
            }
            .map_err(broker_error)?;
        }
        self.audit(session, topic.name, String::from_utf8_lossy(text).trim());
        Ok(())
    }

    /// Open an existing file.
    async fn open_file(&self, node: &Node, mode: OpenMode) -> Result<Handle<B::Delivery>> {
        self.check_current(node)?;
        self.check_exists(&node.at)?;
        if let At::File(topic, kind) = &node.at {
            let s = &node.session;
            match kind {
                FileKind::Data if mode.reads() => self.check(s, topic, Op::Read, "pull")?,
                FileKind::Offset => self.check(s, topic, Op::Read, "offset")?,
                FileKind::Ctl if mode.writes() => self.check(s, topic, Op::Admin, "ctl")?,
                _ => {}
            }
            if *kind == FileKind::Data && mode.writes() {
                self.check(s, topic, Op::Write, "push")?;
            }
        }
        // A topic's file belongs to the topic it was opened on (issue 14.7).
        let topic_id = match &node.at {
            At::File(topic, _) => Some(self.broker.id(topic).map_err(|_| not_found())?),
            _ => None,
        };
        let kind = match &node.at {
            At::Root | At::Dir(_) => {
                if mode.writes() {
                    return Err(Error::new(errno::EISDIR, "is a directory"));
                }
                HandleKind::Dir
            }
            At::RootCtl | At::File(_, FileKind::Ctl | FileKind::Offset) => {
                HandleKind::Text(Mutex::new(None), Mutex::new(Vec::new()))
            }
            At::RootTopics => {
                if mode.writes() {
                    return Err(Error::new(
                        errno::EACCES,
                        "permission denied: the topics file is for reading; commands go to the root ctl",
                    ));
                }
                HandleKind::Listing(Default::default())
            }
            At::File(topic, FileKind::Data) => {
                let target = Target {
                    name: topic,
                    id: topic_id,
                };
                let status = self.broker.status(target).await.map_err(broker_error)?;
                let reads = mode.reads().then(|| {
                    let mut places = self.places.lock();
                    let id = topic_id.unwrap_or_default();
                    let entry = places.readers.entry(topic.to_string()).or_insert((id, 0));
                    if entry.0 != id {
                        *entry = (id, 0);
                    }
                    entry.1 += 1;
                    id
                });
                HandleKind::Data(Box::new(DataFile {
                    wait: if mode.nonblock {
                        Wait::NonBlock
                    } else {
                        Wait::Block
                    },
                    reads,
                    writes: mode.writes(),
                    reader: tokio::sync::Mutex::new(Reader::new(
                        node.session.zeros,
                        mode.nonblock,
                        node.session.batch,
                    )),
                    writer: tokio::sync::Mutex::new(Writer::with_budget(
                        status.config.framing,
                        status.config.max_message,
                        self.budget.clone(),
                    )),
                }))
            }
        };
        Ok(Handle {
            node: node.clone(),
            topic_id,
            kind,
        })
    }

    async fn read_data(
        &self,
        topic: Target<'_>,
        group: &str,
        f: &DataFile<B::Delivery>,
        req: ReadReq,
    ) -> Result<Bytes> {
        if req.overlaps {
            return Err(Error::new(
                errno::EBUSY,
                "busy: one read at a time per open data file, and another has not been answered",
            ));
        }
        let mut reader = f.reader.lock().await;
        match reader.begin(req) {
            Step::Reply(b) => Ok(b),
            Step::Pull => match self.broker.pull_from(topic, group, f.wait).await {
                // A batch's further pulls never wait, and are done with
                // no await between them and the reader's record of them:
                // a flush can drop this read only before its first pull.
                Ok(Some(d)) => Ok(reader.pulled(d, req, |accept| {
                    self.broker.pull_ready_while(topic, group, accept)
                })),
                Ok(None) => Ok(Bytes::new()),
                Err(e) => Err(broker_error(e)),
            },
        }
    }

    /// Push what a write makes; the count of bytes taken.
    async fn write_data(
        &self,
        topic: Target<'_>,
        f: &DataFile<B::Delivery>,
        data: Bytes,
    ) -> Result<u32> {
        if !f.writes {
            return Err(Error::new(errno::EBADF, "file not open for writing"));
        }
        let (taken, stored) = self.push_data(topic, f, data).await?;
        // Stored and durable before it is answered (see
        // `Broker::push_ordered` and `Broker::settle`), the file's next
        // write already under way.
        if let Some(stored) = stored
            && let Some(short) = stored.await?
        {
            return Ok(short);
        }
        self.broker.settle(topic).await.map_err(broker_error)?;
        Ok(taken)
    }

    /// Push what a write makes, in order with the file's other writes:
    /// the count of bytes taken, and what is left to wait for once the
    /// file's next write may go (the pushes not yet confirmed, see
    /// `Broker::push_ordered`): it resolves to a short count if one of
    /// them failed after some went out.
    async fn push_data(
        &self,
        topic: Target<'_>,
        f: &DataFile<B::Delivery>,
        data: Bytes,
    ) -> Result<(
        u32,
        Option<impl Future<Output = Result<Option<u32>>> + use<B>>,
    )> {
        let n = data.len() as u32;
        let mut writer = f.writer.lock().await;
        if std::mem::take(&mut writer.reset_due) {
            return Err(broker_error(broker::Error::Reset));
        }
        let cut = match writer.cut(data) {
            Ok(cut) => cut,
            Err(TooLong(size)) => {
                writer.discard();
                let max = writer.max;
                return Err(broker_error(broker::Error::TooLong { size, max }));
            }
        };
        if let Err(OverBudget) = writer.reserve(&cut) {
            writer.discard();
            return Err(Error::new(
                errno::ENOBUFS,
                "no buffer space: partial lines held by open data files are at the server's limit (limits.max_unfinished_bytes); this file's partial line is dropped, nothing of this write was pushed",
            ));
        }
        let all = self.broker.push_all(topic, &cut.messages, f.wait).await;
        if all.pushed > 0 {
            writer.pushed();
            writer.commit_first(&cut);
        }
        match all.error {
            None => {}
            // A non-blocking write refused whole, again and again in
            // quick succession: a kernel retrying it (Linux 6.12 does
            // for ever, unkillable); EBUSY ends that (see `data`).
            Some(broker::Error::WouldBlock)
                if all.pushed == 0 && writer.refused(tokio::time::Instant::now()) =>
            {
                return Err(Error::new(
                    errno::EBUSY,
                    "busy: no reader took this non-blocking write's message in many tries in a row; nothing was pushed",
                ));
            }
            // Some lines went out: say so with a short count, whatever
            // stopped the rest (a full disk too), so that a writer that
            // tries the rest again doubles nothing (it then gets the
            // error itself) and counts exactly what went out. A reset
            // after some lines went out gives their count too, and the
            // file's next write fails with the reset (a retry would
            // otherwise succeed on the reopened topic, and its writer
            // never learn of the reset); a reset at the first line
            // fails the write.
            Some(e) if all.pushed > 0 => {
                writer.reset_due = matches!(e, broker::Error::Reset);
                return Ok((cut.ends[all.pushed - 1] as u32, None));
            }
            Some(e) => return Err(broker_error(e)),
        }
        // The pushes on their way, with the bytes of the lines before each.
        let pending: Vec<_> = (all.pending.into_iter())
            .map(|(i, p)| (i.checked_sub(1).map(|j| cut.ends[j] as u32), p))
            .collect();
        writer.commit(cut);
        if pending.is_empty() {
            return Ok((n, None));
        }
        // The first that fails decides: the lines before it went out.
        Ok((
            n,
            Some(async move {
                for (before, p) in pending {
                    if let Err(e) = p.await {
                        return match before {
                            Some(b) => Ok(Some(b)),
                            None => Err(broker_error(e)),
                        };
                    }
                }
                Ok(None)
            }),
        ))
    }
}

impl<B: Broker> TopicTree<B> {
    fn walk_node(&self, dir: &Node, name: &str) -> Result<Node> {
        self.check_current(dir)?;
        let at = match (&dir.at, name) {
            (At::Root, "..") => At::Root,
            (At::Dir(p), "..") => parent(p),
            (At::Root, "ctl") => At::RootCtl,
            (At::Root, "topics") => At::RootTopics,
            (At::Root, _) => At::Dir(name.into()),
            (At::Dir(p), _) => match FileKind::from_name(name) {
                Some(k) => At::File(p.clone(), k),
                None => At::Dir(format!("{p}/{name}").into()),
            },
            (At::RootCtl | At::RootTopics | At::File(..), _) => {
                return Err(Error::new(errno::ENOTDIR, "not a directory"));
            }
        };
        if matches!(at, At::Dir(_)) && name != ".." && ctl::check_component(name).is_err() {
            return Err(not_found());
        }
        self.check_exists(&at)?;
        // A topic's file is of the topic its directory was walked to; a
        // directory is of the topic named so now (if any).
        let topic_id = match &at {
            At::File(p, _) => dir.topic_id.or_else(|| self.broker.id(p).ok()),
            At::Dir(p) => self.broker.id(p).ok(),
            At::Root | At::RootCtl | At::RootTopics => None,
        };
        Ok(Node {
            at,
            session: dir.session.clone(),
            topic_id,
        })
    }

    fn stat_node(&self, node: &Node) -> Result<FileInfo> {
        self.check_current(node)?;
        self.check_exists(&node.at)?;
        Ok(self.info(node, node.at.clone()))
    }

    fn readdir_node(&self, dir: &Node) -> Result<Vec<FileInfo>> {
        let (mut entries, mut next) = self.readdir_page_node(dir, None, usize::MAX)?;
        while let Some(from) = next {
            let (more, after) = self.readdir_page_node(dir, Some(&from), usize::MAX)?;
            entries.extend(more);
            next = after;
        }
        Ok(entries)
    }

    /// A page of a directory's entries: its files first (the root's
    /// `ctl` and `topics`, a topic's `ctl`, `data` and `offset`), then up
    /// to `limit` names one level down that lead to topics (see
    /// [`Broker::children`]). A position is `f` (the files) or the broker's
    /// position in its names: `i` or `x` (from that name, included or not)
    /// and the name.
    fn readdir_page_node(
        &self,
        dir: &Node,
        from: Option<&DirPos>,
        limit: usize,
    ) -> Result<(Vec<FileInfo>, Option<DirPos>)> {
        let path = match &dir.at {
            At::Root => "",
            At::Dir(p) => p,
            _ => return Err(Error::new(errno::ENOTDIR, "not a directory")),
        };
        self.check_current(dir)?;
        self.check_exists(&dir.at)?;
        let (files, bound) = match from.map(String::as_str) {
            None | Some("f") => (true, Bound::Unbounded),
            Some(p) => match p.split_at_checked(1) {
                Some(("i", name)) => (false, Bound::Included(name.to_string())),
                Some(("x", name)) => (false, Bound::Excluded(name.to_string())),
                _ => return Err(invalid(format!("no such place in a listing: {p:?}"))),
            },
        };
        let mut entries = Vec::new();
        if files && path.is_empty() {
            entries.push(self.info(dir, At::RootCtl));
            entries.push(self.info(dir, At::RootTopics));
        } else if files && self.is_topic(path) {
            for k in [FileKind::Ctl, FileKind::Data, FileKind::Offset] {
                entries.push(self.info(dir, At::File(path.into(), k)));
            }
        }
        let (names, next) = self.broker.children(path, bound, limit);
        for name in names {
            let child = match path {
                "" => name,
                _ => format!("{path}/{name}"),
            };
            entries.push(self.info(dir, At::Dir(child.into())));
        }
        let next = next.map(|b| match b {
            Bound::Included(n) => format!("i{n}"),
            Bound::Excluded(n) => format!("x{n}"),
            Bound::Unbounded => "f".to_string(),
        });
        Ok((entries, next))
    }

    async fn create_in(
        &self,
        dir: &Node,
        name: &str,
        perm: u32,
        mode: OpenMode,
    ) -> Result<(Node, Handle<B::Delivery>)> {
        let path = match &dir.at {
            At::Root => name.to_string(),
            At::Dir(p) => format!("{p}/{name}"),
            _ => return Err(Error::new(errno::ENOTDIR, "not a directory")),
        };
        self.check_current(dir)?;
        if perm & DMDIR == 0 {
            // Plan 9's `>` creates a file that exists: open it.
            if let Ok(node) = self.walk_node(dir, name)
                && !matches!(node.at, At::Dir(_))
            {
                let handle = self.open_file(&node, mode).await?;
                return Ok((node, handle));
            }
            return Err(Error::new(
                errno::EPERM,
                "cannot create a file: mkdir makes a topic, whose files are data, ctl and offset",
            ));
        }
        self.check_exists(&dir.at)?;
        self.check(&dir.session, &path, Op::Admin, "mkdir")?;
        {
            let _admin = self.admin.lock().await;
            self.create_topic(&path, self.config.defaults).await?;
        }
        self.broker.settle_topics().await.map_err(broker_error)?;
        self.audit(&dir.session, &path, "mkdir");
        let node = Node {
            topic_id: self.broker.id(&path).ok(),
            at: At::Dir(path.into()),
            session: dir.session.clone(),
        };
        let handle = self
            .open_file(
                &node,
                OpenMode {
                    access: Access::Read,
                    ..mode
                },
            )
            .await?;
        Ok((node, handle))
    }

    async fn read_file(&self, handle: &Handle<B::Delivery>, req: ReadReq) -> Result<Bytes> {
        match &handle.kind {
            HandleKind::Dir => Err(Error::new(errno::EISDIR, "is a directory")),
            HandleKind::Text(snapshot, _) => {
                // The text is made afresh at offset 0 (the lock is not
                // held while the broker is asked).
                let kept = snapshot.lock().clone().filter(|_| req.offset != 0);
                let text = match kept {
                    Some(text) => text,
                    None => {
                        let text = self.text(handle).await?;
                        *snapshot.lock() = Some(text.clone());
                        text
                    }
                };
                let start = (req.offset as usize).min(text.len());
                let end = text.len().min(start + req.count as usize);
                Ok(text.slice(start..end))
            }
            HandleKind::Listing(listing) => {
                let mut listing = listing.lock().await;
                listing.seek(req.offset)?;
                while let Some(names) = listing.more(&*self.broker, req.count) {
                    // Several statuses asked at once, kept in order: on
                    // JetStream each is a few round trips to NATS.
                    let mut asked = names.iter();
                    let mut statuses = futures_util::stream::FuturesOrdered::new();
                    for name in asked.by_ref().take(LISTING_IN_FLIGHT) {
                        statuses.push_back(self.broker.status(name.into()));
                    }
                    for name in &names {
                        let status = statuses.next().await.expect("one status per name");
                        if let Some(next) = asked.next() {
                            statuses.push_back(self.broker.status(next.into()));
                        }
                        // A topic removed since it was listed is left out;
                        // any other failure (a broker out of reach) fails
                        // the read, rather than wait it out for each topic.
                        let status = match status {
                            Ok(status) => status,
                            Err(broker::Error::NoTopic(_) | broker::Error::Removed) => continue,
                            Err(e) => return Err(broker_error(e)),
                        };
                        let readers = self.places.lock().readers.get(&**name).map_or(0, |r| r.1);
                        listing.add(&status, readers);
                    }
                }
                Ok(listing.take(req.count))
            }
            HandleKind::Data(f) => {
                let At::File(topic, _) = &handle.node.at else {
                    return Err(not_found());
                };
                if f.reads.is_none() {
                    return Err(Error::new(errno::EBADF, "file not open for reading"));
                }
                self.read_data(handle.target(topic), &handle.node.session.group, f, req)
                    .await
            }
        }
    }

    async fn write_file(&self, handle: &Handle<B::Delivery>, data: Bytes) -> Result<u32> {
        let n = data.len() as u32;
        match (&handle.kind, &handle.node.at) {
            (HandleKind::Text(_, cut), At::RootCtl) => {
                let text = whole_lines(&mut cut.lock(), &data);
                if !text.is_empty() {
                    self.root_ctl(&handle.node.session, &text).await?
                }
            }
            (HandleKind::Text(..), At::File(topic, FileKind::Ctl)) => {
                self.topic_ctl(&handle.node.session, handle.target(topic), &data)
                    .await?
            }
            (HandleKind::Text(..), At::File(topic, FileKind::Offset)) => {
                let seq = ctl::parse_offset(&data).map_err(invalid)?;
                self.broker
                    .seek(handle.target(topic), &handle.node.session.group, seq)
                    .await
                    .map_err(broker_error)?
            }
            (HandleKind::Data(f), At::File(topic, _)) => {
                return self.write_data(handle.target(topic), f, data).await;
            }
            _ => return Err(Error::new(errno::EISDIR, "is a directory")),
        }
        Ok(n)
    }

    fn wstat_node(&self, node: &Node, changes: Changes) -> Result<()> {
        self.check_current(node)?;
        self.check_exists(&node.at)?;
        let is_dir = matches!(node.at, At::Root | At::Dir(_));
        match changes.length {
            Some(_) if is_dir => return Err(Error::new(errno::EISDIR, "is a directory")),
            Some(0) | None => {}
            Some(_) => return Err(invalid("only truncation to 0 is allowed".into())),
        }
        if changes.name.is_some() {
            return Err(Error::new(errno::EPERM, "cannot rename in dchan"));
        }
        if changes.mode.is_some() || changes.uid.is_some() || changes.gid.is_some() {
            return Err(Error::new(
                errno::EPERM,
                "cannot change mode or owner in dchan",
            ));
        }
        // Times and truncation: accepted, nothing to do.
        Ok(())
    }

    async fn remove_node(&self, node: &Node) -> Result<()> {
        self.check_current(node)?;
        match &node.at {
            At::Dir(p) if self.is_topic(p) => {
                self.check(&node.session, p, Op::Admin, "rmdir")?;
                let _admin = self.admin.lock().await;
                // As rmdir(2): a directory that holds more is not removed
                // (`remove NAME` in the root ctl removes the topic alone).
                if self.broker.leads_to(p) {
                    return Err(Error::new(
                        errno::ENOTEMPTY,
                        "not empty: it holds topics (`remove NAME` in /ctl removes the topic alone)",
                    ));
                }
                self.remove_topic(p).await?;
                drop(_admin);
                self.broker.settle_topics().await.map_err(broker_error)?;
                self.audit(&node.session, p, "rmdir");
                Ok(())
            }
            At::Dir(p) if self.dir_exists(p) => {
                Err(Error::new(errno::ENOTEMPTY, "not empty: it holds topics"))
            }
            At::Dir(_) => Err(not_found()),
            At::Root => Err(Error::new(errno::EPERM, "cannot remove the root")),
            At::RootCtl | At::RootTopics | At::File(..) => Err(Error::new(
                errno::EPERM,
                "cannot remove a file: rmdir removes a topic",
            )),
        }
    }
}

/// A name a client chose, for an error reply: as it is when it is plain
/// text, quoted with escapes when it holds spaces, quotes or control
/// characters (no raw newline or NUL goes back to the client or a log).
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '"')
    {
        format!("{name:?}").into()
    } else {
        name.into()
    }
}

/// The attach name's group and the session's options: its suffixes
/// `:linux` (the Linux read loop on plain 9P2000; always on for .u and .L),
/// `:short` (zeros only after a filled end, over the Linux loop) and
/// `:batch` (reads take batches), in any order.
fn session_options(aname: &str, dialect: Dialect) -> (&str, bool, Zeros, bool) {
    let (mut group, mut linux, mut short, mut batch) =
        (aname, dialect != Dialect::P2000, false, false);
    loop {
        if let Some(g) = group.strip_suffix(":linux") {
            (group, linux) = (g, true);
        } else if let Some(g) = group.strip_suffix(":short") {
            (group, short) = (g, true);
        } else if let Some(g) = group.strip_suffix(":batch") {
            (group, batch) = (g, true);
        } else {
            let zeros = match (short, linux) {
                (true, _) => Zeros::AfterFull,
                (false, true) => Zeros::LinuxLoop,
                (false, false) => Zeros::Never,
            };
            return (group, linux, zeros, batch);
        }
    }
}

impl<B: Broker> FileTree for TopicTree<B> {
    type Node = Node;
    type Handle = Handle<B::Delivery>;

    fn attach(&self, who: &Attach) -> Result<Node> {
        let (group, linux, zeros, batch) = session_options(&who.aname, who.dialect);
        // The group is made by its first read: refuse a name no `forget`
        // line could name, or that would swell every status read.
        ctl::check_group(group).map_err(invalid)?;
        Ok(Node {
            at: At::Root,
            topic_id: None,
            session: Arc::new(Session {
                group: group.to_string(),
                linux,
                zeros,
                batch,
                uname: who.user().to_string(),
                peer: who.peer.clone(),
                dialect: who.dialect,
            }),
        })
    }

    fn walk(&self, dir: &Node, name: &str) -> Result<Node> {
        self.walk_node(dir, name).map_err(|e| dir.session.error(e))
    }

    /// A topic made through another server, which this one's view may not
    /// have yet: the broker asks for it (`Broker::refresh`).
    fn recheck(
        &self,
        dir: &Node,
        name: &str,
    ) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let path = match (&dir.at, name) {
            (_, "..") => return None,
            (At::Root, _) => name.to_string(),
            (At::Dir(p), _) if FileKind::from_name(name).is_none() => format!("{p}/{name}"),
            _ => return None,
        };
        if ctl::check_component(name).is_err() || self.broker.id(&path).is_ok() {
            return None;
        }
        self.broker.refresh(&path)
    }

    fn stat(&self, node: &Node) -> Result<FileInfo> {
        self.stat_node(node).map_err(|e| node.session.error(e))
    }

    fn readdir(&self, dir: &Node) -> Result<Vec<FileInfo>> {
        self.readdir_node(dir).map_err(|e| dir.session.error(e))
    }

    fn readdir_page(
        &self,
        dir: &Node,
        from: Option<&DirPos>,
        limit: usize,
    ) -> Result<(Vec<FileInfo>, Option<DirPos>)> {
        self.readdir_page_node(dir, from, limit)
            .map_err(|e| dir.session.error(e))
    }

    async fn open(&self, node: &Node, mode: OpenMode) -> Result<Self::Handle> {
        self.open_file(node, mode)
            .await
            .map_err(|e| node.session.error(e))
    }

    async fn create(
        &self,
        dir: &Node,
        name: &str,
        perm: u32,
        mode: OpenMode,
    ) -> Result<(Node, Self::Handle)> {
        self.create_in(dir, name, perm, mode)
            .await
            .map_err(|e| dir.session.error(e))
    }

    async fn read(&self, handle: &Self::Handle, req: ReadReq) -> Result<Bytes> {
        let r = self.read_file(handle, req).await;
        r.map_err(|e| handle.node.session.error(e))
    }

    /// The offset is ignored: data is a stream, ctl and offset take whole
    /// commands.
    async fn write(&self, handle: &Self::Handle, _offset: u64, data: Bytes) -> Result<u32> {
        let r = self.write_file(handle, data).await;
        r.map_err(|e| handle.node.session.error(e))
    }

    async fn wstat(&self, node: &Node, changes: Changes) -> Result<()> {
        self.wstat_node(node, changes)
            .map_err(|e| node.session.error(e))
    }

    async fn remove(&self, node: &Node) -> Result<()> {
        self.remove_node(node)
            .await
            .map_err(|e| node.session.error(e))
    }

    /// A data file with a partial line left by its writes.
    fn unfinished(&self, handle: &Self::Handle) -> bool {
        match &handle.kind {
            HandleKind::Data(f) => f.writer.try_lock().map_or(true, |w| w.has_partial()),
            HandleKind::Text(_, cut) => !cut.lock().is_empty(),
            _ => false,
        }
    }

    /// The partial line a data file's writes left is pushed as one message,
    /// as a write would push it: the Tclunk waits like a write and fails as
    /// a write fails (a message too long for the topic, a timeout, EAGAIN
    /// under O_NONBLOCK, a closed topic).
    async fn close(&self, handle: &Self::Handle) -> Result<()> {
        if let HandleKind::Text(_, cut) = &handle.kind {
            // The root ctl's last line, cut and never finished: run as a
            // write would run it.
            let line = std::mem::take(&mut *cut.lock());
            if line.is_empty() {
                return Ok(());
            }
            let r = self.root_ctl(&handle.node.session, &line).await;
            return r.map_err(|e| handle.node.session.error(e));
        }
        let (HandleKind::Data(f), At::File(topic, _)) = (&handle.kind, &handle.node.at) else {
            return Ok(());
        };
        let Some(line) = f.writer.lock().await.take_partial() else {
            return Ok(());
        };
        let r = self
            .broker
            .push_to(handle.target(topic), line, f.wait)
            .await;
        r.map(drop)
            .map_err(|e| handle.node.session.error(broker_error(e)))
    }

    /// A data file's message in hand is acked (`Clunk::Client`) or goes
    /// back to its group (`Clunk::Lost`). A partial line still held (the
    /// connection was lost, or the Tclunk's close was cancelled) is dropped:
    /// no writer learned that it went out.
    fn clunk(&self, node: &Node, handle: Option<Self::Handle>, how: Clunk) {
        let Some(Handle {
            kind: HandleKind::Data(f),
            ..
        }) = handle
        else {
            return;
        };
        let At::File(topic, _) = &node.at else {
            return;
        };
        f.reader.into_inner().finish(how == Clunk::Client);
        if let Some(id) = f.reads {
            let mut places = self.places.lock();
            if let Some(entry) = places.readers.get_mut(&**topic)
                && entry.0 == id
            {
                entry.1 = entry.1.saturating_sub(1);
            }
        }
        if f.writer.into_inner().has_partial() {
            tracing::debug!(%topic, "partial line left at clunk dropped");
        }
    }
}

#[cfg(test)]
mod tests;
