//! Issue 11's limits against a careless or hostile client, through the
//! binary: the most topics, and the most connections from one address.
//! Each gives a distinct, documented error and changes nothing else.

mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use server::{PATIENCE, Server};

fn dchan(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(args)
        .args(["--addr", &format!("tcp!127.0.0.1!{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("dchan.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn one_topic_past_max_topics_fails_with_no_space_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", &config(&dir, "[limits]\nmax_topics = 2\n")]);
    for t in ["a", "b"] {
        assert!(dchan(server.port, &["create", t]).status.success());
    }
    let o = dchan(server.port, &["create", "c"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no space") && err.contains("max_topics 2"),
        "{err}"
    );
    // An existing name still says it exists, not "no space".
    let o = dchan(server.port, &["create", "a"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    let ls = String::from_utf8(dchan(server.port, &["ls"]).stdout).unwrap();
    assert_eq!(ls.lines().count(), 3, "a header and two topics: {ls}");
    // Room again once one goes.
    assert!(dchan(server.port, &["rm", "a"]).status.success());
    assert!(dchan(server.port, &["create", "c"]).status.success());
}

/// A 9P2000 connection after its Tversion: Ok(socket), or Err(the Rerror's text).
fn connect(port: u16) -> Result<TcpStream, String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut m = 19u32.to_le_bytes().to_vec();
    m.push(100);
    m.extend_from_slice(&0xFFFFu16.to_le_bytes());
    m.extend_from_slice(&8192u32.to_le_bytes());
    m.extend_from_slice(&6u16.to_le_bytes());
    m.extend_from_slice(b"9P2000");
    sock.write_all(&m).unwrap();
    let mut size = [0u8; 4];
    sock.read_exact(&mut size).unwrap();
    let mut rest = vec![0u8; u32::from_le_bytes(size) as usize - 4];
    sock.read_exact(&mut rest).unwrap();
    match rest[0] {
        101 => Ok(sock),
        107 => Err(String::from_utf8_lossy(&rest[5..]).into_owned()),
        t => panic!("reply type {t}"),
    }
}

#[test]
fn one_connection_past_max_per_address_is_told_why_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", &config(&dir, "[limits]\nmax_per_address = 2\n")]);
    let first = connect(server.port).expect("first");
    let _second = connect(server.port).expect("second");
    let why = connect(server.port).expect_err("a third from the same address");
    assert!(
        why.contains("too many connections from your address"),
        "{why}"
    );
    drop(first);
    // The server sees the first go when it reads its end of file: until
    // then a new one is refused; it must be let in soon after.
    let deadline = Instant::now() + PATIENCE;
    while connect(server.port).is_err() {
        assert!(Instant::now() < deadline, "a slot freed was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}
