//! Reading a topic back from its directory at start: replay every
//! segment's records, cut off a torn last record, and stop at damage
//! anywhere else.
//!
//! A crash in the middle of a write leaves at most the last record of the
//! last segment incomplete (shorter than it says, or with a wrong checksum
//! and nothing but zeros after it: the active segment's records are
//! written over zeros written ahead): that record was never answered, so
//! it is cut off, with the zeros, and the start goes on. Only a tail with no valid record in it is taken
//! for torn: a damaged length in the middle of the segment also makes its
//! record look cut short, but valid records follow it, and that stops the
//! start like other damage (nothing is cut). Any other record that does not check is damage
//! the log cannot explain (a disk error, an edit): the start stops with
//! the file, the offset and the reason, and the README says how to keep
//! what is intact (truncate the file at that offset and move the later
//! segments away).
//!
//! The messages are not kept: recovery notes where their records are (the
//! journal's sparse index), and the topic reads them back as readers get
//! there, so a start holds no more memory than the index however long the
//! backlog (each segment is read whole once, then let go).

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::journal::{IndexEntry, META, Mark, Meta, STRIDE};
use super::record::{HEADER, Kind, decode};
use crate::broker::{Retention, Seq};

/// What a topic's directory holds.
pub(crate) struct Recovered {
    pub(crate) meta: Meta,
    /// The oldest held message, and the one after the newest.
    pub(crate) first: Seq,
    pub(crate) next: Seq,
    /// Where the message records are (sparse, see `journal`).
    pub(crate) index: VecDeque<IndexEntry>,
    /// The payload bytes of every message read (the index's `before` of
    /// the next).
    pub(crate) bytes: u64,
    pub(crate) marks: BTreeMap<Box<str>, Mark>,
    /// The segments' bases, oldest first.
    pub(crate) segments: VecDeque<Seq>,
}

impl Recovered {
    /// Each group as the topic restores it: its name, the offset it goes
    /// on from, and the delivered messages before that not acked (to
    /// deliver again).
    pub(crate) fn groups(&self) -> Vec<(String, Seq, Vec<Seq>)> {
        (self.marks.iter())
            .map(|(name, mark)| {
                let offset = mark.offset.max(self.first);
                let to = mark.acked.last().map_or(offset, |&s| s + 1).max(offset);
                let redeliver = (offset..to).filter(|s| !mark.acked.contains(s)).collect();
                (name.to_string(), to, redeliver)
            })
            .collect()
    }
}

/// Why a topic's directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: bad settings file: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error(
        "{path}: damaged line {line}: {reason} (to start with the lines before it: \
         head -n {kept} {path} > {path}.kept && mv {path}.kept {path}; of the topics the later \
         lines made, those never written to are lost (the others come back from their \
         directories), and those they removed come back)",
        kept = line - 1
    )]
    Catalog {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{path}: messages are missing: {reason} (restore the missing segment files; or, \
         losing this topic's messages, move its directory away)"
    )]
    Missing { path: PathBuf, reason: String },
    #[error(
        "{path}: damaged record at offset {offset}: {reason} (to start with what comes before it: \
         truncate -s {offset} {path}, and move the later segments of its directory away; \
         their messages are lost)"
    )]
    Damaged {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecoverError + '_ {
    move |source| RecoverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The offset of the first valid record (its checksum right) after `at`
/// in `buf`, if any: what tells damage in the middle of a segment from a
/// torn last write, which has nothing valid after it. (A record found
/// inside a torn message's own payload would stop the start too: the safe
/// side, since nothing is cut.)
fn record_after(buf: &Bytes, at: usize) -> Option<usize> {
    (at + 1..buf.len()).find(|&p| matches!(decode(buf, p), Ok(Some(_))))
}

/// The bytes of the segment files in `dir`.
fn segments_bytes(dir: &Path) -> Result<u64, RecoverError> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.file_name().to_string_lossy().ends_with(".log") {
            bytes += entry.metadata().map_err(io(dir))?.len();
        }
    }
    Ok(bytes)
}

