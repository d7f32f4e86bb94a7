//! `dchan serve`: the server's assembly — configuration, logging, the
//! broker, the topic tree, the 9P engine on its listeners, and shutdown on
//! SIGINT or SIGTERM.
//!
//! ```text
//! dchan serve [--listen ADDR]... [--config FILE] [--log LEVEL] [--nats URL,...]
//! ```
//! The binary only parses its arguments and calls [`main`]; [`run`] is the
//! server itself, and takes its shutdown signal as a future so that a test
//! can pass any (as mini-redis's `server::run` does).
//!
//! On start it prints one line per listener to stdout, `listening on
//! tcp!127.0.0.1!PORT` (the real port when asked for port 0) or `listening
//! on unix!PATH`, once every address is bound. A bad configuration prints
//! `dchan: config FILE:LINE: REASON` to stderr and exits with status 1,
//! before anything listens; so does a bad log filter or an address that
//! cannot be bound. A clean stop removes the Unix socket files it made.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::broker::JetStreamBroker;
use crate::broker::durable::{DurableBroker, OpenError as DurableError, Options as DurableOptions};
use crate::broker::memory::MemoryBroker;
use crate::broker::{self, Broker};
use crate::config::{Config, ConfigError, Engine};
use crate::engine::{self, Addr, Connections, Limits, Listener};
use crate::fs::FileTree;
use crate::ramfs::RamFs;
use crate::tree::{TopicTree, TreeConfig};

/// The arguments of `dchan serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: tcp!HOST!PORT, HOST:PORT or unix!PATH (repeatable;
    /// replaces the configuration's `listen` list) [default: tcp!127.0.0.1!5640]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<Addr>,
    /// A TOML file read over the built-in defaults (see dchan.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, such as debug or dchan=trace [default: $RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,
    /// Keep topics in the NATS JetStream cluster at these servers, shared
    /// with every dchan server given the same (sets [broker] engine =
    /// "jetstream" and nats)
    #[arg(long, value_name = "URL,...", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// Serve an in-memory file tree instead of topics (for tests of the
    /// 9P engine with real clients)
    #[arg(long, hide = true)]
    pub ramfs: bool,
    /// Keep topics durable in DIR (replaces the configuration's
    /// `storage.data_dir`); without one, topics live in memory
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("log filter {filter:?}: {reason}")]
    Log { filter: String, reason: String },
    #[error("listen on {addr}: {source}")]
    Listen { addr: Addr, source: std::io::Error },
    #[error(transparent)]
    Data(#[from] DurableError),
    #[error("topic {name:?} in the configuration: {source}")]
    Topic { name: String, source: broker::Error },
    #[error("{0}")]
    Broker(broker::Error),
}

/// `dchan serve`: start logging, read the configuration, serve until
/// SIGINT or SIGTERM. Errors are printed as `dchan: ...` with status 1.
pub async fn main(args: ServeArgs) -> ExitCode {
    match start(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dchan: {e}");
            ExitCode::from(1)
        }
    }
}

async fn start(args: ServeArgs) -> Result<(), Error> {
    init_logging(args.log.as_deref())?;
    // Before anything listens: a signal that comes once a client could
    // connect must stop the server cleanly, not kill it.
    let stop = stop_signal();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if !args.nats.is_empty() {
        config.broker.engine = Engine::Jetstream;
        config.broker.nats = args.nats;
    }
    if let Some(dir) = args.data {
        config.storage.data_dir = dir;
    }
    if args.ramfs {
        let listeners = bind(&config.listen).await?;
        let tree = Arc::new(RamFs::new());
        serve_tree(listeners, tree, &config, Connections::default(), stop).await;
        Ok(())
    } else {
        run(config, stop).await
    }
}

/// Serve topics as `config` says until `shutdown` completes; then stop
/// accepting, answer every blocked request with an error, and return once
/// every connection has closed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let limits = config.groups.limits();
    if config.broker.engine == Engine::Jetstream {
        let settings = config.broker.jetstream(&config.groups);
        let broker = JetStreamBroker::connect(settings)
            .await
            .map_err(Error::Broker)?;
        return run_on(broker, config, shutdown).await;
    }
    let data_dir = &config.storage.data_dir;
    if data_dir.as_os_str().is_empty() {
        return run_on(MemoryBroker::with_group_limits(limits), config, shutdown).await;
    }
    let options = DurableOptions {
        sync: config.storage.sync_mode(),
        groups: limits,
        ..DurableOptions::default()
    };
    let broker = DurableBroker::open(data_dir, options)?;
    info!(dir = %data_dir.display(), sync = %options.sync, "durable topics");
    run_on(broker, config, shutdown).await
}

