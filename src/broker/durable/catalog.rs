//! The catalog: every topic made and removed since the server started, one
//! line each in `DIR/topics/catalog`, so that making a topic writes one
//! line instead of a directory and two files (each a new inode, which is
//! what a file system is slowest at: 0.05–1 ms each on this machine's
//! disk). A topic's directory is made at its first write (`lazy`); until
//! then its catalog line is all there is of it on disk, and it holds no
//! open file.
//!
//! ```text
//! 5d2f0c1a {"create":7,"meta":{"name":"jobs","capacity":0,...}}
//! 9a31be04 {"remove":7}
//! ```
//! Each line is the CRC-32C of its JSON (8 hex digits), a space, the JSON.
//! Lines are appended (`O_APPEND`) and reach the disk with the catalog's
//! sync (see `sync`), as messages do: a process crash loses none.
//!
//! Reading it back (`read`): a last line with no end of line is a write a
//! crash cut, and is dropped; a whole line that does not check, last or
//! not, is damage and stops the start with the file, line and reason. A topic whose
//! directory exists is read from its directory (which wins over its
//! catalog line for settings); a `remove` line wins over a directory (its
//! removal was cut short: it is finished). At start the catalog is written
//! again with only the topics that have no directory (a temporary file
//! renamed over it), so it never holds more lines than topics made since
//! the start plus the idle ones from before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::journal::{Meta, storage};
use super::recover::RecoverError;
use crate::broker::tally::Tally;
use crate::broker::{Error, Result, TopicId};

/// The catalog's file name, in the topics directory.
pub(crate) const CATALOG: &str = "catalog";

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Create { create: TopicId, meta: Meta },
    Remove { remove: TopicId },
}

/// What the catalog says: the topics made and not removed, and those
/// removed.
#[derive(Default)]
pub(crate) struct Read {
    pub(crate) made: BTreeMap<TopicId, Meta>,
    /// Where each topic of `made` has its line.
    at: HashMap<TopicId, u64>,
    pub(crate) removed: BTreeSet<TopicId>,
    /// Whole lines read, and whether a cut one followed them.
    lines: usize,
    cut: bool,
}

/// Read the catalog at `path` (none: nothing made).
pub(crate) fn read(path: &Path) -> Result<Read, RecoverError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(source) => {
            return Err(RecoverError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut read = Read::default();
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let mut at = 0;
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        read.lines += 1;
        let this = at;
        at += line.len() as u64;
        match parse(line) {
            Ok(Line::Create { create, meta }) => {
                read.removed.remove(&create);
                read.made.insert(create, meta);
                read.at.insert(create, this);
            }
            Ok(Line::Remove { remove }) => {
                read.made.remove(&remove);
                read.removed.insert(remove);
            }
            // A crash cut the last write short: no end of line.
            Err(_) if last && !line.ends_with(b"\n") => {
                tracing::info!(
                    "{}: dropped line {}, cut short by a crash",
                    path.display(),
                    i + 1
                );
                read.lines -= 1;
                read.cut = true;
            }
            // A whole line that does not check is damage, last or not.
            Err(reason) => {
                return Err(RecoverError::Catalog {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason,
                });
            }
        }
    }
    Ok(read)
}

