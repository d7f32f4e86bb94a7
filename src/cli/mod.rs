//! The `dchan` command line: its arguments (clap), the client subcommands
//! built on `dchan::client`, and how failures are reported.
//!
//! Every failure is one line on stderr, `dchan: WHAT: WHY`
//! (`dchan: push jobs: topic reset`), and the exit status says what kind:
//! 0 done, 1 failed, 2 bad usage.
//!
//! - `push`   — `dchan push`.
//! - `pull`   — `dchan pull`.
//! - `admin`  — `reset`, `close`, `create`, `rm`, `stat`, `offset`.
//! - `ls`     — `dchan ls`.
//! - `mount`  — `dchan mount`, `dchan umount`.
//! - `pipe`   — `dchan run`, `dchan worker` (pipelines over topics).
//! - `tunnel` — `dchan tunnel` (the work is `dchan::tunnel`'s).

mod admin;
mod ls;
mod mount;
mod pipe;
mod pull;
mod push;
mod tunnel;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dchan::client::{self, Client, DEFAULT_ADDR, Options};
use dchan::engine::Addr;
use tokio_util::sync::CancellationToken;

pub use admin::{CreateArgs, OffsetArgs, RmArgs, TopicArg};
pub use dchan::serve::ServeArgs;
pub use ls::LsArgs;
pub use mount::{MountArgs, UmountArgs};
pub use pull::PullArgs;
pub use push::PushArgs;

const EXAMPLES: &str = "\
Examples:
  dchan serve                          serve on tcp!127.0.0.1!5640
  dchan create jobs --capacity 10      a topic holding up to 10 unread messages
  dchan push jobs 'build site'         push one message (waits for room)
  producer | dchan push jobs           push every line of the producer's output
  dchan pull jobs                      print one message (waits for one)
  dchan pull jobs --follow             print messages until the topic is closed
  dchan pull jobs --group audit        read as group \"audit\" (every group sees every message)
  dchan ls                             every topic and its status
  DCHAN_ADDR=tcp!queue.example!5640 dchan ls

Every client command takes --addr (default $DCHAN_ADDR, else tcp!127.0.0.1!5640)
and --group (the reader group; default the default group). Commands that
change something print nothing when they succeed; what the others print is
described in each one's --help.

Exit status: 0 done, 1 failed (one line on stderr: \"dchan: WHAT: WHY\"), 2 bad usage.";

const STAT_HELP: &str = "\
Output: the topic's ctl file as the server writes it, one \"key value\" a
line: capacity, framing, timeout, max_message, retain, max_bytes, rate,
pending, held_bytes, retained,
first, next, pushed, pulled,
readers, blocked_readers, blocked_writers, a line \"group NAME offset N
lag N ...\" for each reader group, and closed (true or false). With no
topic: the server's ctl file (version, uptime, topics, connections,
pushed, pulled, engine memory|durable|jetstream, and for a durable server its sync
mode and disk_bytes).

Examples:
  dchan stat jobs
  dchan stat jobs | awk '$1 == \"pending\" { print $2 }'";

/// Message topics served as files over 9P.
#[derive(Parser)]
#[command(name = "dchan", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve topics over 9P.
    Serve(ServeArgs),
    /// Carry a local plaintext port to a remote TLS listener (for the
    /// kernel's 9P client, 9pfuse and plan9port, which cannot speak TLS).
    Tunnel(tunnel::TunnelArgs),
    /// Measure a server: one workload, one JSON line (see scripts/bench).
    Bench(dchan::bench::BenchArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The subcommands that are a client of a server.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Push messages to a topic.
    Push(PushArgs),
    /// Pull messages from a topic and print them.
    Pull(PullArgs),
    /// List topics and their status.
    Ls(LsArgs),
    /// Print a topic's status (its ctl file).
    #[command(after_help = STAT_HELP)]
    Stat(admin::StatArgs),
    /// Print the group's offset in a topic, or move it.
    Offset(OffsetArgs),
    /// Create a topic.
    Create(CreateArgs),
    /// Remove a topic, failing its waiting readers and writers.
    Rm(RmArgs),
    /// Empty a topic, fail its blocked pushes, and reopen it if closed.
    Reset(TopicArg),
    /// Close a topic: readers drain it, then see the end.
    Close(TopicArg),
    /// Mount the server on a directory: the kernel's 9P client as root, else 9pfuse.
    Mount(MountArgs),
    /// Unmount what `dchan mount` mounted.
    Umount(UmountArgs),
    /// Run a pipeline of commands with a topic for each |.
    Run(pipe::RunArgs),
    /// Run copies of one stage of a running pipeline.
    Worker(pipe::WorkerArgs),
}

