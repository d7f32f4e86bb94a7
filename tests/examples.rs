//! The programs in `examples/` run as a user runs them: each against a real
//! `dchan serve` of its own (on a free port), the shell ones with
//! `DCHAN_ADDR` set and the built `dchan` first on `PATH`, the Rust one
//! with the address as its argument. Each example checks its own outcome
//! (counts, no loss, no duplicates) and exits non-zero when it is wrong;
//! these tests add that it said so and left no topic behind.

mod server;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::{PATIENCE, Server, repo};

/// How long one example may run before the test kills it and fails: long,
/// so only a hang trips it on a loaded machine.
const LIMIT: Duration = Duration::from_secs(4 * PATIENCE.as_secs());

/// What a finished example did.
struct Outcome {
    /// Whether it exited 0.
    success: bool,
    /// Its exit status, for messages.
    status: String,
    /// Everything it printed on stdout.
    stdout: String,
    /// Everything it printed on stderr.
    stderr: String,
}

impl Outcome {
    /// Fail the test unless the example exited 0.
    fn assert_ok(&self, what: &str) {
        assert!(
            self.success,
            "{what} failed ({}):\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        );
    }

    /// How many stdout lines start with `prefix`.
    fn lines_starting(&self, prefix: &str) -> usize {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

/// Run `cmd` in a process group of its own and collect its output, killing
/// the whole group (the example's background jobs too) if it runs past
/// [`LIMIT`], or if any of its jobs outlive it.
fn run_bounded(cmd: Command, what: &str) -> Outcome {
    run_within(cmd, what, LIMIT)
}

/// [`run_bounded`] with another limit.
fn run_within(mut cmd: Command, what: &str, limit: Duration) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let kill_group = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Nothing of the example may outlive it (the pipes would stay open).
    kill_group(child.id());
    let _ = child.wait();
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let Some(status) = status else {
        panic!("{what} still running after {limit:?}:\n--- stdout\n{stdout}--- stderr\n{stderr}");
    };
    Outcome {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    }
}

/// The directory of the `dchan` binary under test.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dchan"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `sh examples/NAME` with `DCHAN_ADDR=addr` and the built `dchan` first on `PATH`.
fn run_script(name: &str, addr: &str) -> Outcome {
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![bin_dir()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).unwrap()
        }
        None => bin_dir().into_os_string(),
    };
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("examples").join(name))
        .current_dir(repo())
        .env("DCHAN_ADDR", addr)
        .env("PATH", path);
    run_bounded(cmd, name)
}

/// The topics left on the server (`dchan ls -q`).
fn topics_left(server: &Server) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dchan"));
    cmd.args(["ls", "-q", "--addr", &server.addr()]);
    let out = run_bounded(cmd, "dchan ls -q");
    out.assert_ok("dchan ls -q");
    out.stdout
}

#[test]
fn work_queue_does_each_job_once_and_blocks_the_producer_at_capacity() {
    let server = Server::start(&[]);
    let out = run_script("work-queue.sh", &server.addr());
    out.assert_ok("work-queue.sh");
    assert!(
        out.stdout
            .contains("producer is blocked: 2 jobs pending (capacity 2), no worker yet"),
        "{}",
        out.stdout
    );
    assert_eq!(out.lines_starting("worker "), 30 + 3, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("ok: 30 jobs, each done exactly once by 3 workers"),
        "{}",
        out.stdout
    );
    assert_eq!(topics_left(&server), "");
}

#[test]
fn fanout_gives_every_group_every_message() {
    let server = Server::start(&[]);
    let out = run_script("fanout.sh", &server.addr());
    out.assert_ok("fanout.sh");
    assert_eq!(out.lines_starting("audit: order-"), 20, "{}", out.stdout);
    let billing = out.lines_starting("billing-1: order-") + out.lines_starting("billing-2: order-");
    assert_eq!(billing, 20, "{}", out.stdout);
    assert!(
        out.stdout.contains("ok: 20 orders, billing got each once"),
        "{}",
        out.stdout
    );
    assert_eq!(topics_left(&server), "");
}

