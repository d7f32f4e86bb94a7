//! A topic's held messages, by sequence number, in little memory: small
//! messages copied side by side into shared chunks, large ones kept as the
//! `Bytes` they came in.
//!
//! Why not a `VecDeque<Bytes>`: a `Bytes` is 32 bytes, and a message that is
//! a slice of a received frame keeps the whole frame (and its allocation)
//! alive. Copying a small message into a chunk costs less than that copy's
//! size in bookkeeping saved; a message handed out is a slice of its chunk
//! (a reference count, no allocation). Held messages then cost their
//! payload and a 12-byte entry each (issue 5: under 32 bytes beyond the
//! payload for a queued 64-byte message).
//!
//! A log whose messages are also kept elsewhere (the durable engine's
//! journal) may let the oldest go from memory while still holding them
//! (`spill`): the messages from `first` to `resident` are held but not
//! here, and cost nothing each; the topic reads them back from its store.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::Seq;

/// Messages up to this size are copied into chunks; larger ones are kept.
const SMALL: usize = 1024;
/// A chunk's first size, so an idle topic holds little.
const CHUNK_MIN: usize = 512;
/// The largest chunk: the most a chunk wastes is `SMALL` at its end.
const CHUNK_MAX: usize = 64 * 1024;
/// In `Entry::at`, marks a large message (the rest is its index).
const LARGE: u64 = 1 << 63;
/// What an entry costs beyond its payload, counted in `resident_bytes`.
const ENTRY: u64 = std::mem::size_of::<Entry>() as u64;

/// Where one held message is. Packed: 12 bytes instead of 16.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Entry {
    /// A small message's position in the chunk stream, or `LARGE` and the
    /// large message's index.
    at: u64,
    /// A small message's length.
    len: u32,
}

/// The held messages of one topic.
pub(crate) struct Log {
    /// The sequence number of the first held message.
    first: Seq,
    /// The sequence number of the first message in memory (`entries[0]`):
    /// those from `first` to here were spilled (held, kept elsewhere).
    resident: Seq,
    /// The payload and entry bytes of the messages in memory.
    resident_bytes: u64,
    /// One per message in memory, oldest first.
    entries: VecDeque<Entry>,
    /// Chunk pieces that messages were handed out from, with their
    /// positions in the chunk stream, in order. A piece is dropped once no
    /// held message lies in it (readers' slices keep their bytes alive).
    sealed: VecDeque<(u64, Bytes)>,
    /// The chunk being filled; its written bytes are not yet in `sealed`.
    open: BytesMut,
    /// The chunk-stream position of `open`'s first byte.
    open_at: u64,
    /// Large messages held, in order.
    large: VecDeque<Bytes>,
    /// The index of `large`'s first message.
    large_first: u64,
    /// The bytes of the held messages.
    bytes: u64,
}

impl Log {
    pub(crate) fn new() -> Log {
        Log {
            first: 0,
            resident: 0,
            resident_bytes: 0,
            entries: VecDeque::new(),
            sealed: VecDeque::new(),
            open: BytesMut::new(),
            open_at: 0,
            large: VecDeque::new(),
            large_first: 0,
            bytes: 0,
        }
    }

    /// The bytes of the held messages.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The oldest held sequence number.
    pub(crate) fn first(&self) -> Seq {
        self.first
    }

    /// The sequence number the next message gets.
    pub(crate) fn next(&self) -> Seq {
        self.resident + self.entries.len() as u64
    }

    /// How many messages are held (in memory or spilled).
    pub(crate) fn len(&self) -> u64 {
        self.next() - self.first
    }

    /// What the messages in memory cost, payloads and entries.
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    pub(crate) fn push(&mut self, data: &Bytes) {
        self.resident_bytes += data.len() as u64 + ENTRY;
        self.bytes += data.len() as u64;
        if data.len() > SMALL {
            let index = self.large_first + self.large.len() as u64;
            self.large.push_back(data.clone());
            self.entries.push_back(Entry {
                at: LARGE | index,
                len: 0,
            });
            return;
        }
        if self.open.capacity() - self.open.len() < data.len() {
            self.seal();
            let held = self.open_at - self.sealed.front().map_or(self.open_at, |p| p.0);
            let size = (2 * held as usize).clamp(CHUNK_MIN, CHUNK_MAX);
            self.open = BytesMut::with_capacity(size);
        }
        let at = self.open_at + self.open.len() as u64;
        self.open.extend_from_slice(data);
        self.entries.push_back(Entry {
            at,
            len: data.len() as u32,
        });
    }