/// Serve `broker`'s topics (see [`run`]).
async fn run_on<B: Broker>(
    broker: B,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    for spec in &config.topic {
        // A durable topic read back from disk keeps its state.
        match Broker::create(
            &broker,
            &spec.name,
            spec.topic_config(&config.topic_defaults),
        )
        .await
        {
            // Durable: read back from disk; shared: made by another server.
            Ok(()) | Err(broker::Error::Exists(_)) => {}
            Err(source) => {
                return Err(Error::Topic {
                    name: spec.name.clone(),
                    source,
                });
            }
        }
    }
    let listeners = bind(&config.listen).await?;
    let connections = Connections::default();
    let counted = connections.clone();
    let tree = TopicTree::new(
        broker,
        TreeConfig {
            defaults: config.topic_defaults.topic_config(),
            max_unfinished_bytes: config.limits.max_unfinished_bytes.0,
        },
        move || counted.count(),
    );
    let tree = Arc::new(tree);
    let sweeper = (config.groups.limits().idle_expiry)
        .map(|idle| tokio::spawn(sweep_idle(tree.broker().clone(), idle)));
    serve_tree(listeners, tree, &config, connections, shutdown).await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    Ok(())
}

/// Expire idle groups on time: every quarter of `idle` (so a group goes
/// at most 1.25 × `idle` after its last use), whether or not anything
/// touches its topic. One task for the server, not one per topic.
async fn sweep_idle<B: Broker>(broker: Arc<B>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker.expire_idle();
    }
}

/// Bind every address, then print where each listens: nothing is printed
/// unless all of them could be bound. An address given twice is refused
/// before any is bound (port 0 excepted: each gets a port of its own).
async fn bind(addrs: &[Addr]) -> Result<Vec<Listener>, Error> {
    for (i, addr) in addrs.iter().enumerate() {
        let port0 = matches!(addr, Addr::Tcp { port: 0, .. });
        if !port0 && addrs[..i].contains(addr) {
            return Err(Error::Listen {
                addr: addr.clone(),
                source: std::io::Error::other("address given twice"),
            });
        }
    }
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listen_err = |source| Error::Listen {
            addr: addr.clone(),
            source,
        };
        let listener = Listener::bind(addr).await;
        let listener = match listener.and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((at, l)) => {
                bound.push(at);
                l
            }
            Err(e) => {
                // Leave no socket file of the ones already bound behind.
                remove_sockets(unix_sockets(&listeners));
                return Err(listen_err(e));
            }
        };
        listeners.push(listener);
    }
    for addr in bound {
        println!("listening on {addr}");
    }
    Ok(listeners)
}

/// The Unix sockets among `listeners`, each with its inode, to remove at a
/// clean stop (only if the file there is still the one this server made).
fn unix_sockets(listeners: &[Listener]) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    listeners
        .iter()
        .filter_map(|l| match l.local_addr() {
            Ok(Addr::Unix(path)) => {
                let ino = std::fs::symlink_metadata(&path).ok()?.ino();
                Some((path, ino))
            }
            _ => None,
        })
        .collect()
}

/// Remove the socket files this server made.
fn remove_sockets(sockets: Vec<(PathBuf, u64)>) {
    use std::os::unix::fs::MetadataExt;
    for (path, ino) in sockets {
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

async fn serve_tree<T: FileTree>(
    listeners: Vec<Listener>,
    tree: Arc<T>,
    config: &Config,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) {
    let l = &config.limits;
    let limits = Limits {
        max_msize: l.max_msize,
        max_connections: l.max_connections,
        max_fids: l.max_fids,
        max_in_flight: l.max_in_flight,
    };
    let sockets = unix_sockets(&listeners);
    engine::serve_counted(listeners, tree, limits, connections, shutdown).await;
    remove_sockets(sockets);
    info!("stopped");
}

/// Logs to stderr, filtered by `level`, else `$RUST_LOG`, else `info`.
/// A subscriber already installed (by a caller) is left in place.
fn init_logging(level: Option<&str>) -> Result<(), Error> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = level.map(str::to_string).or(from_env);
    let filter = filter.as_deref().unwrap_or("info");
    let env_filter = log_filter(filter).map_err(|reason| Error::Log {
        filter: filter.to_string(),
        reason,
    })?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

/// The levels a log filter may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter: comma-separated directives, each a level or
/// `TARGET=LEVEL` (`warn`, `dchan=debug,info`). tracing would take a lone
/// word that is no level as a target name and log nothing else, so a typo
/// (`wran`) is refused here, with the levels listed; so is a filter with
/// no directive at all (`--log ''`), which tracing would take as "off".
pub fn log_filter(text: &str) -> Result<EnvFilter, String> {
    if text.split(',').all(|d| d.trim().is_empty()) {
        return Err(format!(
            "empty; want a level ({}) or TARGET=LEVEL, comma-separated",
            LEVELS.join(", ")
        ));
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{level:?} is no level; want {} (or TARGET=LEVEL, comma-separated)",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(text).map_err(|e| e.to_string())
}

/// A future that completes on SIGINT or SIGTERM. The handlers are
/// installed at once (inside a Tokio runtime), not when it is first polled.
pub fn stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => info!("SIGINT: stopping"),
            _ = term.recv() => info!("SIGTERM: stopping"),
        }
    }
}
