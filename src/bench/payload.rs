//! The bytes of a benchmark message: who sent it, its number, and when.
//!
//! A message is one line of text of exactly `size` bytes, so it passes
//! unchanged through every system (dchan's line framing, Redis strings, NATS
//! payloads, a TCP stream split at newlines):
//!
//! ```text
//! PPPPP SSSSSSSSSSSS TTTTTTTTTTTTTTTT xxxx...x\n
//! ```
//! producer (5 digits), sequence number within that producer (12 digits),
//! send time in nanoseconds since the run began (16 digits), then filler.

use bytes::{BufMut, Bytes, BytesMut};

use super::Result;

/// Bytes of the header before the filler.
const HEADER: usize = 36;
/// The smallest message size accepted.
pub const MIN_SIZE: usize = 48;

/// The producer number of warm-up messages: pushed and pulled before the
/// timed window, and left out of the tally.
pub const WARMUP: u32 = 99_999;

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub seq: u64,
    /// Nanoseconds since the run's epoch when the push began.
    pub sent_ns: u64,
}

impl Stamp {
    /// A warm-up message, not part of the measured run.
    pub fn is_warmup(&self) -> bool {
        self.producer == WARMUP
    }
}

/// Build a message of `size` bytes (`size >= MIN_SIZE`).
pub fn encode(stamp: Stamp, size: usize) -> Bytes {
    debug_assert!(size >= MIN_SIZE);
    let mut b = BytesMut::with_capacity(size);
    put_digits(&mut b, stamp.producer as u64, 5);
    b.put_u8(b' ');
    put_digits(&mut b, stamp.seq, 12);
    b.put_u8(b' ');
    put_digits(&mut b, stamp.sent_ns, 16);
    b.put_u8(b' ');
    b.put_bytes(b'x', size - HEADER - 1);
    b.put_u8(b'\n');
    b.freeze()
}

/// Read a message's stamp, checking its shape and its size.
pub fn decode(msg: &[u8], size: usize) -> Result<Stamp> {
    if msg.len() != size || msg[size - 1] != b'\n' {
        return Err(format!(
            "malformed message: {} bytes, expected {size} ending in a newline: {:?}",
            msg.len(),
            String::from_utf8_lossy(&msg[..msg.len().min(64)])
        )
        .into());
    }
    let field = |from: usize, width: usize| -> Result<u64> {
        let mut v = 0u64;
        for &c in &msg[from..from + width] {
            if !c.is_ascii_digit() {
                return Err(format!(
                    "malformed message header: {:?}",
                    String::from_utf8_lossy(&msg[..HEADER])
                )
                .into());
            }
            v = v * 10 + (c - b'0') as u64;
        }
        Ok(v)
    };
    Ok(Stamp {
        producer: field(0, 5)? as u32,
        seq: field(6, 12)?,
        sent_ns: field(19, 16)?,
    })
}

fn put_digits(b: &mut BytesMut, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    b.put_slice(&digits[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Stamp {
            producer: 7,
            seq: 123_456,
            sent_ns: 9_876_543_210,
        };
        for size in [MIN_SIZE, 64, 4096] {
            let m = encode(s, size);
            assert_eq!(m.len(), size);
            assert_eq!(m.iter().filter(|&&c| c == b'\n').count(), 1);
            assert_eq!(decode(&m, size).unwrap(), s);
        }
    }

    #[test]
    fn rejects_wrong_size_and_garbage() {
        let m = encode(
            Stamp {
                producer: 1,
                seq: 2,
                sent_ns: 3,
            },
            64,
        );
        assert!(decode(&m, 65).is_err());
        assert!(decode(&m[..63], 64).is_err());
        let mut bad = m.to_vec();
        bad[3] = b'z';
        assert!(decode(&bad, 64).is_err());
    }
}
