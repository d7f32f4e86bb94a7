//! `dchan bench`, run as a user would against a server this test starts:
//! every workload completes, checks what arrived, prints one JSON line and
//! removes its topics. And the driver's accounting, against systems made
//! up here that drop or hold messages: a lossy run is reported as lossy and
//! an unfinished one as unfinished, with rates from what was delivered,
//! never from what was pushed. No test asserts on time.

mod support;

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use clap::Parser;
use dchan::bench::{self, Conn, Options, Reader, System, Workload, Writer, payload};
use dchan::client::{Client, Options as ClientOptions};
use dchan::engine::Limits;
use parking_lot::Mutex;
use support::{Server, patiently};
use tokio::process::Command;
use tokio::sync::Notify;

/// Run `dchan bench ARGS...` against `addr`; its exit status and its JSON line.
async fn bench(addr: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = patiently(
        Command::new(env!("CARGO_BIN_EXE_dchan"))
            .arg("bench")
            .args(args)
            .args([
                "--addr", addr, "--secs", "0.3", "--drain", "20", "--warmup", "50",
            ])
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
        &["pipe", "--batch", "64", "--size", "1024"],
        &["queue", "--batch", "16", "--depth", "2"],
        &["fanout", "--groups", "4", "--batch", "16"],
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
        assert!(r["server_rss_growth_mib"].is_f64(), "{r}");
        assert_eq!(
            r["variant"], "9P2000.L, memory",
            "the dialect of mounts: {r}"
        );
    }
    let client = Client::connect(&server.addr, &ClientOptions::group(""))
        .await
        .unwrap();
    assert_eq!(
        client.topics().await.unwrap(),
        Vec::<String>::new(),
        "every run removes its topics (conns made 200)"
    );
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

/// What a made-up system does to every tenth timed message it is given.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Acknowledge the push and throw the message away.
    Drop,
    /// Acknowledge the push and keep the message where no reader gets it;
    /// `pending` says how many are held if `tells`.
    Hold { tells: bool },
    /// Panic making any topic but the first.
    Panic,
}

/// One in-memory queue per topic; every reader of a topic shares it (one
/// group), as in pipe and queue.
struct Faulty {
    fault: Fault,
    queues: Queues,
    removed: Mutex<Vec<String>>,
    /// `pending` calls under way, and the most at once.
    asking: AtomicU64,
    most_asking: AtomicU64,
}

type Queues = Arc<Mutex<HashMap<String, Arc<Queue>>>>;

fn queue(queues: &Queues, topic: &str) -> Arc<Queue> {
    queues.lock().entry(topic.to_string()).or_default().clone()
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Bytes>>,
    ready: Notify,
    timed: AtomicU64,
    held: AtomicU64,
}

impl Faulty {
    fn new(fault: Fault) -> Faulty {
        Faulty {
            fault,
            queues: Queues::default(),
            removed: Mutex::default(),
            asking: AtomicU64::new(0),
            most_asking: AtomicU64::new(0),
        }
    }
    fn queue(&self, topic: &str) -> Arc<Queue> {
        queue(&self.queues, topic)
    }
}

struct FaultyConn(Fault, Queues);
struct End(Arc<Queue>, Fault);

impl System for Faulty {
    type Conn = FaultyConn;
    fn name(&self) -> &'static str {
        "faulty"
    }
    async fn create(&self, topic: &str, _capacity: u64) -> bench::Result<()> {
        if self.fault == Fault::Panic && !self.queues.lock().is_empty() {
            panic!("made up");
        }
        self.queue(topic);
        Ok(())
    }
    async fn connect(&self, _group: &str) -> bench::Result<FaultyConn> {
        Ok(FaultyConn(self.fault, self.queues.clone()))
    }
    async fn remove(&self, topic: &str) -> bench::Result<()> {
        self.queues.lock().remove(topic);
        self.removed.lock().push(topic.to_string());
        Ok(())
    }
    async fn pending(&self, topic: &str, _group: &str) -> Option<u64> {
        let now = self.asking.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_asking.fetch_max(now, Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.asking.fetch_sub(1, Ordering::Relaxed);
        let q = self.queue(topic);
        match self.fault {
            Fault::Drop => Some(q.items.lock().len() as u64),
            Fault::Hold { tells: true } => {
                Some(q.items.lock().len() as u64 + q.held.load(Ordering::Relaxed))
            }
            Fault::Hold { tells: false } | Fault::Panic => None,
        }
    }
}

impl Conn for FaultyConn {
    type Writer = End;
    type Reader = End;
    async fn writer(&self, topic: &str) -> bench::Result<End> {
        Ok(End(queue(&self.1, topic), self.0))
    }
    async fn reader(&self, topic: &str) -> bench::Result<End> {
        self.writer(topic).await
    }
}

