//! One topic's log on disk: its directory, its settings file, its
//! segments, and the records each change becomes (the `Store` a durable
//! topic tells its changes to).
//!
//! ```text
//! DIR/topics/ID/meta.json              name, settings, closed
//! DIR/topics/ID/00000000000000000000.log  segments, named by the sequence
//! DIR/topics/ID/00000000000000120417.log  number next when each began
//! ```
//!
//! A message is written before it is taken, under the topic's lock, so
//! the log's order is the topic's, and a failed write (a full disk) is cut
//! back off the file and refuses the push. Written means in the kernel's
//! page cache: a `pwrite`, or, once a segment is busy, a copy into zeros
//! written ahead of its records and mapped (`Ahead`), which spares a
//! system call per record and the sync an inode. An ack is written
//! as it happens (a crash then redelivers only what was not acked); one
//! that cannot be written (a full disk) is held and written with the next
//! record, and before the next delivery, which fails while it cannot be
//! written (so a reader never reads on past acks the log does not have). Each segment begins with a checkpoint (the
//! oldest held message and every group's place), so a segment can be
//! deleted once every group is past it, without losing a group.
//!
//! Messages the topic let go from memory (past `Keeping::memory`) are read
//! back from the segments (`read`): a sparse index, one entry per
//! `STRIDE` bytes of a segment and one at each segment's first message,
//! says where to start, and a read takes `BATCH` bytes at once, so the
//! next messages are there when the reader comes back for them
//! (`ReadAhead`, a few batches, one per reader position). The read is a
//! plain `pread` under the topic's lock: a batch is at most a few hundred
//! KiB, mostly from the page cache, and the hand-off that needs it is
//! decided under that lock (see `topic`), so it cannot wait on another
//! thread; a blocking pool (`spawn_blocking`) would make every delivery
//! async for the rare one from disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::record::{HEADER, Kind, decode, encode};
use super::sync::{SyncMode, Syncer};
use crate::broker::store::Store;
use crate::broker::tally::Tally;
use crate::broker::{Error, Framing, Result, Retention, Seq, TopicConfig};

/// How the log is kept.
#[derive(Clone)]
pub(crate) struct Keeping {
    pub(crate) sync: SyncMode,
    /// A segment rolls once it is this long.
    pub(crate) segment_bytes: u64,
    /// What a topic keeps of its messages in memory (`Store::memory`).
    pub(crate) memory: u64,
    /// The broker's running totals, told of every byte written to or
    /// deleted from disk (so `disk_bytes` walks no directory).
    pub(crate) tally: Arc<Tally>,
}

/// The sparse index's spacing: an entry per this many bytes of a segment.
pub(crate) const STRIDE: u64 = 64 << 10;
/// How much one read back from a segment takes at least.
const BATCH: usize = 256 << 10;
/// How many batches read back are kept (one per reader position, the
/// oldest forgotten first).
const BATCHES: usize = 4;
/// The most zeros written ahead of a segment's records at once, and the
/// least (`Journal::write_ahead`).
const PREALLOC: u64 = 1 << 20;
const PREALLOC_MIN: u64 = 64 << 10;
static ZEROS: [u8; 4096] = [0; 4096];

/// Where a message's record is, and how many bytes of messages came
/// before it (so that the bytes of a run of messages are a subtraction,
/// not a read of every one of them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub(crate) seq: Seq,
    /// The base of the segment it is in.
    pub(crate) base: Seq,
    /// The record's offset in that segment.
    pub(crate) at: u64,
    /// The payload bytes of the messages before `seq`, counted from the
    /// oldest segment read at start (only differences mean anything).
    pub(crate) before: u64,
}

/// The messages of one read back from a segment, from `first` on, in
/// order: slices of one buffer.
struct Batch {
    first: Seq,
    messages: Vec<Bytes>,
}

/// Messages read back, kept for the next reads.
#[derive(Default)]
struct ReadAhead {
    /// Most recently used last.
    batches: VecDeque<Batch>,
}

