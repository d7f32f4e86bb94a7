//! `dchan serve` as a user runs it: the built-in defaults with another
//! listen address, a bad config file, topics made by the config, and a
//! clean stop on SIGTERM while a read is blocked.

mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use server::{PATIENCE, Server};

/// A minimal plain-9P2000 client for these tests (the protocol itself is
/// tested elsewhere): little-endian fields, one request at a time.
struct Client {
    sock: TcpStream,
}

const TVERSION: u8 = 100;
const TATTACH: u8 = 104;
const RERROR: u8 = 107;
const TWALK: u8 = 110;
const TOPEN: u8 = 112;
const TREAD: u8 = 116;
const TWRITE: u8 = 118;
const TCLUNK: u8 = 120;

fn s(b: &mut Vec<u8>, text: &str) {
    b.extend_from_slice(&(text.len() as u16).to_le_bytes());
    b.extend_from_slice(text.as_bytes());
}

impl Client {
    fn connect(port: u16) -> Client {
        Client::connect_as(port, "")
    }

    /// Connect and attach with `aname`, the reader group.
    fn connect_as(port: u16, aname: &str) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut c = Client { sock };
        let mut b = 8192u32.to_le_bytes().to_vec();
        s(&mut b, "9P2000");
        c.rpc(TVERSION, 0xFFFF, &b).expect("Tversion");
        let mut b = 0u32.to_le_bytes().to_vec(); // fid 0: the root
        b.extend_from_slice(&u32::MAX.to_le_bytes()); // no afid
        s(&mut b, "test");
        s(&mut b, aname);
        c.rpc(TATTACH, 1, &b).expect("Tattach");
        c
    }

    fn send(&mut self, ty: u8, tag: u16, body: &[u8]) {
        let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
        m.push(ty);
        m.extend_from_slice(&tag.to_le_bytes());
        m.extend_from_slice(body);
        self.sock.write_all(&m).expect("send");
    }

    /// The next reply: (type, tag, body), or the error of reading it.
    fn recv(&mut self) -> std::io::Result<(u8, u16, Vec<u8>)> {
        let mut size = [0u8; 4];
        self.sock.read_exact(&mut size)?;
        let mut rest = vec![0u8; u32::from_le_bytes(size) as usize - 4];
        self.sock.read_exact(&mut rest)?;
        let tag = u16::from_le_bytes([rest[1], rest[2]]);
        Ok((rest[0], tag, rest[3..].to_vec()))
    }

    /// Send and wait for the reply; Err(text) for an Rerror.
    fn rpc(&mut self, ty: u8, tag: u16, body: &[u8]) -> Result<Vec<u8>, String> {
        self.send(ty, tag, body);
        let (rty, rtag, rbody) = self.recv().expect("reply");
        assert_eq!(rtag, tag, "reply tag");
        if rty == RERROR {
            let n = u16::from_le_bytes([rbody[0], rbody[1]]) as usize;
            return Err(String::from_utf8_lossy(&rbody[2..2 + n]).into_owned());
        }
        assert_eq!(rty, ty + 1, "reply type");
        Ok(rbody)
    }

    /// Walk from the root to `path` as `fid`.
    fn walk(&mut self, fid: u32, path: &str) -> Result<(), String> {
        let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&fid.to_le_bytes());
        b.extend_from_slice(&(names.len() as u16).to_le_bytes());
        for n in &names {
            s(&mut b, n);
        }
        let r = self.rpc(TWALK, 1, &b)?;
        let nwqid = u16::from_le_bytes([r[0], r[1]]) as usize;
        if nwqid != names.len() {
            return Err(format!("{path}: walked {nwqid} of {}", names.len()));
        }
        Ok(())
    }

    fn open(&mut self, fid: u32, path: &str, mode: u8) -> Result<(), String> {
        self.walk(fid, path)?;
        let mut b = fid.to_le_bytes().to_vec();
        b.push(mode);
        self.rpc(TOPEN, 1, &b).map(drop)
    }

    fn tread(fid: u32) -> Vec<u8> {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b
    }

    /// Read a whole small file from offset 0 in one Tread, with `fid`
    /// (clunked after).
    fn read_file(&mut self, fid: u32, path: &str) -> Result<String, String> {
        self.open(fid, path, 0)?;
        let r = self.rpc(TREAD, 1, &Client::tread(fid));
        self.rpc(TCLUNK, 1, &fid.to_le_bytes())?;
        Ok(String::from_utf8_lossy(&r?[4..]).into_owned())
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn starts_on_the_defaults_with_another_port() {
    let server = Server::start(&[]);
    assert_ne!(server.port, 0, "the real port is printed");
    let mut c = Client::connect(server.port);
    let ctl = c.read_file(10, "ctl").expect("read /ctl");
    assert!(ctl.contains("topics 0\n"), "root ctl: {ctl}");
    assert!(ctl.contains("connections 1\n"), "root ctl: {ctl}");
}

#[test]
fn threads_sets_the_worker_threads_and_zero_is_refused() {
    let server = Server::start(&["--threads", "1"]);
    let mut c = Client::connect(server.port);
    assert!(c.read_file(10, "ctl").unwrap().contains("topics 0\n"));
    assert_eq!(server.worker_threads(), 1);

    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0", "--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[test]
fn a_bad_config_fails_with_file_line_and_reason() {
    let file = config_file(
        "# a comment\n\
         [topic_defaults]\n\
         capacity = 3\n\
         \n\
         [[topic]]\n\
         name = \"jobs\"\n\
         capacty = 3\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0", "--config"])
        .arg(file.path())
        .output()
        .expect("run dchan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let want = format!(
        "dchan: config {}:7: unknown field `capacty`, expected",
        file.path().display()
    );
    assert!(stderr.contains(&want), "want {want:?} in {stderr:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "a bad config must fail before listening"
    );
}

#[test]
fn a_missing_config_file_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--config", "/nonexistent/dchan.toml"])
        .output()
        .expect("run dchan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("dchan: config /nonexistent/dchan.toml: "),
        "{stderr}"
    );
}