    /// Move what is written in the open chunk to `sealed`, so it can be
    /// handed out.
    fn seal(&mut self) {
        if !self.open.is_empty() {
            let piece = self.open.split().freeze();
            let at = self.open_at;
            self.open_at += piece.len() as u64;
            self.sealed.push_back((at, piece));
        }
    }

    /// The message `seq` (which must be held); `None` if it was spilled.
    pub(crate) fn get(&mut self, seq: Seq) -> Option<Bytes> {
        let Entry { at, len } = *self.entries.get(seq.checked_sub(self.resident)? as usize)?;
        if at & LARGE != 0 {
            return Some(self.large[((at & !LARGE) - self.large_first) as usize].clone());
        }
        if len == 0 {
            return Some(Bytes::new());
        }
        if at >= self.open_at {
            self.seal();
        }
        let i = self.sealed.partition_point(|p| p.0 <= at) - 1;
        let (start, piece) = &self.sealed[i];
        let from = (at - start) as usize;
        Some(piece.slice(from..from + len as usize))
    }

    /// The length of message `seq` (which must be held); `None` if it was
    /// spilled.
    pub(crate) fn size(&self, seq: Seq) -> Option<u64> {
        let Entry { at, len } = *self.entries.get(seq.checked_sub(self.resident)? as usize)?;
        if at & LARGE != 0 {
            return Some(self.large[((at & !LARGE) - self.large_first) as usize].len() as u64);
        }
        Some(len as u64)
    }

    /// Drop the messages before `seq`; `spilled` is the bytes of those
    /// of them no longer in memory (the caller read their sizes back).
    pub(crate) fn trim(&mut self, seq: Seq, spilled: u64) {
        self.first = seq;
        self.bytes -= spilled;
        if seq > self.resident {
            self.forget_before(seq, true);
        }
    }

    /// The first message in memory: those before it (from `first`) were
    /// spilled.
    pub(crate) fn resident(&self) -> Seq {
        self.resident
    }

    /// Let the oldest messages in memory go (they stay held, kept
    /// elsewhere) until those left cost at most `bytes`.
    pub(crate) fn spill(&mut self, bytes: u64) {
        let (mut to, mut left) = (self.resident, self.resident_bytes);
        while left > bytes && to < self.next() {
            left -= self.size(to).expect("in memory") + ENTRY;
            to += 1;
        }
        if to > self.resident {
            self.forget_before(to, false);
        }
    }

    /// Drop from memory the messages before `seq` (at most `next`), and,
    /// `trimmed`, from the held bytes.
    fn forget_before(&mut self, seq: Seq, trimmed: bool) {
        let to = seq.min(self.next());
        let n = (to - self.resident) as usize;
        for entry in self.entries.drain(..n) {
            if entry.at & LARGE != 0 {
                let large = self.large.pop_front().map_or(0, |m| m.len()) as u64;
                self.resident_bytes -= large + ENTRY;
                if trimmed {
                    self.bytes -= large;
                }
                self.large_first += 1;
            } else {
                self.resident_bytes -= entry.len as u64 + ENTRY;
                if trimmed {
                    self.bytes -= entry.len as u64;
                }
            }
        }
        self.resident = to;
        match self.entries.front().map(|e| e.at) {
            None => self.forget_chunks(),
            // Pieces wholly before the first held small message go. (Behind
            // a large one they wait for the next trim.)
            Some(at) if at & LARGE == 0 => {
                while let Some((start, piece)) = self.sealed.front() {
                    if start + piece.len() as u64 > at {
                        break;
                    }
                    self.sealed.pop_front();
                }
            }
            Some(_) => {}
        }
    }

    /// Drop every message; the next gets `seq` (a log read back from disk
    /// starts where it was).
    pub(crate) fn restart_at(&mut self, seq: Seq) {
        self.clear();
        self.first = seq;
        self.resident = seq;
    }