/// Where the server is and who we are; every client subcommand takes these.
#[derive(Args, Clone, Debug)]
pub struct ConnArgs {
    /// The server: tcp!HOST!PORT, HOST:PORT, tls!HOST!PORT or unix!PATH.
    #[arg(long, env = "DCHAN_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: String,
    /// The reader group to act as (the 9P attach name); the default group is "".
    #[arg(long, short, default_value = "")]
    pub group: String,
    /// Give up when the server has not connected, attached and opened
    /// what the command needs within this long (e.g. 5s, 2m; not 0); for
    /// ls, stat, offset, create, rm, reset and close, which never wait on
    /// a topic, when the whole command has not finished within it.
    #[arg(long, value_parser = parse_timeout, default_value = "30s", value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// The user name sent in the attach (the server takes it on trust
    /// unless TLS or a Unix socket proves who you are)
    #[arg(long, env = "USER", default_value = "none", value_name = "NAME")]
    pub user: String,
    /// For tls!: this client's certificate chain (PEM), if the server asks for one
    #[arg(long, value_name = "FILE", env = "DCHAN_CERT")]
    pub cert: Option<PathBuf>,
    /// For tls!: this client's private key (PEM)
    #[arg(long, value_name = "FILE", env = "DCHAN_KEY")]
    pub key: Option<PathBuf>,
    /// For tls!: the CA (PEM) that signed the server's certificate
    #[arg(long, value_name = "FILE", env = "DCHAN_CA")]
    pub ca: Option<PathBuf>,
}

fn parse_addr(s: &str) -> Result<String, String> {
    s.parse::<Addr>()?;
    Ok(s.to_string())
}

/// A wait limit such as `5s`, `500ms` or `2m`, from 1 ms to 500 years.
/// Zero is refused, here as in the configuration: leaving `--timeout` out
/// is how to wait for ever. Under a millisecond is refused too (the
/// server keeps whole milliseconds, so it would become zero), and so is
/// more than 500 years (the server's parser cannot take it in ms).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(ZERO_TIMEOUT.to_string()),
        Ok(d) if d < Duration::from_millis(1) => {
            Err("under 1ms is refused (timeouts are whole milliseconds; e.g. 1ms, 5s)".into())
        }
        Ok(d) if d > MAX_TIMEOUT => {
            Err("over 500 years is refused (leave --timeout out to wait for ever)".into())
        }
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (e.g. 5s, 500ms, 2m)")),
    }
}

/// The longest timeout taken: 500 years of 365 days.
const MAX_TIMEOUT: Duration = Duration::from_secs(500 * 365 * 24 * 3600);

/// Why a zero timeout is refused.
const ZERO_TIMEOUT: &str =
    "a zero timeout is refused (give a positive duration, or leave --timeout out to wait for ever)";

impl ConnArgs {
    /// Connect and attach within `--connect-timeout`, or fail with
    /// `connect ADDR: WHY`.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let what = format!("connect {}", self.addr);
        let mut opts = Options::group(self.group.clone());
        opts.uname = self.user.clone();
        opts.connect.tls = dchan::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        };
        let connect = async {
            Client::connect(&self.addr, &opts)
                .await
                .map_err(|e| Failure::new(what.clone(), e))
        };
        within(self.connect_timeout, what.clone(), connect).await
    }
}

