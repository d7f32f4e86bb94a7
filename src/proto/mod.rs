//! The 9P wire protocol: message values (`msg`) and their byte encoding
//! (`codec`), for 9P2000, 9P2000.u and 9P2000.L. Knows nothing of files,
//! topics or sockets.

pub mod codec;
pub mod msg;

pub use msg::*;