impl ReadAhead {
    fn get(&mut self, seq: Seq) -> Option<Bytes> {
        let i = (self.batches.iter())
            .position(|b| seq >= b.first && seq < b.first + b.messages.len() as u64)?;
        let batch = self.batches.remove(i).expect("found");
        let data = batch.messages[(seq - batch.first) as usize].clone();
        self.batches.push_back(batch);
        Some(data)
    }

    fn put(&mut self, batch: Batch) {
        if self.batches.len() >= BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
    }
}

/// The settings file, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) name: String,
    pub(crate) capacity: u64,
    pub(crate) framing: String,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) max_message: u64,
    /// The retention limit as ctl writes it; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retain: Option<String>,
    /// `max_bytes`; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_bytes: Option<u64>,
    /// `rate`, messages a second; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<std::num::NonZeroU32>,
    pub(crate) closed: bool,
}

impl Meta {
    pub(crate) fn new(name: &str, c: &TopicConfig, closed: bool) -> Meta {
        Meta {
            name: name.to_string(),
            capacity: c.capacity,
            framing: match c.framing {
                Framing::Line => "line".into(),
                Framing::Write => "write".into(),
            },
            timeout_ms: c.timeout.map(|t| t.as_millis() as u64),
            max_message: c.max_message,
            retain: (c.retain != Retention::None).then(|| c.retain.to_string()),
            max_bytes: c.max_bytes,
            rate: c.rate.map(|r| r.0),
            closed,
        }
    }

    pub(crate) fn config(&self) -> TopicConfig {
        TopicConfig {
            capacity: self.capacity,
            framing: match self.framing.as_str() {
                "write" => Framing::Write,
                _ => Framing::Line,
            },
            timeout: self.timeout_ms.map(std::time::Duration::from_millis),
            max_message: self.max_message,
            retain: self.retention(),
            max_bytes: self.max_bytes,
            rate: self.rate.map(crate::broker::Rate),
        }
    }

    /// The retention limit (none if the file's text is not one).
    pub(crate) fn retention(&self) -> Retention {
        (self.retain.as_deref())
            .and_then(|t| Retention::parse(t).ok())
            .unwrap_or_default()
    }
}

pub(crate) const META: &str = "meta.json";
/// The extension of a topic directory being removed (`topics/ID.removed`).
pub(crate) const REMOVED: &str = "removed";

/// A storage error about `what` at `path`.
pub(crate) fn storage(what: &str, path: &Path, e: std::io::Error) -> Error {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        return Error::Storage {
            kind: std::io::ErrorKind::QuotaExceeded,
            reason: format!(
                "{what} {}: {e} (each durable topic holds an open file: raise the server's ulimit -n, or remove topics)",
                path.display()
            ),
        };
    }
    Error::Storage {
        kind: e.kind(),
        reason: format!("{what} {}: {e}", path.display()),
    }
}

/// Write the settings file whole (a temporary file renamed over it);
/// returns by how many bytes it grew. `sync`: on disk before it returns
/// (a create leaves that to the catalog's sync, see `sync`).
pub(crate) fn write_meta(dir: &Path, meta: &Meta, sync: bool) -> Result<i64> {
    let tmp = dir.join("meta.json.tmp");
    let path = dir.join(META);
    let text = serde_json::to_vec_pretty(meta).expect("settings serialize");
    let old = fs::metadata(&path).map_or(0, |m| m.len());
    let write = || -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        f.write_all_at(&text, 0)?;
        if sync {
            f.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| storage("write", &path, e))?;
    Ok(text.len() as i64 - old as i64)
}

/// A segment's file name: the sequence number next when it began.
pub(crate) fn segment_name(base: Seq) -> String {
    format!("{base:020}.log")
}

/// Where a group is, as the log says it: the next message it reads
/// unless acked, and the messages past that it has acked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mark {
    pub(crate) offset: Seq,
    pub(crate) acked: BTreeSet<Seq>,
}

impl Mark {
    pub(crate) fn at(offset: Seq) -> Mark {
        Mark {
            offset,
            acked: BTreeSet::new(),
        }
    }

    pub(crate) fn ack(&mut self, seq: Seq) {
        if seq == self.offset {
            self.offset += 1;
            while self.acked.remove(&self.offset) {
                self.offset += 1;
            }
        } else if seq > self.offset {
            self.acked.insert(seq);
        }
    }
}

