//! `dchan serve`: the server's assembly — configuration, logging, the
//! broker, the topic tree, the 9P engine on its listeners, and shutdown on
//! SIGINT or SIGTERM.
//!
//! ```text
//! dchan serve [--listen ADDR]... [--config FILE] [--log LEVEL] [--log-format text|json]
//!             [--open] [--allow NET]... [--cert FILE --key FILE [--client-ca FILE]]
//!             [--metrics ADDR] [--data DIR | --nats URL,...]
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
use crate::config::{Config, ConfigError, Engine, ListenerSpec};
use crate::engine::{self, Addr, Connections, Entrance, Guard, Limits, Listener};
use crate::fs::FileTree;
use crate::metrics;
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
    /// Log lines as text (for people) or JSON objects, one a line (for
    /// log collectors)
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Start even with a listener reachable beyond this machine that has
    /// no TLS client certificates, no address rules and no access rules
    /// (protected mode off; the config's allow_open)
    #[arg(long)]
    pub open: bool,
    /// Networks or addresses that may connect to the --listen addresses
    /// (repeatable; 10.1.0.0/16, 192.168.7.3); others are closed at once
    #[arg(long, value_name = "NET", value_parser = crate::config::parse_net)]
    pub allow: Vec<ipnet::IpNet>,
    /// The certificate chain (PEM) of the --listen tls! addresses
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of the --listen tls! addresses
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The CA (PEM) whose certificate every client of the --listen tls!
    /// addresses must show (mutual TLS; the certificate's name is the user)
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus) and GET /healthz over HTTP here,
    /// such as tcp!127.0.0.1!9640
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<Addr>,
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
    /// Threads that run connections, 1 to 1024 [default: one per core; half
    /// the cores, at least one, with topics in JetStream]. One thread keeps
    /// every wake-up on it: a shorter round trip and less CPU per message,
    /// but less throughput across many busy connections (book chapter 8,
    /// "One thread or one per core"; chapter 7 for JetStream)
    #[arg(long, value_name = "N", env = "DCHAN_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
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
    Protected(String),
    #[error("listen on {addr}: TLS: {reason}")]
    Tls { addr: Addr, reason: String },
    #[error("{0}")]
    Broker(broker::Error),
}

/// The runtime's worker threads, if not tokio's one per core: `--threads`,
/// else half the cores (at least one) when the topics are in JetStream.
/// A JetStream server's work per message is small and every message goes
/// through async-nats's one connection task, so threads beyond that add
/// wake-ups across threads more than they add work done: on two cores one
/// thread took 28 % less CPU per message at pipe depth 64 and was faster
/// on every row of `scripts/bench-jetstream` (book chapter 7). A
/// configuration file that cannot be read is left for `main` to report.
pub fn worker_threads(args: &ServeArgs) -> Option<usize> {
    if let Some(n) = args.threads {
        return Some(n.into());
    }
    let jetstream = !args.nats.is_empty()
        || (args.config.as_deref())
            .and_then(|path| Config::load(path).ok())
            .is_some_and(|c| c.broker.engine == Engine::Jetstream);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    jetstream.then_some((cores / 2).max(1))
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
    init_logging(args.log.as_deref(), args.log_format)?;
    // Before anything listens: a signal that comes once a client could
    // connect must stop the server cleanly, not kill it.
    let stop = stop_signal();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    apply_args(&mut config, &args)?;
    if !args.nats.is_empty() {
        config.broker.engine = Engine::Jetstream;
        config.broker.nats = args.nats.clone();
    }
    if let Some(dir) = args.data.clone() {
        config.storage.data_dir = dir;
    }
    if args.ramfs {
        let listeners = bind(&config.listeners()).await?;
        let tree = Arc::new(RamFs::new());
        serve_tree(listeners, tree, &config, Connections::default(), stop).await;
        Ok(())
    } else {
        run(config, stop).await
    }
}

