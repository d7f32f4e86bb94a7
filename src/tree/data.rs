//! A topic's data file once open: writes cut into messages (framing) and
//! pushed, reads that pull one message and hand it out in pieces, acks, and
//! the Linux read loop.
//!
//! Reads. A read returns at most one message (unless the session asked
//! for batches, below); what does not fit in its
//! count comes in the next reads on the same open file. A pulled message
//! stays unacked in the open file until the next read arrives (which proves
//! the reply carrying its end arrived) or the file is closed; if the
//! connection is lost first, dropping the [`Delivery`] puts it back at the
//! front of its group. So a data file takes one read at a time: a Tread
//! that overlaps (sent while another Tread on the fid was in flight or the
//! reply to the last one unwritten, as from threads or processes sharing a
//! file descriptor) could not prove that reply arrived, and is refused with
//! EBUSY; the engine, which alone sees the connection, says which overlap.
//! A read dropped while it waits (Tflush) has changed
//! nothing: all state changes happen after the broker's pull returns, with
//! no await in between.
//!
//! Batches (sessions attached as `GROUP:batch`). A read that pulls takes
//! the first message as above (waiting for it), then, without waiting,
//! every further message available at that moment while each so far ends
//! in a newline and the next fits the read's count; the batch is one unit
//! that the read and the reads after it hand out, acked as one when the
//! next read arrives. A message that does not fit goes back to the front
//! of its group (dropped unacked), and one without a final newline ends
//! the batch, so where each message ends stays visible: every message but
//! the last ends in a newline. The further pulls run with no await between
//! them and the reader's record of the batch, so a flushed read either
//! took nothing or is answered. The read loop and O_NONBLOCK rules below
//! treat a batch as they treat one message, so a read(2) still never
//! blocks once it has something and still sees end of file at close.
//!
//! The Linux read loop. Linux turns one read(2) into Treads until the
//! buffer is full or a Tread returns 0 bytes. So after a Tread returned the
//! end of a message at offset N, the next Tread at offset N gets 0 bytes,
//! once, but only if that Tread was not filled to its count, or its count
//! was the largest the connection allows: a Tread filled to a smaller count
//! means the buffer is full and no Tread follows inside that read(2), so a
//! zero armed then would reach the program as end of file. It applies to
//! sessions marked `linux` (see the tree's module comment).
//!
//! Short sessions (`:short`, as dchan's own client attaches). A client
//! that takes a reply shorter than its count as the end of a message needs
//! no zero after it, only after a message whose last reply filled its
//! Tread exactly (which could as well have been a middle): there, and only
//! there, the next Tread at that offset gets 0 bytes, once. The count is
//! the one served: a Tread's count above msize − 24 is cut to that before
//! it gets here, so a client asking for more must compare with msize − 24. So such a
//! client pays one Tread per message, as on plain 9P2000, and still finds
//! every message's end, whatever its size. The rule wins over the Linux
//! one (a Linux mount must not use it: its read(2) would go on into the
//! next message).
//!
//! O_NONBLOCK. Linux 6.1 sends one Tread per non-blocking read(2), so the
//! zero would reach the program as a false end of file; 6.12 (netfs) goes
//! on sending Treads inside one read(2) as for a blocking one, and an
//! EAGAIN there discards what the read(2) already had (a message pulled
//! and lost). So for an O_NONBLOCK open the zero goes only to a Tread that
//! continues the same read(2): at offset N with the count the previous
//! Tread left (its count less the bytes it got). Any other Tread pulls:
//! a message, or EAGAIN. (A 6.1 program whose next read(2) asks for
//! exactly what its last one left over gets the false zero: the one case
//! the server cannot tell apart.)
//!
//! Writes. With `line` framing each newline-terminated line of a write is a
//! message; a partial last line waits here for the next write and is pushed
//! on its own when the file is closed. With `write` framing a write is a
//! message. Lines are slices of the written `Bytes`; only a line split
//! across writes is copied, once, when it completes. The framing is the
//! topic's when the file was opened. A write returns once its pushes have;
//! if the first fails the write fails; a write whose later lines fail (would
//! block, time out, meet a closed topic or a full disk) after some of its
//! lines went out returns the count of what went out, so the writer sends the
//! rest again (and gets the error then), nothing is doubled, and a writer's
//! count of what it pushed is exact. A reset
//! after some lines went out returns their count as well, and the file's
//! next write fails with the reset (on the reopened topic the rest would
//! otherwise go through, and the writer never hear of the reset). (A write
//! interrupted by a signal is flushed and gets no reply; Linux then restarts
//! it whole, so lines it had pushed go out twice: at least once, there.)
//!
//! A spinning non-blocking writer. Linux 6.12 (netfs) retries a write
//! answered EAGAIN for ever, in the kernel, unkillable; any other error
//! ends its write(2) with 0 (6.1 passes each errno). So an open file
//! counts the would-block refusals of its writes that come in a row, each
//! within [`SPIN_GAP`] of the last, with no push in between; past
//! [`SPIN_REFUSALS`] the refused write gets EBUSY instead of EAGAIN, and
//! the count starts again. A program on 6.1 that retries in a tight loop
//! sees that EBUSY too; one that pauses between tries never does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::broker::{Delivery, Framing};
use crate::fs::ReadReq;