/// The active segment's zeros written ahead, mapped into memory: a record
/// that fits is copied there, with no system call (a `pwrite` of a record
/// cost the kernel 1.3 to 2.6 µs here, two per message: its message and its
/// ack). The map shares the file's page cache, so a `pread`, an
/// `fdatasync` and a crash of the process (`kill -9`) see a copied record
/// as they see a written one. Its blocks were allocated (`fallocate`)
/// before the zeros were written, so a store into it never needs disk
/// space (a page fault that found the disk full would kill the process
/// with SIGBUS); where `fallocate` fails (a file system without it, a full
/// disk) nothing is mapped. Only this journal changes the file's length,
/// and it drops the map first (a file cut under a map also means SIGBUS:
/// nothing else may truncate a segment while the server runs). `memmap2`
/// makes the map; the `unsafe` is that rule.
struct Ahead {
    map: memmap2::MmapMut,
    /// The file offset of the map's first byte.
    from: u64,
}

impl Ahead {
    /// Map `file` from the page holding `at` to `end`.
    fn map(file: &File, at: u64, end: u64) -> Option<Ahead> {
        let from = at & !(ZEROS.len() as u64 - 1);
        // SAFETY: the file is the journal's active segment; see `Ahead`.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(from)
                .len((end - from) as usize)
                .map_mut(file)
        };
        match map {
            Ok(map) => Some(Ahead { map, from }),
            Err(e) => {
                tracing::debug!("mapping a segment's zeros: {e}");
                None
            }
        }
    }

    /// Copy `bytes` to file offset `at`, if the map holds all of it.
    fn copy(&mut self, bytes: &[u8], at: u64) -> bool {
        let Some(start) = at.checked_sub(self.from) else {
            return false;
        };
        let start = start as usize;
        match self.map.get_mut(start..start + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// A topic's log, kept as its `Store`.
pub(crate) struct Journal {
    dir: PathBuf,
    name: String,
    /// The segment being written, the length of its records, and the
    /// length of the file: past the records, zeros written ahead
    /// (`PREALLOC`), so that a sync need not write the file's size.
    active: Arc<File>,
    active_len: u64,
    active_alloc: u64,
    /// The zeros written ahead, mapped (`Ahead`).
    ahead_map: Option<Ahead>,
    /// The segments, oldest first, by the sequence number each began at;
    /// the last is `active`.
    segments: VecDeque<Seq>,
    /// Records not yet written (acks), written before the next message or
    /// delivery.
    held: Vec<u8>,
    /// Every group's place, as the log says it (for each checkpoint).
    marks: BTreeMap<Box<str>, Mark>,
    /// The sparse index of message records, by sequence number.
    index: VecDeque<IndexEntry>,
    /// The payload bytes of the messages before `next`, counted as the
    /// index's `before` is.
    bytes: u64,
    /// Messages read back lately, and the next ones.
    ahead: ReadAhead,
    /// The oldest held message and the next sequence number.
    first: Seq,
    next: Seq,
    keeping: Keeping,
    sync: Arc<Syncer>,
}

impl Journal {
    /// A new topic's directory, settings file and first segment (made at
    /// its first write, see `lazy`), written without a sync: they reach
    /// the disk with the `catalog`'s next sync (or the topic's first,
    /// which is that one).
    pub(crate) fn create(
        dir: PathBuf,
        name: &str,
        config: &TopicConfig,
        keeping: Keeping,
        catalog: &Arc<Syncer>,
    ) -> Result<Journal> {
        fs::create_dir_all(&dir).map_err(|e| storage("create", &dir, e))?;
        let mut journal = Journal::open_segment(
            dir,
            name,
            (0, 0),
            BTreeMap::new(),
            keeping,
            (VecDeque::new(), VecDeque::new(), 0),
            None,
        )?;
        // The checkpoint before the settings file: a topic directory with
        // a settings file always has a record (see `recover`).
        journal.flush()?;
        let meta = write_meta(&journal.dir, &Meta::new(name, config, false), false)?;
        journal.keeping.tally.disk(meta);
        // The catalog's sync covers what the create wrote: an idle new
        // topic is not behind, so the interval thread leaves it alone.
        journal.sync.made(catalog.clone(), catalog.wrote(1));
        Ok(journal)
    }

    /// A journal that goes on from what recovery read: the held messages
    /// `first` to `next`, a new segment starting at `next`, the older
    /// ones (by base) still there with their index.
    pub(crate) fn open_segment(
        dir: PathBuf,
        name: &str,
        (first, next): (Seq, Seq),
        marks: BTreeMap<Box<str>, Mark>,
        keeping: Keeping,
        (segments, index, bytes): (VecDeque<Seq>, VecDeque<IndexEntry>, u64),
        sync: Option<Arc<Syncer>>,
    ) -> Result<Journal> {
        // A segment of that name (a restart with nothing pushed since the
        // last) is written on: its records still count.
        let path = dir.join(segment_name(next));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| storage("create", &path, e))?;
        let active_len = file
            .metadata()
            .map_err(|e| storage("stat", &path, e))?
            .len();
        let file = Arc::new(file);
        let sync = match sync {
            Some(s) => {
                s.rolled(file.clone());
                s
            }
            None => Syncer::new(file.clone()),
        };
        let mut journal = Journal {
            dir,
            name: name.to_string(),
            active: file,
            active_len,
            active_alloc: active_len,
            ahead_map: None,
            segments,
            held: Vec::new(),
            marks,
            index,
            bytes,
            ahead: ReadAhead::default(),
            first,
            next,
            keeping,
            sync,
        };
        journal.segments.retain(|&b| b != next);
        journal.segments.push_back(next);
        journal.checkpoint();
        Ok(journal)
    }

    pub(crate) fn syncer(&self) -> Arc<Syncer> {
        self.sync.clone()
    }

    /// Hold the checkpoint that begins a segment.
    fn checkpoint(&mut self) {
        encode(&mut self.held, Kind::Checkpoint, self.first, &[]);
        for (name, mark) in &self.marks {
            encode(&mut self.held, Kind::Group, mark.offset, name.as_bytes());
            for &seq in &mark.acked {
                encode(&mut self.held, Kind::Ack, seq, name.as_bytes());
            }
        }
    }

    fn active_path(&self) -> PathBuf {
        self.dir
            .join(segment_name(*self.segments.back().expect("a segment")))
    }

    /// Write what is held; on failure cut the file back (zeros written
    /// ahead included) and keep it held.
    fn flush(&mut self) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        if let Some(ahead) = &mut self.ahead_map
            && ahead.copy(&self.held, self.active_len)
        {
            // Written: the map is the file's page cache.
        } else if let Err(e) = self.active.write_all_at(&self.held, self.active_len) {
            self.ahead_map = None;
            let _ = self.active.set_len(self.active_len);
            self.keeping
                .tally
                .disk(-((self.active_alloc - self.active_len) as i64));
            self.active_alloc = self.active_len;
            return Err(storage("write", &self.active_path(), e));
        }
        self.active_len += self.held.len() as u64;
        self.sync.wrote(self.held.len() as u64);
        let grew = self.active_len.saturating_sub(self.active_alloc);
        self.keeping.tally.disk(grew as i64);
        self.active_alloc += grew;
        self.held.clear();
        Ok(())
    }

    /// Write zeros ahead of the records once they reach the end of the
    /// file: a record written over them leaves the file's size and blocks
    /// as they were, so its `fdatasync` writes the data and flushes, not
    /// the inode and block map as well (`scripts/fdatasync-cost.py` here:
    /// 140–190 µs against 260–480 µs for appended records).
    /// None before the segment holds `PREALLOC_MIN` of records, then as
    /// many as it holds, up to `PREALLOC`: a topic with a few messages
    /// keeps a small file, and a file is at most twice its records. A
    /// failure (a full disk) only means writing on without. The blocks
    /// are allocated first (`fallocate`), and then mapped (`Ahead`).
    fn write_ahead(&mut self) {
        if self.active_alloc > self.active_len {
            return;
        }
        let room = self.keeping.segment_bytes.saturating_sub(self.active_len);
        let grow = (self.active_len.min(PREALLOC).min(room) as usize) & !(ZEROS.len() - 1);
        if grow < PREALLOC_MIN as usize {
            return;
        }
        self.ahead_map = None;
        // SAFETY: fallocate on a descriptor this journal owns.
        let allocated = unsafe {
            libc::fallocate(
                self.active.as_raw_fd(),
                0,
                self.active_alloc as libc::off_t,
                grow as libc::off_t,
            )
        } == 0;
        // A page at a time: a larger write makes larger folios in the page
        // cache, and a small write into one costs the kernel a walk of all
        // its blocks (`scripts/fdatasync-cost.py`: 3.2 µs a record against
        // 1.1).
        let zeros = (0..grow as u64)
            .step_by(ZEROS.len())
            .try_for_each(|at| self.active.write_all_at(&ZEROS, self.active_alloc + at));
        match zeros {
            Ok(()) => {
                self.active_alloc += grow as u64;
                self.keeping.tally.disk(grow as i64);
                if allocated {
                    self.ahead_map = Ahead::map(&self.active, self.active_len, self.active_alloc);
                }
            }
            Err(e) => {
                let _ = self.active.set_len(self.active_alloc);
                tracing::debug!(topic = %self.name, "writing zeros ahead: {e}");
            }
        }
    }

    /// Cut the zeros written ahead off the active segment (before it is
    /// left behind, so only the last segment ends in zeros).
    fn cut_ahead(&mut self) -> Result<()> {
        self.ahead_map = None;
        if self.active_alloc > self.active_len {
            self.active
                .set_len(self.active_len)
                .map_err(|e| storage("truncate", &self.active_path(), e))?;
            self.keeping
                .tally
                .disk(-((self.active_alloc - self.active_len) as i64));
            self.active_alloc = self.active_len;
        }
        Ok(())
    }

    /// Write what is held, reporting a failure in the log (an ack not kept
    /// means a redelivery after a crash, never a loss).
    fn flush_quietly(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(topic = %self.name, "{e}");
        }
    }

    /// Begin a new segment once the active one is full.
    fn maybe_roll(&mut self) {
        if self.active_len < self.keeping.segment_bytes {
            return;
        }
        if let Err(e) = self.roll() {
            tracing::warn!(topic = %self.name, "{e}; writing on in the old segment");
        }
    }

    fn roll(&mut self) -> Result<()> {
        self.cut_ahead()?;
        if self.keeping.sync != SyncMode::Never {
            self.active
                .sync_data()
                .map_err(|e| storage("fdatasync", &self.active_path(), e))?;
        }
        let path = self.dir.join(segment_name(self.next));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| storage("create", &path, e))?;
        self.active = Arc::new(file);
        self.active_len = 0;
        self.active_alloc = 0;
        if self.keeping.sync != SyncMode::Never
            && let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all())
        {
            // The new segment's name reaches the disk before anything
            // written in it is answered as kept (the file's own syncs do
            // not cover its directory entry). The file is made: writing
            // goes on in it either way.
            tracing::warn!(topic = %self.name, "fsync {}: {e}", self.dir.display());
        }
        self.sync.rolled(self.active.clone());
        self.segments.push_back(self.next);
        self.checkpoint();
        self.flush()?;
        self.delete_passed();
        Ok(())
    }

    /// Delete the segments wholly before the oldest held message.
    fn delete_passed(&mut self) {
        while self.segments.len() > 1 && self.segments[1] <= self.first {
            let base = self.segments.pop_front().expect("two segments");
            while self.index.front().is_some_and(|e| e.base <= base) {
                self.index.pop_front();
            }
            let path = self.dir.join(segment_name(base));
            let len = fs::metadata(&path).map_or(0, |m| m.len());
            match fs::remove_file(&path) {
                Ok(()) => self.keeping.tally.disk(-(len as i64)),
                Err(e) => tracing::warn!("remove {}: {e}", path.display()),
            }
        }
    }
}

