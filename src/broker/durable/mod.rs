//! The durable engine: topics kept in a directory, so that a restart finds
//! every topic, its settings, its messages and each group's place.
//!
//! It is the memory engine (`memory`, `topic`: the same rules, the same
//! waiting, the same deliveries) with a `Store` under each topic that
//! writes every change to the topic's log (`journal`) before it is
//! answered. Reading back at start is `recover`; the record format is
//! `record`; when the log reaches the disk is `sync`.
//!
//! What each sync mode can lose is in `sync`. A process crash loses
//! nothing answered in any mode; messages delivered and not acked at the
//! crash are delivered again.
//!
//! With `sync = "always"`, `Broker::settle` is what waits for the disk:
//! the tree awaits it before answering a write, once the file's next write
//! may go ahead, so pipelined writes share a sync.
//!
//! Memory is bounded by what readers need, not by the backlog: a topic
//! keeps at most `Options::memory` bytes of its newest messages in memory
//! (`[storage] memory`, 32 MiB by default), lets the oldest go as it
//! passes that (`Log::spill`: a spilled message costs nothing in memory),
//! and reads them back from the segments in order when a reader gets
//! there (`journal`: a sparse index, batches read ahead). A restart reads
//! no message into memory. What a backlog then costs in memory is the
//! index (32 bytes per 64 KiB of log) and the segments' names; each
//! group's deliveries out and requeued are bounded by its readers.
//! Counters: `pushed` goes on across a restart (it is the next sequence
//! number); `pulled` starts again at 0 (deliveries are not logged, only
//! acks).

mod catalog;
mod journal;
mod lazy;
mod record;
mod recover;
mod sync;

pub use recover::RecoverError;
pub use sync::{DEFAULT_INTERVAL, SyncMode};

use std::fs::{self, File};
use std::future::{Future, ready};
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use foldhash::HashMap;
use parking_lot::{Mutex, RwLock};

use self::catalog::Catalog;
use self::journal::{Journal, Keeping, Meta};
use self::lazy::Lazy;
use self::sync::{Syncer, Syncers};
use super::memory::{
    MemoryBroker, MemoryDelivery, pull_ready_topic, pull_topic, push_all_topic, push_topic,
};
use super::topic::State;
use super::{
    Broker, BrokerStatus, DiskStatus, Error, GroupLimits, PushedAll, Result, Seq, Setting, Target,
    TopicConfig, TopicId, TopicStatus, Wait,
};

/// What a topic keeps of its messages in memory by default: 32 MiB,
/// half a million 64-byte messages, so that readers that keep up (or lag
/// by that much) never read from disk, and a server with a few busy
/// topics stays within a few hundred MiB however deep their backlogs.
pub const DEFAULT_MEMORY: u64 = 32 << 20;

/// How a durable broker keeps its topics.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub sync: SyncMode,
    /// A segment file rolls once it is this long (64 MiB by default).
    pub segment_bytes: u64,
    /// What each topic keeps of its messages in memory, payloads and
    /// bookkeeping ([`DEFAULT_MEMORY`] by default): past it, the oldest
    /// are let go and read back from the log when a reader gets there.
    pub memory: u64,
    pub groups: GroupLimits,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: SyncMode::default(),
            segment_bytes: 64 << 20,
            memory: DEFAULT_MEMORY,
            groups: GroupLimits::default(),
        }
    }
}

/// Why a durable broker could not open its directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another dchan server")]
    Locked(PathBuf),
    #[error("data directory: {0}")]
    Recover(#[from] RecoverError),
}

/// Topics kept in a directory.
pub struct DurableBroker {
    /// The topics and their rules, each topic with a `Journal` as store
    /// (or a `Lazy` one, until its first write).
    mem: MemoryBroker,
    /// What every topic's store shares.
    disk: Arc<Disk>,
    options: Options,
    /// The lock on `dir/LOCK`, held while the broker lives.
    _lock: File,
}

/// What every topic's store shares: where topics live, how they keep,
/// and the syncers (a topic's is added when its journal is made).
pub(crate) struct Disk {
    /// Where topics live: `dir/topics/ID`.
    topics_dir: PathBuf,
    keeping: Keeping,
    /// The topics made and removed (see `catalog`), opened once recovery
    /// has read it: an idle topic's settings are its line there.
    catalog: std::sync::OnceLock<Catalog>,
    /// The syncer of creates and removes (see `sync`).
    catalog_sync: Arc<Syncer>,
    /// Each topic's syncer, by identity (never reused, so a topic removed
    /// and created again cannot be confused), for pushes that wait on
    /// `always`.
    syncs: RwLock<HashMap<TopicId, Arc<Syncer>>>,
    /// Every syncer, for the interval thread (which ends with this).
    syncers: Syncers,
    /// Topics with their journal made (each holds an open file), and the
    /// most that may be: the open-files limit less a reserve for
    /// connections and for reading, so that a server full of topics still
    /// accepts the client that comes to remove some.
    journals: std::sync::atomic::AtomicUsize,
    max_journals: usize,
}

