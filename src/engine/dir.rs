//! Directory reads: `FileTree::readdir_page` pages, fetched as a read goes
//! and served as 9P2000 stat records at byte offsets (Tread) or as
//! 9P2000.L dirents whose offset is the next entry's index (Treaddir).
//!
//! An open directory holds only the entries from where its last read
//! started on (a page or two), never the whole listing: listing a
//! directory of a million entries costs the same memory as listing one of
//! ten, and each read costs what it returns. Reads go forward from where
//! the last one started (as getdents, `ls` and `9p ls` read; Linux may
//! read again from the last entry it could not hand on); a read at offset
//! 0 starts the listing again, and one behind the entries held starts it
//! again and skips forward to its offset.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::fs::{self, DirPos, FileInfo, errno};
use crate::proto::codec::{encode_dirent, encode_stat};
use crate::proto::{Dialect, Qid};

use super::dialect;

/// How many entries one `readdir_page` call asks for.
pub const PAGE: usize = 512;

/// The tree's next page of a directory from a position (`None`: its
/// start): its entries, and where the listing carries on (`None`: done).
pub type Fetch<'a> = dyn FnMut(Option<&DirPos>) -> fs::Result<(Vec<FileInfo>, Option<DirPos>)> + 'a;

/// One open directory's place in its listing.
#[derive(Debug, Default)]
pub struct DirReader {
    /// Entries from index `base` on, in the tree's order.
    window: VecDeque<FileInfo>,
    /// The index of `window[0]` in the listing.
    base: u64,
    /// For Tread: the byte offset of `window[0]`'s stat record.
    base_byte: u64,
    /// Where the tree's listing carries on: `Some(None)` from its start,
    /// `None` once every entry has been fetched.
    next: Option<Option<DirPos>>,
}

fn bad_offset() -> fs::Error {
    fs::Error::new(errno::EINVAL, "invalid offset for a listing")
}

impl DirReader {
    /// A listing not yet started: the first read starts it.
    pub fn new() -> DirReader {
        let mut d = DirReader::default();
        d.restart();
        d
    }

    fn restart(&mut self) {
        self.window.clear();
        self.base = 0;
        self.base_byte = 0;
        self.next = Some(None);
    }

    /// Fetch the next page onto the window; false at the end.
    fn more(&mut self, fetch: &mut Fetch<'_>) -> fs::Result<bool> {
        let Some(from) = self.next.take() else {
            return Ok(false);
        };
        let (entries, next) = fetch(from.as_ref())?;
        self.next = next.map(Some);
        self.window.extend(entries);
        Ok(true)
    }

    /// Drop the entry at the front, `size` bytes as a stat record.
    fn drop_front(&mut self, size: u64) {
        self.window.pop_front();
        self.base += 1;
        self.base_byte += size;
    }

    /// The entry at index `i`, fetching pages as needed; `None` past the end.
    fn entry(&mut self, i: u64, fetch: &mut Fetch<'_>) -> fs::Result<Option<&FileInfo>> {
        while i >= self.base + self.window.len() as u64 {
            if !self.more(fetch)? {
                return Ok(None);
            }
        }
        Ok(self.window.get((i - self.base) as usize))
    }

    /// A Tread of the directory: whole stat records from byte `offset`
    /// (0, or where an earlier read ended), at most `count` bytes.
    pub fn read_stats(
        &mut self,
        offset: u64,
        count: u32,
        d: Dialect,
        n_uname: u32,
        fetch: &mut Fetch<'_>,
    ) -> fs::Result<Bytes> {
        let record = |info: &FileInfo, buf: &mut BytesMut| {
            encode_stat(&dialect::stat(info, n_uname), d, buf);
        };
        if offset == 0 || offset < self.base_byte {
            self.restart();
        }
        // Skip to the record at `offset`.
        let mut scratch = BytesMut::new();
        while self.base_byte < offset {
            let Some(info) = self.entry(self.base, fetch)? else {
                return Err(bad_offset());
            };
            scratch.clear();
            record(info, &mut scratch);
            let size = scratch.len() as u64;
            if self.base_byte + size > offset {
                return Err(bad_offset());
            }
            self.drop_front(size);
        }
        let mut buf = BytesMut::new();
        let mut i = self.base;
        while let Some(info) = self.entry(i, fetch)? {
            let mark = buf.len();
            record(info, &mut buf);
            if buf.len() > count as usize {
                buf.truncate(mark);
                if mark == 0 {
                    return Err(fs::Error::new(
                        errno::EINVAL,
                        "invalid read count: too small for one entry",
                    ));
                }
                break;
            }
            i += 1;
        }
        Ok(buf.freeze())
    }

