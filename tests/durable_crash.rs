//! `dchan serve --data DIR` killed with SIGKILL in the middle of a
//! workload, 20 times, and started again on the same directory: several
//! writers, one reader in each of two groups, capacity > 0. At the end
//! every push that was answered has reached every group, in order per
//! writer, and the only duplicates are messages a group's reader had
//! received but not yet acknowledged when the server died.

mod server;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dchan::client::{Client, Options, TopicSettings};
use parking_lot::Mutex;
use rand::{RngExt, SeedableRng};
use server::{PATIENCE, Server};

const WRITERS: usize = 3;
const GROUPS: [&str; 2] = ["g1", "g2"];
const ROUNDS: usize = 20;

/// What the writers and readers saw, over every round.
#[derive(Default)]
struct Seen {
    /// Per writer, the last index whose push was answered.
    acked: [Option<u64>; WRITERS],
    /// Per writer, the last index pushed, answered or not (never reused:
    /// one in flight at a kill may be in the log).
    tried: [Option<u64>; WRITERS],
    /// Per writer, every index whose push was answered.
    answered: [Vec<u64>; WRITERS],
    /// Per group, every (writer, index) received, in order.
    got: HashMap<&'static str, Vec<(usize, u64)>>,
    /// Per group, what was received but perhaps not acknowledged when a
    /// server died: the last two messages before each kill.
    unsure: HashMap<&'static str, HashSet<(usize, u64)>>,
}

fn addr(port: u16) -> String {
    format!("tcp!127.0.0.1!{port}")
}

async fn writer(port: u16, w: usize, from: u64, seen: Arc<Mutex<Seen>>) {
    let Ok(c) = Client::connect(&addr(port), &Options::default()).await else {
        return;
    };
    let Ok(p) = c.open_push("t").await else {
        return;
    };
    for i in from.. {
        seen.lock().tried[w] = Some(i);
        if p.push(format!("{w}:{i}\n")).await.is_err() {
            return;
        }
        let mut s = seen.lock();
        s.acked[w] = Some(i);
        s.answered[w].push(i);
    }
}

async fn reader(port: u16, group: &'static str, seen: Arc<Mutex<Seen>>) {
    let Ok(c) = Client::connect(&addr(port), &Options::group(group)).await else {
        return;
    };
    let Ok(mut data) = c.open_data("t").await else {
        return;
    };
    while let Ok(Some(m)) = data.next().await {
        let text = String::from_utf8(m.to_vec()).unwrap();
        let (w, i) = text.trim_end().split_once(':').unwrap();
        let msg = (w.parse().unwrap(), i.parse().unwrap());
        seen.lock().got.entry(group).or_default().push(msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_workload_loses_nothing_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut server = Server::start(&["--data", &dir]);
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    let settings = TopicSettings {
        capacity: Some(64),
        ..TopicSettings::default()
    };
    c.create("t", &settings).await.unwrap();
    drop(c);
    // Both groups exist before the first push (a group made later starts
    // at the oldest message still held, past what the other group took).
    for g in GROUPS {
        let c = Client::connect(&addr(server.port), &Options::group(g))
            .await
            .unwrap();
        assert_eq!(c.offset("t").await.unwrap(), 0);
    }
    for round in 0..=ROUNDS {
        let port = server.port;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            // Go on after the last push tried (the one in flight at the
            // kill may or may not be in: its index is not used again).
            let from = seen.lock().tried[w].map_or(0, |i| i + 1);
            tasks.push(tokio::spawn(writer(port, w, from, seen.clone())));
        }
        for g in GROUPS {
            tasks.push(tokio::spawn(reader(port, g, seen.clone())));
        }
        if round == ROUNDS {
            // The last round: stop the writers, let the readers finish.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for t in &tasks[..WRITERS] {
                t.abort();
            }
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let done = {
                    let s = seen.lock();
                    GROUPS.iter().all(|g| {
                        let got: HashSet<_> = s.got.get(g).into_iter().flatten().collect();
                        (0..WRITERS).all(|w| s.answered[w].iter().all(|&i| got.contains(&(w, i))))
                    })
                };
                if done || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for t in tasks {
                t.abort();
            }
            break;
        }
        let work = Duration::from_millis(rng.random_range(30..300));
        tokio::time::sleep(work).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
        {
            let mut s = seen.lock();
            let s = &mut *s;
            for g in GROUPS {
                let got = s.got.entry(g).or_default();
                let last: Vec<_> = got.iter().rev().take(2).copied().collect();
                s.unsure.entry(g).or_default().extend(last);
            }
        }
        server = Server::start(&["--data", &dir]);
    }
    drop(server);
    let s = seen.lock();
    let total: usize = s.answered.iter().map(Vec::len).sum();
    println!(
        "{ROUNDS} kills, {total} pushes answered (the last index per writer: {:?})",
        s.acked
    );
    for g in GROUPS {
        let got = &s.got[g];
        let unsure = &s.unsure[g];
        let mut first = HashSet::new();
        let mut last = [None::<u64>; WRITERS];
        let mut dups = 0;
        for &(w, i) in got {
            if !first.insert((w, i)) {
                assert!(
                    unsure.contains(&(w, i)),
                    "group {g}: ({w}, {i}) twice, acknowledged"
                );
                dups += 1;
                continue;
            }
            assert!(
                last[w] < Some(i),
                "group {g}: writer {w}: {i} after {:?}",
                last[w]
            );
            last[w] = Some(i);
        }
        for w in 0..WRITERS {
            for &i in &s.answered[w] {
                assert!(
                    first.contains(&(w, i)),
                    "group {g}: writer {w}'s answered push {i} lost"
                );
            }
        }
        println!("group {g}: {} received, {dups} duplicates", got.len());
    }
}

