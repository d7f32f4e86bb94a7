//! Directory reads: a snapshot of `FileTree::readdir`, taken when a read
//! starts at offset 0, served as 9P2000 stat records at byte offsets (Tread)
//! or as 9P2000.L dirents whose offset is the next entry's index (Treaddir).

use bytes::{Bytes, BytesMut};

use crate::fs::{self, FileInfo, errno};
use crate::proto::codec::{encode_dirent, encode_stat};
use crate::proto::{Dialect, Qid};

use super::dialect;

/// One open directory's listing, as of its last read at offset 0.
#[derive(Debug, Default)]
pub struct DirSnapshot {
    /// The entries, in the tree's order.
    entries: Vec<FileInfo>,
    /// For Tread: every entry's stat record, concatenated (built on first use).
    records: Bytes,
    /// For Tread: the byte offset where each record starts, and the total.
    bounds: Vec<usize>,
}

fn bad_offset() -> fs::Error {
    fs::Error::new(errno::EINVAL, "invalid offset for a listing")
}

impl DirSnapshot {
    pub fn new(entries: Vec<FileInfo>) -> DirSnapshot {
        DirSnapshot {
            entries,
            ..DirSnapshot::default()
        }
    }

    /// A Tread of the directory: whole stat records from byte `offset`
    /// (0 or where the previous read ended), at most `count` bytes.
    pub fn read_stats(
        &mut self,
        offset: u64,
        count: u32,
        d: Dialect,
        n_uname: u32,
    ) -> fs::Result<Bytes> {
        if self.bounds.is_empty() {
            let mut buf = BytesMut::new();
            for info in &self.entries {
                self.bounds.push(buf.len());
                encode_stat(&dialect::stat(info, n_uname), d, &mut buf);
            }
            self.bounds.push(buf.len());
            self.records = buf.freeze();
        }
        let start = usize::try_from(offset).map_err(|_| bad_offset())?;
        let first = self
            .bounds
            .binary_search(&start)
            .map_err(|_| bad_offset())?;
        let limit = start + count as usize;
        let end = self.bounds[first..]
            .iter()
            .take_while(|b| **b <= limit)
            .last()
            .copied()
            .unwrap_or(start);
        if end == start && start < self.records.len() {
            return Err(fs::Error::new(
                errno::EINVAL,
                "invalid read count: too small for one entry",
            ));
        }
        Ok(self.records.slice(start..end))
    }

    /// A Treaddir: dirents from entry `offset` (".." and "." come first, as
    /// entries 0 and 1, with the qids given), at most `count` bytes.
    pub fn read_dirents(&self, offset: u64, count: u32, dot: Qid, dotdot: Qid) -> Bytes {
        let mut buf = BytesMut::new();
        let dots = [(".", dot), ("..", dotdot)];
        let total = self.entries.len() as u64 + 2;
        let mut i = offset;
        while i < total {
            let mark = buf.len();
            let next = i + 1;
            match i {
                0 | 1 => {
                    let (name, qid) = dots[i as usize];
                    encode_dirent(&qid, next, dialect::DT_DIR, name, &mut buf)
                }
                _ => {
                    let e = &self.entries[(i - 2) as usize];
                    encode_dirent(&e.qid, next, dialect::dirent_type(e), &e.name, &mut buf)
                }
            }
            if buf.len() > count as usize {
                buf.truncate(mark);
                break;
            }
            i = next;
        }
        buf.freeze()
    }
}