/// Lay the command line's listeners and switches over the configuration:
/// `--listen` replaces `listen` and every `[[listener]]`, each new address
/// taking `--allow`, `--cert`, `--key` and `--client-ca`.
fn apply_args(config: &mut Config, args: &ServeArgs) -> Result<(), Error> {
    let door = !args.allow.is_empty()
        || args.cert.is_some()
        || args.key.is_some()
        || args.client_ca.is_some();
    if door && args.listen.is_empty() {
        return Err(Error::Config(ConfigError::Invalid {
            file: "(command line)".into(),
            line: None,
            reason: "--allow, --cert, --key and --client-ca apply to the --listen addresses: \
                     give --listen too (or use [[listener]] tables in the config)"
                .into(),
        }));
    }
    if !args.listen.is_empty() {
        config.listen = Vec::new();
        config.listener = args
            .listen
            .iter()
            .map(|addr| {
                let tls = matches!(addr, Addr::Tls { .. });
                ListenerSpec {
                    addr: addr.clone(),
                    allow: args.allow.clone(),
                    cert: args.cert.clone().filter(|_| tls),
                    key: args.key.clone().filter(|_| tls),
                    client_ca: args.client_ca.clone().filter(|_| tls),
                }
            })
            .collect();
        for l in &config.listener {
            l.check().map_err(|r| {
                Error::Config(ConfigError::Invalid {
                    file: "(command line)".into(),
                    line: None,
                    reason: r,
                })
            })?;
        }
    }
    config.allow_open |= args.open;
    if args.metrics.is_some() {
        config.metrics = args.metrics.clone();
    }
    Ok(())
}

/// Serve topics as `config` says until `shutdown` completes; then stop
/// accepting, answer every blocked request with an error, and return once
/// every connection has closed.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.check_protected().map_err(Error::Protected)?;
    let limits = config.groups.limits();
    if config.broker.engine == Engine::Jetstream {
        if !config.storage.data_dir.as_os_str().is_empty() {
            return Err(Error::Config(ConfigError::Invalid {
                file: "(configuration)".into(),
                line: None,
                reason: "storage.data_dir (--data) and broker.engine = \"jetstream\" (--nats) \
                         are two engines: choose one (JetStream keeps the topics itself)"
                    .into(),
            }));
        }
        if let Err(e) = JetStreamBroker::supports(&config.topic_defaults.topic_config()) {
            return Err(Error::Config(ConfigError::Invalid {
                file: "(configuration)".into(),
                line: None,
                reason: format!("[topic_defaults]: {e}"),
            }));
        }
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
    let files = raise_open_files();
    let max_topics = config.limits.max_topics as u64;
    if max_topics > files {
        tracing::warn!(
            "each durable topic written to holds an open file: limits.max_topics {max_topics} is more than the {files} files this process may open (ulimit -n), so first writes to topics (pushes, settings) may fail with 'too many open files' before it"
        );
    }
    let options = DurableOptions {
        sync: config.storage.sync_mode(),
        memory: (config.storage.memory).unwrap_or(broker::durable::DEFAULT_MEMORY),
        groups: limits,
        ..DurableOptions::default()
    };
    let broker = DurableBroker::open(data_dir, options)?;
    info!(dir = %data_dir.display(), sync = %options.sync, "durable topics");
    run_on(broker, config, shutdown).await
}