/// `work`, failing with `WHAT: timed out after LIMIT` if it takes longer
/// than `limit` (a server that stops answering, or answers a tag never
/// sent, cannot make the CLI hang).
pub async fn within<T>(
    limit: Duration,
    what: String,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, work).await {
        Ok(done) => done,
        Err(_) => Err(Failure::new(
            what,
            format!("timed out after {}", humantime::format_duration(limit)),
        )),
    }
}

/// A failure: what was being done and why it failed.
#[derive(Debug)]
pub struct Failure {
    /// What failed, e.g. "push jobs".
    what: String,
    /// Why, e.g. "topic reset".
    why: String,
    /// The exit status: 1, or a signal's 128 + N when one stopped it.
    code: u8,
}

impl Failure {
    /// `what` failed because of `why`; a `why` that already starts with
    /// "WHAT: " (the server's words often do) is not told twice.
    pub fn new(what: impl Into<String>, why: impl fmt::Display) -> Failure {
        let what = what.into();
        let why = why.to_string();
        let why = match why.strip_prefix(&what).and_then(|w| w.strip_prefix(": ")) {
            Some(rest) => rest.to_string(),
            None => why,
        };
        Failure { what, why, code: 1 }
    }

    /// The same failure, ending the command with status `code` (0: 1).
    pub fn with_code(mut self, code: u8) -> Failure {
        self.code = code.max(1);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

/// Write `text` to standard output. A reader that went away (`| head`) is
/// no failure; any other error is.
pub fn print_out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new("standard output", client::io_reason(&e)))
        }
        _ => Ok(()),
    }
}

/// Attach "WHAT: " to a client error.
pub trait Context<T> {
    fn what(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Context<T> for Result<T, client::Error> {
    fn what(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(what(), e))
    }
}

/// Run a subcommand: the server, or a client command reporting its
/// failure as one line.
pub async fn run(command: Command) -> ExitCode {
    let command = match command {
        Command::Serve(args) => return dchan::serve::main(args).await,
        Command::Tunnel(args) => return tunnel::main(args).await,
        // Its arguments' bounds are checked as they are parsed.
        Command::Bench(args) => return dchan::bench::command::main(args).await,
        Command::Client(c) => c,
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.is_empty() => match dchan::serve::log_filter(&text) {
            Ok(filter) => filter,
            Err(why) => {
                eprintln!("dchan: RUST_LOG {text:?}: {why}");
                return ExitCode::from(2);
            }
        },
        _ => "warn".into(),
    };
    // Plain text unless stderr is a terminal: a failure stays one line a
    // script can read.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let command = match command {
        ClientCommand::Run(a) => return pipe::run(a).await,
        ClientCommand::Worker(a) => return pipe::worker(a).await,
        c => c,
    };
    match run_client(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("dchan: {failure}");
            if failure.code >= 128 {
                // Stopped by a signal: now, not once a read of standard
                // input blocked in the runtime's thread pool returns.
                std::process::exit(failure.code.into());
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run_client(command: ClientCommand) -> Result<(), Failure> {
    use ClientCommand as Command;
    // Commands that never wait on a topic end within --connect-timeout.
    let t = |conn: &ConnArgs| conn.connect_timeout;
    let named = |cmd: &str, topic: &str| format!("{cmd} {topic}");
    match command {
        Command::Push(a) => on_worker(push::run(a)).await,
        Command::Pull(a) => on_worker(pull::run(a)).await,
        Command::Ls(a) => {
            let what = named("ls", a.topic.as_deref().unwrap_or(""))
                .trim()
                .to_string();
            within(t(&a.conn), what, ls::run(a)).await
        }
        Command::Stat(a) => {
            let what = named("stat", a.topic.as_deref().unwrap_or(""));
            within(t(&a.conn), what, admin::stat(a)).await
        }
        Command::Offset(a) => within(t(&a.conn), named("offset", &a.topic), admin::offset(a)).await,
        Command::Create(a) => {
            let what = admin::several("create", &a.topics);
            within(t(&a.conn), what, admin::create(a)).await
        }
        Command::Rm(a) => within(t(&a.conn), admin::several("rm", &a.topics), admin::rm(a)).await,
        Command::Reset(a) => within(t(&a.conn), named("reset", &a.topic), admin::reset(a)).await,
        Command::Close(a) => within(t(&a.conn), named("close", &a.topic), admin::close(a)).await,
        Command::Mount(a) => mount::mount(a).await,
        Command::Umount(a) => mount::umount(a).await,
        Command::Run(_) | Command::Worker(_) => unreachable!("handled in run"),
    }
}

/// Run `f` as a task on the runtime's workers rather than on the thread
/// that blocks on `main`: the client's connection tasks and the command
/// then wake each other within a worker, not with a futex across threads
/// for every request (a rendezvous round trip in `dchan bench` went from
/// about 270 to 150 us that way).
async fn on_worker<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Parse the arguments; a usage error becomes one line and exit status 2,
/// `--help` and `--version` print and exit 0.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let subs: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
            eprintln!(
                "dchan: no subcommand given; want one of {}; see 'dchan --help'",
                subs.join(", ")
            );
            Err(ExitCode::from(2))
        }
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "dchan: {}; see '{} --help'",
                usage_line(&e),
                command_named()
            );
            Err(ExitCode::from(2))
        }
    }
}

