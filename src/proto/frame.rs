//! Framing: splits a byte stream into whole 9P messages ([`FrameDecoder`])
//! and writes messages onto one ([`MsgEncoder`]), for `tokio_util::codec`.
//!
//! A frame is one message with its size[4] field, handed on as `Bytes` for
//! [`codec::decode`](super::codec::decode). The size field is checked before
//! anything is buffered: smaller than the 7-byte header or larger than the
//! connection's maximum (msize, once Tversion agreed on it) is an error, so a
//! client can never make the server buffer more than one maximum frame.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::codec::{HEADER_SIZE, encode};
use super::msg::{Dialect, Msg};

/// Why the byte stream cannot be split into frames; the connection is lost.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {0} is smaller than the 7-byte 9P header")]
    TooSmall(u32),
    #[error("frame size {size} is over the maximum message size {max}")]
    TooLarge { size: u32, max: u32 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Splits a byte stream into frames of at most `max` bytes.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// The largest frame accepted, size field included: the server's maximum
    /// until Tversion, then the negotiated msize.
    max: u32,
}

impl FrameDecoder {
    pub fn new(max: u32) -> FrameDecoder {
        FrameDecoder { max }
    }

    /// Changes the largest frame accepted (after Tversion).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    pub fn max(&self) -> u32 {
        self.max
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = (&src[..4]).get_u32_le();
        if (size as usize) < HEADER_SIZE {
            return Err(FrameError::TooSmall(size));
        }
        if size > self.max {
            return Err(FrameError::TooLarge {
                size,
                max: self.max,
            });
        }
        let size = size as usize;
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(size).freeze()))
    }
}

/// Writes whole messages in a connection's dialect, for a `FramedWrite`.
/// (The server's writer uses [`encode_head`](super::codec::encode_head) and
/// vectored writes instead, to send payloads without copying them.)
#[derive(Debug, Clone, Copy)]
pub struct MsgEncoder {
    /// The dialect agreed in Tversion; it decides a few fields' presence.
    pub dialect: Dialect,
}

impl Encoder<&Msg> for MsgEncoder {
    type Error = io::Error;

    fn encode(&mut self, msg: &Msg, dst: &mut BytesMut) -> io::Result<()> {
        encode(msg, self.dialect, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut FrameDecoder, buf: &mut BytesMut) -> Vec<Result<Bytes, String>> {
        let mut out = Vec::new();
        loop {
            match d.decode(buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn splits_frames_and_waits_for_the_rest() {
        let mut d = FrameDecoder::new(64);
        let mut buf = BytesMut::new();
        // Rflush, tag 1, then half of an Rclunk.
        buf.extend_from_slice(&[7, 0, 0, 0, 109, 1, 0, 7, 0, 0]);
        let got = feed(&mut d, &mut buf);
        assert_eq!(got, vec![Ok(Bytes::from_static(&[7, 0, 0, 0, 109, 1, 0]))]);
        buf.extend_from_slice(&[0, 121, 2, 0]);
        let got = feed(&mut d, &mut buf);
        assert_eq!(got, vec![Ok(Bytes::from_static(&[7, 0, 0, 0, 121, 2, 0]))]);
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_sizes_below_the_header() {
        for size in 0..7u8 {
            let mut buf = BytesMut::from(&[size, 0, 0, 0][..]);
            let got = feed(&mut FrameDecoder::new(8192), &mut buf);
            assert_eq!(
                got,
                vec![Err(format!(
                    "frame size {size} is smaller than the 7-byte 9P header"
                ))]
            );
        }
    }

    #[test]
    fn rejects_sizes_above_the_maximum_before_buffering() {
        let mut d = FrameDecoder::new(8192);
        let mut buf = BytesMut::from(&0xFFFF_FFFFu32.to_le_bytes()[..]);
        let got = feed(&mut d, &mut buf);
        assert_eq!(
            got,
            vec![Err(
                "frame size 4294967295 is over the maximum message size 8192".into()
            )]
        );
        assert!(buf.capacity() < 8192);
        // At the maximum it is fine; after set_max it is not.
        let mut frame = BytesMut::from(&8192u32.to_le_bytes()[..]);
        frame.resize(8192, 0);
        assert_eq!(feed(&mut d, &mut frame.clone()).len(), 1);
        d.set_max(8191);
        assert!(feed(&mut d, &mut frame)[0].is_err());
    }
}