/// The open files kept from topics' journals: the server's own (those open
/// now, and 32 more for listeners, logs and reads) and an eighth of the
/// limit, at least 64, for connections.
fn max_journals() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return usize::MAX;
    }
    let limit = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    let own = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count()) + 32;
    limit.saturating_sub(own + (limit / 8).max(64))
}

impl Disk {
    pub(crate) fn catalog(&self) -> &Catalog {
        self.catalog.get().expect("opened by recovery")
    }

    /// Count a journal about to be made; an error past `max_journals`.
    pub(crate) fn take_journal(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let max = self.max_journals;
        (self.journals)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| ())
            .map_err(|n| Error::Storage {
                kind: std::io::ErrorKind::QuotaExceeded,
                reason: format!(
                    "too many open files: {n} topics written to hold one each, the most this server keeps while leaving room for connections (raise the server's ulimit -n, or remove topics)"
                ),
            })
    }

    /// A journal counted by `take_journal` (or read back at start) is
    /// gone, or was not made.
    pub(crate) fn give_journal(&self) {
        self.journals
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Topic `id`'s journal is made: its syncer joins the others.
    pub(crate) fn track(&self, id: TopicId, syncer: Arc<Syncer>) {
        self.syncers.lock().push(Arc::downgrade(&syncer));
        self.syncs.write().insert(id, syncer);
    }
}

