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
    /// One per held message, oldest first.
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
        self.first + self.entries.len() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn push(&mut self, data: &Bytes) {
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

    /// The message `seq` (which must be held).
    pub(crate) fn get(&mut self, seq: Seq) -> Bytes {
        let Entry { at, len } = self.entries[(seq - self.first) as usize];
        if at & LARGE != 0 {
            return self.large[((at & !LARGE) - self.large_first) as usize].clone();
        }
        if len == 0 {
            return Bytes::new();
        }
        if at >= self.open_at {
            self.seal();
        }
        let i = self.sealed.partition_point(|p| p.0 <= at) - 1;
        let (start, piece) = &self.sealed[i];
        let from = (at - start) as usize;
        piece.slice(from..from + len as usize)
    }

    /// The length of message `seq` (which must be held).
    pub(crate) fn size(&self, seq: Seq) -> u64 {
        let Entry { at, len } = self.entries[(seq - self.first) as usize];
        if at & LARGE != 0 {
            return self.large[((at & !LARGE) - self.large_first) as usize].len() as u64;
        }
        len as u64
    }

    /// Drop the messages before `seq`.
    pub(crate) fn trim(&mut self, seq: Seq) {
        let n = (seq - self.first) as usize;
        for entry in self.entries.drain(..n) {
            if entry.at & LARGE != 0 {
                let large = self.large.pop_front().map_or(0, |m| m.len());
                self.bytes -= large as u64;
                self.large_first += 1;
            } else {
                self.bytes -= entry.len as u64;
            }
        }
        self.first = seq;
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
    }

    /// Drop every message; the next keeps counting.
    pub(crate) fn clear(&mut self) {
        self.first = self.next();
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
                let seq = log.first() + (round as u64 % 5).min(log.len() as u64 - 1);
                assert_eq!(log.get(seq), expect[seq as usize]);
            }
            if round % 4 == 0 {
                let to = log.first() + (log.len() as u64 / 2);
                for s in log.first()..log.next() {
                    assert_eq!(log.get(s), expect[s as usize], "seq {s}");
                }
                log.trim(to);
            }
        }
        for s in log.first()..log.next() {
            assert_eq!(log.get(s), expect[s as usize]);
        }
        let held: usize = expect[log.first() as usize..].iter().map(Bytes::len).sum();
        assert_eq!(log.bytes(), held as u64);
        let next = log.next();
        log.clear();
        assert_eq!((log.first(), log.next(), log.len()), (next, next, 0));
        assert_eq!(log.bytes(), 0);
        log.push(&msg(1, 10));
        assert_eq!(log.get(next), msg(1, 10));
    }

    #[test]
    fn handed_out_slices_survive_trim_and_reuse() {
        let mut log = Log::new();
        let mut out = Vec::new();
        for i in 0..10_000 {
            let m = msg(i, 40);
            log.push(&m);
            out.push((log.get(i as u64), m));
            log.trim(i as u64 + 1);
        }
        assert!(out.iter().all(|(got, want)| got == want));
        assert!(log.sealed.is_empty());
    }
}
