//! Who may connect and touch which topic, through the real binary and its
//! CLI: protected mode, address rules per listener, access rules by user
//! (the attach's uname, a TLS client certificate's name, a Unix peer's
//! user), TLS listeners with mutual authentication, and `dchan tunnel`.

mod certs;
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use certs::Ca;
use server::{PATIENCE, Server};

/// `dchan ARGS...` to completion (its own --connect-timeout bounds it).
fn dchan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(args)
        .env_remove("DCHAN_ADDR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run dchan")
}

/// `dchan ARGS` as `user` against `addr`, with extra `tls` arguments.
fn as_user(addr: &str, user: &str, tls: &[&str], args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--addr", addr, "--user", user, "--connect-timeout", "20s"]);
    all.extend_from_slice(tls);
    dchan(&all)
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Failed with status 1, one line on stderr containing `words`.
fn refused(o: Output, words: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(words), "{err:?} should say {words:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("dchan.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const RULES: &str = r#"
[access]
default = []

[[access.rule]]
topics = ["billing/*"]
users = ["alice"]
allow = ["read", "write", "admin"]

[[access.rule]]
topics = ["billing/*"]
users = ["bob"]
allow = ["read"]

[[access.rule]]
topics = ["open/*"]
users = ["*"]
allow = ["read", "write", "admin"]
"#;

#[test]
fn protected_mode_refuses_an_open_start_and_says_what_to_add() {
    // Refused before anything is bound: no port beyond loopback is opened.
    let o = dchan(&["serve", "--listen", "tcp!0.0.0.0!0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("protected mode"), "{err}");
    for hint in ["--allow", "--client-ca", "access.rule", "--open"] {
        assert!(err.contains(hint), "{hint} in {err}");
    }
    assert!(!String::from_utf8_lossy(&o.stdout).contains("listening"));
    // A tls! listener without client certificates keeps strangers out no
    // better: refused too.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let s = ca.server();
    let o = dchan(&[
        "serve",
        "--listen",
        "tls!0.0.0.0!0",
        "--cert",
        s.cert.to_str().unwrap(),
        "--key",
        s.key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("protected mode"));
    // A door with no --listen to put it on is a mistake, not ignored.
    refused(
        dchan(&["serve", "--allow", "10.0.0.0/8"]),
        "give --listen too",
    );
}

/// Whether a Tversion on `port` gets no Rversion (the connection is
/// closed, or answered with something else: a TLS alert).
fn no_rversion(port: u16) -> bool {
    let Ok(mut sock) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = sock.write_all(&tversion_bytes());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64];
    while buf.len() < 5 {
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.len() < 5 || buf[4] != 101
}

fn tversion_bytes() -> Vec<u8> {
    let mut m = 19u32.to_le_bytes().to_vec();
    m.push(100);
    m.extend_from_slice(&0xFFFFu16.to_le_bytes());
    m.extend_from_slice(&8192u32.to_le_bytes());
    m.extend_from_slice(&6u16.to_le_bytes());
    m.extend_from_slice(b"9P2000");
    m
}

#[test]
fn a_listener_closes_an_address_it_does_not_allow_and_serves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        r#"
listen = []
[[listener]]
addr = "tcp!127.0.0.1!0"
allow = ["127.0.0.0/8"]
[[listener]]
addr = "tcp!127.0.0.1!0"
allow = ["10.1.0.0/16", "192.168.7.3"]
"#,
    );
    let server = Server::start_raw(&["serve", "--config", &file]);
    let other = server.stdout.recv_timeout(PATIENCE).unwrap();
    let closed_port = server::listening_port(&other).unwrap();
    // Closed before Tversion: no reply, an end of file (or a reset).
    assert!(no_rversion(closed_port));
    assert!(!no_rversion(server.port));
    let addr = format!("tcp!127.0.0.1!{}", server.port);
    ok(as_user(
        &addr,
        "u",
        &[],
        &["create", "jobs", "--capacity", "1"],
    ));
    ok(as_user(&addr, "u", &[], &["push", "jobs", "x"]));
    assert_eq!(ok(as_user(&addr, "u", &[], &["pull", "jobs"])), "x\n");
    // The same from the command line: --allow on --listen.
    let server = Server::start(&["--allow", "10.0.0.0/8"]);
    assert!(no_rversion(server.port));
}

#[test]
fn access_rules_deny_with_permission_denied_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), RULES);
    let server = Server::start(&["--config", &file]);
    let a = format!("tcp!127.0.0.1!{}", server.port);
    let a = a.as_str();
    ok(as_user(
        a,
        "alice",
        &[],
        &["create", "billing/eu", "--capacity", "5"],
    ));
    ok(as_user(a, "alice", &[], &["push", "billing/eu", "one"]));
    // bob may read, not write or administer.
    refused(
        as_user(a, "bob", &[], &["push", "billing/eu", "two"]),
        "permission denied",
    );
    for cmd in [
        &["create", "billing/us"][..],
        &["rm", "billing/eu"],
        &["reset", "billing/eu"],
        &["close", "billing/eu"],
    ] {
        refused(as_user(a, "bob", &[], cmd), "permission denied");
    }
    let stat = ok(as_user(a, "bob", &[], &["stat", "billing/eu"]));
    assert!(stat.contains("pending 1"), "{stat}");
    assert_eq!(ok(as_user(a, "bob", &[], &["pull", "billing/eu"])), "one\n");
    // carol, whom no rule names, gets the default: nothing.
    refused(
        as_user(a, "carol", &[], &["pull", "billing/eu"]),
        "permission denied",
    );
    // Status is no secret: stat (and ls) work for all.
    ok(as_user(a, "carol", &[], &["stat", "billing/eu"]));
    // ...except where a rule for everyone says otherwise.
    ok(as_user(
        a,
        "carol",
        &[],
        &["create", "open/x", "--capacity", "1"],
    ));
    ok(as_user(a, "carol", &[], &["push", "open/x", "hi"]));
    // Listing is open to all; nothing bob tried changed anything.
    let ls = ok(as_user(a, "carol", &[], &["ls"]));
    assert!(
        ls.contains("billing/eu") && !ls.contains("billing/us"),
        "{ls}"
    );
}

