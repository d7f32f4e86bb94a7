//! The `dchan` command: parse the arguments, start tracing, call the
//! library. `dchan serve` runs the server; the other subcommands are a 9P
//! client of one (see `dchan --help`).

mod cli;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match cli::parse() {
        Ok(cli) => cli::run(cli.command).await,
        Err(code) => code,
    }
}
