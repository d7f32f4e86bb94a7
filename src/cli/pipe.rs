//! `dchan run` and `dchan worker`: arguments into a `dchan::pipeline`
//! run, and its report into one line per failure and an exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dchan::client::DEFAULT_ADDR;
use dchan::pipeline::{self, Kind, Pipeline, Report, RunOptions, WorkerOptions};

use super::{parse_addr, parse_timeout};

const RUN_HELP: &str = "\
Each | is a topic: stage K reads NAME/K and writes NAME/K+1 (visible in
dchan ls while it runs). Standard input goes into NAME/1, NAME/N+1 comes
out on standard output, and the run ends once the end of the input has
travelled through every stage. The line is cut at its top-level | as sh
would (not inside quotes, $( ), `...`, ( ), { }, case...esac, a
here-document's body); || stays inside its stage. A simple command
(plain words, not an assignment or a shell builtin) runs directly,
anything else as sh -c 'STAGE'.

A filter stage (the default) is one process per copy, lines in and lines
out, like a Unix pipe. An each stage (--each K) runs its command once per
message: the message on its stdin, its whole stdout one message of the
next topic, its exit status deciding; a message that fails --attempts
times goes to NAME/K.failed. Copies of a stage (--replicas) share its
input; with one copy per stage the order is kept. Other machines add
copies with dchan worker --pipeline NAME --stage K.

Exit status: 1 when something failed (messages dead-lettered, a filter
process killed by a signal or that exited before its input ended, even if
restarted; a stage that could not start or gave up; the server lost), each
stage named on stderr with its count; else as sh with set -o pipefail: the
exit status of the last filter stage whose process exited non-zero after
reading all its input (grep that matched nothing: 1), 0 if none did. A
stage that ends early (head) ends the run as in sh: the stages before it
stop, as does the reading of standard input. 2 bad usage; 130 or 143
stopped by SIGINT or SIGTERM; 141 (SIGPIPE's) when standard output's
reader went away (dchan run ... | head -1).

Examples:
  seq 100000 | dchan run 'grep 7 | tr 7 x | sort -n'
  ls *.png | dchan run --name thumbs --each 1 --replicas 1=4 'convert-one'
  dchan run --file examples/pipeline.toml < words.txt";

/// `dchan run`.
#[derive(Args, Debug)]
#[command(after_help = RUN_HELP)]
pub struct RunArgs {
    /// The pipeline: 'cmd1 | cmd2 ARGS | cmd3'.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub pipeline: Option<String>,
    /// Read the pipeline from a TOML file (see examples/pipeline.toml).
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
    /// Make stage K an each stage (one process per message); repeatable.
    /// With --file, say it in the file.
    #[arg(long, value_name = "K", conflicts_with = "file")]
    pub each: Vec<usize>,
    /// Copies of every stage (N), or of stage K (K=N); repeatable.
    /// With --file, say it in the file.
    #[arg(long, value_name = "[K=]N", conflicts_with = "file")]
    pub replicas: Vec<String>,
    /// Capacity of every stage's input topic. With --file, say it in the file.
    #[arg(long, default_value_t = pipeline::DEFAULT_CAPACITY, conflicts_with = "file")]
    pub capacity: u64,
    /// Attempts per message in each stages (restarts of a filter process).
    /// With --file, say it in the file.
    #[arg(long, default_value_t = pipeline::DEFAULT_ATTEMPTS, conflicts_with = "file")]
    pub attempts: u32,
    /// How long an each stage's process may run for one message. With
    /// --file, say it in the file.
    #[arg(long, value_parser = parse_timeout, conflicts_with = "file")]
    pub timeout: Option<Duration>,
    /// No progress lines, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
    /// Leave the pipeline's topics on the server when it ends (also when
    /// stopped by SIGINT or SIGTERM; without it they are removed then too).
    #[arg(long)]
    pub keep: bool,
}

/// What run and worker both take.
#[derive(Args, Debug)]
pub struct Common {
    /// The server: tcp!HOST!PORT, HOST:PORT or unix!PATH.
    #[arg(long, env = "DCHAN_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: String,
    /// The pipeline's name (its topics are NAME/1, NAME/2...); run: default
    /// the file's name, else run-PID.
    #[arg(long)]
    pub name: Option<String>,
}

const WORKER_HELP: &str = "\
Runs copies of one stage of a running pipeline here, sharing its input
with the other copies. With --pipeline, the stage's command and settings
come from the pipeline (NAME/pipeline, left by dchan run); with --file,
from the file. Ends when the stage's input ends; SIGTERM or SIGINT make
each copy finish the message it has and stop, leaving the rest to others.

Examples:
  dchan worker --addr tcp!queue!5640 --pipeline thumbs --stage 1 --replicas 8
  dchan worker --file examples/pipeline.toml --stage measure";

/// `dchan worker`.
#[derive(Args, Debug)]
#[command(after_help = WORKER_HELP)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: Common,
    /// The running pipeline's name (same as --name).
    #[arg(long, conflicts_with = "name")]
    pub pipeline: Option<String>,
    /// The pipeline file it was started from.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// The stage: its name in the file, or its number (1 is the first).
    #[arg(long)]
    pub stage: String,
    /// Copies to run here (default: the stage's replicas).
    #[arg(long)]
    pub replicas: Option<u32>,
}

fn usage(why: String) -> ExitCode {
    eprintln!("dchan: {why}");
    ExitCode::from(2)
}

fn read_file(path: &PathBuf) -> Result<Pipeline, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    Pipeline::from_toml(&shown, &text)
}