/// The user this test runs as, by name.
fn whoami() -> String {
    let o = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn on_a_unix_socket_the_peers_user_is_who_it_is_whatever_the_attach_says() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let me = whoami();
    let file = config(
        dir.path(),
        &format!(
            r#"
listen = ["tcp!127.0.0.1!0", "unix!{}"]
[[access.rule]]
topics = ["*"]
users = ["{me}"]
allow = ["read", "write", "admin"]
"#,
            sock.display()
        ),
    );
    let server = Server::start_raw(&["serve", "--config", &file]);
    let unix = format!("unix!{}", sock.display());
    // Over the socket, the uname "mallory" is ignored: the peer is `me`.
    ok(as_user(
        &unix,
        "mallory",
        &[],
        &["create", "t", "--capacity", "1"],
    ));
    ok(as_user(&unix, "mallory", &[], &["push", "t", "m"]));
    // Over TCP, the uname is all there is: mallory may not.
    let tcp = format!("tcp!127.0.0.1!{}", server.port);
    refused(
        as_user(&tcp, "mallory", &[], &["pull", "t"]),
        "permission denied",
    );
    assert_eq!(ok(as_user(&tcp, &me, &[], &["pull", "t"])), "m\n");
}

/// A TLS server with client certificates from the "good" CA, the access
/// rules above, and the files of alice's, bob's and an impostor's.
struct Tls {
    _dir: tempfile::TempDir,
    server: Server,
    good: Ca,
    evil: Ca,
}