/// "dchan SUBCOMMAND" if the arguments name one, else "dchan".
fn command_named() -> String {
    let cmd = <Cli as clap::CommandFactory>::command();
    let sub = std::env::args()
        .skip(1)
        .find(|a| cmd.get_subcommands().any(|s| s.get_name() == a));
    match sub {
        Some(s) => format!("dchan {s}"),
        None => "dchan".to_string(),
    }
}

/// clap's message on one line: "error: " and the usage and tip lines dropped.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    parts.join(" ")
}

/// SIGINT or SIGTERM: cancels `token` (the request in flight is flushed
/// and its verdict awaited), and says which came; a second one kills.
pub(super) fn on_signal(token: CancellationToken) -> Option<Arc<AtomicU8>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok()?;
    let mut term = signal(SignalKind::terminate()).ok()?;
    let code = Arc::new(AtomicU8::new(0));
    let seen = code.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let n = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            if !first {
                std::process::exit(n.into());
            }
            first = false;
            seen.store(n, Ordering::Relaxed);
            token.cancel();
        }
    });
    Some(code)
}

/// Why standard input (fd 0, read) or output (fd 1, written) cannot be
/// used: closed when the process started (`<&-`, `>&-`), or open the other
/// way only (`1</dev/null`). Rust's standard streams would say nothing of
/// either: its runtime opens /dev/null on a closed fd 0, 1 or 2 before
/// `main` (so closed is asked before that, `ask_at_start`), and it takes
/// EBADF as done. A pull would take messages into nowhere, a push of
/// standard input push nothing and succeed.
pub(super) fn unusable(fd: usize) -> Option<&'static str> {
    if CLOSED_AT_START[fd].load(Ordering::Relaxed) {
        return Some("closed");
    }
    // SAFETY: F_GETFL reads a descriptor's flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd as libc::c_int, libc::F_GETFL) };
    match (fd, flags & libc::O_ACCMODE) {
        (0, libc::O_WRONLY) => Some("not open for reading"),
        (1, libc::O_RDONLY) => Some("not open for writing"),
        _ => None,
    }
}

static CLOSED_AT_START: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static ASK_AT_START: extern "C" fn() = ask_at_start;

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
extern "C" fn ask_at_start() {
    for (fd, closed) in CLOSED_AT_START.iter().enumerate() {
        // SAFETY: F_GETFD reads a descriptor's flags and touches no memory.
        let flags = unsafe { libc::fcntl(fd as libc::c_int, libc::F_GETFD) };
        closed.store(flags == -1, Ordering::Relaxed);
    }
}

/// Complete once `stop` is cancelled or, with a `limit`, once it passes:
/// when a push or pull in flight gives up (and flushes its request).
pub(super) async fn stop_or_after(stop: &CancellationToken, limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::select! {
            _ = tokio::time::sleep(t) => {}
            _ = stop.cancelled() => {}
        },
        None => stop.cancelled().await,
    }
}