fn open_io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DurableBroker {
    /// Open (or make) the data directory `dir` and read every topic back.
    pub fn open(dir: &Path, options: Options) -> Result<DurableBroker, OpenError> {
        let topics_dir = dir.join("topics");
        fs::create_dir_all(&topics_dir).map_err(|e| match topics_dir.is_dir() {
            false if topics_dir.exists() => OpenError::Io {
                path: topics_dir.clone(),
                source: std::io::Error::other("not a directory"),
            },
            _ => open_io(&topics_dir)(e),
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(open_io(&lock_path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        let dir_file = File::open(&topics_dir).map_err(open_io(&topics_dir))?;
        let catalog_sync = Syncer::catalog(Arc::new(dir_file));
        let mem = MemoryBroker::with_group_limits(options.groups);
        let keeping = Keeping {
            sync: options.sync,
            segment_bytes: options.segment_bytes,
            memory: options.memory,
            tally: mem.tally().clone(),
        };
        let disk = Arc::new(Disk {
            topics_dir,
            keeping,
            syncs: RwLock::default(),
            syncers: Arc::new(Mutex::new(vec![Arc::downgrade(&catalog_sync)])),
            catalog: std::sync::OnceLock::new(),
            catalog_sync,
            journals: Default::default(),
            max_journals: max_journals(),
        });
        let broker = DurableBroker {
            mem,
            disk,
            options,
            _lock: lock,
        };
        broker.recover()?;
        // From here on the totals count every byte written and deleted;
        // what recovery found (and wrote) is counted once, here.
        let tally = broker.mem.tally();
        let found = dir_size(&broker.disk.topics_dir);
        tally.disk(found.wrapping_sub(tally.disk_bytes()) as i64);
        match options.sync {
            SyncMode::Interval(every) => sync::start_interval(&broker.disk.syncers, every),
            // Pushes wait for their sync; acks (never waited for: a reader
            // reads one message at a time) reach the disk with the next
            // push's sync, or within the default interval.
            SyncMode::Always => sync::start_interval(&broker.disk.syncers, DEFAULT_INTERVAL),
            SyncMode::Never => {}
        }
        Ok(broker)
    }

    /// The directory's bytes on disk, over every topic: a running count
    /// (read in constant time), kept as files are written and deleted.
    pub fn bytes_on_disk(&self) -> u64 {
        self.mem.tally().disk_bytes()
    }

    /// The sync mode.
    pub fn sync_mode(&self) -> SyncMode {
        self.options.sync
    }

    fn keeping(&self) -> Keeping {
        self.disk.keeping.clone()
    }

    fn track(&self, id: TopicId, syncer: Arc<Syncer>) {
        self.disk.track(id, syncer);
    }

    /// Read every topic back into the memory engine: those with a
    /// directory from it, the others from the catalog; then write the
    /// catalog again with the latter alone.
    fn recover(&self) -> Result<(), OpenError> {
        let catalog = catalog::read(&self.disk.topics_dir.join(catalog::CATALOG))?;
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.disk.topics_dir).map_err(open_io(&self.disk.topics_dir))? {
            let entry = entry.map_err(open_io(&self.disk.topics_dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == journal::REMOVED) {
                // A removal cut short: finish it.
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if catalog.removed.contains(&id) {
                // Removed in the catalog, its directory not yet deleted.
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            dirs.push((id, path));
        }
        dirs.sort();
        // Where each name was found, so two directories naming one topic
        // stop the start instead of one hiding the other.
        let mut seen: HashMap<String, PathBuf> = HashMap::default();
        let mut on_disk = std::collections::HashSet::new();
        for (id, dir) in dirs {
            let Some(r) = recover::recover(&dir)? else {
                let _ = fs::remove_dir_all(&dir);
                continue;
            };
            let meta_path = dir.join(journal::META);
            if !super::memory::valid_name(&r.meta.name) {
                return Err(RecoverError::Meta {
                    path: meta_path,
                    reason: format!("{:?} is no topic name", r.meta.name),
                }
                .into());
            }
            if let Some(other) = seen.insert(r.meta.name.clone(), dir.clone()) {
                return Err(RecoverError::Meta {
                    path: meta_path,
                    reason: format!(
                        "topic {:?} is also in {} (move one of the two directories away)",
                        r.meta.name,
                        other.display()
                    ),
                }
                .into());
            }
            let groups = r.groups();
            let journal = Journal::open_segment(
                dir.clone(),
                &r.meta.name,
                (r.first, r.next),
                r.marks,
                self.keeping(),
                (r.segments, r.index, r.bytes),
                None,
            )
            .map_err(|e| OpenError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let syncer = journal.syncer();
            // Read back: it holds its open file, counted (never refused).
            self.disk
                .journals
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let store = Lazy::made(id, self.disk.clone(), journal);
            let state = State::restored(
                r.meta.config(),
                self.options.groups,
                r.meta.closed,
                (r.first, r.next),
                groups,
                Box::new(store),
            );
            self.mem.restore(&r.meta.name, id, state);
            self.track(id, syncer);
            on_disk.insert(id);
        }
        // The topics that never wrote: their catalog line is all there is.
        let mut idle = std::collections::BTreeMap::new();
        for (&id, meta) in &catalog.made {
            if on_disk.contains(&id) {
                continue;
            }
            if !super::memory::valid_name(&meta.name) {
                return Err(RecoverError::Meta {
                    path: self.disk.topics_dir.join(catalog::CATALOG),
                    reason: format!("{:?} is no topic name", meta.name),
                }
                .into());
            }
            if let Some(other) = seen.insert(meta.name.clone(), self.disk.topics_dir.clone()) {
                return Err(RecoverError::Meta {
                    path: self.disk.topics_dir.join(catalog::CATALOG),
                    reason: format!(
                        "topic {:?} (id {id}) is also in {} (move that directory away)",
                        meta.name,
                        other.display()
                    ),
                }
                .into());
            }
            idle.insert(id, meta.clone());
        }
        let tally = self.mem.tally().clone();
        let (catalog, at) = Catalog::rewrite(&self.disk.topics_dir, &idle, &catalog, tally)
            .map_err(open_io(&self.disk.topics_dir))?;
        let _ = self.disk.catalog.set(catalog);
        for (id, meta) in idle {
            let store = Lazy::new(id, at[&id], self.disk.clone());
            let state = State::restored(
                meta.config(),
                self.options.groups,
                false,
                (0, 0),
                Vec::new(),
                Box::new(store),
            );
            self.mem.restore(&meta.name, id, state);
        }
        Ok(())
    }
}

/// The bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

impl DurableBroker {
    fn catalog(&self) -> &Catalog {
        self.disk.catalog()
    }

    /// Make a topic: a line in the catalog (its directory is made at its
    /// first write, see `lazy`).
    pub fn create(&self, name: &str, config: TopicConfig) -> Result<()> {
        self.mem.create_with(name, config, |id| {
            let at = self.catalog().made(id, Meta::new(name, &config, false))?;
            self.disk.catalog_sync.wrote(1);
            Ok(Box::new(Lazy::new(id, at, self.disk.clone())))
        })?;
        Ok(())
    }

    /// Remove a topic and its directory: the catalog says so first (a
    /// removal cut short is finished at the next start).
    pub fn remove(&self, name: &str) -> Result<()> {
        let id = self.mem.id(name)?;
        self.catalog().removed(id)?;
        self.mem.remove(name)?;
        self.disk.catalog_sync.wrote(1);
        self.disk.syncs.write().remove(&id);
        Ok(())
    }
}

impl Broker for DurableBroker {
    type Delivery = MemoryDelivery;

    fn create(&self, name: &str, config: TopicConfig) -> impl Future<Output = Result<()>> + Send {
        ready(DurableBroker::create(self, name, config))
    }

    fn remove(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        ready(DurableBroker::remove(self, name))
    }

    fn settle_topics(&self) -> impl Future<Output = Result<()>> + Send {
        let catalog =
            (self.options.sync == SyncMode::Always).then(|| self.disk.catalog_sync.clone());
        async move {
            match catalog {
                Some(c) => c.kept().await,
                None => Ok(()),
            }
        }
    }

    fn names(&self, from: Bound<&str>, limit: usize) -> Vec<String> {
        self.mem.names(from, limit)
    }

    fn id(&self, name: &str) -> Result<TopicId> {
        self.mem.id(name)
    }

    fn status(&self, name: Target<'_>) -> impl Future<Output = Result<TopicStatus>> + Send {
        ready(self.mem.status(name))
    }

    fn totals(&self) -> BrokerStatus {
        BrokerStatus {
            engine: "durable",
            disk: Some(DiskStatus {
                sync: self.options.sync,
                bytes: self.bytes_on_disk(),
            }),
            ..self.mem.totals()
        }
    }

    fn expire_idle(&self) {
        self.mem.expire_idle()
    }

    fn set(&self, name: Target<'_>, setting: Setting) -> impl Future<Output = Result<()>> + Send {
        ready(self.mem.set(name, setting))
    }

    fn reset(&self, name: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        ready(self.mem.reset(name))
    }

    fn close(&self, name: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        ready(self.mem.close(name))
    }

    fn forget(&self, name: Target<'_>, group: &str) -> impl Future<Output = Result<()>> + Send {
        ready(self.mem.forget(name, group))
    }

    fn offset(&self, name: Target<'_>, group: &str) -> impl Future<Output = Result<Seq>> + Send {
        ready(self.mem.offset(name, group))
    }

    fn seek(
        &self,
        name: Target<'_>,
        group: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<()>> + Send {
        ready(self.mem.seek(name, group, seq))
    }

    fn push_to(
        &self,
        name: Target<'_>,
        data: Bytes,
        wait: Wait,
    ) -> impl Future<Output = Result<Seq>> + Send {
        let topic = self.mem.topic(name);
        async move { push_topic(topic?, data, wait).await }
    }

    fn pull_from(
        &self,
        name: Target<'_>,
        group: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Option<MemoryDelivery>>> + Send {
        let topic = self.mem.topic(name);
        async move { pull_topic(topic?, group, wait).await }
    }

    fn push_all<'a>(
        &'a self,
        name: Target<'a>,
        messages: &'a [Bytes],
        wait: Wait,
    ) -> impl Future<Output = PushedAll> + Send + 'a {
        push_all_topic(self.mem.topic(name), messages, wait)
    }

    fn pull_ready_while(
        &self,
        name: Target<'_>,
        group: &str,
        accept: &mut dyn FnMut(&Bytes) -> bool,
    ) -> Vec<MemoryDelivery> {
        pull_ready_topic(self.mem.topic(name), group, accept)
    }

    fn settle(&self, name: Target<'_>) -> impl Future<Output = Result<()>> + Send {
        let syncer = match self.options.sync {
            SyncMode::Always => {
                (self.mem.topic(name).ok()).and_then(|t| self.disk.syncs.read().get(&t.id).cloned())
            }
            _ => None,
        };
        async move {
            match syncer {
                Some(syncer) => settle(syncer).await,
                None => Ok(()),
            }
        }
    }
}

/// Wait until `syncer` has the topic's writes on disk. The message is
/// taken either way, so a caller that cuts the wait short and cannot wait
/// (`resolve_now`) is answered `Ok` at once; one that can (a flush,
/// `cut::poll_patiently`) is answered once the disk has it.
async fn settle(syncer: Arc<Syncer>) -> Result<()> {
    let mut kept = std::pin::pin!(syncer.kept());
    std::future::poll_fn(|cx| match crate::cut::cutting() {
        Some(_) if crate::cut::patient() => {
            let synced = kept.as_mut().poll(cx);
            if synced.is_pending() {
                crate::cut::defer();
            }
            synced
        }
        Some(_) => std::task::Poll::Ready(Ok(())),
        None => kept.as_mut().poll(cx),
    })
    .await
}
