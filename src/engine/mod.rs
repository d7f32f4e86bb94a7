//! The 9P connection engine: listeners, connections, tags, fids, Tflush and
//! limits, serving any [`FileTree`](crate::fs::FileTree) in all three dialects.
//!
//! The path of a request: [`listen`] accepts a socket and lets it in (address
//! rules, TLS, who the client is); [`server`] gives it a connection slot; [`conn`] reads its frames, decodes them and runs every
//! request concurrently inside the connection's own task, cancels flushed
//! ones, and writes the replies in order; [`session`] turns each request
//! into file-tree calls on the connection's [`fids`], using [`dialect`] to
//! translate between 9P's three dialects and the tree's neutral types, and
//! [`dir`] to read directories.
//!
//! Limits a client cannot pass are in [`Limits`].

pub mod conn;
pub mod dialect;
pub mod dir;
pub mod fids;
pub mod listen;
pub mod observe;
pub mod server;
pub mod session;

pub use listen::{Addr, Entrance, Guard, Listener, Who};
pub use observe::Observer;
pub use server::{Connections, serve, serve_counted};

/// What one client may use; the server's defence against a bad or hostile
/// client. Every other client is unaffected by one that hits a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest msize Tversion agrees to, and so the largest frame read.
    pub max_msize: u32,
    /// Connections served at once; one more is closed as soon as accepted.
    pub max_connections: usize,
    /// Connections served at once from one IP address; one more has its
    /// Tversion answered "too many connections from your address" (EAGAIN).
    pub max_per_address: usize,
    /// Fids one connection may hold; an attach or walk over it fails.
    pub max_fids: usize,
    /// Requests of one connection waiting on the file tree at once (a
    /// blocked read, a write...); one more is answered with EAGAIN.
    pub max_in_flight: usize,
}

/// The smallest msize worth talking with: room for a stat and a few names.
pub const MIN_MSIZE: u32 = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_msize: 1 << 20,
            max_connections: 1024,
            max_per_address: 1024,
            max_fids: 524_288,
            max_in_flight: 1024,
        }
    }
}