#[test]
fn config_topics_exist_with_their_settings() {
    let file = config_file(
        "listen = [\"tcp!127.0.0.1!5640\"]  # replaced by --listen\n\
         [topic_defaults]\n\
         capacity = 7\n\
         timeout = \"30s\"\n\
         [[topic]]\n\
         name = \"jobs\"\n\
         [[topic]]\n\
         name = \"metrics/eu\"\n\
         capacity = 2\n\
         framing = \"write\"\n\
         timeout = \"none\"\n",
    );
    let server = Server::start(&["--config", file.path().to_str().unwrap()]);
    let mut c = Client::connect(server.port);
    let jobs = c.read_file(10, "jobs/ctl").expect("jobs/ctl");
    for want in ["capacity 7\n", "framing line\n", "timeout 30s\n"] {
        assert!(jobs.contains(want), "{want:?} in jobs/ctl: {jobs}");
    }
    let eu = c.read_file(11, "metrics/eu/ctl").expect("metrics/eu/ctl");
    for want in ["capacity 2\n", "framing write\n", "timeout none\n"] {
        assert!(eu.contains(want), "{want:?} in metrics/eu/ctl: {eu}");
    }
    let root = c.read_file(12, "ctl").expect("ctl");
    assert!(root.contains("topics 2\n"), "root ctl: {root}");
}

/// With `[groups] idle_expiry`, a stray group on a topic nobody touches
/// expires on time, so the rendezvous push it held goes through (the
/// black-box tester's repro_idle_expiry.py).
#[test]
fn an_expired_group_lets_a_held_push_through_untouched() {
    let file = config_file("[groups]\nidle_expiry = \"1s\"\n[[topic]]\nname = \"t\"\n");
    let server = Server::start(&["--config", file.path().to_str().unwrap()]);
    // A stray group, never used again.
    Client::connect_as(server.port, "stray")
        .read_file(10, "t/offset")
        .expect("t/offset");
    let mut reader = Client::connect_as(server.port, "g1");
    reader.open(10, "t/data", 0).expect("open t/data to read");
    reader.send(TREAD, 7, &Client::tread(10));
    let mut writer = Client::connect_as(server.port, "w");
    writer.open(11, "t/data", 1).expect("open t/data to write");
    let mut b = 11u32.to_le_bytes().to_vec();
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(b"hello\n");
    writer.send(TWRITE, 8, &b);
    let (ty, _, body) = reader.recv().expect("g1 gets the message");
    assert_eq!((ty, &body[4..]), (TREAD + 1, &b"hello\n"[..]));
    // g1 holds the message unacked (so it stays); the push waits for the
    // stray group alone, until the server's sweep drops it.
    let (ty, tag, _) = writer.recv().expect("the push returns");
    assert_eq!((ty, tag), (TWRITE + 1, 8));
}

