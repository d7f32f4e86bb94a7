//! When a topic's log reaches the disk: the sync modes, and group commit
//! (many pushes waiting on one `fdatasync`).
//!
//! Every record is written (`pwrite`, into the kernel's page cache) before
//! the push or delivery it belongs to is answered, so a crash of the
//! process loses nothing answered in any mode. What a power loss can lose
//! depends on the mode:
//!
//! - `always`: a push is answered once an `fdatasync` that began after its
//!   write has returned (the tree awaits `Broker::settle`). Syncs run on
//!   Tokio's blocking pool, never on the async threads. A push whose write
//!   no sync begun so far covers begins one once its thread has run what
//!   else was ready (the rest of a burst of requests), unless one is
//!   running: one sync of a topic runs at a time, and the writes that
//!   come while it runs are synced together by the next, which begins as
//!   it ends (group commit). Nothing answered is lost.
//!   Acks go with the next sync, or within `DEFAULT_INTERVAL`: a power
//!   loss can redeliver what was acked in that window.
//! - `interval` (the default, every 100 ms): a thread syncs every topic
//!   written since its last pass. A power loss loses at most the last
//!   interval's pushes and acks.
//! - `never`: the kernel writes when it likes (usually within 30 s).
//!
//! Creates and removes of topics follow the same modes, through one more
//! syncer, the catalog's (`Syncer::catalog`): a create writes its files
//! without a sync, and the catalog's sync is one `syncfs` of the data
//! directory's file system, shared by every create and remove since the
//! last (so a root ctl write of many creates costs one sync, not three
//! per topic). With `always` the tree awaits it (`Broker::settle_topics`)
//! before answering; with `interval` the interval thread runs it. A
//! topic's own first sync is that `syncfs` while its create is not yet
//! synced, so its records never reach the disk before its settings file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::broker::{Error, Result};

/// When the log is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Before a push is answered (group commit).
    Always,
    /// Every this long, by a thread of the server.
    Interval(Duration),
    /// When the kernel writes it back.
    Never,
}

/// The default interval: 100 ms bounds what a power loss can take to a
/// tenth of a second of traffic (Redis's `everysec` takes up to a second),
/// and one `fdatasync` per topic every 100 ms costs nothing noticeable.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

impl Default for SyncMode {
    fn default() -> SyncMode {
        SyncMode::Interval(DEFAULT_INTERVAL)
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Always => f.write_str("always"),
            SyncMode::Interval(d) => write!(f, "interval {}", humantime::format_duration(*d)),
            SyncMode::Never => f.write_str("never"),
        }
    }
}

/// One topic's sync state: what is written and what is on disk, as
/// positions in the stream of bytes the topic has written (over all its
/// segments).
pub(crate) struct Syncer {
    /// The segment being written; replaced when the log rolls (after the
    /// old one was synced). For the catalog, the data directory.
    file: Mutex<Arc<File>>,
    /// Whether a sync is of the whole file system (`syncfs`): the
    /// catalog's.
    whole: bool,
    /// For a topic created since the start: the catalog, and its count of
    /// changes once this topic's create was written. Until the catalog
    /// has synced that far, this topic's sync is the catalog's.
    made: OnceLock<(Arc<Syncer>, u64)>,
    /// Bytes written to the kernel.
    written: AtomicU64,
    /// Bytes known to be on disk.
    synced: AtomicU64,
    /// The most a sync begun so far covers (what was written when it
    /// began).
    begun: AtomicU64,
    /// A sync is running (there is one at a time: waiting for more
    /// writes before a sync, or running two at once, measured slower on a
    /// pipe of depth 64: 45 k pushes a second against 55 k).
    running: AtomicBool,
    /// Counts finished syncs, so waiters can sleep until the next.
    done: watch::Sender<u64>,
}

impl Syncer {
    pub(crate) fn new(file: Arc<File>) -> Arc<Syncer> {
        Syncer::with(file, false)
    }

    /// The syncer of creates and removes: `dir` is the topics' directory,
    /// and a sync is a `syncfs` of its file system; a change counts one
    /// byte (`wrote(1)`).
    pub(crate) fn catalog(dir: Arc<File>) -> Arc<Syncer> {
        Syncer::with(dir, true)
    }

    fn with(file: Arc<File>, whole: bool) -> Arc<Syncer> {
        Arc::new(Syncer {
            file: Mutex::new(file),
            whole,
            made: OnceLock::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            running: AtomicBool::new(false),
            done: watch::Sender::new(0),
        })
    }

    /// `n` more bytes were written; returns how many so far.
    pub(crate) fn wrote(&self, n: u64) -> u64 {
        self.written.fetch_add(n, Ordering::SeqCst) + n
    }

