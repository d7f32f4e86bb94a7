//! A topic's data file through plan9port's `9p` (in
//! /work/shared/plan9port/bin, or PLAN9PORT_BIN): what a writer's close does
//! with a line left without its newline (issue 14.4), and how a message too
//! long is refused (issue 14.3). Skipped, saying so, where `9p` is missing.

mod server;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use server::{PATIENCE, Server, wait_bounded};

/// plan9port's `9p`, if this machine has it.
fn ninep() -> Option<PathBuf> {
    let dir = std::env::var("PLAN9PORT_BIN").unwrap_or("/work/shared/plan9port/bin".into());
    let p = PathBuf::from(dir).join("9p");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: no plan9port 9p at {}", p.display());
        None
    }
}

/// `9p -a ADDR VERB PATH` with `input` on its stdin.
fn run(p9: &PathBuf, addr: &str, verb: &str, path: &str, input: &[u8]) -> Output {
    let mut c = Command::new(p9)
        .args(["-a", addr, verb, path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run 9p");
    c.stdin.take().unwrap().write_all(input).unwrap();
    wait_bounded(&mut c, "9p", PATIENCE);
    c.wait_with_output().unwrap()
}

/// The value of `key` in a topic's ctl text.
fn status(p9: &PathBuf, addr: &str, topic: &str, key: &str) -> String {
    let out = run(p9, addr, "read", &format!("{topic}/ctl"), b"");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| Some(l.strip_prefix(key)?.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn a_partial_line_at_close_waits_for_a_reader_like_a_whole_line() {
    let Some(p9) = ninep() else { return };
    let server = Server::start(&[]);
    let addr = format!("tcp!127.0.0.1!{}", server.port);
    let out = run(&p9, &addr, "write", "ctl", b"create t capacity=0\n");
    assert!(out.status.success(), "{out:?}");
    // `printf abc | 9p write t/data`: its Tclunk pushes "abc" and waits.
    let mut w = Command::new(&p9)
        .args(["-a", &addr, "write", "t/data"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    w.stdin.take().unwrap().write_all(b"abc").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while status(&p9, &addr, "t", "blocked_writers") != "1" {
        assert!(Instant::now() < deadline, "the close never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        w.try_wait().unwrap().is_none(),
        "9p write returned before any reader took its line"
    );
    let pull = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["pull", "--raw", "--addr", &addr, "t"])
        .output()
        .unwrap();
    assert_eq!(pull.stdout, b"abc", "{pull:?}");
    assert!(wait_bounded(&mut w, "9p write", PATIENCE).success());
}

#[test]
fn a_line_longer_than_max_message_is_refused_with_a_clear_error() {
    let Some(p9) = ninep() else { return };
    let server = Server::start(&[]);
    let addr = format!("tcp!127.0.0.1!{}", server.port);
    let out = run(
        &p9,
        &addr,
        "write",
        "ctl",
        b"create t capacity=10 max_message=8\n",
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(&p9, &addr, "write", "t/data", b"123456789");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("message too large"), "{err}");
    assert_eq!(status(&p9, &addr, "t", "pending"), "0");
    assert_eq!(status(&p9, &addr, "t", "max_message"), "8");
    drop(server);
}