/// `dchan stat` of a durable server names its engine, sync mode and the
/// bytes its topics take on disk; a topic created on it is there after
/// the server is killed and started again.
#[tokio::test]
async fn a_durable_server_says_so_and_keeps_topics_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let server = Server::start(&["--data", dir]);
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    c.create("kept", &TopicSettings::default()).await.unwrap();
    let ctl = c.server_ctl().await.unwrap();
    assert!(
        ctl.contains("engine durable\nsync interval 100ms\ndisk_bytes "),
        "{ctl}"
    );
    drop(c);
    drop(server);
    let server = Server::start(&["--data", dir]);
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    assert_eq!(c.topics().await.unwrap(), ["kept"]);
}

/// Limit the files the server writes to `bytes` each (RLIMIT_FSIZE, with
/// SIGXFSZ ignored so a write past it fails with EFBIG): a full disk for
/// its segments, set for that process alone, without a mount.
fn file_limit(bytes: u64) -> impl FnOnce(&mut std::process::Command) {
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit and signal are async-signal-safe; nothing else
        // runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
}

fn big_topic() -> TopicSettings {
    TopicSettings {
        capacity: Some(1_000_000),
        ..TopicSettings::default()
    }
}

/// What group `g` of topic `t` reads from where it is up to the message
/// `END` (pushed here), each read as its line.
async fn read_to_end(port: u16, g: &str) -> Vec<String> {
    let c = Client::connect(&addr(port), &Options::default())
        .await
        .unwrap();
    c.push("t", "END\n").await.unwrap();
    let c = Client::connect(&addr(port), &Options::group(g))
        .await
        .unwrap();
    let mut data = c.open_data("t").await.unwrap();
    let mut got = Vec::new();
    loop {
        let m = data.next().await.unwrap().expect("a message");
        let line = String::from_utf8(m.to_vec()).unwrap();
        if line == "END\n" {
            return got;
        }
        got.push(line.trim_end().to_string());
    }
}

fn line(i: usize) -> String {
    format!("{i:06} {}\n", "x".repeat(93))
}

/// An ack the log cannot keep (a full disk) is never read past: the
/// group's next read fails, so a reader cannot go on taking messages whose
/// acks a crash would take back. After a SIGKILL the group goes on from
/// what it was answered, the last message at most delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_the_log_cannot_keep_fails_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let args = ["serve", "--listen", "tcp!127.0.0.1!0", "--data", &dir];
    let mut server = Server::start_with(&args, file_limit(64 << 10));
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    c.create("t", &big_topic()).await.unwrap();
    let g = Client::connect(&addr(server.port), &Options::group("g"))
        .await
        .unwrap();
    assert_eq!(g.offset("t").await.unwrap(), 0);
    let p = c.open_push("t").await.unwrap();
    let mut pushed = 0;
    while p.push(line(pushed)).await.is_ok() {
        pushed += 1;
    }
    assert!(pushed > 10, "{pushed} pushed before the disk was full");
    let mut data = g.open_data("t").await.unwrap();
    let mut read = 0;
    let failed = loop {
        match data.next().await {
            Ok(Some(m)) => {
                assert_eq!(m, line(read));
                read += 1;
                if read == pushed {
                    break None;
                }
            }
            Ok(None) => panic!("end of topic"),
            Err(e) => break Some(e.to_string()),
        }
    };
    let why = failed.unwrap_or_else(|| panic!("read all {pushed}, acks not kept"));
    eprintln!("read {read} of {pushed}, then: {why}");
    server.child.kill().unwrap();
    server.wait();
    let server = Server::start(&["--data", &dir]);
    let rest = read_to_end(server.port, "g").await;
    let first: usize = rest[0][..6].parse().unwrap();
    assert!(
        first + 1 >= read,
        "read {read} (every read but the last answered after its ack), \
         the group went back to {first}"
    );
    assert_eq!(rest.len(), pushed - first);
}