impl Writer for End {
    async fn push(&self, msg: Bytes) -> bench::Result<()> {
        // Give the readers their turn, as a real system's I/O would.
        tokio::task::yield_now().await;
        let warm = payload::decode(&msg, msg.len())?.is_warmup();
        if !warm && self.0.timed.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
            if let Fault::Hold { .. } = self.1 {
                self.0.held.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        self.0.items.lock().push_back(msg);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Reader for End {
    async fn pull(&self) -> bench::Result<Bytes> {
        loop {
            let notified = self.0.ready.notified();
            if let Some(m) = self.0.items.lock().pop_front() {
                return Ok(m);
            }
            notified.await;
        }
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    opts: Options,
}

/// Run `workload` against a made-up system with `fault`, briefly.
async fn faulty(fault: Fault, workload: Workload) -> (bench::Report, Faulty) {
    let opts = Args::parse_from([
        "x", "--secs", "0.2", "--drain", "0.3", "--depth", "4", "--warmup", "20",
    ])
    .opts;
    let sys = Faulty::new(fault);
    let report = patiently(bench::run(&sys, workload, &opts)).await;
    (report, sys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_run_reports_what_was_delivered() {
    for workload in [Workload::Pipe, Workload::Queue] {
        let (r, sys) = faulty(Fault::Drop, workload).await;
        let c = &r.check;
        assert!(c.expected > 0 && c.lost > 0, "{r:?}");
        assert_eq!(c.unfinished, 0, "the system holds nothing: {r:?}");
        assert_eq!(c.lost + c.received, c.expected, "{r:?}");
        assert_eq!(r.messages, c.received, "the count is what arrived: {r:?}");
        let rate = r.messages as f64 / r.secs;
        assert!(
            (r.msgs_per_sec - rate).abs() <= 1.0 + rate * 0.01,
            "the rate is from what arrived, not from {} pushed: {r:?}",
            c.expected
        );
        let error = r.error.as_deref().unwrap();
        assert!(
            error.contains("lost") && !error.starts_with("unfinished"),
            "{error}"
        );
        assert!(sys.queues.lock().is_empty(), "topics removed");
        assert!(!sys.removed.lock().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_fails_and_removes_its_topics() {
    let (r, sys) = faulty(Fault::Panic, Workload::Rendezvous).await;
    let error = r.error.as_deref().unwrap();
    assert!(error.contains("panicked: made up"), "{error}");
    assert!(sys.queues.lock().is_empty(), "the topic made is removed");
    assert_eq!(sys.removed.lock().len(), 2, "both named topics: {r:?}");
}

/// Once the drain ends, the groups still missing messages are asked what
/// the system holds for them all at once, not one after another, so the
/// questions add one round trip to a drain bounded by --drain-max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_left_are_asked_at_once() {
    // Every group's reader shares one queue here, so each gets only part.
    let (r, sys) = faulty(Fault::Hold { tells: true }, Workload::Fanout).await;
    assert!(r.error.is_some(), "{r:?}");
    assert_eq!(sys.most_asking.load(Ordering::Relaxed), 16, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_still_held_are_unfinished_not_lost() {
    for tells in [true, false] {
        let (r, _) = faulty(Fault::Hold { tells }, Workload::Pipe).await;
        let c = &r.check;
        assert!(c.unfinished > 0, "{r:?}");
        assert_eq!(c.lost, 0, "held (or unknown) is not lost: {r:?}");
        assert_eq!(c.unfinished + c.received, c.expected, "{r:?}");
        assert_eq!(r.messages, c.received, "{r:?}");
        let error = r.error.as_deref().unwrap();
        assert!(error.starts_with("unfinished: "), "{error}");
    }
}

/// A run ended by SIGINT at any point removes every topic it made, says it
/// was interrupted (no rate) and exits 130; SIGTERM likewise, with 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_removes_its_topics() {
    let server = Server::start().await;
    let client = Client::connect(&server.addr, &ClientOptions::group(""))
        .await
        .unwrap();
    let runs: &[(&[&str], &str, i32)] = &[
        (&["conns", "--conns", "300"], "INT", 130),
        (&["pipe", "--depth", "8"], "INT", 130),
        (&["queue"], "TERM", 143),
        (&["fanout", "--groups", "4"], "INT", 130),
        (&["rendezvous"], "INT", 130),
        (&["backlog", "--count", "100000000"], "INT", 130),
    ];
    for (args, signal, code) in runs {
        let child = Command::new(env!("CARGO_BIN_EXE_dchan"))
            .arg("bench")
            .args(*args)
            .args(["--addr", &server.addr, "--secs", "600", "--warmup", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Mid-run: once its topics exist, and a little after.
        patiently(async {
            while client.topics().await.unwrap().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let pid = child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = patiently(child.wait_with_output()).await.unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {stdout} {stderr}"
        );
        let r: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON line");
        assert_eq!(r["interrupted"], format!("SIG{signal}"), "{r}");
        assert_eq!(
            r["msgs_per_sec"], 0.0,
            "no rate from an interrupted run: {r}"
        );
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert_eq!(
            client.topics().await.unwrap(),
            Vec::<String>::new(),
            "{args:?} removed its topics"
        );
    }
    server.stop().await;
}

/// Arguments out of their bounds are usage errors (exit 2, one clear line)
/// found before connecting: the address here is unreachable, which would
/// be exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_out_of_bounds_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["pipe", "--size", "99999999999"],
            "'--size <SIZE>': at most",
        ),
        (&["pipe", "--size", "10"], "'--size <SIZE>': at least 48"),
        (&["pipe", "--secs", "nan"], "'--secs <SECS>': a finite"),
        (&["pipe", "--secs", "inf"], "'--secs <SECS>': a finite"),
        (&["pipe", "--secs", "1e9"], "'--secs <SECS>': at most"),
        (&["pipe", "--secs", "0"], "'--secs <SECS>': more than 0"),
        (&["pipe", "--drain", "nan"], "'--drain <DRAIN>': a finite"),
        (
            &["pipe", "--drain-max", "inf"],
            "'--drain-max <DRAIN_MAX>': a finite",
        ),
        (&["pipe", "--depth", "0"], "'--depth <DEPTH>': at least 1"),
        (
            &["pipe", "--depth", "20000"],
            "'--depth <DEPTH>': at most 1024",
        ),
        (
            &["queue", "--producers", "0"],
            "'--producers <PRODUCERS>': at least 1",
        ),
        (
            &["queue", "--consumers", "0"],
            "'--consumers <CONSUMERS>': at least 1",
        ),
        (
            &["fanout", "--groups", "0"],
            "'--groups <GROUPS>': at least 1",
        ),
        (&["conns", "--conns", "0"], "'--conns <CONNS>': at least 1"),
        (
            &["backlog", "--count", "0"],
            "'--count <COUNT>': at least 1",
        ),
        (
            &["pipe", "--prefix="],
            "'--prefix <PREFIX>': not a topic name",
        ),
        (
            &["pipe", "--prefix", "../x"],
            "'--prefix <PREFIX>': not a topic name",
        ),
        (
            &["pipe", "--prefix", "a b"],
            "'--prefix <PREFIX>': not a topic name",
        ),
        (
            &["pipe", "--size", "16777216", "--depth", "1024"],
            "in flight; lower --size or --depth",
        ),
    ];
    for (args, want) in cases {
        let out = patiently(
            Command::new(env!("CARGO_BIN_EXE_dchan"))
                .arg("bench")
                .args(*args)
                .args(["--addr", "tcp!127.0.0.1!1"])
                .output(),
        )
        .await
        .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: no JSON line");
        assert!(
            err.starts_with("dchan: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(err.ends_with("see 'dchan bench --help'\n"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A run past the server's limits fails with the server's own words where
/// the wire carries them: a refused connection is asked again in 9P2000.u
/// for its reason, and a request refused in 9P2000.L (an errno alone) says
/// it met a limit. The topics are removed either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_at_the_servers_limits_says_why() {
    let run = |addr: String, args: &'static [&'static str]| async move {
        let out = patiently(
            Command::new(env!("CARGO_BIN_EXE_dchan"))
                .arg("bench")
                .args(args)
                .args(["--addr", &addr, "--secs", "0.3", "--warmup", "10"])
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let empty = |addr: String| async move {
        let c = Client::connect(&addr, &ClientOptions::group(""))
            .await
            .unwrap();
        assert_eq!(c.topics().await.unwrap(), Vec::<String>::new());
    };
    let server = Server::start_with(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let dialects: [&'static [&'static str]; 2] = [
        &["pipe", "--dialect", "9p2000.L"],
        &["pipe", "--dialect", "9p2000.u"],
    ];
    for args in dialects {
        let err = run(server.addr.clone(), args).await;
        assert!(
            err.contains("FAILED: too many connections (the server serves 2 at once)"),
            "{args:?}: {err}"
        );
        empty(server.addr.clone()).await;
    }
    server.stop().await;

    let server = Server::start_with(Limits {
        max_in_flight: 4,
        ..Limits::default()
    })
    .await;
    let err = run(server.addr.clone(), &["pipe", "--depth", "16"]).await;
    assert!(
        err.contains("the server refused it at one of its limits, such as max_in_flight"),
        "{err}"
    );
    let args = &["pipe", "--depth", "16", "--dialect", "9p2000.u"];
    let err = run(server.addr.clone(), args).await;
    assert!(err.contains("FAILED: too many requests in flight"), "{err}");
    empty(server.addr.clone()).await;
    server.stop().await;
}