/// The reading state of one open data file.
pub struct Reader<D> {
    /// The messages being handed out (one, or a batch), kept unacked after
    /// the last of their bytes went out until the next read; empty when
    /// none is held. Its buffer is kept from one read to the next.
    current: Vec<D>,
    /// Their bytes as the reads hand them out (a batch's, joined), and how
    /// many went out.
    unit: Bytes,
    sent: usize,
    /// The offset at which the next Tread gets 0 bytes once (Linux loop),
    /// and for an O_NONBLOCK open the count that Tread must have.
    zero_at: Option<(u64, Option<u32>)>,
    /// Where this session's reads get their zeros.
    zeros: Zeros,
    /// Whether the file was opened with O_NONBLOCK.
    nonblock: bool,
    /// Whether a read takes a batch (see the module comment).
    batch: bool,
}

/// Which ends of a message the next Tread answers with 0 bytes (see the
/// module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// None: plain 9P2000, a stream of messages.
    Never,
    /// The Linux read loop's.
    LinuxLoop,
    /// Only an end whose reply filled its Tread (`:short`).
    AfterFull,
}

/// What a read does after looking at the open file's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer at once with these bytes (the rest of a message, or an armed 0).
    Reply(Bytes),
    /// Pull the next message and hand it to [`Reader::pulled`].
    Pull,
}

impl<D: Delivery> Reader<D> {
    pub fn new(zeros: Zeros, nonblock: bool, batch: bool) -> Self {
        Reader {
            current: Vec::new(),
            unit: Bytes::new(),
            sent: 0,
            zero_at: None,
            zeros,
            nonblock,
            batch,
        }
    }

    /// A Tread arrived: serve the rest of the current message, ack the
    /// previous one (its reply arrived, or this Tread would not be here),
    /// answer an armed zero, or say to pull.
    pub fn begin(&mut self, req: ReadReq) -> Step {
        if req.count == 0 {
            return Step::Reply(Bytes::new());
        }
        if !self.current.is_empty() {
            if self.sent < self.unit.len() {
                return Step::Reply(self.serve(req));
            }
            D::ack_all(self.current.drain(..));
            self.unit = Bytes::new();
        }
        match self.zero_at.take() {
            Some((n, count)) if n == req.offset && count.is_none_or(|c| c == req.count) => {
                Step::Reply(Bytes::new())
            }
            _ => Step::Pull,
        }
    }