fn parse(line: &[u8]) -> Result<Line, String> {
    let line = line
        .strip_suffix(b"\n")
        .ok_or("no end of line: cut short")?;
    let (crc, json) = match line.iter().position(|&b| b == b' ') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => return Err("no checksum".into()),
    };
    let crc = std::str::from_utf8(crc)
        .ok()
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or("bad checksum field")?;
    if crc != crc32c::crc32c(json) {
        return Err("checksum does not match".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

fn format(line: &Line) -> Vec<u8> {
    let json = serde_json::to_vec(line).expect("catalog line serializes");
    let mut out = format!("{:08x} ", crc32c::crc32c(&json)).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

/// The catalog, open for appending.
pub(crate) struct Catalog {
    path: PathBuf,
    file: Mutex<File>,
    /// The broker's totals, told of every byte appended.
    tally: Arc<Tally>,
}

impl Catalog {
    /// Write the catalog in `dir` again with the topics in `idle` alone
    /// (synced, then renamed over the old), unless it holds them alone
    /// already (`read`, what it held), and open it for appending; with
    /// where each topic's line is.
    pub(crate) fn rewrite(
        dir: &Path,
        idle: &BTreeMap<TopicId, Meta>,
        read: &Read,
        tally: Arc<Tally>,
    ) -> std::io::Result<(Catalog, HashMap<TopicId, u64>)> {
        let path = dir.join(CATALOG);
        let open = |path: PathBuf| -> std::io::Result<Catalog> {
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            Ok(Catalog {
                path,
                file: Mutex::new(file),
                tally,
            })
        };
        if !read.cut && read.lines == idle.len() && path.exists() {
            return Ok((open(path)?, read.at.clone()));
        }
        let tmp = dir.join("catalog.tmp");
        let mut text = Vec::new();
        let mut at = HashMap::new();
        for (&id, meta) in idle {
            at.insert(id, text.len() as u64);
            text.extend(format(&Line::Create {
                create: id,
                meta: meta.clone(),
            }));
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok((open(path)?, at))
    }

    /// Topic `id` was made with `meta`; where its line is.
    pub(crate) fn made(&self, id: TopicId, meta: Meta) -> Result<u64> {
        self.append(&Line::Create { create: id, meta })
    }

    /// Topic `id` is removed.
    pub(crate) fn removed(&self, id: TopicId) -> Result<()> {
        self.append(&Line::Remove { remove: id }).map(|_| ())
    }

    /// The settings on topic `id`'s line, at `at`.
    pub(crate) fn meta_at(&self, at: u64, id: TopicId) -> Result<Meta> {
        use std::os::unix::fs::FileExt;
        let bad = |reason: String| Error::Storage {
            kind: std::io::ErrorKind::InvalidData,
            reason: format!("{} at {at}: {reason}", self.path.display()),
        };
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        let file = self.file.lock();
        while !line.ends_with(b"\n") {
            let n = file
                .read_at(&mut buf, at + line.len() as u64)
                .map_err(|e| storage("read", &self.path, e))?;
            if n == 0 {
                return Err(bad("the line ends early".into()));
            }
            let end = buf[..n]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(n, |p| p + 1);
            line.extend_from_slice(&buf[..end]);
        }
        drop(file);
        match parse(&line).map_err(bad)? {
            Line::Create { create, meta } if create == id => Ok(meta),
            _ => Err(bad(format!("not topic {id}'s line"))),
        }
    }

    /// Append `line`; where it begins.
    fn append(&self, line: &Line) -> Result<u64> {
        let bytes = format(line);
        let mut file = self.file.lock();
        let len = file
            .metadata()
            .map_err(|e| storage("stat", &self.path, e))?
            .len();
        if let Err(e) = file.write_all(&bytes) {
            // A part written (a full disk) is cut off, so the next line
            // starts a line.
            let _ = file.set_len(len);
            return Err(storage("write", &self.path, e));
        }
        self.tally.disk(bytes.len() as i64);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::TopicConfig;

    fn meta(name: &str) -> Meta {
        Meta::new(name, &TopicConfig::default(), false)
    }

    #[test]
    fn lines_read_back_and_a_cut_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let (c, _) = Catalog::rewrite(dir.path(), &none, &Read::default(), Arc::default()).unwrap();
        c.made(1, meta("a")).unwrap();
        let at = c.made(2, meta("b")).unwrap();
        assert_eq!(c.meta_at(at, 2).unwrap().name, "b");
        assert!(c.meta_at(at, 1).is_err(), "another topic's line");
        c.removed(1).unwrap();
        c.made(3, meta("c")).unwrap();
        let path = dir.path().join(CATALOG);
        let r = read(&path).unwrap();
        assert_eq!(r.made.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(r.removed.iter().copied().collect::<Vec<_>>(), [1]);
        // The last line cut: dropped.
        let text = fs::read(&path).unwrap();
        fs::write(&path, &text[..text.len() - 5]).unwrap();
        let r = read(&path).unwrap();
        assert_eq!(r.made.keys().copied().collect::<Vec<_>>(), [2]);
        // The last line whole but damaged: the start stops.
        let mut bad = text.clone();
        let at = bad.len() - 8;
        bad[at] ^= 1;
        fs::write(&path, &bad).unwrap();
        let e = read(&path).err().expect("stops").to_string();
        assert!(e.contains("damaged line 4: checksum does not match"), "{e}");
        assert!(e.contains("head -n 3"), "{e}");
        // A line before the last damaged: the start stops, saying where.
        let mut bad = text.clone();
        bad[12] ^= 1;
        fs::write(&path, &bad).unwrap();
        let e = read(&path).err().expect("stops").to_string();
        assert!(e.contains("damaged line 1: checksum does not match"), "{e}");
    }
}