/// Whether the topic in `dir` holds only what a create writes before its
/// settings file: one segment, the first, whose records are one
/// checkpoint of an empty topic (perhaps torn).
fn only_a_first_checkpoint(dir: &Path) -> bool {
    let first = super::journal::segment_name(0);
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let logs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    if logs != [first.clone()] {
        return false;
    }
    let Ok(bytes) = fs::read(dir.join(&first)) else {
        return false;
    };
    let bytes = Bytes::from(bytes);
    match decode(&bytes, 0) {
        Ok(Some((r, end))) => {
            r.kind == Kind::Checkpoint
                && r.n == 0
                && r.rest.is_empty()
                && matches!(
                    decode(&bytes, end),
                    Ok(None) | Err(crate::broker::durable::record::Damage { short: true, .. })
                )
        }
        Err(d) => d.short,
        Ok(None) => true,
    }
}

/// Read the topic in `dir`; `None` if it has no settings file and no
/// record but a create's first checkpoint (a topic created halfway, to be
/// removed); an error if it has more but no settings file.
pub(crate) fn recover(dir: &Path) -> Result<Option<Recovered>, RecoverError> {
    let meta_path = dir.join(META);
    // A create cut short: before its settings file it writes nothing but
    // the first segment's checkpoint (see `Journal::create`), and a power
    // loss before its sync can leave the settings file empty or torn; such
    // a directory is removed.
    let cut_short = || -> Result<bool, RecoverError> {
        Ok(segments_bytes(dir)? == 0 || only_a_first_checkpoint(dir))
    };
    let meta = match fs::read(&meta_path) {
        Ok(text) => match serde_json::from_slice::<Meta>(&text) {
            Ok(meta) => meta,
            Err(_) if cut_short()? => return Ok(None),
            Err(e) => {
                return Err(RecoverError::Meta {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                });
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let held = segments_bytes(dir)?;
            if cut_short()? {
                return Ok(None);
            }
            return Err(RecoverError::Meta {
                path: meta_path,
                reason: format!(
                    "missing, but the directory's segments hold {held} bytes of records \
                     (restore the file, or move the directory away to drop the topic)"
                ),
            });
        }
        Err(e) => return Err(io(&meta_path)(e)),
    };
    let mut segments: Vec<Seq> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
            segments.push(base);
        }
    }
    segments.sort_unstable();
    let base = segments.first().copied().unwrap_or(0);
    let mut r = Recovered {
        meta,
        first: base,
        next: base,
        index: VecDeque::new(),
        bytes: 0,
        marks: BTreeMap::new(),
        segments: segments.iter().copied().collect(),
    };
    // The messages the log holds are those from `held_from` to `next`
    // (none if `held_from` is not before `next`).
    let mut held_from = base;
    for (i, &seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let path = dir.join(super::journal::segment_name(seg));
        let buf = Bytes::from(fs::read(&path).map_err(io(&path))?);
        // A segment begins where the one before it ended (it is named by
        // the sequence number next then).
        if i > 0 && seg != r.next {
            return Err(RecoverError::Missing {
                path,
                reason: format!(
                    "it begins at message {seg}, but the segment before it ends before \
                     message {} (a segment between them is gone)",
                    r.next
                ),
            });
        }
        // Every segment begins with a checkpoint, written before the
        // topic's settings file at create: a sole segment with no record
        // lost its records.
        if buf.is_empty() && segments.len() == 1 {
            return Err(RecoverError::Missing {
                path,
                reason: "the topic's only segment is empty (it should begin with a \
                         checkpoint record; its messages are lost)"
                    .into(),
            });
        }
        let mut at = 0;
        // The offset of this segment's last index entry.
        let mut indexed: Option<usize> = None;
        loop {
            let (rec, after) = match decode(&buf, at) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(damage) => {
                    let claimed = (buf.len() - at >= HEADER).then(|| {
                        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize
                    });
                    // Where the zeros at the end begin (a segment's
                    // records are written over zeros written ahead, so a
                    // write cut off leaves zeros after it, not the end).
                    let data_end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                    let ends_file = claimed.is_some_and(|len| at + HEADER + len >= data_end);
                    let zeros = data_end <= at;
                    let torn = last && (damage.short || ends_file || zeros);
                    if torn
                        && !zeros
                        && let Some(valid) = record_after(&buf, at)
                    {
                        // A damaged length can make a record in the middle
                        // look cut short: a torn write has nothing after it.
                        return Err(RecoverError::Damaged {
                            path,
                            offset: at,
                            reason: format!(
                                "{}, yet a valid record follows at offset {valid}, so \
                                 it is no torn last write",
                                damage.reason
                            ),
                        });
                    }
                    if torn && zeros {
                        // The zeros a segment is written ahead with
                        // (`Journal::write_ahead`), or a torn write's.
                        tracing::debug!("{}: zeros from offset {at}, cut off", path.display());
                    } else if torn {
                        tracing::warn!(
                            "{}: torn last record at offset {at} ({}), cut off",
                            path.display(),
                            damage.reason
                        );
                    }
                    if torn {
                        let f = fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io(&path))?;
                        f.set_len(at as u64).map_err(io(&path))?;
                        f.sync_all().map_err(io(&path))?;
                        break;
                    }
                    return Err(RecoverError::Damaged {
                        path,
                        offset: at,
                        reason: damage.reason,
                    });
                }
            };
            let name = || -> Box<str> { String::from_utf8_lossy(&rec.rest).into() };
            match rec.kind {
                Kind::Message => {
                    if rec.n != r.next {
                        return Err(RecoverError::Damaged {
                            path,
                            offset: at,
                            reason: format!("message {} where {} was next", rec.n, r.next),
                        });
                    }
                    if held_from >= r.next {
                        held_from = rec.n;
                    }
                    if indexed.is_none_or(|i| at as u64 >= i as u64 + STRIDE) {
                        r.index.push_back(IndexEntry {
                            seq: rec.n,
                            base: seg,
                            at: at as u64,
                            before: r.bytes,
                        });
                        indexed = Some(at);
                    }
                    r.bytes += rec.rest.len() as u64;
                    r.next += 1;
                }
                Kind::Ack => {
                    if let Some(mark) = r.marks.get_mut(&name()) {
                        mark.ack(rec.n);
                    }
                }
                Kind::Group => {
                    r.marks.insert(name(), Mark::at(rec.n));
                }
                Kind::Forget => {
                    r.marks.remove(&name());
                    r.first = rec.n;
                    held_from = held_from.max(rec.n);
                }
                Kind::Checkpoint => {
                    r.marks.clear();
                    r.first = rec.n;
                    r.next = r.next.max(rec.n);
                    held_from = held_from.max(rec.n);
                }
            }
            at = after;
        }
    }
    // A segment is deleted only once every group's logged place is past
    // it, so a group placed before the oldest segment means segments
    // went missing (not deleted by the server).
    let base = segments.first().copied().unwrap_or(0);
    if let Some((name, mark)) = r.marks.iter().min_by_key(|(_, m)| m.offset)
        && mark.offset < base
    {
        return Err(RecoverError::Missing {
            path: dir.join(super::journal::segment_name(base)),
            reason: format!(
                "group {name:?} reads next at message {}, but the oldest segment begins at \
                 {base} (the segments before it are gone)",
                mark.offset
            ),
        });
    }
    // With groups, what the slowest needs is held; never less than what
    // the log has. With retention, what the last checkpoint held (the
    // topic applies its limit again once restored: trims are not logged).
    if r.meta.retention() == Retention::None
        && let Some(min) = r.marks.values().map(|m| m.offset).min()
    {
        r.first = min;
    }
    r.first = r.first.max(held_from).min(r.next);
    Ok(Some(r))
}
