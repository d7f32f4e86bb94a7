//! The `dchan` command: `dchan serve [--listen ADDR]... [--ramfs]`.
//!
//! On startup it prints one line per listener to stdout,
//! `listening on tcp!127.0.0.1!PORT` (or `listening on unix!PATH`), so a
//! test can listen on port 0 and read the port. SIGINT or SIGTERM stops it
//! cleanly.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use dchan::engine::{self, Addr, Limits, Listener};
use dchan::ramfs::RamFs;

#[derive(Parser)]
#[command(version, about = "Message topics served as files over 9P")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve over 9P.
    Serve {
        /// Where to listen: tcp!HOST!PORT, HOST:PORT or unix!PATH (repeatable).
        #[arg(long, default_value = "tcp!127.0.0.1!5640")]
        listen: Vec<Addr>,
        /// Serve an in-memory file tree (for tests).
        #[arg(long)]
        ramfs: bool,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve { listen, ramfs } = Cli::parse().command;
    if !ramfs {
        return Err("no file tree to serve yet: pass --ramfs".into());
    }
    let mut listeners = Vec::new();
    for addr in &listen {
        let l = Listener::bind(addr)
            .await
            .map_err(|e| format!("listen on {addr}: {e}"))?;
        println!("listening on {}", l.local_addr()?);
        listeners.push(l);
    }
    engine::serve(listeners, Arc::new(RamFs::new()), Limits::default(), stop()).await;
    Ok(())
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