    /// This topic's create was written as the catalog's change `change`:
    /// its first syncs are the catalog's until that is on disk.
    pub(crate) fn made(&self, catalog: Arc<Syncer>, change: u64) {
        let _ = self.made.set((catalog, change));
        // What the create wrote is the catalog's to sync (a later sync of
        // this topic, before the catalog's, is the catalog's).
        let w = self.written.load(Ordering::SeqCst);
        self.synced.fetch_max(w, Ordering::AcqRel);
    }

    /// The log rolled to `file`, everything written before it being on
    /// disk already.
    pub(crate) fn rolled(&self, file: Arc<File>) {
        let w = self.written.load(Ordering::SeqCst);
        *self.file.lock() = file;
        self.synced.fetch_max(w, Ordering::AcqRel);
    }

    /// Whether anything written is not yet synced.
    fn behind(&self) -> bool {
        self.synced.load(Ordering::Acquire) < self.written.load(Ordering::SeqCst)
    }

    /// Sync what is written now (blocking: call off the async threads);
    /// `waited`: waiters count on it (see `begun`).
    fn sync_now(&self, waited: bool) -> std::io::Result<()> {
        // What is written before the file is read: a roll in between
        // synced the old file's bytes itself.
        let w = self.written.load(Ordering::SeqCst);
        if waited {
            self.begun.fetch_max(w, Ordering::AcqRel);
        }
        if let Some((catalog, change)) = self.made.get()
            && catalog.synced.load(Ordering::Acquire) < *change
        {
            // The file system's sync covers this file too.
            catalog.sync_now(false)?;
            catalog.done.send_modify(|n| *n += 1);
        } else {
            let file = self.file.lock().clone();
            if self.whole {
                // SAFETY: syncfs on a descriptor this syncer owns.
                if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else {
                file.sync_data()?;
            }
        }
        self.synced.fetch_max(w, Ordering::AcqRel);
        Ok(())
    }

    /// Resolve once everything written before the call is on disk,
    /// sharing each sync with every other waiter (group commit): the
    /// writes that come while a sync runs are covered by the next.
    pub(crate) async fn kept(self: &Arc<Self>) -> Result<()> {
        let target = self.written.load(Ordering::SeqCst);
        let mut done = self.done.subscribe();
        let mut yielded = false;
        loop {
            if self.synced.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            let covered = self.begun.load(Ordering::Acquire) >= target;
            if !covered && !yielded && !self.running.load(Ordering::Acquire) {
                // Let the requests already received write first (the
                // wake comes once this thread has nothing else to run),
                // so that the sync begun next covers them all: begun at
                // once, it covered the first push of a burst and the
                // rest waited for another.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            if !covered
                && (self.running)
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let me = self.clone();
                let synced = tokio::task::spawn_blocking(move || {
                    let r = me.sync_now(true);
                    if r.is_err() {
                        // Waiters that counted on this sync begin their
                        // own (and learn the error from it).
                        let synced = me.synced.load(Ordering::Acquire);
                        me.begun.store(synced, Ordering::Release);
                    }
                    me.running.store(false, Ordering::Release);
                    me.done.send_modify(|n| *n += 1);
                    r
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
                if let Err(e) = synced {
                    return Err(Error::Storage {
                        kind: e.kind(),
                        reason: format!("{}: {e}", if self.whole { "syncfs" } else { "fdatasync" }),
                    });
                }
                continue;
            }
            if done.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Every topic's syncer, for the interval thread.
pub(crate) type Syncers = Arc<Mutex<Vec<Weak<Syncer>>>>;

/// Start the thread that syncs every topic written to, every `every`;
/// it ends when `syncers` is dropped.
pub(crate) fn start_interval(syncers: &Syncers, every: Duration) {
    let weak = Arc::downgrade(syncers);
    std::thread::Builder::new()
        .name("dchan-sync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(syncers) = weak.upgrade() else {
                    return;
                };
                let live: Vec<Arc<Syncer>> = {
                    let mut list = syncers.lock();
                    list.retain(|w| w.strong_count() > 0);
                    list.iter().filter_map(Weak::upgrade).collect()
                };
                drop(syncers);
                for s in live {
                    if s.behind() {
                        if let Err(e) = s.sync_now(false) {
                            tracing::error!("fdatasync: {e}");
                        }
                        s.done.send_modify(|n| *n += 1);
                    }
                }
            }
        })
        .expect("start the sync thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group commit: however many wait at once, each is released only
    /// once a sync that began after its write has returned, and syncs
    /// are shared (fewer than the writes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_is_released_only_once_its_write_is_synced() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let s = Syncer::new(file);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..100 {
                    let mine = s.wrote(10);
                    s.kept().await.unwrap();
                    assert!(s.synced.load(Ordering::Acquire) >= mine);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(!s.behind());
        let syncs = *s.done.borrow();
        assert!(syncs < 1600, "{syncs} syncs for 1 600 writes");
        println!("1 600 writes, {syncs} syncs");
    }
}
