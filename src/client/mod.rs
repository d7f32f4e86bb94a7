//! dchan's own 9P client: an async connection with many requests in flight,
//! fids, and dchan's topics by name on top. The CLI, the tests and the
//! benchmarks use it.
//!
//! - `error`  — [`Error`]: the server's message, I/O, protocol.
//! - `conn`   — [`Connection`]: dial, Tversion (9P2000, .u, .L), attach.
//! - `mux`    — tags, the bound on requests in flight, the reader and
//!   writer tasks, Tflush on cancellation.
//! - `file`   — [`File`]: one fid; walk, open, read, write, create, readdir, clunk.
//! - `data`   — [`Puller`] and [`Pusher`]: whole messages over one open data file.
//! - `topics` — [`Client`]: push, pull, ctl, offset, create, remove, list.
//!
//! The client trusts no server: a reply that would make it loop or send
//! frames larger than msize is refused with [`Error::Protocol`], and a
//! walk's new fid is clunked however the walk ends.
//!
//! ```no_run
//! # async fn demo() -> dchan::client::Result<()> {
//! use dchan::client::{Client, Options};
//! let client = Client::connect("tcp!127.0.0.1!5640", &Options::group("workers")).await?;
//! client.push("jobs", "build site\n").await?;
//! while let Some(msg) = client.pull("jobs").await? {
//!     print!("{}", String::from_utf8_lossy(&msg));
//! }
//! # Ok(()) }
//! ```

mod conn;
mod data;
mod error;
mod file;
mod mux;
mod topics;

pub use conn::{ConnectOptions, Connection, DEFAULT_ADDR, DEFAULT_MAX_IN_FLIGHT, tls_connect};
pub use data::{Puller, Pusher};
pub use error::{Error, Result, errno_message, io_reason};
pub use file::{DirEntry, File, MAX_DIR_BYTES, MAX_DIR_ENTRIES, MAX_TEXT, Mode};
pub use topics::{Client, Framing, MAX_DEPTH, Options, TOPICS_AT_ONCE, TopicSettings, check_topic};
