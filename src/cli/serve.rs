//! `dchan serve`, until `dchan::serve` (configuration file, logging
//! options) takes over: the topic tree over the memory broker, or the RAM
//! tree for engine tests, on each `--listen` address.
//!
//! On start it prints `listening on ADDR` for each listener (the real port
//! when asked for port 0); SIGINT or SIGTERM stops it cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use dchan::broker::memory::MemoryBroker;
use dchan::engine::{self, Addr, Limits, Listener};
use dchan::ramfs::RamFs;
use dchan::tree::{TopicTree, TreeConfig};

/// The arguments of `dchan serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: tcp!HOST!PORT, HOST:PORT or unix!PATH (repeatable).
    #[arg(long, value_name = "ADDR", default_value = dchan::client::DEFAULT_ADDR)]
    pub listen: Vec<Addr>,
    /// Serve an in-memory file tree instead of topics (for engine tests).
    #[arg(long, hide = true)]
    pub ramfs: bool,
}

pub async fn main(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let bound = match Listener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dchan: listen on {addr}: {}", dchan::client::io_reason(&e));
                return ExitCode::FAILURE;
            }
        };
        match bound.local_addr() {
            Ok(a) => println!("listening on {a}"),
            Err(e) => eprintln!("dchan: listen on {addr}: {e}"),
        }
        listeners.push(bound);
    }
    if args.ramfs {
        engine::serve(listeners, Arc::new(RamFs::new()), Limits::default(), stop()).await;
    } else {
        let tree = TopicTree::new(MemoryBroker::new(), TreeConfig::default(), || 0);
        engine::serve(listeners, Arc::new(tree), Limits::default(), stop()).await;
    }
    ExitCode::SUCCESS
}

/// Completes on SIGINT or SIGTERM.
async fn stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