    /// The pull of [`Step::Pull`] returned this message: keep it, answer
    /// with its first piece. On a batch session `more` takes the messages
    /// available now (it never waits), one after another while the one
    /// before ends in a newline and each fits the read's count, all under
    /// the topic's one lock (`Broker::pull_ready_while`); the first that
    /// does not goes back to the front of its group.
    pub fn pulled(
        &mut self,
        d: D,
        req: ReadReq,
        more: impl FnOnce(&mut dyn FnMut(&Bytes) -> bool) -> Vec<D>,
    ) -> Bytes {
        self.unit = d.data().clone();
        self.sent = 0;
        self.current.push(d);
        let count = req.count as usize;
        if self.batch && self.unit.len() < count && self.unit.ends_with(b"\n") {
            let mut len = self.unit.len();
            let mut ends_line = true;
            let rest = more(&mut |data: &Bytes| {
                if !ends_line || len + data.len() > count {
                    return false;
                }
                len += data.len();
                ends_line = data.ends_with(b"\n");
                true
            });
            if !rest.is_empty() {
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(&self.unit);
                for m in &rest {
                    joined.extend_from_slice(m.data());
                }
                self.unit = joined.freeze();
                self.current.extend(rest);
            }
        }
        self.serve(req)
    }

    /// The next piece of the current message for this Tread, arming the
    /// zero when it ends the message.
    fn serve(&mut self, req: ReadReq) -> Bytes {
        if self.current.is_empty() {
            return Bytes::new();
        }
        let len = self.unit.len();
        let end = len.min(self.sent + req.count as usize);
        let piece = self.unit.slice(self.sent..end);
        self.sent = end;
        let unfilled = piece.len() < req.count as usize;
        let at = req.offset.saturating_add(piece.len() as u64);
        if end == len {
            match self.zeros {
                Zeros::Never => {}
                Zeros::AfterFull => {
                    if !unfilled {
                        self.zero_at = Some((at, None));
                    }
                }
                // Only the continuation of this read(2) (6.12) gets it.
                Zeros::LinuxLoop if self.nonblock => {
                    if unfilled {
                        self.zero_at = Some((at, Some(req.count - piece.len() as u32)));
                    }
                }
                Zeros::LinuxLoop => {
                    if unfilled || req.count >= req.max_count {
                        self.zero_at = Some((at, None));
                    }
                }
            }
        }
        piece
    }

    /// The file is closed: `ack` the messages in hand (the client had
    /// them), or drop them unacked so they go back to their group
    /// (connection lost).
    pub fn finish(self, ack: bool) {
        if ack {
            D::ack_all(self.current);
        }
    }
}

/// The bytes held in partial lines by every open data file of a server,
/// and the most it holds: `max_message` bounds one file's partial line,
/// but a connection may hold thousands of files.
#[derive(Debug)]
pub struct Budget {
    held: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicU64::new(0),
            max,
        })
    }

    /// The bytes held now.
    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// The budget would go over its most.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget;