/// The ack a reader makes by closing its file cannot fail the Tclunk: on a
/// full disk it is held, and if the server dies before it is written the
/// message comes again (at least once); nothing pushed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_at_close_on_a_full_disk_is_redelivered_never_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let args = ["serve", "--listen", "tcp!127.0.0.1!0", "--data", &dir];
    let mut server = Server::start_with(&args, file_limit(64 << 10));
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    c.create("t", &big_topic()).await.unwrap();
    let g = Client::connect(&addr(server.port), &Options::group("gg"))
        .await
        .unwrap();
    assert_eq!(g.offset("t").await.unwrap(), 0);
    let p = c.open_push("t").await.unwrap();
    let mut pushed = Vec::new();
    while p.push(line(pushed.len())).await.is_ok() {
        pushed.push(line(pushed.len()).trim_end().to_string());
    }
    // Then the smallest messages (19-byte records, as long as an ack of
    // "gg"), until one does not fit: neither would the ack.
    while p.push("a\n").await.is_ok() {
        pushed.push("a".to_string());
    }
    assert!(
        pushed.len() > 10,
        "{} pushed before the disk was full",
        pushed.len()
    );
    let mut data = g.open_data("t").await.unwrap();
    assert_eq!(data.next().await.unwrap().unwrap(), line(0));
    data.close().await.unwrap();
    // Acked (the group is past it), though the log could not keep the ack.
    assert_eq!(g.offset("t").await.unwrap(), 1);
    server.child.kill().unwrap();
    server.wait();
    let server = Server::start(&["--data", &dir]);
    assert_eq!(read_to_end(server.port, "gg").await, pushed);
}

/// `dchan push` of many lines stopped by a full disk says exactly how
/// many went in, so a retry from the next line doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stopped_by_a_full_disk_counts_what_went_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let args = ["serve", "--listen", "tcp!127.0.0.1!0", "--data", &dir];
    let mut server = Server::start_with(&args, file_limit(256 << 10));
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    c.create("t", &big_topic()).await.unwrap();
    let input: String = (0..10_000).map(line).collect();
    let mut push = std::process::Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(["push", "t", "--addr", &addr(server.port)])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = push.stdin.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = push.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "pushed all: {err}");
    let told: usize = (err.rsplit_once('(').and_then(|(_, n)| n.split_once(' ')))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {err:?}"));
    server.child.kill().unwrap();
    server.wait();
    let server = Server::start(&["--data", &dir]);
    let held = read_to_end(server.port, "g").await;
    assert_eq!(
        held.len(),
        told,
        "`{}` but the topic holds {}",
        err.trim(),
        held.len()
    );
    for (i, l) in held.iter().enumerate() {
        assert_eq!(format!("{l}\n"), line(i));
    }
}

/// A server whose log output cannot be written (stderr on a full disk)
/// serves on: a log line that fails is dropped, never a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_loses_no_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let args = ["serve", "--listen", "tcp!127.0.0.1!0", "--data", &dir];
    let server = Server::start_with(&args, |command| {
        let full = std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap();
        command.stderr(full).env("RUST_LOG", "debug");
    });
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    c.create("t", &big_topic()).await.unwrap();
    for i in 0..20 {
        c.push("t", line(i)).await.unwrap();
    }
    let rest = read_to_end(server.port, "g").await;
    assert_eq!(rest.len(), 20);
}

/// Limit the files the server may open to `n` (RLIMIT_NOFILE, soft and
/// hard, so the server cannot raise it).
fn open_files(n: u64) -> impl FnOnce(&mut std::process::Command) {
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Each topic written to holds an open file. Past what the server keeps
/// for them (its limit less a reserve), a first write fails with EMFILE
/// and says what to do, and the server still takes new connections: the
/// client that comes to remove topics gets in, and then the writes go.
#[tokio::test]
async fn topics_past_the_open_files_limit_fail_their_first_write_and_leave_room_to_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let args = ["serve", "--listen", "tcp!127.0.0.1!0", "--data", dir];
    let server = Server::start_with(&args, open_files(256));
    let c = Client::connect(&addr(server.port), &Options::default())
        .await
        .unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    for n in &names {
        c.create(n, &big_topic()).await.unwrap();
    }
    let mut refused = None;
    let mut written = 0;
    for n in &names {
        match c.push(n, "m\n").await {
            Ok(_) => written += 1,
            Err(e) => {
                refused = Some((n.clone(), e.to_string()));
                break;
            }
        }
    }
    let (at, e) = refused.expect("a first write past the limit fails");
    assert!(
        e.contains("too many open files") && e.contains("ulimit -n"),
        "{e}"
    );
    println!("{written} topics written to, then {at}: {e}");
    // Many more clients still get in (the reserve is for them).
    let mut others = Vec::new();
    for _ in 0..50 {
        others.push(
            Client::connect(&addr(server.port), &Options::default())
                .await
                .expect("a client connects at the limit"),
        );
    }
    let admin = &others[49];
    for n in &names[..5] {
        admin.remove(n).await.unwrap();
    }
    c.push(&at, "m\n").await.expect("room again");
}