impl Tls {
    fn start() -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let good = Ca::new(dir.path(), "good");
        let evil = Ca::new(dir.path(), "evil");
        let s = good.server();
        let file = config(dir.path(), RULES);
        let server = Server::start_raw(&[
            "serve",
            "--config",
            &file,
            "--listen",
            "tls!127.0.0.1!0",
            "--cert",
            s.cert.to_str().unwrap(),
            "--key",
            s.key.to_str().unwrap(),
            "--client-ca",
            good.cert().to_str().unwrap(),
        ]);
        Tls {
            _dir: dir,
            server,
            good,
            evil,
        }
    }

    fn addr(&self) -> String {
        format!("tls!127.0.0.1!{}", self.server.port)
    }

    /// --cert, --key and --ca for `user`, certified by `ca`, trusting `trust`.
    fn args(ca: &Ca, user: &str, trust: &Ca) -> Vec<String> {
        let f = ca.client(user);
        vec![
            "--cert".into(),
            f.cert.display().to_string(),
            "--key".into(),
            f.key.display().to_string(),
            "--ca".into(),
            trust.cert().display().to_string(),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn tls_with_client_certificates_the_certificates_name_is_the_user() {
    let t = Tls::start();
    let addr = t.addr();
    let alice = Tls::args(&t.good, "alice", &t.good);
    let bob = Tls::args(&t.good, "bob", &t.good);
    // The attach says "mallory"; the certificate says alice, and wins.
    ok(as_user(
        &addr,
        "mallory",
        &strs(&alice),
        &["create", "billing/eu", "--capacity", "5"],
    ));
    ok(as_user(
        &addr,
        "mallory",
        &strs(&alice),
        &["push", "billing/eu", "paid"],
    ));
    refused(
        as_user(
            &addr,
            "alice",
            &strs(&bob),
            &["push", "billing/eu", "forged"],
        ),
        "permission denied",
    );
    // Refused at the door, and the server serves the others meanwhile.
    let no_cert = ["--ca".to_string(), t.good.cert().display().to_string()];
    let o = as_user(&addr, "alice", &strs(&no_cert), &["stat", "billing/eu"]);
    assert_eq!(o.status.code(), Some(1), "no certificate got in");
    let impostor = Tls::args(&t.evil, "alice", &t.good);
    let o = as_user(&addr, "alice", &strs(&impostor), &["stat", "billing/eu"]);
    assert_eq!(o.status.code(), Some(1), "another CA's certificate got in");
    // A server whose certificate the client does not trust is refused by the client.
    let distrust = Tls::args(&t.good, "alice", &t.evil);
    refused(as_user(&addr, "alice", &strs(&distrust), &["ls"]), "TLS");
    // Plain 9P on the TLS port gets nothing.
    assert!(no_rversion(t.server.port));
    assert_eq!(
        ok(as_user(&addr, "bob", &strs(&bob), &["pull", "billing/eu"])),
        "paid\n"
    );
}

#[test]
fn a_tunnel_carries_a_plain_port_to_the_tls_listener_as_its_certificate() {
    let t = Tls::start();
    let dir = tempfile::tempdir().unwrap();
    let alice = t.good.client("alice");
    let to = t.addr();
    let tunnel = Server::start_raw(&[
        "tunnel",
        "--listen",
        "tcp!127.0.0.1!0",
        "--to",
        &to,
        "--cert",
        alice.cert.to_str().unwrap(),
        "--key",
        alice.key.to_str().unwrap(),
        "--ca",
        t.good.cert().to_str().unwrap(),
    ]);
    let plain = format!("tcp!127.0.0.1!{}", tunnel.port);
    // Whatever uname goes through, the server sees the tunnel's alice.
    ok(as_user(
        &plain,
        "nobody",
        &[],
        &["create", "billing/t", "--capacity", "2"],
    ));
    ok(as_user(
        &plain,
        "nobody",
        &[],
        &["push", "billing/t", "a", "b"],
    ));
    assert_eq!(
        ok(as_user(&plain, "x", &[], &["pull", "billing/t", "-n", "2"])),
        "a\nb\n"
    );
    // A tunnel with another CA's certificate carries nothing.
    let evil = t.evil.client("alice");
    let bad = Server::start_raw(&[
        "tunnel",
        "--listen",
        "tcp!127.0.0.1!0",
        "--to",
        &to,
        "--cert",
        evil.cert.to_str().unwrap(),
        "--key",
        evil.key.to_str().unwrap(),
        "--ca",
        t.good.cert().to_str().unwrap(),
    ]);
    let o = as_user(
        &format!("tcp!127.0.0.1!{}", bad.port),
        "alice",
        &[],
        &["ls"],
    );
    assert_eq!(o.status.code(), Some(1));
    // A tunnel's plain end beyond loopback is refused without --open.
    let o = dchan(&[
        "tunnel",
        "--listen",
        "tcp!0.0.0.0!0",
        "--to",
        &to,
        "--ca",
        t.good.cert().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    drop(dir);
}

#[test]
fn json_logs_carry_the_denial_with_its_user_topic_and_operation() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), RULES);
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args([
            "serve",
            "--listen",
            "tcp!127.0.0.1!0",
            "--log-format",
            "json",
        ])
        .args(["--config", &file])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let port = server::listening_port(&line).unwrap();
    let a = format!("tcp!127.0.0.1!{port}");
    refused(
        as_user(&a, "bob", &[], &["create", "billing/x"]),
        "permission denied",
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let denial = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .find(|v| v["fields"]["message"] == "permission denied")
        .unwrap_or_else(|| panic!("no denial in {text}"));
    assert_eq!(denial["fields"]["user"], "bob");
    assert_eq!(denial["fields"]["topic"], "billing/x");
    assert_eq!(denial["fields"]["op"], "admin");
    assert_eq!(denial["level"], "WARN");
}

/// A 9P2000 session attached with `aname` on `port`: Ok(()) or the
/// Rerror's text.
fn attach_as(port: u16, aname: &[u8]) -> Result<(), String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    sock.write_all(&tversion_bytes()).unwrap();
    let reply = |sock: &mut TcpStream| {
        let mut size = [0u8; 4];
        sock.read_exact(&mut size).unwrap();
        let mut rest = vec![0u8; u32::from_le_bytes(size) as usize - 4];
        sock.read_exact(&mut rest).unwrap();
        rest
    };
    assert_eq!(reply(&mut sock)[0], 101);
    // Tattach tag 1 fid 0 afid NOFID uname "u" aname
    let mut body = vec![104u8];
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'u');
    body.extend_from_slice(&(aname.len() as u16).to_le_bytes());
    body.extend_from_slice(aname);
    let mut m = ((body.len() + 4) as u32).to_le_bytes().to_vec();
    m.extend_from_slice(&body);
    sock.write_all(&m).unwrap();
    let r = reply(&mut sock);
    match r[0] {
        105 => Ok(()),
        107 => Err(String::from_utf8_lossy(&r[5..]).into_owned()),
        t => panic!("reply type {t}"),
    }
}