    /// Hold the messages from `first` to `next`, none of them in memory
    /// (a log read back from disk, read on from its store).
    pub(crate) fn restore_spilled(&mut self, first: Seq, next: Seq) {
        self.restart_at(first);
        self.resident = next;
    }

    /// The held messages' bytes are `bytes` (a restored log's, read back).
    pub(crate) fn set_bytes(&mut self, bytes: u64) {
        self.bytes = bytes;
    }

    /// Drop every message; the next keeps counting.
    pub(crate) fn clear(&mut self) {
        self.first = self.next();
        self.resident = self.first;
        self.resident_bytes = 0;
        self.entries.clear();
        self.large_first += self.large.len() as u64;
        self.large.clear();
        self.bytes = 0;
        self.forget_chunks();
    }

    /// No small message is held: drop the pieces, reuse the open chunk.
    fn forget_chunks(&mut self) {
        self.sealed.clear();
        self.open_at += self.open.len() as u64;
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize, len: usize) -> Bytes {
        let mut v = vec![(i % 251) as u8; len];
        if len >= 8 {
            v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        Bytes::from(v)
    }

    #[test]
    fn holds_small_and_large_in_order() {
        let mut log = Log::new();
        let sizes = [0, 1, 64, SMALL, SMALL + 1, 3, 100_000, 7, 900];
        let mut expect = Vec::new();
        for round in 0..300 {
            let i = expect.len();
            let m = msg(i, sizes[(round * 7) % sizes.len()]);
            log.push(&m);
            expect.push(m);
            // Read some, trim some, at varying paces.
            if round % 3 == 0 {
                let seq = log.first() + (round as u64 % 5).min(log.len() - 1);
                assert_eq!(log.get(seq).unwrap(), expect[seq as usize]);
            }
            if round % 4 == 0 {
                let to = log.first() + (log.len() / 2);
                for s in log.first()..log.next() {
                    assert_eq!(log.get(s).unwrap(), expect[s as usize], "seq {s}");
                }
                log.trim(to, 0);
            }
        }
        for s in log.first()..log.next() {
            assert_eq!(log.get(s).unwrap(), expect[s as usize]);
        }
        let held: usize = expect[log.first() as usize..].iter().map(Bytes::len).sum();
        assert_eq!(log.bytes(), held as u64);
        let next = log.next();
        log.clear();
        assert_eq!((log.first(), log.next(), log.len()), (next, next, 0u64));
        assert_eq!(log.bytes(), 0);
        log.push(&msg(1, 10));
        assert_eq!(log.get(next).unwrap(), msg(1, 10));
    }

    #[test]
    fn handed_out_slices_survive_trim_and_reuse() {
        let mut log = Log::new();
        let mut out = Vec::new();
        for i in 0..10_000 {
            let m = msg(i, 40);
            log.push(&m);
            out.push((log.get(i as u64).unwrap(), m));
            log.trim(i as u64 + 1, 0);
        }
        assert!(out.iter().all(|(got, want)| got == want));
        assert!(log.sealed.is_empty());
    }

    #[test]
    fn spilled_messages_are_held_but_not_in_memory() {
        let mut log = Log::new();
        for i in 0..1000 {
            log.push(&msg(i, 64));
            if log.resident_bytes() > 4096 {
                log.spill(3072);
            }
        }
        assert!(log.resident_bytes() <= 4096);
        assert_eq!((log.first(), log.next(), log.len()), (0, 1000, 1000));
        let resident = (0..1000).find(|&s| log.get(s).is_some()).unwrap();
        assert!(resident > 900 && log.size(resident - 1).is_none());
        for s in resident..1000 {
            assert_eq!(log.get(s).unwrap(), msg(s as usize, 64));
        }
        // A handful of 64 KiB pieces at most, not the whole history.
        assert!(log.sealed.len() <= 2, "{} pieces", log.sealed.len());
        log.trim(500, 0);
        assert_eq!((log.first(), log.len()), (500, 500));
        log.trim(999, 0);
        assert_eq!(log.get(999).unwrap(), msg(999, 64));
        log.restore_spilled(10, 20);
        assert_eq!((log.first(), log.next(), log.resident_bytes()), (10, 20, 0));
        assert!(log.get(10).is_none());
        log.push(&msg(20, 64));
        assert_eq!(log.get(20).unwrap(), msg(20, 64));
    }
}