#[test]
fn pipeline_carries_every_line_through_three_stages_and_ends() {
    let server = Server::start(&[]);
    let out = run_script("pipeline.sh", &server.addr());
    out.assert_ok("pipeline.sh");
    assert_eq!(out.lines_starting("stage3: "), 20 + 1, "{}", out.stdout);
    for line in ["stage3: 20 400", "stage3: end of stream", "ok: 20 numbers"] {
        assert!(out.stdout.contains(line), "no {line:?} in\n{}", out.stdout);
    }
    assert_eq!(topics_left(&server), "");
}

#[test]
fn shell_examples_fail_clearly_without_a_server() {
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp!127.0.0.1!{port}");
    for name in ["work-queue.sh", "fanout.sh", "pipeline.sh"] {
        let out = run_script(name, &addr);
        assert!(!out.success, "{name} succeeded without a server");
        assert!(
            out.stderr.contains(&format!("FAIL: no server at {addr}")),
            "{name}: {}",
            out.stderr
        );
    }
}

/// The built `client` example. `cargo test` and `cargo nextest run` build
/// every example before running tests (as do `--all-targets` runs), so it
/// is normally there, next to `deps/` in this test's profile directory;
/// when it is missing (say `cargo test --test examples` on a fresh target
/// dir) the test builds it with `cargo build --example client` in the same
/// profile and target dir.
fn client_example() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/PROFILE");
    let example = profile_dir.join("examples").join("client");
    if example.exists() {
        return example;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "client", "--profile", &profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .current_dir(repo());
    let out = run_bounded(cmd, "cargo build --example client");
    out.assert_ok("cargo build --example client");
    assert!(example.exists(), "no {} after the build", example.display());
    example
}

#[test]
fn rust_client_example_answers_every_request() {
    let example = client_example();
    let server = Server::start(&[]);
    let mut cmd = Command::new(&example);
    cmd.arg(format!("tcp!127.0.0.1!{}", server.port));
    let out = run_bounded(cmd, "examples/client");
    out.assert_ok("examples/client");
    for line in [
        "requester: asked \"rendezvous\", got \"RENDEZVOUS\"",
        "ok: 4 requests answered, topics removed",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in\n{}", out.stdout);
    }
    assert_eq!(out.lines_starting("service: got "), 4, "{}", out.stdout);
    assert_eq!(topics_left(&server), "");
}

/// The Linux-mount forms in the shell examples' header comments, as
/// written: `tests/guest/examples.sh` runs them in Debian's `kernel` booted
/// under QEMU (`scripts/guest`, prepared by `scripts/setup-guest`, as for
/// tests/linux_client.rs), against a server of its own on this host.
fn mount_forms(kernel: &str) {
    let cache = repo().join(".cache/guest");
    for need in [
        format!("kernel-{kernel}/vmlinux"),
        "busybox/bin/busybox".into(),
        "bash/bin/bash-static".into(),
    ] {
        assert!(
            cache.join(&need).exists(),
            "{} is missing: the examples' mount forms run in a Linux guest, which \
             `scripts/setup-guest` (run by `scripts/test`) prepares",
            cache.join(&need).display()
        );
    }
    let server = Server::start(&[]);
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("scripts/guest"))
        .args(["run", "--kernel", kernel, "--timeout", "600", "--script"])
        .arg(repo().join("tests/guest/examples.sh"))
        .arg(format!("--env=PORT={}", server.port));
    let out = run_within(cmd, "scripts/guest", Duration::from_secs(700));
    let checks: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHECK examples."))
        .collect();
    let failed: Vec<&&str> = checks
        .iter()
        .filter(|c| c.split_whitespace().nth(1) != Some("ok"))
        .collect();
    assert!(
        out.success && failed.is_empty() && checks.len() == 6,
        "Linux {kernel}: the examples' mount forms: {} checks, failed: {failed:?} ({}):\n{}{}",
        checks.len(),
        out.status,
        out.stdout,
        out.stderr
    );
}

#[test]
fn mount_forms_on_linux_6_1() {
    mount_forms("6.1");
}

#[test]
fn mount_forms_on_linux_6_12() {
    mount_forms("6.12");
}
