//! `dchan serve --metrics`: the scrape as Prometheus takes it (HTTP GET
//! /metrics), validated by `promtool check metrics` (Debian's
//! `prometheus` package, installed by scripts/setup-prometheus), and
//! GET /healthz.

mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use server::{PATIENCE, Server};

/// `GET path` over HTTP/1.1: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn dchan(port: u16, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(args)
        .args(["--addr", &format!("tcp!127.0.0.1!{port}"), "--user", user])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The value of the sample line starting with `name{labels}` (or `name `).
fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_scrape_has_depth_lag_requests_and_denials_and_promtool_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dchan.toml");
    std::fs::write(
        &file,
        r#"
[[access.rule]]
topics = ["*"]
users = ["ops"]
allow = ["read", "write", "admin"]
"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        file.to_str().unwrap(),
        "--metrics",
        "tcp!127.0.0.1!0",
    ]);
    let line = server.stdout.recv_timeout(PATIENCE).unwrap();
    let mport: u16 = line
        .strip_prefix("metrics on tcp!127.0.0.1!")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let p = server.port;
    ok(dchan(p, "ops", &["create", "jobs", "--capacity", "10"]));
    ok(dchan(p, "ops", &["push", "jobs", "a", "b", "c"]));
    ok(dchan(p, "ops", &["pull", "jobs", "--group", "workers"]));
    // One denied push.
    assert!(!dchan(p, "eve", &["push", "jobs", "x"]).status.success());

    let (status, health) = get(mport, "/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(health, "ok\n");
    let (status, text) = get(mport, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&text, "dchan_topic_pushed_total{topic=\"jobs\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "dchan_topic_held_messages{topic=\"jobs\"}"),
        2.0
    );
    // "b\n" and "c\n" (a line keeps its newline): two bytes each.
    assert_eq!(sample(&text, "dchan_topic_held_bytes{topic=\"jobs\"}"), 4.0);
    assert_eq!(
        sample(&text, "dchan_group_lag{topic=\"jobs\",group=\"workers\"}"),
        2.0
    );
    assert_eq!(sample(&text, "dchan_denied_total{op=\"write\"}"), 1.0);
    assert_eq!(sample(&text, "dchan_errors_total{errno=\"13\"}"), 1.0);
    assert!(sample(&text, "dchan_requests_total{type=\"Twrite\"}") >= 1.0);
    assert!(
        text.contains("dchan_request_duration_seconds_bucket{le="),
        "{text}"
    );
    assert!(text.contains("dchan_connections "), "{text}");
    let (status, _) = get(mport, "/nothing");
    assert!(status.contains("404"), "{status}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (run scripts/setup-prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_metrics_port_follows_its_address_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dchan.toml");
    std::fs::write(&file, "metrics_allow = [\"10.0.0.0/8\"]\n").unwrap();
    let server = Server::start(&[
        "--config",
        file.to_str().unwrap(),
        "--metrics",
        "tcp!127.0.0.1!0",
    ]);
    let line = server.stdout.recv_timeout(PATIENCE).unwrap();
    let mport: u16 = line.rsplit('!').next().unwrap().parse().unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = write!(sock, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    assert!(text.is_empty(), "{text}");
}

/// With no `metrics_allow`, the metrics port follows the 9P listeners'
/// address rules; one beyond loopback with no rules at all is refused at
/// start (protected mode) unless --open.
#[test]
fn the_metrics_port_takes_the_listeners_rules_and_protected_mode() {
    let server = Server::start(&["--allow", "10.0.0.0/8", "--metrics", "tcp!127.0.0.1!0"]);
    let line = server.stdout.recv_timeout(PATIENCE).unwrap();
    let mport: u16 = line.rsplit('!').next().unwrap().parse().unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = write!(sock, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    assert!(text.is_empty(), "{text}");
    let o = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0"])
        .args(["--metrics", "tcp!0.0.0.0!0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("protected mode") && err.contains("metrics_allow"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("listening"));
}
