//! `dchan bench`, run as a user would against a server this test starts:
//! every workload completes, checks what arrived, and prints one JSON line.

mod support;

use std::process::Stdio;

use support::{Server, patiently};
use tokio::process::Command;

/// Run `dchan bench ARGS...` against `addr`; its exit status and its JSON line.
async fn bench(addr: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = patiently(
        Command::new(env!("CARGO_BIN_EXE_dchan"))
            .arg("bench")
            .args(args)
            .args(["--addr", addr, "--secs", "0.3", "--drain", "20"])
            .arg("--server-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run dchan bench");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line: {stdout:?} {stderr}"
    );
    let line = serde_json::from_str(&stdout).expect("a JSON line");
    (out.status.success(), line, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_clean_and_reports() {
    let server = Server::start().await;
    let runs: &[&[&str]] = &[
        &["rendezvous"],
        &["pipe", "--depth", "1"],
        &["pipe", "--depth", "16", "--size", "4096"],
        &["queue", "--producers", "3", "--consumers", "2"],
        &["fanout", "--groups", "4", "--depth", "4"],
        &["conns", "--conns", "200"],
        &["backlog", "--count", "3000"],
    ];
    for args in runs {
        let (ok, r, stderr) = bench(&server.addr, args).await;
        assert!(ok, "{args:?} failed: {stderr} {r}");
        assert_eq!(r["workload"], args[0], "{r}");
        assert_eq!(r["system"], "dchan");
        assert!(r.get("error").is_none(), "{r}");
        assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["check"]["lost"], 0, "{r}");
        assert_eq!(r["check"]["duplicates"], 0, "{r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["server_rss_mib"].as_f64().unwrap() > 0.0, "{r}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_with_one_line() {
    let out = patiently(
        Command::new(env!("CARGO_BIN_EXE_dchan"))
            .args(["bench", "pipe", "--addr", "tcp!127.0.0.1!1"])
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("dchan: bench: connect"), "{err}");
}
