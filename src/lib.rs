//! dchan: message topics served as files over 9P.
//!
//! The layers, each ignorant of the one above (arrows point down):
//!
//! - `proto`  — the 9P wire protocol: message values and their codec.
//! - `fs`     — the file-tree interface between the engine and what it serves.
//! - `broker` — topics, groups, capacity and waiting; knows nothing of 9P.
//! - `bench`  — the workloads of `dchan bench`, shared with the peers' benchmark.

pub mod bench;
pub mod broker;
pub mod fs;
pub mod proto;
