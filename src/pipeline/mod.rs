//! Pipelines over topics: `dchan run 'a | b | c'`, `dchan worker`, and the
//! TOML pipeline file. A client of the server only: a pipeline is topics
//! (one between each two stages), groups (the copies of a stage share its
//! input) and close (the end of stream travelling down).
//!
//! - `spec`     — what a pipeline is: stages, the `|` line, the TOML file, topic names.
//! - `stage`    — one copy of a stage: connection, group, end of stream.
//! - `ahead`    — reading a topic with many Treads in flight, in order.
//! - `filter`   — a *filter* copy: one long-running process, lines in and out.
//! - `each`     — an *each* copy: one process per message, warm pool, dead letters.
//! - `warm`     — a process forked ahead and held before exec (the warm pool).
//! - `pgroup`   — a stage's process in a process group of its own, killed whole.
//! - `run`      — `dchan run` (topics, copies, stdin in, stdout out) and `dchan worker`.
//! - `progress` — the live lines on a terminal.

mod ahead;
mod each;
mod filter;
mod pgroup;
mod progress;
mod run;
mod spec;
mod stage;
mod warm;

pub use run::{Report, RunOptions, WorkerOptions, run, worker};
pub use spec::{
    DEFAULT_ATTEMPTS, DEFAULT_CAPACITY, DEFAULT_POOL, GROUP, Kind, MAX_POOL, MAX_REPLICAS,
    Pipeline, Stage, check_name, split_pipes,
};
