//! dchan: message topics served as files over 9P.
//!
//! The layers, each ignorant of the one above (arrows point down):
//!
//! - `proto`  — the 9P wire protocol: message values, their codec, framing.
//! - `fs`     — the file-tree interface between the engine and what it serves.
//! - `engine` — the 9P connection engine: listeners, tags, fids, Tflush, limits.
//! - `ramfs`  — a small in-memory `FileTree` for tests and `dchan serve --ramfs`.
//! - `broker` — topics, groups, capacity and waiting; knows nothing of 9P.
//! - `tree`   — the topic tree: a broker's topics as directories of files (a `FileTree`).
//! - `config` — the server's TOML configuration over the built-in `dchan.toml`.

pub mod broker;
pub mod config;
pub mod engine;
pub mod fs;
pub mod proto;
pub mod ramfs;
pub mod tree;