/// A group name with a control character or over 255 bytes is refused
/// at attach (raw 9P and the CLI), saying the rule; every group that can
/// be made can be forgotten, by the quoted name its topic's ctl shows.
#[test]
fn group_names_are_checked_at_attach_and_every_group_can_be_forgotten() {
    let server = Server::start(&[]);
    let addr = format!("tcp!127.0.0.1!{}", server.port);
    ok(as_user(
        &addr,
        "u",
        &[],
        &["create", "t", "--capacity", "10"],
    ));
    for bad in [
        &b"a\nforget x"[..],
        b"nul\0",
        &[b'g'; 256][..],
        &[b'g'; 8000][..],
    ] {
        let err = attach_as(server.port, bad).unwrap_err();
        assert!(err.contains("bad group name"), "{err}");
        assert!(!err.contains(['\n', '\0']) && err.len() < 200, "{err:?}");
    }
    attach_as(server.port, &[b'g'; 255]).unwrap();
    refused(
        as_user(&addr, "u", &[], &["pull", "t", "--group", "a\nb"]),
        "bad group name",
    );
    // Groups with spaces at their ends, quotes, and the longest name.
    let long = "g".repeat(255);
    let groups = [" spaced ", "\"\"", "tab\u{301}", long.as_str()];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use dchan::client::{Client, Options};
        for g in groups {
            let c = Client::connect(&addr, &Options::group(g)).await.unwrap();
            c.set_offset("t", 0).await.unwrap();
        }
        let c = Client::connect(&addr, &Options::default()).await.unwrap();
        let ctl = c.ctl("t").await.unwrap();
        assert_eq!(ctl.matches("group ").count(), groups.len(), "{ctl}");
        for g in groups {
            c.ctl_write("t", &format!("forget {g:?}\n")).await.unwrap();
        }
        let ctl = c.ctl("t").await.unwrap();
        assert!(!ctl.contains("group "), "{ctl}");
        let e = c.ctl_write("t", "forget \"a\\u{0}\"\n").await.unwrap_err();
        assert!(e.to_string().contains("bad group name"), "{e}");
    });
}

/// A user name holding a newline, `peer=` and a NUL cannot forge an audit
/// line in the text log, nor come back raw in the error reply.
#[test]
fn a_user_name_cannot_forge_log_lines_or_echo_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), RULES);
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0", "--config", &file])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let port = server::listening_port(&line).unwrap();
    let a = format!("tcp!127.0.0.1!{port}");
    let evil = "bob\nINFO admin user=alice peer=10.0.0.1:1 topic=billing/x what=\"remove\"";
    let err = refused(
        as_user(&a, evil, &[], &["create", "billing/x"]),
        "permission denied",
    );
    assert!(err.contains("\"bob\\nINFO"), "the name escaped: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("permission denied"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("INFO admin")),
        "a forged line: {text}"
    );
}

/// Plain 9P to a TLS port says to use tls!; a tunnel pointed at a
/// plaintext port fails the connection through it instead of hanging.
#[test]
fn plain_9p_to_a_tls_port_and_a_tunnel_to_a_plain_port_say_why() {
    let t = Tls::start();
    let plain_to_tls = format!("tcp!127.0.0.1!{}", t.server.port);
    refused(as_user(&plain_to_tls, "u", &[], &["ls"]), "tls!host!port");
    let plain = Server::start(&[]);
    let alice = t.good.client("alice");
    let tunnel = Server::start_raw(&[
        "tunnel",
        "--listen",
        "tcp!127.0.0.1!0",
        "--to",
        &format!("tls!127.0.0.1!{}", plain.port),
        "--cert",
        alice.cert.to_str().unwrap(),
        "--key",
        alice.key.to_str().unwrap(),
        "--ca",
        t.good.cert().to_str().unwrap(),
    ]);
    let through = format!("tcp!127.0.0.1!{}", tunnel.port);
    let o = as_user(&through, "u", &[], &["ls"]);
    assert!(!o.status.success());
}