/// One file's share of a [`Budget`], given back when dropped (so every
/// way a partial line goes — completed, dropped, its file closed or lost —
/// gives its bytes back).
#[derive(Debug)]
struct Share {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Share {
    /// Hold exactly `bytes`; growing past the budget's most fails and
    /// changes nothing. Shrinking always succeeds.
    fn resize(&mut self, bytes: u64) -> Result<(), OverBudget> {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            let before = self.budget.held.fetch_add(more, Ordering::Relaxed);
            if before.saturating_add(more) > self.budget.max {
                self.budget.held.fetch_sub(more, Ordering::Relaxed);
                return Err(OverBudget);
            }
        } else {
            (self.budget.held).fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The writing state of one open data file.
pub struct Writer {
    /// How this file cuts writes into messages, fixed at open.
    pub framing: Framing,
    /// The topic's longest message when the file was opened: a write that
    /// would make a longer one, or grow the partial line past it, fails.
    pub max: u64,
    /// The pieces of a line begun by earlier writes and not yet ended.
    partial: Vec<Bytes>,
    /// Their bytes.
    partial_len: usize,
    /// Would-block refusals in a row, each within [`SPIN_GAP`] of the one
    /// before, and when the last one was.
    refusals: u32,
    last_refusal: Option<Instant>,
    /// Its share of the server's budget for partial lines (none in tests
    /// that make a bare writer).
    share: Option<Share>,
    /// A reset cut the last write short (its count said how many lines
    /// went out): the next write fails with the reset, pushing nothing.
    pub reset_due: bool,
}

/// Would-block refusals in a row after which a non-blocking write is
/// answered EBUSY instead: a kernel's retry loop (Linux 6.12 sends ~1 400 a
/// second), not a program's occasional retry.
pub const SPIN_REFUSALS: u32 = 64;
/// The longest gap between two refusals that still counts as "in a row".
pub const SPIN_GAP: Duration = Duration::from_millis(20);

/// A write would make a message of this many bytes, over the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong(pub u64);

/// The messages one write makes.
pub struct Cut {
    /// The messages, in order.
    pub messages: Vec<Bytes>,
    /// Where each message ends in the write's data (for a short count).
    pub ends: Vec<usize>,
    /// Whether the first message ends the partial line held before the
    /// write (so that line is gone once the first message is pushed).
    pub ends_partial: bool,
    /// The partial line to hold after the write, if it changes.
    pub rest: Option<Bytes>,
}

impl Writer {
    pub fn new(framing: Framing, max: u64) -> Self {
        Writer {
            framing,
            max,
            partial: Vec::new(),
            partial_len: 0,
            refusals: 0,
            last_refusal: None,
            share: None,
            reset_due: false,
        }
    }

    /// A writer whose partial lines count against `budget`.
    pub fn with_budget(framing: Framing, max: u64, budget: Arc<Budget>) -> Self {
        Writer {
            share: Some(Share { budget, bytes: 0 }),
            ..Writer::new(framing, max)
        }
    }

    /// Take from the budget what a cut's pushes hold at most (the partial
    /// line now and the one after): fails, changing nothing, if that would
    /// take the server past its budget. The writer gives back what it does
    /// not keep as the cut is committed, at its next write, or at its drop.
    pub fn reserve(&mut self, cut: &Cut) -> Result<(), OverBudget> {
        let need = self.partial_len + cut.rest.as_ref().map_or(0, Bytes::len);
        match &mut self.share {
            Some(share) => share.resize(need as u64),
            None => Ok(()),
        }
    }

    /// Give back what the partial line no longer holds.
    fn settle(&mut self) {
        if let Some(share) = &mut self.share {
            let _ = share.resize(self.partial_len as u64);
        }
    }

    /// A non-blocking write was refused (its push would block) at `now`:
    /// whether this refusal ends a spin of [`SPIN_REFUSALS`], each within
    /// [`SPIN_GAP`] of the last, so the write gets EBUSY (and the count
    /// starts again) instead of EAGAIN.
    pub fn refused(&mut self, now: Instant) -> bool {
        let in_a_row = self
            .last_refusal
            .is_some_and(|t| now.saturating_duration_since(t) <= SPIN_GAP);
        self.refusals = if in_a_row { self.refusals + 1 } else { 1 };
        self.last_refusal = Some(now);
        if self.refusals > SPIN_REFUSALS {
            self.refusals = 0;
            self.last_refusal = None;
            return true;
        }
        false
    }

    /// A push went out: refusals no longer run in a row.
    pub fn pushed(&mut self) {
        self.refusals = 0;
        self.last_refusal = None;
    }

    /// A write was refused as too long: the line it would have grown is
    /// dropped with it.
    pub fn discard(&mut self) {
        self.partial.clear();
        self.partial_len = 0;
        self.settle();
    }

    /// Cut a write into messages without changing the held partial line;
    /// [`Writer::commit_first`] and [`Writer::commit`] record the result as
    /// the pushes complete, so a write dropped midway loses nothing it had
    /// not pushed.
    pub fn cut(&self, data: Bytes) -> Result<Cut, TooLong> {
        let cut = self.cut_unchecked(data);
        let held = |c: &Cut| match &c.rest {
            Some(r) if c.messages.is_empty() => self.partial_len + r.len(),
            Some(r) => r.len(),
            None => 0,
        };
        let longest = (cut.messages.iter().map(Bytes::len))
            .chain([held(&cut)])
            .max()
            .unwrap_or(0) as u64;
        match longest <= self.max {
            true => Ok(cut),
            false => Err(TooLong(longest)),
        }
    }

    fn cut_unchecked(&self, data: Bytes) -> Cut {
        if self.framing == Framing::Write {
            let (messages, ends) = match data.len() {
                0 => (vec![], vec![]),
                n => (vec![data], vec![n]),
            };
            return Cut {
                messages,
                ends,
                ends_partial: false,
                rest: None,
            };
        }
        let mut messages = Vec::new();
        let mut ends = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &data) {
            messages.push(data.slice(start..=nl));
            start = nl + 1;
            ends.push(start);
        }
        // A short tail is copied, so that what a partial line holds is
        // what it counts against the budget, not the whole write's buffer.
        let tail = match data.len() - start {
            n if n * 2 < data.len() => Bytes::copy_from_slice(&data[start..]),
            _ => data.slice(start..),
        };
        let ends_partial = !self.partial.is_empty() && !messages.is_empty();
        if ends_partial {
            messages[0] = concat(self.partial.iter().chain([&messages[0]]));
        }
        let rest = match (messages.is_empty(), tail.is_empty()) {
            (true, true) => None,
            (false, true) => Some(Bytes::new()),
            (_, false) => Some(tail),
        };
        Cut {
            messages,
            ends,
            ends_partial,
            rest,
        }
    }

    /// The first message of a cut was pushed.
    pub fn commit_first(&mut self, cut: &Cut) {
        // What the budget gave stays taken until `commit` (the cut's tail
        // is still to be held).
        if cut.ends_partial {
            self.partial.clear();
            self.partial_len = 0;
        }
    }

    /// Every message of a cut was pushed: hold its tail.
    pub fn commit(&mut self, cut: Cut) {
        match cut.rest {
            Some(rest) if cut.messages.is_empty() => {
                self.partial_len += rest.len();
                self.partial.push(rest);
            }
            Some(rest) => {
                self.partial.clear();
                self.partial_len = 0;
                if !rest.is_empty() {
                    self.partial_len = rest.len();
                    self.partial.push(rest);
                }
            }
            None => {}
        }
        // Never more than `reserve` took: this only gives back.
        self.settle();
    }

    /// Whether a partial line is held.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The partial line held, as one message (the file is being closed).
    pub fn take_partial(&mut self) -> Option<Bytes> {
        let line = match self.partial.len() {
            0 => None,
            1 => self.partial.pop(),
            _ => Some(concat(self.partial.iter())),
        };
        self.discard();
        line
    }
}

/// Join pieces into one message: the one copy a split line costs.
fn concat<'a>(pieces: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let len = pieces.clone().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(len);
    for p in pieces {
        out.extend_from_slice(p);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::broker::Seq;

    /// A delivery that counts its acks.
    struct Fake(Bytes, Arc<AtomicUsize>);
    impl Delivery for Fake {
        fn seq(&self) -> Seq {
            0
        }
        fn data(&self) -> &Bytes {
            &self.0
        }
        fn ack(self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    const MAX: u32 = 8168;

    fn req(offset: u64, count: u32) -> ReadReq {
        ReadReq {
            offset,
            count,
            max_count: MAX,
            overlaps: false,
        }
    }

    fn fake(s: &str) -> (Fake, Arc<AtomicUsize>) {
        let acks = Arc::new(AtomicUsize::new(0));
        (Fake(Bytes::from(s.to_string()), acks.clone()), acks)
    }

    /// A broker's `pull_ready_while` over `msgs` (taken from the end): a
    /// message refused goes back.
    fn take_while(msgs: &mut Vec<Fake>, accept: &mut dyn FnMut(&Bytes) -> bool) -> Vec<Fake> {
        let mut taken = Vec::new();
        while let Some(m) = msgs.pop() {
            if !accept(&m.0) {
                msgs.push(m);
                break;
            }
            taken.push(m);
        }
        taken
    }

    /// One read(2) the way Linux does it: Treads until full or 0 bytes;
    /// `msgs` feeds pulls.
    fn linux_read(r: &mut Reader<Fake>, pos: &mut u64, buf: u32, msgs: &mut Vec<Fake>) -> Vec<u8> {
        let mut got = Vec::new();
        while (got.len() as u32) < buf {
            let q = req(*pos, (buf - got.len() as u32).min(MAX));
            let piece = match r.begin(q) {
                Step::Reply(b) => b,
                Step::Pull => match msgs.pop() {
                    Some(d) => r.pulled(d, q, |accept| take_while(msgs, accept)),
                    None => break, // would block
                },
            };
            if piece.is_empty() {
                break;
            }
            *pos += piece.len() as u64;
            got.extend_from_slice(&piece);
        }
        got
    }

    #[test]
    fn each_read_syscall_gets_one_message() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, false);
        let (a, acks_a) = fake("one\n");
        let (b, _) = fake("two\n");
        let mut msgs = vec![b, a];
        let mut pos = 0;
        assert_eq!(linux_read(&mut r, &mut pos, 131072, &mut msgs), b"one\n");
        assert_eq!(acks_a.load(Ordering::SeqCst), 1, "the zero read acks");
        assert_eq!(linux_read(&mut r, &mut pos, 131072, &mut msgs), b"two\n");
    }

    #[test]
    fn byte_at_a_time_reader_never_sees_a_zero() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, false);
        let (a, _) = fake("abc\n");
        let (b, _) = fake("de\n");
        let mut msgs = vec![b, a];
        let mut pos = 0;
        let mut all = Vec::new();
        for _ in 0..7 {
            let got = linux_read(&mut r, &mut pos, 1, &mut msgs);
            assert_eq!(got.len(), 1);
            all.extend(got);
        }
        assert_eq!(all, b"abc\nde\n");
    }

