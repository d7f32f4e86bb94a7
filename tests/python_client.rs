//! A third-party 9P client, from PyPI, against the real `dchan` binary
//! over plain 9P2000 (issues 2 and 3, "real clients").
//!
//! The client is the `py9p` module bundled in PyPI's `p9fs` 0.0.4 (a
//! Python 3 port of py9p; `scripts/setup-python` installs it, pinned, in
//! `.venv`). The alternatives were tried on Python 3.11 and do not work:
//! PyPI's `py9p` 1.0.8 is Python 2 code (`0xffffffffL` is a syntax error
//! in Python 3), and `aio9p` 0.3.3's client sends Twalk for its open and
//! Twrite for its create. The port's high-level API (p9fs's fsspec file
//! system) does ls, mkdir, write, read and rm; its low-level calls
//! (`_walk`, `_open`, `_read`...) drive the topic files, one request at a
//! time per connection, so concurrency comes from several connections in
//! threads. Its `_flush` is broken (it sends its own tag as oldtag), so the
//! flush check builds the Tflush from the library's message type and sends
//! it through the library's marshaller.
//!
//! Each script prints one line per check; a failed check fails the test.
//! A missing Python package fails it too, never skips it.

mod server;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use server::{Server, repo, wait_bounded};

/// The interpreter with the client installed: `$DCHAN_PYTHON`, else the
/// `.venv` that `scripts/setup-python` makes.
fn python() -> PathBuf {
    match std::env::var_os("DCHAN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo().join(".venv/bin/python3"),
    }
}

/// Fail loudly unless the client imports.
fn require_client() -> PathBuf {
    let python = python();
    let ok = Command::new(&python)
        .args(["-c", "from py9p import py9p; import p9fs"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Python 9P client (PyPI p9fs 0.0.4) is not installed for {}: run scripts/setup-python",
        python.display()
    );
    python
}

/// Run `tests/python/SCRIPT` against `server` with `args` after the host
/// and port; fail on any failed check, naming the failed checks.
fn run_script(script: &str, server: &Server, args: &[&str]) {
    let python = require_client();
    let mut child = Command::new(python)
        .arg(repo().join("tests/python").join(script))
        .arg("127.0.0.1")
        .arg(server.port.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            r.expect("piped").read_to_string(&mut text).ok();
            text
        })
    };
    let stdout = collect(child.stdout.take().map(|r| Box::new(r) as _));
    let stderr = collect(child.stderr.take().map(|r| Box::new(r) as _));
    let status = wait_bounded(&mut child, script, Duration::from_secs(300));
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    // Through the test harness, which shows it when the test fails.
    print!("{stdout}");
    eprint!("{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("ok ")).collect();
    assert!(
        status.success() && !stdout.is_empty(),
        "{script}: {status}:\n{}",
        failed.join("\n")
    );
}

#[test]
fn ramfs_over_plain_9p2000() {
    let server = Server::start(&["--ramfs"]);
    run_script("ramfs.py", &server, &[]);
}

/// The same over 9P2000.u. (Over 9P2000.L the library's rmdir sends
/// Tunlinkat without AT_REMOVEDIR, which a directory rightly refuses with
/// EISDIR, so that dialect is left to the Linux kernel's tests.)
#[test]
fn ramfs_over_9p2000u() {
    let server = Server::start(&["--ramfs"]);
    run_script("ramfs.py", &server, &["9P2000.u"]);
}

#[test]
fn topics_over_plain_9p2000() {
    let server = Server::start(&[]);
    run_script("topics.py", &server, &[]);
}

/// Access rules (issue 11): "permission denied" for bob where the rules
/// say so, over plain 9P2000, and nothing changed.
#[test]
fn access_rules_over_plain_9p2000() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dchan.toml");
    std::fs::write(
        &file,
        r#"
[[access.rule]]
topics = ["billing/*"]
users = ["alice"]
allow = ["read", "write", "admin"]

[[access.rule]]
topics = ["billing/*"]
users = ["bob"]
allow = ["read"]
"#,
    )
    .unwrap();
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    run_script("access.py", &server, &[]);
}
