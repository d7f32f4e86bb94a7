//! `dchan bench WORKLOAD`: its arguments, and running one workload against
//! a dchan server, printing the result as one JSON line.

use std::process::ExitCode;

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
    /// The 9P dialect to speak: 9p2000.L (as Linux mounts and the CLI do:
    /// a second Tread per message for the end-of-message zero), 9p2000.u,
    /// or 9p2000 (one Tread per message).
    #[arg(long, default_value = "9p2000.L", value_parser = parse_dialect)]
    pub dialect: Dialect,
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

/// Run `dchan bench`: exit 0 with a clean result, 1 on any loss or error.
pub async fn main(args: BenchArgs) -> ExitCode {
    let system = match Dchan::connect(&args.addr, args.dialect).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dchan: bench: connect {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let report = super::run(&system, args.workload, &args.opts).await;
    report.print();
    match &report.error {
        Some(e) => {
            eprintln!("dchan: bench {:?}: FAILED: {e}", args.workload);
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