    #[test]
    fn full_small_buffer_arms_no_zero() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, false);
        let (a, _) = fake("abc\n");
        let (b, _) = fake("xy\n");
        let mut msgs = vec![b, a];
        let mut pos = 0;
        assert_eq!(linux_read(&mut r, &mut pos, 4, &mut msgs), b"abc\n");
        assert_eq!(linux_read(&mut r, &mut pos, 4, &mut msgs), b"xy\n");
    }

    #[test]
    fn message_longer_than_a_tread_arrives_whole() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, false);
        let long = "x".repeat(3 * MAX as usize + 5);
        let (a, _) = fake(&long);
        let mut msgs = vec![a];
        let mut pos = 0;
        assert_eq!(
            linux_read(&mut r, &mut pos, 1 << 20, &mut msgs).len(),
            long.len()
        );
        // exactly max_count: filled, but count == max, so a zero follows
        let exact = "y".repeat(MAX as usize);
        let (b, _) = fake(&exact);
        let mut msgs = vec![b];
        assert_eq!(
            linux_read(&mut r, &mut pos, 1 << 20, &mut msgs).len(),
            exact.len()
        );
    }

    #[test]
    fn plain_stream_reads_never_zero() {
        let mut r = Reader::new(Zeros::Never, false, false);
        let (a, _) = fake("one\n");
        assert_eq!(r.begin(req(0, 100)), Step::Pull);
        assert_eq!(r.pulled(a, req(0, 100), |_| Vec::new()), "one\n");
        assert_eq!(r.begin(req(4, 100)), Step::Pull);
    }

    #[test]
    fn short_reads_zero_only_after_a_filled_end() {
        let mut r = Reader::new(Zeros::AfterFull, false, false);
        let (a, acks_a) = fake("one\n");
        let (b, _) = fake("four");
        let (c, _) = fake("five5");
        // A short reply ends a message: the next Tread pulls (and acks).
        assert_eq!(r.begin(req(0, 100)), Step::Pull);
        assert_eq!(r.pulled(a, req(0, 100), |_| Vec::new()), "one\n");
        assert_eq!(r.begin(req(4, 4)), Step::Pull);
        assert_eq!(acks_a.load(Ordering::SeqCst), 1);
        // A message that fills its Tread exactly is ended by one zero.
        assert_eq!(r.pulled(b, req(4, 4), |_| Vec::new()), "four");
        assert_eq!(r.begin(req(8, 4)), Step::Reply(Bytes::new()));
        // One longer than the Tread: the rest, then a pull.
        assert_eq!(r.begin(req(8, 4)), Step::Pull);
        assert_eq!(r.pulled(c, req(8, 4), |_| Vec::new()), "five");
        assert_eq!(r.begin(req(12, 4)), Step::Reply(Bytes::from("5")));
        assert_eq!(r.begin(req(13, 4)), Step::Pull);
    }

    #[test]
    fn zero_only_at_its_offset_and_once() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, false);
        let (a, _) = fake("one\n");
        r.begin(req(0, 100));
        r.pulled(a, req(0, 100), |_| Vec::new());
        assert_eq!(r.begin(req(9, 100)), Step::Pull, "another offset blocks");
        let (b, _) = fake("two\n");
        r.pulled(b, req(9, 100), |_| Vec::new());
        assert_eq!(r.begin(req(13, 100)), Step::Reply(Bytes::new()));
        assert_eq!(r.begin(req(13, 100)), Step::Pull, "only once");
    }

    #[test]
    fn finish_acks_or_returns() {
        let mut r = Reader::new(Zeros::Never, false, false);
        let (a, acks) = fake("one\n");
        r.pulled(a, req(0, 2), |_| Vec::new());
        r.finish(false);
        assert_eq!(acks.load(Ordering::SeqCst), 0);
        let mut r = Reader::new(Zeros::Never, false, false);
        let (a, acks) = fake("one\n");
        r.pulled(a, req(0, 2), |_| Vec::new());
        r.finish(true);
        assert_eq!(acks.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_batch_read_takes_every_line_there_and_acks_them_together() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, true);
        let (a, acks_a) = fake("one\n");
        let (b, acks_b) = fake("two\n");
        let (c, _) = fake("three");
        let (d, _) = fake("four\n");
        let mut msgs = vec![d, c, b, a];
        let mut pos = 0;
        // "three" has no newline: it ends the batch, so "four" waits.
        let got = linux_read(&mut r, &mut pos, 131072, &mut msgs);
        assert_eq!(got, b"one\ntwo\nthree");
        assert_eq!(acks_a.load(Ordering::SeqCst), 1, "the zero read acks");
        assert_eq!(acks_b.load(Ordering::SeqCst), 1);
        assert_eq!(linux_read(&mut r, &mut pos, 131072, &mut msgs), b"four\n");
        assert_eq!(linux_read(&mut r, &mut pos, 131072, &mut msgs), b"");
    }

    #[test]
    fn a_batch_stops_at_the_count_and_a_long_first_message_comes_in_pieces() {
        let mut r = Reader::new(Zeros::LinuxLoop, false, true);
        let (a, _) = fake("abc\n");
        let (b, _) = fake("de\n");
        let (c, _) = fake("fgh\n");
        let mut msgs = vec![c, b, a];
        let mut pos = 0;
        // 8 bytes: abc and de fit, fgh does not (it goes back).
        assert_eq!(linux_read(&mut r, &mut pos, 8, &mut msgs), b"abc\nde\n");
        assert_eq!(msgs.len(), 1);
        msgs.clear();
        let long = "x".repeat(2 * MAX as usize) + "\n";
        let (l, _) = fake(&long);
        let (e, _) = fake("e\n");
        let mut msgs = vec![e, l];
        let got = linux_read(&mut r, &mut pos, 1 << 20, &mut msgs);
        assert_eq!(got.len(), long.len(), "a long message alone");
        assert_eq!(linux_read(&mut r, &mut pos, 1 << 20, &mut msgs), b"e\n");
    }

    fn write(w: &mut Writer, s: &str) -> Vec<Bytes> {
        let cut = w.cut(Bytes::from(s.to_string())).unwrap();
        let msgs = cut.messages.clone();
        w.commit_first(&cut);
        w.commit(cut);
        msgs
    }

    #[test]
    fn lines_and_partial_lines() {
        let mut w = Writer::new(Framing::Line, 100);
        assert_eq!(write(&mut w, "a\nb\nc"), vec!["a\n", "b\n"]);
        assert_eq!(write(&mut w, "d"), Vec::<Bytes>::new());
        assert_eq!(write(&mut w, "e\nf\n"), vec!["cde\n", "f\n"]);
        assert_eq!(write(&mut w, ""), Vec::<Bytes>::new());
        assert_eq!(write(&mut w, "\n"), vec!["\n"]);
        assert_eq!(write(&mut w, "tail"), Vec::<Bytes>::new());
        assert_eq!(write(&mut w, "more"), Vec::<Bytes>::new());
        assert_eq!(w.take_partial().unwrap(), "tailmore");
    }

    #[test]
    fn a_write_dropped_before_its_first_push_keeps_the_partial() {
        let mut w = Writer::new(Framing::Line, 100);
        write(&mut w, "ab");
        let _cut = w.cut(Bytes::from_static(b"c\n")).unwrap();
        // dropped: nothing committed
        assert_eq!(w.take_partial().unwrap(), "ab");
    }

    #[test]
    fn write_framing_is_one_message_per_write() {
        let mut w = Writer::new(Framing::Write, 100);
        assert_eq!(write(&mut w, "a\nb"), vec!["a\nb"]);
        assert!(w.take_partial().is_none());
    }

    #[test]
    fn no_message_nor_partial_line_grows_past_the_limit() {
        let mut w = Writer::new(Framing::Line, 4);
        assert_eq!(write(&mut w, "abc\nab"), vec!["abc\n"]);
        assert_eq!(w.cut(Bytes::from_static(b"cde")).err(), Some(TooLong(5)));
        assert_eq!(
            w.cut(Bytes::from_static(b"c\nxyzzy")).err(),
            Some(TooLong(5))
        );
        assert_eq!(write(&mut w, "cd"), Vec::<Bytes>::new());
        assert_eq!(w.cut(Bytes::from_static(b"\n")).err(), Some(TooLong(5)));
        w.discard();
        assert_eq!(write(&mut w, "abc\n"), vec!["abc\n"]);
        let w = Writer::new(Framing::Write, 4);
        assert_eq!(w.cut(Bytes::from_static(b"abcde")).err(), Some(TooLong(5)));
    }

    /// O_NONBLOCK: the zero only for the continuation of the same read(2)
    /// (6.12), never for the next read(2) (6.1).
    #[test]
    fn a_nonblocking_reader_gets_the_zero_only_inside_its_read() {
        let mut r = Reader::new(Zeros::LinuxLoop, true, false);
        let (a, _) = fake("one\n");
        assert_eq!(r.begin(req(0, 4096)), Step::Pull);
        r.pulled(a, req(0, 4096), |_| Vec::new());
        assert_eq!(r.begin(req(4, 4096)), Step::Pull, "6.1: the next read(2)");
        let mut r = Reader::new(Zeros::LinuxLoop, true, false);
        let (a, _) = fake("one\n");
        r.begin(req(0, 4096));
        r.pulled(a, req(0, 4096), |_| Vec::new());
        assert_eq!(r.begin(req(4, 4092)), Step::Reply(Bytes::new()), "6.12");
    }
}
