//! dchan: message topics served as files over 9P.
//!
//! The layers, each ignorant of the one above (arrows point down):
//!
//! - `proto`  — the 9P wire protocol: message values, their codec, framing.
//! - `tls`    — TLS settings from PEM files, for listeners, client and tunnel.
//! - `access` — access rules: which user may read, write or administer which topics.
//! - `cut`    — cutting a future short with an answer (a deadline, a flush).
//! - `fs`     — the file-tree interface between the engine and what it serves.
//! - `engine` — the 9P connection engine: listeners, tags, fids, Tflush, limits.
//! - `ramfs`  — a small in-memory `FileTree` for tests and `dchan serve --ramfs`.
//! - `broker` — topics, groups, capacity and waiting; knows nothing of 9P. Engines:
//!   `memory` (in this process) and `durable` (a segment log in a directory).
//! - `tree`   — the topic tree: a broker's topics as directories of files (a `FileTree`).
//! - `config` — the server's TOML configuration over the built-in `dchan.toml`.
//! - `metrics` — Prometheus metrics and a health check over HTTP (`serve --metrics`).
//! - `serve`  — `dchan serve`: configuration, logging, broker, tree and engine, shutdown.
//! - `client` — dchan's own 9P client: many requests per connection, flush, topics by name.
//! - `tunnel` — `dchan tunnel`: a local plaintext port carried to a remote TLS listener.
//! - `bench`  — the workloads of `dchan bench`, shared with the peers' benchmark.
//! - `pipeline` — `dchan run 'a | b'` and `dchan worker`: stages over topics, a client.

pub mod access;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod cut;
pub mod engine;
pub mod fs;
pub mod metrics;
pub mod pipeline;
pub mod proto;
pub mod ramfs;
pub mod serve;
pub mod tls;
pub mod tree;
pub mod tunnel;

/// The literate book (`literate/`), included so that `cargo test --doc`
/// compiles and runs its Rust examples: the book cannot drift from the code.
#[cfg(doctest)]
pub mod literate {
    #[doc = include_str!("../literate/01-why.md")]
    pub struct Why;
    #[doc = include_str!("../literate/02-tree.md")]
    pub struct Tree;
    #[doc = include_str!("../literate/03-semantics.md")]
    pub struct Semantics;
    #[doc = include_str!("../literate/04-protocol.md")]
    pub struct Protocol;
    #[doc = include_str!("../literate/05-broker.md")]
    pub struct Broker;
    #[doc = include_str!("../literate/06-testing.md")]
    pub struct Testing;
    #[doc = include_str!("../literate/07-scaling.md")]
    pub struct Scaling;
    #[doc = include_str!("../literate/08-performance.md")]
    pub struct Performance;
    #[doc = include_str!("../literate/09-pipelines.md")]
    pub struct Pipelines;
    #[doc = include_str!("../literate/10-log.md")]
    pub struct Log;
    #[doc = include_str!("../literate/11-security.md")]
    pub struct Security;
}
