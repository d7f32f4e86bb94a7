//! The 9P wire protocol: message values (`msg`), their byte encoding
//! (`codec`) and the framing of a byte stream (`frame`), for 9P2000,
//! 9P2000.u and 9P2000.L. Knows nothing of files, topics or sockets.

pub mod codec;
pub mod frame;
pub mod msg;

pub use msg::*;