/// `dchan run`.
pub async fn run(a: RunArgs) -> ExitCode {
    let mut p = match (&a.file, &a.pipeline) {
        (Some(f), _) => match read_file(f) {
            Ok(p) => p,
            Err(why) => return usage(why),
        },
        (None, Some(line)) => match Pipeline::from_line(line) {
            Ok(p) => p,
            Err(why) => return usage(format!("run: {why}")),
        },
        (None, None) => return usage("run: no pipeline given".into()),
    };
    if a.file.is_none() {
        for s in &mut p.stages {
            s.capacity = a.capacity;
            s.attempts = a.attempts;
            s.timeout = a.timeout;
        }
        for &k in &a.each {
            match p.stages.get_mut(k.wrapping_sub(1)) {
                Some(s) => s.kind = Kind::Each,
                None => return usage(format!("run: --each {k}: no such stage")),
            }
        }
        for r in &a.replicas {
            let (which, n) = match r.split_once('=') {
                Some((k, n)) => match k.parse::<usize>() {
                    Ok(k) if (1..=p.stages.len()).contains(&k) => (Some(k), n),
                    Ok(_) => return usage(format!("run: --replicas {r}: no such stage")),
                    Err(_) => return usage(format!("run: --replicas {r}: want N or K=N")),
                },
                None => (None, r.as_str()),
            };
            let Ok(n) = n.parse::<u32>() else {
                return usage(format!("run: --replicas {r}: want N or K=N"));
            };
            for (i, s) in p.stages.iter_mut().enumerate() {
                if which.is_none_or(|k| k == i + 1) {
                    s.replicas = n;
                }
            }
        }
        if let Err(why) = p.check() {
            return usage(format!("run: {why}"));
        }
    }
    let name = a
        .common
        .name
        .clone()
        .or(p.name.clone())
        .unwrap_or_else(|| format!("run-{}", std::process::id()));
    if let Err(e) = dchan::pipeline::check_name(&name, p.stages.len()) {
        return usage(format!("run: --name: {e}"));
    }
    let opts = RunOptions {
        addr: a.common.addr,
        name,
        pipeline: p,
        quiet: a.quiet,
        keep: a.keep,
    };
    let code = finish("run", pipeline::run(opts).await);
    // Exit here: the runtime, shutting down, would wait for its blocking
    // read of standard input, which ends only when the input does (a run
    // that failed, or lost its server, must not wait for that).
    std::process::exit(code.into())
}

/// `dchan worker`.
pub async fn worker(a: WorkerArgs) -> ExitCode {
    let file = match &a.file {
        Some(f) => match read_file(f) {
            Ok(p) => Some(p),
            Err(why) => return usage(why),
        },
        None => None,
    };
    let name = a
        .pipeline
        .or(a.common.name)
        .or_else(|| file.as_ref().and_then(|p| p.name.clone()));
    let Some(name) = name else {
        return usage(
            "worker: which pipeline? give --pipeline NAME (or a file with a name)".into(),
        );
    };
    match a.replicas {
        Some(0) => return usage("worker: --replicas 0: a worker runs at least one copy".into()),
        Some(n) if n > pipeline::MAX_REPLICAS => {
            let max = pipeline::MAX_REPLICAS;
            return usage(format!("worker: --replicas {n}: at most {max}"));
        }
        _ => {}
    }
    let opts = WorkerOptions {
        addr: a.common.addr,
        name,
        pipeline: file,
        stage: a.stage,
        replicas: a.replicas,
    };
    ExitCode::from(finish("worker", pipeline::worker(opts).await))
}

/// One line per failure, and the exit status.
fn finish(cmd: &str, report: Result<Report, String>) -> u8 {
    match report {
        Err(why) => {
            eprintln!("dchan: {cmd}: {why}");
            1
        }
        Ok(r) => {
            for why in &r.failures {
                eprintln!("dchan: {cmd}: {why}");
            }
            // Stopped as by SIGPIPE (standard output's reader went away):
            // silently, as a Unix command, by its status alone.
            let name = match r.signal {
                Some(libc::SIGINT) => Some("SIGINT"),
                Some(libc::SIGTERM) => Some("SIGTERM"),
                _ => None,
            };
            if let Some(name) = name {
                eprintln!("dchan: {cmd}: stopped by {name}");
            }
            r.status()
        }
    }
}
