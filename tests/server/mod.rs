//! A `dchan serve` process for integration tests: started on a free port,
//! its stdout watched for the addresses it listens on (`listening on
//! ADDR`), killed (by its own PID) when dropped. Its stderr (the logs) is
//! passed on to the test's, which
//! the test harness captures.

#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long anything here waits before failing the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running server.
pub struct Server {
    /// The process; killed on drop if still running.
    pub child: Child,
    /// The TCP port of the first address it listens on.
    pub port: u16,
    /// Its stdout lines after the listening line, as they come.
    pub stdout: mpsc::Receiver<String>,
}

impl Server {
    /// Its runtime's worker threads, once the first has named itself (a
    /// worker can start after the server printed its address).
    pub fn worker_threads(&self) -> usize {
        let count = || {
            std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
                .unwrap()
                .filter(|t| {
                    let comm = t.as_ref().unwrap().path().join("comm");
                    std::fs::read_to_string(comm).unwrap_or_default().trim() == "tokio-rt-worker"
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while count() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        count()
    }

    /// `dchan serve --listen tcp!127.0.0.1!0` plus `args`.
    pub fn start(args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "tcp!127.0.0.1!0"];
        all.extend_from_slice(args);
        Server::start_raw(&all)
    }

    /// `dchan` with exactly `args`, which must make it listen on TCP.
    pub fn start_raw(args: &[&str]) -> Server {
        Server::start_with(args, |_| {})
    }

    /// `dchan` with exactly `args` and the command changed by `set` (its
    /// environment, its stderr, a limit set before it runs).
    pub fn start_with(args: &[&str], set: impl FnOnce(&mut Command)) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dchan"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        set(&mut command);
        let mut child = command.spawn().expect("start dchan");
        if let Some(stderr) = child.stderr.take() {
            let stderr = BufReader::new(stderr);
            std::thread::spawn(move || {
                for line in stderr.lines().map_while(Result::ok) {
                    eprintln!("dchan: {line}");
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                eprintln!("dchan stdout: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(port) = listening_port(&line) {
                        return Server {
                            child,
                            port,
                            stdout: rx,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("dchan {args:?} printed no `listening on` line ({status:?})");
                }
            }
        }
    }

    /// The address for a client: `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Send `signal` (e.g. "TERM") to the server.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Wait for the server to exit, failing the test after [`PATIENCE`].
    pub fn wait(&mut self) -> ExitStatus {
        wait_bounded(&mut self.child, "dchan", PATIENCE)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for `child` for at most `limit`; kill it and fail after that.
pub fn wait_bounded(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of a `listening on ADDR` line, ADDR being `tcp!HOST!PORT` or
/// `HOST:PORT` (Unix addresses have none).
pub fn listening_port(line: &str) -> Option<u16> {
    let addr = line
        .split("listening on")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let addr = addr.trim_matches(|c: char| c == '"' || c == '`' || c == ',');
    if addr.starts_with("unix!") {
        return None;
    }
    addr.rsplit(['!', ':']).next()?.parse().ok()
}

/// The root of the repository, for paths to scripts and test data.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks of a Markdown text whose info string is exactly `info`
/// (`sh`, `sh plan9port`), in order: what the README tests run as written.
pub fn readme_blocks(readme: &str, info: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(i)) if i.trim() == info => current = Some(String::new()),
            (None, Some(_)) => current = Some(String::from("\0skip")),
            (Some(block), Some(_)) => {
                if !block.starts_with('\0') {
                    blocks.push(std::mem::take(block));
                }
                current = None;
            }
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}
