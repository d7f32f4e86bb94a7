//! Issue 11's limits against a careless or hostile client, through the
//! binary: the most topics, the most connections from one address, and a
//! topic's `max_bytes` and `rate` under writers that ignore them. Each
//! gives a distinct, documented error or a wait, and changes nothing else.

mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dchan::proto::codec::{decode, encode};
use dchan::proto::{Dialect, Fcall, Msg, NOFID, NONUNAME, NOTAG};
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

// ---- max_bytes and rate under writers that ignore them ----

/// A topic's ctl figure `key`.
fn figure(ctl: &str, key: &str) -> u64 {
    ctl.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {ctl}"))
}

fn stat(port: u16, topic: &str) -> String {
    let o = dchan(port, &["stat", topic]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Wait until `topic` has a blocked writer.
fn until_blocked(port: u16, topic: &str) {
    let deadline = Instant::now() + PATIENCE;
    while figure(&stat(port, topic), "blocked_writers") == 0 {
        assert!(Instant::now() < deadline, "{topic}: no writer blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A raw 9P2000 connection, speaking dchan's codec over a plain socket.
struct Raw(TcpStream);

impl Raw {
    fn send(&mut self, tag: u16, body: Fcall) {
        let mut out = BytesMut::new();
        encode(&Msg { tag, body }, Dialect::P2000, &mut out);
        self.0.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Msg {
        let mut size = [0u8; 4];
        self.0.read_exact(&mut size).unwrap();
        let mut frame = vec![0u8; u32::from_le_bytes(size) as usize];
        frame[..4].copy_from_slice(&size);
        self.0.read_exact(&mut frame[4..]).unwrap();
        decode(Bytes::from(frame), Dialect::P2000).unwrap()
    }

    /// Connect, attach and open `path` for writing as fid 1.
    fn open_for_writing(port: u16, path: &[&str]) -> Raw {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(PATIENCE * 2)).unwrap();
        let mut raw = Raw(sock);
        let version = "9P2000".to_string();
        raw.send(
            NOTAG,
            Fcall::Tversion {
                msize: 1 << 17,
                version,
            },
        );
        let (uname, aname) = ("hostile".to_string(), String::new());
        let n_uname = NONUNAME;
        raw.send(
            1,
            Fcall::Tattach {
                fid: 0,
                afid: NOFID,
                uname,
                aname,
                n_uname,
            },
        );
        let wnames = path.iter().map(|s| s.to_string()).collect();
        raw.send(
            2,
            Fcall::Twalk {
                fid: 0,
                newfid: 1,
                wnames,
            },
        );
        raw.send(3, Fcall::Topen { fid: 1, mode: 1 });
        for _ in 0..4 {
            let m = raw.recv();
            assert!(!matches!(m.body, Fcall::Rerror { .. }), "{m:?}");
        }
        raw
    }
}

const RATE: u64 = 1000;
const MAX_BYTES: u64 = 64 << 10;

/// Issue 11: writers that ignore the limits — a raw 9P connection with
/// hundreds of writes in flight, many lines and large messages, and the
/// CLI piping thousands of lines — against a topic with `max_bytes` and
/// `rate`. The topic never holds more than `max_bytes`, never takes
/// more than its rate allows (a count bounded by the rate and the time
/// the test measured itself, never a claim about speed), every message
/// arrives once and in order per writer, a message over `max_bytes` gets
/// its own error, and other topics are served while writers wait.
#[test]
fn writers_that_ignore_max_bytes_and_rate_are_held_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[topic]]\nname = \"flood\"\ncapacity = 100000\nmax_bytes = \"64k\"\nrate = \"{RATE}/s\"\n\
         [[topic]]\nname = \"full\"\ncapacity = 100\nmax_bytes = 10\n\
         [[topic]]\nname = \"slow\"\ncapacity = 100\nrate = \"1/s\"\n\
         [[topic]]\nname = \"calm\"\ncapacity = 10\n"
    );
    // Every token the flood's bucket can give comes after this instant.
    let created = Instant::now();
    let server = Server::start(&["--config", &config(&dir, &text)]);
    let port = server.port;
    let ctl = stat(port, "flood");
    assert!(ctl.contains("max_bytes 65536\nrate 1000/s\n"), "{ctl}");

    // A blocked writer of one topic (bytes, rate) slows no other topic.
    assert!(dchan(port, &["offset", "full"]).status.success());
    assert!(dchan(port, &["push", "full", "123456789"]).status.success());
    let mut full = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args([
            "push",
            "full",
            "x",
            "--addr",
            &format!("tcp!127.0.0.1!{port}"),
        ])
        .spawn()
        .unwrap();
    let slow = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["push", "slow", "--addr", &format!("tcp!127.0.0.1!{port}")])
        .args((0..30).map(|i| i.to_string()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_blocked(port, "full");
    until_blocked(port, "slow");
    assert!(dchan(port, &["push", "calm", "hello"]).status.success());
    let o = dchan(port, &["pull", "calm"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    // ...while both writers still wait (the slow one for ~28 s more).
    assert_eq!(figure(&stat(port, "full"), "blocked_writers"), 1);
    assert_eq!(figure(&stat(port, "slow"), "blocked_writers"), 1);
    assert_eq!(
        String::from_utf8_lossy(&dchan(port, &["pull", "full"]).stdout),
        "123456789\n"
    );
    assert!(full.wait().unwrap().success(), "the waiting push went on");
    // A reset ends the rate-limited push: told, not dropped in silence.
    assert!(dchan(port, &["reset", "slow"]).status.success());
    let o = slow.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("topic reset"), "{err}");

    // The flood: the reader's group first, so every message waits for it.
    assert!(dchan(port, &["offset", "flood"]).status.success());
    let mut reader = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args([
            "pull",
            "flood",
            "--follow",
            "--addr",
            &format!("tcp!127.0.0.1!{port}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = reader.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufRead::lines(std::io::BufReader::new(out))
            .map(Result::unwrap)
            .collect::<Vec<String>>()
    });

    // The raw writer: 300 writes sent without waiting for one answer,
    // each ten lines, or one line of 20 000 bytes every 30th.
    const WRITES: usize = 300;
    let mut raw = Raw::open_for_writing(port, &["flood", "data"]);
    let mut sender = Raw(raw.0.try_clone().unwrap());
    let mut raw_count = 0u64;
    let mut writes = Vec::new();
    for w in 0..WRITES {
        let mut data = Vec::new();
        if w % 30 == 29 {
            data.extend_from_slice(format!("R{raw_count} ").as_bytes());
            data.resize(20_000, b'x');
            data.push(b'\n');
            raw_count += 1;
        } else {
            for _ in 0..10 {
                data.extend_from_slice(format!("R{raw_count}\n").as_bytes());
                raw_count += 1;
            }
        }
        writes.push(Bytes::from(data));
    }
    let sending = std::thread::spawn(move || {
        for (i, data) in writes.into_iter().enumerate() {
            let tag = 10 + i as u16;
            sender.send(
                tag,
                Fcall::Twrite {
                    fid: 1,
                    offset: 0,
                    data,
                },
            );
        }
    });
    // The CLI writer: 2000 lines on its standard input.
    const CLI: u64 = 2000;
    let mut cli = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["push", "flood", "--addr", &format!("tcp!127.0.0.1!{port}")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let feeding = std::thread::spawn(move || {
        let text: String = (0..CLI).map(|i| format!("C{i}\n")).collect();
        stdin.write_all(text.as_bytes()).unwrap();
    });

    // Watch while they push: the limits hold at every look.
    let total = raw_count + CLI;
    let mut looks = 0;
    loop {
        let ctl = stat(port, "flood");
        let elapsed = created.elapsed().as_secs_f64();
        let (held, pushed) = (figure(&ctl, "held_bytes"), figure(&ctl, "pushed"));
        assert!(held <= MAX_BYTES, "held {held} bytes: {ctl}");
        // A full bucket (one second's worth), then RATE a second.
        let allowed = RATE as f64 * (1.0 + elapsed);
        assert!((pushed as f64) <= allowed, "{pushed} pushed in {elapsed}s");
        looks += 1;
        if pushed == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(looks > 1, "the flood went by unwatched");
    sending.join().unwrap();
    feeding.join().unwrap();
    assert!(cli.wait().unwrap().success());
    for _ in 0..WRITES {
        let m = raw.recv();
        assert!(matches!(m.body, Fcall::Rwrite { .. }), "{m:?}");
    }
    // One message longer than max_bytes: its own error, nothing pushed.
    let mut big = vec![b'y'; MAX_BYTES as usize + 1];
    *big.last_mut().unwrap() = b'\n';
    raw.send(
        7,
        Fcall::Twrite {
            fid: 1,
            offset: 0,
            data: Bytes::from(big),
        },
    );
    match raw.recv().body {
        Fcall::Rerror { ename, .. } => assert!(
            ename.contains("larger than the topic's max_bytes"),
            "{ename}"
        ),
        other => panic!("{other:?}"),
    }

    // Every message once, in order per writer.
    assert!(dchan(port, &["close", "flood"]).status.success());
    assert!(reader.wait().unwrap().success());
    let lines = lines.join().unwrap();
    let (mut r, mut c) = (0u64, 0u64);
    for line in &lines {
        let word = line.split(' ').next().unwrap();
        if let Some(n) = word.strip_prefix('R') {
            assert_eq!(n.parse::<u64>().unwrap(), r, "raw writer out of order");
            r += 1;
        } else if let Some(n) = word.strip_prefix('C') {
            assert_eq!(n.parse::<u64>().unwrap(), c, "CLI writer out of order");
            c += 1;
        } else {
            panic!("a message no writer sent: {line:.40}");
        }
    }
    assert_eq!((r, c), (raw_count, CLI));
    let ctl = stat(port, "flood");
    assert_eq!(
        (figure(&ctl, "pushed"), figure(&ctl, "held_bytes")),
        (total, 0)
    );
    // The server served everyone throughout, and still does.
    assert!(dchan(port, &["ls"]).status.success());
}

/// A batch of creates past max_topics, by the CLI (one write of the root
/// ctl) and by a raw write of several lines, makes nothing and says so.
#[test]
fn a_batch_of_creates_past_max_topics_makes_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", &config(&dir, "[limits]\nmax_topics = 5\n")]);
    for t in ["t1", "t2", "t3"] {
        assert!(dchan(server.port, &["create", t]).status.success());
    }
    let o = dchan(server.port, &["create", "t4", "t5", "t6"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no space") && err.contains("max_topics 5") && err.contains("(0 created)"),
        "{err}"
    );
    let ls = String::from_utf8(dchan(server.port, &["ls"]).stdout).unwrap();
    assert_eq!(ls.lines().count(), 4, "a header and three topics: {ls}");
    // A remove in the same write makes room for one more.
    let o = dchan(server.port, &["create", "t4", "t5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = dchan(server.port, &["create", "t6"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no space"));
    assert_eq!(
        String::from_utf8(dchan(server.port, &["ls"]).stdout)
            .unwrap()
            .lines()
            .count(),
        6
    );
}

/// A connection that never completes Tversion (half a header, then
/// silence) is closed by the server, and others are served meanwhile.
#[test]
fn a_connection_that_never_sends_tversion_is_closed() {
    let server = Server::start(&[]);
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    silent.write_all(&[19, 0]).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    assert!(connect(server.port).is_ok(), "others are served");
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("still open after {PATIENCE:?}: {other:?}"),
    }
}

/// Names of the topics the server holds, from `dchan ls -q`.
fn held(port: u16) -> std::collections::BTreeSet<String> {
    let o = dchan(port, &["ls", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Batches of creates (and of removes) from several clients at once apply
/// whole or not at all, at the edge of max_topics and on a contested name.
#[test]
fn racing_batches_apply_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--config", &config(&dir, "[limits]\nmax_topics = 30\n")]);
    let port = server.port;
    let fixed: Vec<String> = (0..20).map(|i| format!("fixed{i}")).collect();
    let mut args = vec!["create"];
    args.extend(fixed.iter().map(String::as_str));
    assert!(dchan(port, &args).status.success());
    for round in 0..16 {
        // Room for 10: of three batches of 8, at most one fits.
        let results: Vec<(Vec<String>, bool)> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..3)
                .map(|c| {
                    s.spawn(move || {
                        let names: Vec<String> =
                            (0..8).map(|i| format!("r{round}c{c}n{i}")).collect();
                        let mut args = vec!["create"];
                        args.extend(names.iter().map(String::as_str));
                        let ok = dchan(port, &args).status.success();
                        (names, ok)
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let now = held(port);
        let mut made = Vec::new();
        for (names, ok) in &results {
            let there = names.iter().filter(|n| now.contains(*n)).count();
            assert_eq!(there, if *ok { 8 } else { 0 }, "round {round}: {results:?}");
            if *ok {
                made.extend(names.iter().cloned());
            }
        }
        if !made.is_empty() {
            let mut args = vec!["rm"];
            args.extend(made.iter().map(String::as_str));
            assert!(dchan(port, &args).status.success());
        }
        // Two batches of removes that share one name: the one that finds
        // it gone removes nothing.
        let names: Vec<String> = (0..10).map(|i| format!("z{round}_{i}")).collect();
        let mut args = vec!["create"];
        args.extend(names.iter().map(String::as_str));
        assert!(dchan(port, &args).status.success());
        let (a, b) = (&names[0..5], &names[5..9]);
        let shared = names[9].as_str();
        let oks: Vec<bool> = std::thread::scope(|s| {
            let runs: Vec<_> = [a, b]
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        let mut args = vec!["rm", shared];
                        args.extend(part.iter().map(String::as_str));
                        dchan(port, &args).status.success()
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let now = held(port);
        assert_eq!(oks.iter().filter(|ok| **ok).count(), 1, "one wins: {oks:?}");
        for (part, ok) in [a, b].into_iter().zip(&oks) {
            let gone = part.iter().filter(|n| !now.contains(*n)).count();
            assert_eq!(gone, if *ok { part.len() } else { 0 }, "round {round}");
        }
        let left: Vec<&String> = names.iter().filter(|n| now.contains(*n)).collect();
        if !left.is_empty() {
            let mut args = vec!["rm"];
            args.extend(left.iter().map(|s| s.as_str()));
            assert!(dchan(port, &args).status.success());
        }
    }
}