/// A client that goes away (a TCP reset, or an EOF inside a frame) is a
/// disconnect, logged at debug level; only a broken frame is logged as a
/// protocol violation.
#[test]
fn a_reset_or_eof_is_a_disconnect_not_a_protocol_violation() {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0", "--log", "debug"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dchan");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = server::listening_port(&line).expect("listening line");
    let frame = |size: u32| {
        let mut m = size.to_le_bytes().to_vec();
        m.extend_from_slice(&[TVERSION, 0xFF, 0xFF]);
        m
    };
    // A reset: close with the Rversion unread.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut b = frame(19);
    b.extend_from_slice(&8192u32.to_le_bytes());
    s(&mut b, "9P2000");
    c.write_all(&b).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    // An EOF inside a frame.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&frame(100)).unwrap();
    drop(c);
    // A broken frame: a protocol violation.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&frame(3)).unwrap();
    let _ = c.read(&mut [0; 16]);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    server::wait_bounded(&mut child, "dchan", PATIENCE);
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let lost = logs.matches("connection lost").count();
    let violations: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("protocol violation"))
        .collect();
    assert_eq!(lost, 2, "{logs}");
    assert_eq!(violations.len(), 1, "{logs}");
    assert!(violations[0].contains("smaller than"), "{logs}");
}

#[test]
fn sigterm_stops_cleanly_while_a_read_is_blocked() {
    let file = config_file("[[topic]]\nname = \"jobs\"\n");
    let mut server = Server::start(&["--config", file.path().to_str().unwrap()]);
    let mut reader = Client::connect(server.port);
    reader.open(10, "jobs/data", 0).expect("open jobs/data");
    reader.send(TREAD, 7, &Client::tread(10));
    // A second connection, so the blocked read is surely being served:
    // the topic's status counts it.
    let mut admin = Client::connect(server.port);
    for tries in 0.. {
        let ctl = admin.read_file(20, "jobs/ctl").expect("jobs/ctl");
        if ctl.contains("blocked_readers 1\n") {
            break;
        }
        assert!(tries < 3000, "the read never blocked: {ctl}");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal("TERM");
    // The blocked read is answered with an error, not left hanging.
    let (ty, tag, body) = reader.recv().expect("a reply to the blocked read");
    assert_eq!((ty, tag), (RERROR, 7), "the blocked read's reply");
    let text = String::from_utf8_lossy(&body[2..]);
    assert!(text.contains("shut"), "error text: {text:?}");
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn sigint_stops_cleanly() {
    let mut server = Server::start(&[]);
    let _idle = Client::connect(server.port);
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(0), "exit status after SIGINT");
}

#[test]
fn listens_on_a_unix_socket_too() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dchan.sock");
    let unix = format!("unix!{}", path.display());
    // The Unix address first: it is bound once the TCP one is printed.
    let args = ["serve", "--listen", &unix, "--listen", "tcp!127.0.0.1!0"];
    let server = Server::start_raw(&args);
    let mut sock = UnixStream::connect(&path).expect("connect to the Unix socket");
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut body = 8192u32.to_le_bytes().to_vec();
    s(&mut body, "9P2000");
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(TVERSION);
    m.extend_from_slice(&0xFFFFu16.to_le_bytes());
    m.extend_from_slice(&body);
    sock.write_all(&m).unwrap();
    let mut head = [0u8; 7];
    sock.read_exact(&mut head).expect("Rversion");
    assert_eq!(head[4], TVERSION + 1, "Rversion over the Unix socket");
    drop(server);
}