impl Journal {
    /// Read message `seq` and the next ones, `BATCH` bytes or so, from
    /// the segment that has it.
    fn read_batch(&mut self, seq: Seq) -> Result<Batch> {
        let gone = || Error::Storage {
            kind: std::io::ErrorKind::NotFound,
            reason: format!("message {seq} is in no segment"),
        };
        if seq >= self.next {
            return Err(gone());
        }
        let i = self.index.partition_point(|e| e.seq <= seq);
        let &IndexEntry { base, mut at, .. } = i
            .checked_sub(1)
            .and_then(|i| self.index.get(i))
            .ok_or_else(gone)?;
        let path = self.dir.join(segment_name(base));
        let file = File::open(&path).map_err(|e| storage("open", &path, e))?;
        let damaged = |at: u64, reason: String| Error::Storage {
            kind: std::io::ErrorKind::InvalidData,
            reason: format!(
                "{}: damaged record at offset {at}: {reason}",
                path.display()
            ),
        };
        // The active segment's records end before its zeros.
        let end = (base == *self.segments.back().expect("a segment")).then_some(self.active_len);
        let mut want = BATCH;
        loop {
            if let Some(end) = end {
                want = want.min(end.saturating_sub(at) as usize);
            }
            if want == 0 {
                return Err(gone());
            }
            let mut buf = vec![0; want];
            let n = read_at(&file, &mut buf, at).map_err(|e| storage("read", &path, e))?;
            buf.truncate(n);
            let buf = Bytes::from(buf);
            let (mut messages, mut first, mut pos) = (Vec::new(), None, 0);
            loop {
                match decode(&buf, pos) {
                    Ok(Some((rec, after))) => {
                        if rec.kind == Kind::Message && rec.n >= seq {
                            first.get_or_insert(rec.n);
                            messages.push(rec.rest);
                        }
                        pos = after;
                    }
                    // The end of the read, or a record it cut short.
                    Ok(None) => break,
                    Err(d) if d.short => break,
                    Err(d) => return Err(damaged(at + pos as u64, d.reason)),
                }
            }
            match first {
                Some(first) if first == seq => return Ok(Batch { first, messages }),
                Some(first) => {
                    let why = format!("message {first} where {seq} was looked for");
                    return Err(damaged(at, why));
                }
                // A record longer than the read: read it whole.
                None if pos == 0 && n == want => {
                    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    want = HEADER + len as usize;
                }
                None if pos == 0 => return Err(gone()),
                // Not in this read: read on from where it ended.
                None => {
                    at += pos as u64;
                    want = BATCH;
                }
            }
        }
    }
}

