//! `dchan bench WORKLOAD`: its arguments, and running one workload against
//! a dchan server, printing the result as one JSON line.

use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::dchan::Dchan;
use super::{Options, Workload};
use crate::client::DEFAULT_ADDR;
use crate::proto::Dialect;

/// The arguments of `dchan bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    pub workload: Workload,
    /// The server: tcp!HOST!PORT, HOST:PORT or unix!PATH.
    #[arg(long, env = "DCHAN_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// The 9P dialect to speak: 9p2000.L (as Linux mounts and the CLI do),
    /// 9p2000.u, or 9p2000.
    #[arg(long, default_value = "9p2000.L", value_parser = parse_dialect)]
    pub dialect: Dialect,
    /// Read as a Linux mount does, a second Tread per message for the zero
    /// that ends a read(2), instead of as dchan's client does (one Tread a
    /// message: the `:short` session option).
    #[arg(long)]
    pub linux_reads: bool,
    #[command(flatten)]
    pub opts: Options,
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    match s.to_ascii_lowercase().as_str() {
        "9p2000" => Ok(Dialect::P2000),
        "9p2000.u" => Ok(Dialect::P2000u),
        "9p2000.l" => Ok(Dialect::P2000L),
        _ => Err("one of 9p2000, 9p2000.u, 9p2000.L".into()),
    }
}

/// Run `dchan bench`: exit 0 with a clean result, 1 on any loss or error,
/// 2 on arguments that do not fit together,
/// 128 + the signal's number (130 for SIGINT) when interrupted. A signal
/// stops the run, removes its topics and reports it as interrupted.
pub async fn main(args: BenchArgs) -> ExitCode {
    if let Err(why) = args.opts.check(args.workload) {
        eprintln!("dchan: {why}; see 'dchan bench --help'");
        return ExitCode::from(2);
    }
    let signalled = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dchan: bench: catch signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = async move { signalled.next().await.to_string() };
    tokio::pin!(listen);
    if args.workload == Workload::Topics {
        return topics(&args, listen).await;
    }
    let system = tokio::select! {
        s = Dchan::connect(&args.addr, args.dialect) => {
            s.map(|s| s.with_batches(args.opts.batch > 1).with_linux_reads(args.linux_reads))
        }
        why = &mut listen => {
            eprintln!("dchan: bench {:?}: interrupted by {why}", args.workload);
            return interrupted_exit(&why);
        }
    };
    let system = match system {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dchan: bench: connect {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let report = super::workload::run_until(&system, args.workload, &args.opts, listen).await;
    report.print();
    match (&report.interrupted, &report.error) {
        (Some(why), e) => {
            eprintln!(
                "dchan: bench {:?}: {}",
                args.workload,
                e.as_deref().unwrap_or("interrupted")
            );
            interrupted_exit(why)
        }
        (None, Some(e)) => {
            eprintln!("dchan: bench {:?}: FAILED: {e}", args.workload);
            ExitCode::FAILURE
        }
        (None, None) => ExitCode::SUCCESS,
    }
}

/// `dchan bench topics`: on one connection of its own.
async fn topics(args: &BenchArgs, listen: impl std::future::Future<Output = String>) -> ExitCode {
    let opts = crate::client::Options::default().dialect(args.dialect);
    let client = match crate::client::Client::connect(&args.addr, &opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dchan: bench: connect {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let report = super::topics::run(&client, &args.opts, listen).await;
    report.print();
    match (&report.interrupted, &report.error) {
        (Some(why), _) => interrupted_exit(why),
        (None, Some(e)) => {
            eprintln!("dchan: bench topics: FAILED: {e}");
            ExitCode::FAILURE
        }
        (None, None) => ExitCode::SUCCESS,
    }
}

/// The exit status of a run ended by signal `name`: 128 + its number.
fn interrupted_exit(name: &str) -> ExitCode {
    match name {
        "SIGTERM" => ExitCode::from(128 + 15),
        _ => ExitCode::from(128 + 2),
    }
}

/// SIGINT and SIGTERM, caught from when this is made.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal to arrive.
    async fn next(mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
