//! Feeds arbitrary bytes to the 9P decoder: it must return a message or an
//! error, never panic, hang or allocate without bound; and what decodes
//! must encode back to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use dchan::proto::codec::{decode, decode_stat, encode};
use dchan::proto::frame::FrameDecoder;
use dchan::proto::{Dialect, Fcall};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dialect = [Dialect::P2000, Dialect::P2000u, Dialect::P2000L][mode as usize % 3];
    let mut frame = rest.to_vec();
    // Half the time, make the size field agree so the body decoders run.
    if mode & 0x80 != 0 && frame.len() >= 4 {
        let n = frame.len() as u32;
        frame[..4].copy_from_slice(&n.to_le_bytes());
    }
    let frame = Bytes::from(frame);
    if let Ok(msg) = decode(frame.clone(), dialect) {
        let optional_errno = dialect == Dialect::P2000L && matches!(msg.body, Fcall::Rerror { .. });
        if !optional_errno {
            let mut out = BytesMut::new();
            encode(&msg, dialect, &mut out);
            assert_eq!(out.freeze(), frame, "{msg:?} re-encodes differently");
        }
    }
    let _ = decode_stat(&frame, dialect);
    // The same bytes as a stream, split into frames of at most 256 bytes.
    let mut framer = FrameDecoder::new(256);
    let mut buf = BytesMut::from(&frame[..]);
    while let Ok(Some(f)) = framer.decode(&mut buf) {
        let _ = decode(f, dialect);
    }
});