impl Journal {
    /// The payload bytes of the messages before `seq` (as the index counts
    /// them): from the index entry at or before it, and the sizes of the
    /// messages between, read from there (a read of `STRIDE` bytes or
    /// so, whose messages are kept for the readers that come next).
    fn bytes_before(&mut self, seq: Seq) -> Result<u64> {
        if seq >= self.next {
            return Ok(self.bytes);
        }
        let i = self.index.partition_point(|e| e.seq <= seq);
        let Some(&IndexEntry {
            seq: mut s,
            before: mut bytes,
            ..
        }) = i.checked_sub(1).and_then(|i| self.index.get(i))
        else {
            return Err(Error::Storage {
                kind: std::io::ErrorKind::NotFound,
                reason: format!("message {seq} is in no segment"),
            });
        };
        while s < seq {
            let batch = self.read_batch(s)?;
            let n = ((seq - s) as usize).min(batch.messages.len());
            bytes += (batch.messages[..n].iter())
                .map(|m| m.len() as u64)
                .sum::<u64>();
            s += n as u64;
            self.ahead.put(batch);
        }
        Ok(bytes)
    }
}

/// Read into `buf` from `at` until it is full or the file ends; the bytes
/// read.
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Store for Journal {
    fn append(&mut self, seq: Seq, data: &Bytes) -> Result<()> {
        let before = self.held.len();
        let at = self.active_len + before as u64;
        encode(&mut self.held, Kind::Message, seq, data);
        if let Err(e) = self.flush() {
            self.held.truncate(before);
            return Err(e);
        }
        let base = *self.segments.back().expect("a segment");
        if (self.index.back()).is_none_or(|e| e.base != base || at >= e.at + STRIDE) {
            let before = self.bytes;
            self.index.push_back(IndexEntry {
                seq,
                base,
                at,
                before,
            });
        }
        self.bytes += data.len() as u64;
        self.next = seq + 1;
        self.maybe_roll();
        self.write_ahead();
        Ok(())
    }

    fn ack(&mut self, group: &str, seq: Seq) {
        if let Some(mark) = self.marks.get_mut(group) {
            mark.ack(seq);
        }
        encode(&mut self.held, Kind::Ack, seq, group.as_bytes());
        self.flush_quietly();
    }

    fn start_group(&mut self, group: &str, offset: Seq) {
        self.marks.insert(group.into(), Mark::at(offset));
        encode(&mut self.held, Kind::Group, offset, group.as_bytes());
        self.flush_quietly();
    }

    fn forget_group(&mut self, group: &str, first: Seq) {
        self.marks.remove(group);
        encode(&mut self.held, Kind::Forget, first, group.as_bytes());
        self.flush_quietly();
    }

    fn reset(&mut self, next: Seq) {
        for mark in self.marks.values_mut() {
            *mark = Mark::at(next);
        }
        self.first = next;
        self.next = next;
        self.ahead = ReadAhead::default();
        // A new segment that starts with nothing held; every older one goes.
        self.held.clear();
        if self.segments.back() == Some(&next) {
            // Nothing was written since the active segment began.
            self.checkpoint();
            if self.flush().is_ok() {
                self.delete_passed();
            }
            return;
        }
        match self.roll() {
            Ok(()) => self.delete_passed(),
            Err(e) => {
                // Keep the reset in the old segment instead.
                tracing::warn!(topic = %self.name, "{e}");
                self.checkpoint();
                self.flush_quietly();
            }
        }
    }

    fn settings(&mut self, config: &TopicConfig, closed: bool) {
        match write_meta(&self.dir, &Meta::new(&self.name, config, closed), true) {
            Ok(grew) => self.keeping.tally.disk(grew),
            Err(e) => tracing::warn!(topic = %self.name, "{e}"),
        }
    }

    fn trimmed(&mut self, first: Seq) {
        self.first = first;
        (self.ahead.batches).retain(|b| b.first + b.messages.len() as u64 > first);
        // A segment goes only once the acks that let it go are kept: a
        // restart must not find a group placed before the oldest segment.
        if self.segments.len() > 1 && self.segments[1] <= first && self.flush().is_ok() {
            self.delete_passed();
        }
    }

    fn before_delivery(&mut self) -> Result<()> {
        self.flush()
    }

    fn memory(&self) -> Option<u64> {
        Some(self.keeping.memory)
    }

    fn bytes_from(&mut self, seq: Seq) -> Option<u64> {
        match self.bytes_before(seq) {
            Ok(before) => Some(self.bytes - before),
            Err(e) => {
                tracing::warn!(topic = %self.name, "{e}");
                None
            }
        }
    }

    fn read(&mut self, seq: Seq) -> Result<Bytes> {
        if seq < self.first {
            return Err(Error::Storage {
                kind: std::io::ErrorKind::NotFound,
                reason: format!("message {seq} is in no segment"),
            });
        }
        if let Some(data) = self.ahead.get(seq) {
            return Ok(data);
        }
        let batch = self.read_batch(seq)?;
        let data = batch.messages[(seq - batch.first) as usize].clone();
        self.ahead.put(batch);
        Ok(data)
    }

    fn removed(&mut self) {
        // Renamed first (`ID.removed`): a directory of that name is a
        // topic half removed, which the next start finishes removing (a
        // topic directory without its settings file stops the start).
        let had = super::dir_size(&self.dir);
        let gone = self.dir.with_extension(REMOVED);
        let dir = match fs::rename(&self.dir, &gone) {
            Ok(()) => gone,
            Err(_) => self.dir.clone(),
        };
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!("remove {}: {e}", dir.display());
        }
        let left = super::dir_size(&dir);
        self.keeping.tally.disk(left as i64 - had as i64);
    }
}