    /// A Treaddir: dirents from entry `offset` (".." and "." come first, as
    /// entries 0 and 1, with the qids given), at most `count` bytes.
    pub fn read_dirents(
        &mut self,
        offset: u64,
        count: u32,
        dot: Qid,
        dotdot: Qid,
        fetch: &mut Fetch<'_>,
    ) -> fs::Result<Bytes> {
        // Entries of the listing are numbered from 2.
        let first = offset.saturating_sub(2);
        if offset == 0 || first < self.base {
            self.restart();
        }
        while self.base < first {
            if self.entry(self.base, fetch)?.is_none() {
                break;
            }
            self.drop_front(0);
        }
        let mut buf = BytesMut::new();
        let dots = [(".", dot), ("..", dotdot)];
        let mut i = offset;
        loop {
            let mark = buf.len();
            // No entry lies past the last offset a dirent can name.
            let Some(next) = i.checked_add(1) else { break };
            match i {
                0 | 1 => {
                    let (name, qid) = dots[i as usize];
                    encode_dirent(&qid, next, dialect::DT_DIR, name, &mut buf)
                }
                _ => match self.entry(i - 2, fetch)? {
                    Some(e) => {
                        encode_dirent(&e.qid, next, dialect::dirent_type(e), &e.name, &mut buf)
                    }
                    None => break,
                },
            }
            if buf.len() > count as usize {
                buf.truncate(mark);
                if mark == 0 {
                    // An empty reply would mean the end of the directory.
                    return Err(fs::Error::new(
                        errno::EINVAL,
                        "invalid read count: too small for one entry",
                    ));
                }
                break;
            }
            i = next;
        }
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::decode_stat;

    /// A directory of `n` entries served in pages of 7, counting fetches.
    fn tree(
        n: usize,
    ) -> impl FnMut(Option<&DirPos>) -> fs::Result<(Vec<FileInfo>, Option<DirPos>)> {
        move |from| {
            let start: usize = from.map_or(0, |p| p.parse().unwrap());
            let end = (start + 7).min(n);
            let page = (start..end)
                .map(|i| FileInfo {
                    name: format!("e{i:05}"),
                    qid: Qid {
                        path: i as u64,
                        ..Qid::default()
                    },
                    ..FileInfo::default()
                })
                .collect();
            Ok((page, (end < n).then(|| end.to_string())))
        }
    }

    /// The names of Rreaddir data, and the last dirent's offset.
    fn dirents(mut data: &[u8]) -> (Vec<String>, u64) {
        let (mut names, mut last) = (Vec::new(), 0);
        while !data.is_empty() {
            // qid[13] offset[8] type[1] name[s]
            last = u64::from_le_bytes(data[13..21].try_into().unwrap());
            let len = u16::from_le_bytes(data[22..24].try_into().unwrap()) as usize;
            names.push(String::from_utf8(data[24..24 + len].to_vec()).unwrap());
            data = &data[24 + len..];
        }
        (names, last)
    }

    #[test]
    fn dirents_stream_in_pages_with_stable_offsets() {
        let mut fetch = tree(1000);
        let mut d = DirReader::new();
        let (mut all, mut offset) = (Vec::new(), 0);
        loop {
            let data = d
                .read_dirents(offset, 100, Qid::default(), Qid::default(), &mut fetch)
                .unwrap();
            if data.is_empty() {
                break;
            }
            let (names, last) = dirents(&data);
            // As Linux may: read again from the offset of the last entry
            // handed out, then go on.
            let again = d
                .read_dirents(last - 1, 100, Qid::default(), Qid::default(), &mut fetch)
                .unwrap();
            assert_eq!(dirents(&again).0[0], *names.last().unwrap());
            all.extend(names);
            offset = last;
            assert!(d.window.len() <= 2 * 7 + 10, "holds {}", d.window.len());
        }
        let want: Vec<String> = [".", ".."]
            .iter()
            .map(|s| s.to_string())
            .chain((0..1000).map(|i| format!("e{i:05}")))
            .collect();
        assert_eq!(all, want);
        // A seek back starts again and skips forward.
        let data = d
            .read_dirents(500, 100, Qid::default(), Qid::default(), &mut fetch)
            .unwrap();
        assert_eq!(dirents(&data).0[0], "e00498");
    }

    /// The last offset a dirent can name: an empty reply, no overflow
    /// panic (a Treaddir at offset u64::MAX dropped the connection).
    #[test]
    fn dirents_at_the_last_offset_are_none() {
        let mut fetch = tree(20);
        let mut d = DirReader::new();
        for offset in [u64::MAX, u64::MAX - 1, u64::MAX - 2, 1 << 63] {
            let data = d
                .read_dirents(offset, 100, Qid::default(), Qid::default(), &mut fetch)
                .unwrap();
            assert!(data.is_empty(), "offset {offset}");
        }
    }

    /// A count too small for the next entry is refused, not answered
    /// empty (which would read as the end of the directory); at the end
    /// it is empty.
    #[test]
    fn dirents_count_too_small_for_one_entry_is_refused() {
        let mut fetch = tree(3);
        let mut d = DirReader::new();
        for count in 1..=24 {
            let e = d
                .read_dirents(0, count, Qid::default(), Qid::default(), &mut fetch)
                .unwrap_err();
            assert!(e.to_string().contains("too small for one entry"), "{e}");
            assert!(
                d.read_dirents(3, count, Qid::default(), Qid::default(), &mut fetch)
                    .is_err()
            );
        }
        let end = d
            .read_dirents(5, 1, Qid::default(), Qid::default(), &mut fetch)
            .unwrap();
        assert!(end.is_empty());
    }

    #[test]
    fn stat_records_stream_in_pages() {
        let mut fetch = tree(300);
        let mut d = DirReader::new();
        let (mut names, mut offset) = (Vec::new(), 0u64);
        loop {
            let data = d
                .read_stats(offset, 500, Dialect::P2000, 0, &mut fetch)
                .unwrap();
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            let mut rest = data;
            while !rest.is_empty() {
                let (stat, used) = decode_stat(&rest, Dialect::P2000).unwrap();
                names.push(stat.name);
                rest = rest.slice(used..);
            }
        }
        assert_eq!(names.len(), 300);
        assert_eq!(names[299], "e00299");
        // Inside a record: refused; too small for one: refused.
        assert!(d.read_stats(1, 500, Dialect::P2000, 0, &mut fetch).is_err());
        assert!(d.read_stats(0, 10, Dialect::P2000, 0, &mut fetch).is_err());
    }
}