#[test]
fn a_bad_topic_in_the_config_fails_at_start() {
    let file = config_file("[[topic]]\nname = \"no spaces\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["serve", "--listen", "tcp!127.0.0.1!0", "--config"])
        .arg(file.path())
        .output()
        .expect("run dchan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    // The file and line, as for any other bad value (issue 15: the
    // broker's words alone, without either, before).
    let want = format!(
        "dchan: config {}:2: bad topic name \"no spaces\": want parts of A-Z a-z 0-9 . _ -",
        file.path().display()
    );
    assert!(stderr.contains(&want), "want {want:?} in {stderr:?}");
}

/// `dchan serve ARGS...` expected to fail at start: its stderr and stdout.
fn fails_to_start(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run dchan");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    (stderr, String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn a_unix_socket_replaces_only_a_dead_socket_and_goes_at_a_clean_stop() {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let unix = format!("unix!{}", path.display());
    let args = ["serve", "--listen", &unix, "--listen", "tcp!127.0.0.1!0"];

    // A file that is not a socket is refused, and kept.
    std::fs::write(&path, "notes").unwrap();
    let (err, out) = fails_to_start(&args, &[]);
    assert!(
        err.contains(&format!(
            "dchan: listen on {unix}: a file that is not a socket is there"
        )),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "notes");
    std::fs::remove_file(&path).unwrap();

    // A socket some server answers on is refused, and kept.
    let live = UnixListener::bind(&path).unwrap();
    let (err, _) = fails_to_start(&args, &[]);
    assert!(err.contains("a server is already listening there"), "{err}");
    assert!(
        UnixStream::connect(&path).is_ok(),
        "the live socket is kept"
    );
    drop(live);

    // A later address that cannot be bound leaves no socket file behind.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("tcp!127.0.0.1!{}", busy.local_addr().unwrap().port());
    let (err, out) = fails_to_start(&["serve", "--listen", &unix, "--listen", &busy], &[]);
    assert!(err.contains(&format!("dchan: listen on {busy}: ")), "{err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "socket left behind"
    );
    let live = UnixListener::bind(&path).unwrap();
    drop(live);

    // A socket nobody answers on (a dead server's) is replaced...
    let mut server = Server::start_raw(&args);
    UnixStream::connect(&path).expect("the new server answers");
    // ...and removed when the server stops cleanly.
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));
    let gone = std::fs::symlink_metadata(&path);
    assert!(
        gone.is_err(),
        "socket left behind: {:?}",
        gone.map(|m| m.file_type().is_socket())
    );
}

#[test]
fn the_same_address_twice_is_refused_before_listening() {
    let (err, out) = fails_to_start(
        &[
            "serve",
            "--listen",
            "tcp!127.0.0.1!5999",
            "--listen",
            "127.0.0.1:5999",
        ],
        &[],
    );
    assert!(
        err.contains("dchan: listen on tcp!127.0.0.1!5999: address given twice"),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
    // Port 0 twice is two ports.
    let server = Server::start(&["--listen", "tcp!127.0.0.1!0"]);
    Client::connect(server.port);
}

#[test]
fn a_log_level_with_a_typo_is_refused() {
    let listen = ["serve", "--listen", "tcp!127.0.0.1!0"];
    let (err, out) = fails_to_start(&[&listen[..], &["--log", "wran"]].concat(), &[]);
    assert!(
        err.contains(
            "dchan: log filter \"wran\": \"wran\" is no level; want off, error, warn, info, debug, trace"
        ),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
    let (err, _) = fails_to_start(&listen, &[("RUST_LOG", "dchan=verbose")]);
    assert!(err.contains("\"verbose\" is no level"), "{err}");
    // An empty filter would turn logging off without a word: refused too.
    for empty in ["", " ", ","] {
        let (err, out) = fails_to_start(&[&listen[..], &["--log", empty]].concat(), &[]);
        assert!(
            err.contains(&format!(
                "dchan: log filter {empty:?}: empty; want a level (off, error"
            )),
            "{err}"
        );
        assert!(!out.contains("listening"), "{out}");
    }
    // Good filters still start.
    Server::start(&["--log", "dchan=debug,warn"]);
}

#[test]
fn past_max_connections_the_client_is_told_why() {
    let file = config_file("[limits]\nmax_connections = 1\n");
    let server = Server::start(&["--config", file.path().to_str().unwrap()]);
    let _first = Client::connect(server.port);
    let sock = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut c = Client { sock };
    let mut b = 8192u32.to_le_bytes().to_vec();
    s(&mut b, "9P2000");
    let e = c.rpc(TVERSION, 0xFFFF, &b).unwrap_err();
    assert!(e.contains("too many connections"), "{e}");
    // The dchan CLI (9P2000.u) says it too.
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["ls", "--addr", &server.addr()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "dchan: connect {}: too many connections",
            server.addr()
        )),
        "{err}"
    );
}
