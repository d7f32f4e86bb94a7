//! The `dchan` command: parse the arguments, start tracing, call the
//! library. `dchan serve` runs the server; the other subcommands are a 9P
//! client of one (see `dchan --help`).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Built here rather than by #[tokio::main], so that `serve` chooses
    // its worker threads.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let cli::Command::Serve(args) = &cli.command
        && let Some(n) = dchan::serve::worker_threads(args)
    {
        runtime.worker_threads(n);
    }
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(cli::run(cli.command)),
        Err(e) => {
            eprintln!("dchan: start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