/// Raise the soft limit on open files to the hard one (as Go's runtime
/// and most servers do): every connection holds a socket and every
/// durable topic its segment. Returns the limit now.
fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
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
    let held = broker.totals().topics;
    let max = config.limits.max_topics as u64;
    if held > max {
        // Read back from a data directory or made by other servers: kept,
        // but no create succeeds until enough are removed.
        tracing::warn!(
            "the server holds {held} topics, more than limits.max_topics {max}: creates fail until fewer"
        );
    }
    // The metrics port is bound first, so that a failure there stops the
    // server before it says it listens.
    let metrics_at = match &config.metrics {
        Some(addr) => {
            let listener = Listener::bind(addr).await.map_err(|source| Error::Listen {
                addr: addr.clone(),
                source,
            })?;
            let guard = Guard {
                allow: config.metrics_rules(),
                tls: None,
            };
            Some(Entrance { listener, guard })
        }
        None => None,
    };
    let listeners = bind(&config.listeners()).await?;
    let requests = Arc::new(metrics::Requests::new());
    let connections = match metrics_at {
        Some(_) => Connections::observed(requests.clone()),
        None => Connections::default(),
    };
    let counted = connections.clone();
    let access = Arc::new(config.access.rules());
    let tree = TopicTree::new(
        broker,
        TreeConfig {
            defaults: config.topic_defaults.topic_config(),
            max_unfinished_bytes: config.limits.max_unfinished_bytes.0,
            access: access.clone(),
            max_topics: config.limits.max_topics as u64,
        },
        move || counted.count(),
    );
    let tree = Arc::new(tree);
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    if let Some(entrance) = metrics_at {
        if let Ok(at) = entrance.local_addr() {
            println!("metrics on {at}");
        }
        let m = metrics::Metrics::new(tree.broker().clone(), access, connections.clone(), requests);
        tokio::spawn(metrics::serve(entrance, Arc::new(m), stop_metrics.clone()));
    }
    let sweeper = (config.groups.limits().idle_expiry)
        .map(|idle| tokio::spawn(sweep_idle(tree.broker().clone(), idle)));
    serve_tree(listeners, tree, &config, connections, shutdown).await;
    stop_metrics.cancel();
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
/// TLS files are read before anything is bound.
async fn bind(specs: &[ListenerSpec]) -> Result<Vec<Entrance>, Error> {
    let addrs: Vec<&Addr> = specs.iter().map(|s| &s.addr).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let port0 = matches!(addr, Addr::Tcp { port: 0, .. } | Addr::Tls { port: 0, .. });
        if !port0 && addrs[..i].contains(addr) {
            return Err(Error::Listen {
                addr: (*addr).clone(),
                source: std::io::Error::other("address given twice"),
            });
        }
    }
    let mut guards = Vec::with_capacity(specs.len());
    for spec in specs {
        let tls = match spec.is_tls() {
            true => Some(tokio_rustls::TlsAcceptor::from(
                spec.tls_files()
                    .server_config()
                    .map_err(|reason| Error::Tls {
                        addr: spec.addr.clone(),
                        reason,
                    })?,
            )),
            false => None,
        };
        guards.push(Guard {
            allow: spec.allow.clone(),
            tls,
        });
    }
    let mut listeners: Vec<Entrance> = Vec::with_capacity(specs.len());
    let mut bound = Vec::with_capacity(specs.len());
    for (spec, guard) in specs.iter().zip(guards) {
        let addr = &spec.addr;
        let listen_err = |source| Error::Listen {
            addr: addr.clone(),
            source,
        };
        let listener = Listener::bind(addr)
            .await
            .map(|listener| Entrance { listener, guard });
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
fn unix_sockets(listeners: &[Entrance]) -> Vec<(PathBuf, u64)> {
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
    listeners: Vec<Entrance>,
    tree: Arc<T>,
    config: &Config,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
) {
    let l = &config.limits;
    let limits = Limits {
        max_msize: l.max_msize,
        max_connections: l.max_connections,
        max_per_address: l.max_per_address,
        max_fids: l.max_fids,
        max_in_flight: l.max_in_flight,
    };
    let sockets = unix_sockets(&listeners);
    engine::serve_counted(listeners, tree, limits, connections, shutdown).await;
    remove_sockets(sockets);
    info!("stopped");
}

/// Logs to stderr, filtered by `level`, else `$RUST_LOG`, else `info`;
/// a line that cannot be written is dropped.
/// A subscriber already installed (by a caller) is left in place.
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(), Error> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = level.map(str::to_string).or(from_env);
    let filter = filter.as_deref().unwrap_or("info");
    let env_filter = log_filter(filter).map_err(|reason| Error::Log {
        filter: filter.to_string(),
        reason,
    })?;
    // A log line that cannot be written (stderr on a full disk) is lost,
    // never reported with `eprintln!`, which panics when stderr fails and
    // would take down the request (a connection, a delivery) that logged.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
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
