//! When a topic's log reaches the disk: the sync modes, and group commit
//! (many pushes waiting on one `fdatasync`).
//!
//! Every record is written (`pwrite`, into the kernel's page cache) before
//! the push or delivery it belongs to is answered, so a crash of the
//! process loses nothing answered in any mode. What a power loss can lose
//! depends on the mode:
//!
//! - `always`: a push is answered once an `fdatasync` that began after its
//!   write has returned (the tree awaits `Broker::settle`). One sync runs
//!   at a time per topic (on Tokio's blocking pool, never on the async
//!   threads); the pushes that arrive while it runs wait together for the
//!   next one, so N writers share a sync. Nothing answered is lost. Acks
//!   go with the next sync, or within `DEFAULT_INTERVAL`: a power loss
//!   can redeliver what was acked in that window.
//! - `interval` (the default, every 100 ms): a thread syncs every topic
//!   written since its last pass. A power loss loses at most the last
//!   interval's pushes and acks.
//! - `never`: the kernel writes when it likes (usually within 30 s).

use std::fs::File;
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
    /// old one was synced).
    file: Mutex<Arc<File>>,
    /// Bytes written to the kernel.
    written: AtomicU64,
    /// Bytes known to be on disk.
    synced: AtomicU64,
    /// A sync is running.
    busy: AtomicBool,
    /// Counts finished syncs, so waiters can sleep until the next.
    done: watch::Sender<u64>,
}

impl Syncer {
    pub(crate) fn new(file: Arc<File>) -> Arc<Syncer> {
        Arc::new(Syncer {
            file: Mutex::new(file),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            done: watch::Sender::new(0),
        })
    }

    /// `n` more bytes were written.
    pub(crate) fn wrote(&self, n: u64) {
        self.written.fetch_add(n, Ordering::AcqRel);
    }

    /// The log rolled to `file`, everything written before it being on
    /// disk already.
    pub(crate) fn rolled(&self, file: Arc<File>) {
        let w = self.written.load(Ordering::Acquire);
        *self.file.lock() = file;
        self.synced.fetch_max(w, Ordering::AcqRel);
    }

    /// Whether anything written is not yet synced.
    fn behind(&self) -> bool {
        self.synced.load(Ordering::Acquire) < self.written.load(Ordering::Acquire)
    }

    /// Sync what is written now (blocking: call off the async threads).
    fn sync_now(&self) -> std::io::Result<()> {
        let w = self.written.load(Ordering::Acquire);
        let file = self.file.lock().clone();
        file.sync_data()?;
        self.synced.fetch_max(w, Ordering::AcqRel);
        Ok(())
    }

    /// Resolve once everything written before the call is on disk,
    /// sharing each sync with every other waiter.
    pub(crate) async fn kept(self: &Arc<Self>) -> Result<()> {
        let target = self.written.load(Ordering::Acquire);
        let mut done = self.done.subscribe();
        loop {
            if self.synced.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if !self.busy.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                let synced = tokio::task::spawn_blocking(move || {
                    let r = me.sync_now();
                    me.busy.store(false, Ordering::Release);
                    me.done.send_modify(|n| *n += 1);
                    r
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
                if let Err(e) = synced {
                    return Err(Error::Storage {
                        kind: e.kind(),
                        reason: format!("fdatasync: {e}"),
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
                    if s.behind() && !s.busy.swap(true, Ordering::AcqRel) {
                        if let Err(e) = s.sync_now() {
                            tracing::error!("fdatasync: {e}");
                        }
                        s.busy.store(false, Ordering::Release);
                        s.done.send_modify(|n| *n += 1);
                    }
                }
            }
        })
        .expect("start the sync thread");
}
