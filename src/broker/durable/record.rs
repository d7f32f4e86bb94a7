//! The record format of a topic's log: every change a restart must find
//! again is one checksummed record, appended.
//!
//! ```text
//! len   u32 LE   length of the body (kind, n and rest)
//! crc   u32 LE   CRC-32C (Castagnoli) of the body
//! kind  u8       what the record says (Kind)
//! n     u64 LE   a sequence number
//! rest  len-9    the payload (Message) or a group's name
//! ```
//!
//! Written by hand: the format is eight bytes of framing around a body,
//! and the crates that frame records (a WAL, an LSM tree) bring their own
//! index, compaction and threads, which the topic's log (`journal`) is.
//! The checksum is the `crc32c` crate's (hardware CRC-32C where the CPU
//! has it), the one Kafka, ext4 and iSCSI use.

use bytes::{BufMut, Bytes};

/// The bytes before a record's body.
pub(crate) const HEADER: usize = 8;
/// The body's fixed part: kind and n.
const FIXED: usize = 9;
/// The longest body a reader accepts: a length beyond it is damage, not a
/// record (a message is at most its topic's `max_message`).
pub(crate) const MAX_BODY: usize = 1 << 30;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Message `n`, whose payload is `rest`.
    Message = 1,
    /// Group `rest` acknowledged message `n`.
    Ack = 2,
    /// Group `rest` (new or starting over) reads next at `n`.
    Group = 3,
    /// Group `rest` is gone; the oldest held message is `n`.
    Forget = 4,
    /// A segment's first record: the oldest held message is `n`; the
    /// groups are the `Group` and `Ack` records that follow (none before
    /// it count).
    Checkpoint = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::Ack,
            3 => Kind::Group,
            4 => Kind::Forget,
            5 => Kind::Checkpoint,
            _ => return None,
        })
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) kind: Kind,
    pub(crate) n: u64,
    pub(crate) rest: Bytes,
}

/// Append a record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, n: u64, rest: &[u8]) {
    let body = FIXED + rest.len();
    out.reserve(HEADER + body);
    let at = out.len();
    out.put_u32_le(body as u32);
    out.put_u32_le(0);
    out.put_u8(kind as u8);
    out.put_u64_le(n);
    out.put_slice(rest);
    let crc = crc32c::crc32c(&out[at + HEADER..]);
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at an offset are no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// What is wrong, for the error.
    pub(crate) reason: String,
    /// The claimed record runs past the end of the bytes (a write cut off).
    pub(crate) short: bool,
}

/// The record at `at` in `buf` and the offset after it; `None` at the end.
pub(crate) fn decode(buf: &Bytes, at: usize) -> Result<Option<(Record, usize)>, Damage> {
    let left = buf.len() - at;
    if left == 0 {
        return Ok(None);
    }
    let damage = |reason: String, short| Err(Damage { reason, short });
    if left < HEADER {
        return damage(format!("{left} bytes, too few for a record header"), true);
    }
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
    if !(FIXED..=MAX_BODY).contains(&len) {
        return damage(format!("record length {len} out of range"), false);
    }
    if left - HEADER < len {
        return damage(
            format!("record of {len} bytes, but {} left", left - HEADER),
            true,
        );
    }
    let body = buf.slice(at + HEADER..at + HEADER + len);
    let actual = crc32c::crc32c(&body);
    if actual != crc {
        return damage(
            format!("checksum {actual:#010x}, record says {crc:#010x}"),
            false,
        );
    }
    let Some(kind) = Kind::from_u8(body[0]) else {
        return damage(format!("unknown record kind {}", body[0]), false);
    };
    let n = u64::from_le_bytes(body[1..FIXED].try_into().expect("8 bytes"));
    let record = Record {
        kind,
        n,
        rest: body.slice(FIXED..),
    };
    Ok(Some((record, at + HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Message, 7, b"hello");
        encode(&mut out, Kind::Ack, 7, b"grp");
        let buf = Bytes::from(out.clone());
        let (a, next) = decode(&buf, 0).unwrap().unwrap();
        assert_eq!(
            (a.kind, a.n, &a.rest[..]),
            (Kind::Message, 7, &b"hello"[..])
        );
        let (b, end) = decode(&buf, next).unwrap().unwrap();
        assert_eq!((b.kind, &b.rest[..]), (Kind::Ack, &b"grp"[..]));
        assert_eq!(decode(&buf, end), Ok(None));
        // Cut short: short damage.
        let cut = buf.slice(..buf.len() - 2);
        assert!(decode(&cut, next).unwrap_err().short);
        // A flipped byte: checksum damage.
        let mut flipped = out;
        flipped[HEADER + 3] ^= 1;
        let err = decode(&Bytes::from(flipped), 0).unwrap_err();
        assert!(!err.short && err.reason.contains("checksum"), "{err:?}");
    }
}
