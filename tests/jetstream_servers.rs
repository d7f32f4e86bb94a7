//! Several `dchan serve --nats` processes sharing their topics through one
//! NATS JetStream, driven as users drive them: dchan's client library and
//! its CLI, against server A and server B at once. Topics, messages,
//! groups and settings made through one are seen through the other; a
//! dchan server killed mid-stream loses none of what its writers were told
//! was stored, and its readers' unacknowledged deliveries reach readers on
//! the other server.

mod engine_support;
mod nats;
mod server;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dchan::client::{Client, Options, TopicSettings};
use server::Server;

/// How long a cross-server view may take to agree (the registry watch);
/// only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(20);

fn serve(cluster: &nats::Cluster, extra: &[&str]) -> Server {
    let urls = cluster.urls();
    let mut args = vec!["--nats", urls.as_str(), "--log", "warn"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn client(s: &Server, group: &str) -> Client {
    Client::connect(&s.addr(), &Options::group(group))
        .await
        .expect("connect")
}

/// Retry `f` until it returns `Some`, within `LIMIT`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `c`'s server lists `topic` (the registry watch).
async fn until_listed(c: &Client, topic: &str) {
    eventually(&format!("{topic} listed"), || async {
        c.topics()
            .await
            .unwrap()
            .iter()
            .any(|t| t == topic)
            .then_some(())
    })
    .await;
}

fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .env("DCHAN_ADDR", server.addr())
        .args(args)
        .output()
        .expect("run dchan");
    assert!(
        out.status.success(),
        "dchan {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_topics_messages_and_groups() {
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let (ca, cb) = (client(&a, "").await, client(&b, "").await);

    // Made on A: listed on B.
    ca.create(
        "jobs",
        &TopicSettings {
            capacity: Some(100),
            ..TopicSettings::default()
        },
    )
    .await
    .unwrap();
    until_listed(&cb, "jobs").await;

    // Pushed on A, pulled on B, in order.
    for i in 0..5 {
        ca.push("jobs", format!("m{i}\n")).await.unwrap();
    }
    let mut p = cb.open_data("jobs").await.unwrap();
    for i in 0..5 {
        assert_eq!(p.next().await.unwrap().unwrap(), format!("m{i}\n"));
    }
    p.close().await.unwrap();

    // Two readers of one group, one per server, share the work: each
    // message to one of them.
    let n = 40;
    let (ga, gb) = (client(&a, "workers").await, client(&b, "workers").await);
    let read = |c: Client| {
        tokio::spawn(async move {
            let mut p = c.open_data("jobs").await.unwrap();
            let mut got = Vec::new();
            while let Ok(Some(m)) = p.next_timeout(Duration::from_secs(3)).await {
                got.push(String::from_utf8(m.to_vec()).unwrap());
            }
            got
        })
    };
    let (ra, rb) = (read(ga), read(gb));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..n {
        ca.push("jobs", format!("w{i}\n")).await.unwrap();
    }
    let (got_a, got_b) = (ra.await.unwrap(), rb.await.unwrap());
    let all: BTreeSet<_> = got_a.iter().chain(&got_b).cloned().collect();
    println!(
        "group of two readers: {} on A, {} on B",
        got_a.len(),
        got_b.len()
    );
    assert_eq!(got_a.len() + got_b.len(), n, "each message once");
    assert_eq!(all.len(), n);
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both readers worked"
    );

    // Settings and close made on B hold on A.
    cb.ctl_write("jobs", "capacity 7").await.unwrap();
    eventually("A sees capacity 7", || async {
        ca.ctl("jobs")
            .await
            .unwrap()
            .contains("capacity 7")
            .then_some(())
    })
    .await;
    // The CLI against A and B agrees, but for PULLED: the pulls made
    // through that server (the rest is the cluster's).
    let without_pulled = |ls: String| -> Vec<Vec<String>> {
        ls.lines()
            .map(|l| {
                let mut cols: Vec<String> = l.split_whitespace().map(String::from).collect();
                cols.remove(3);
                cols
            })
            .collect()
    };
    let (ls_a, ls_b) = (cli(&a, &["ls"]), cli(&b, &["ls"]));
    assert!(ls_a.contains("jobs"), "{ls_a}");
    assert_eq!(without_pulled(ls_a), without_pulled(ls_b));

    // Removed on B: gone on A.
    cb.remove("jobs").await.unwrap();
    eventually("A no longer lists jobs", || async {
        (!ca.topics().await.unwrap().contains(&"jobs".to_string())).then_some(())
    })
    .await;
}

/// A server started after topics exist, or started again after a kill,
/// sees them, their settings and their messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_started_later_or_again_sees_the_topics_there_are() {
    let c = nats::Cluster::start(1).await;
    let a = serve(&c, &[]);
    cli(&a, &["create", "early", "--capacity", "10"]);
    cli(&a, &["create", "gone"]);
    cli(&a, &["rm", "gone"]);
    cli(&a, &["push", "early", "kept"]);
    let b = serve(&c, &[]);
    let listed = cli(&b, &["ls"]);
    assert!(listed.contains("early"), "B lists: {listed}");
    assert!(
        !listed.contains("gone"),
        "B lists a removed topic: {listed}"
    );
    drop(a); // killed
    let a = serve(&c, &[]);
    assert!(cli(&a, &["stat", "early"]).contains("capacity 10"));
    assert_eq!(cli(&a, &["pull", "early"]), "kept\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rendezvous_spans_servers() {
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let (ca, cb) = (client(&a, "").await, client(&b, "").await);
    ca.create("r", &TopicSettings::default()).await.unwrap();
    until_listed(&cb, "r").await;
    // The push on A returns once the reader on B took it.
    let reader = tokio::spawn(async move { cb.pull("r").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ca.push("r", "hello\n").await.unwrap();
    assert_eq!(reader.await.unwrap(), Some(Bytes::from("hello\n")));
}

/// A rendezvous push flushed at any moment (Twrite and Tflush sent
/// together, or a few milliseconds apart), with a reader waiting on the
/// other server: the reader gets the message exactly when the writer was
/// told it went (an Rwrite before the Rflush). Flushed while its publish
/// was on the wire, it used to be reported withdrawn and read anyway (11 of
/// 41 interrupted CLI pushes in a review).
#[tokio::test(flavor = "multi_thread")]
async fn a_flushed_rendezvous_push_is_read_exactly_when_it_was_acknowledged() {
    use dchan::proto::{Dialect, Fcall};
    use engine_support::{Client as Raw, is_error};
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let cb = client(&b, "").await;
    cb.create("fl", &TopicSettings::default()).await.unwrap();
    let mut w = Raw::session(a.addr().parse().unwrap(), Dialect::P2000L).await;
    // Each frame leaves at once (Nagle would hold the Tflush back until
    // the Rwrite acknowledged the Twrite's segment).
    w.stream.set_nodelay(true).unwrap();
    until_listed(&client(&a, "").await, "fl").await;
    assert!(!is_error(&w.walk(0, 1, &["fl", "data"]).await));
    assert!(!is_error(&w.open(1, true).await));
    let (mut told, mut withdrawn) = (0, 0);
    for i in 0..24u16 {
        let mut reader = tokio::spawn({
            let cb = client(&b, "").await;
            async move { cb.pull("fl").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let msg = format!("m{i}\n");
        w.send(
            10,
            Fcall::Twrite {
                fid: 1,
                offset: 0,
                data: Bytes::from(msg.clone()),
            },
        )
        .await;
        if i % 4 > 0 {
            tokio::time::sleep(Duration::from_micros(700 * u64::from(i % 4))).await;
        }
        w.send(11, Fcall::Tflush { oldtag: 10 }).await;
        let first = w.recv().await;
        let acked = match (first.tag, &first.body) {
            (10, Fcall::Rwrite { .. }) => {
                let m = w.recv().await;
                assert_eq!((m.tag, m.body), (11, Fcall::Rflush), "round {i}");
                true
            }
            (11, Fcall::Rflush) => false,
            other => panic!("round {i}: {other:?}"),
        };
        let got = tokio::time::timeout(Duration::from_millis(1500), &mut reader).await;
        reader.abort();
        match (acked, got) {
            (true, Ok(r)) => {
                assert_eq!(r.unwrap().unwrap(), Some(Bytes::from(msg)), "round {i}");
                told += 1;
            }
            (true, Err(_)) => panic!("round {i}: acknowledged, and the reader got nothing"),
            (false, Ok(r)) => panic!("round {i}: withdrawn, and the reader got {r:?}"),
            (false, Err(_)) => withdrawn += 1,
        }
    }
    eprintln!("acknowledged {told}, withdrawn {withdrawn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_fails_clearly_when_nats_is_unreachable() {
    let port = nats::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args([
            "serve",
            "--listen",
            "tcp!127.0.0.1!0",
            "--nats",
            &format!("nats://127.0.0.1:{port}"),
        ])
        .output()
        .expect("run dchan serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("broker unavailable"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "listened");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_dchan_server_mid_stream_loses_nothing_it_acknowledged() {
    // 3 NATS nodes, R3; producer on A, readers of one group on A and B.
    // A is killed with SIGKILL mid-stream: every push A acknowledged is
    // read on B (A's readers' unacknowledged deliveries come back after
    // the ack wait, 2 s here).
    let c = nats::Cluster::start(3).await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[broker]\nreplicas = 3\nack_wait = \"2s\"\n").unwrap();
    let cfg = config.path().to_str().unwrap();
    let mut a = serve(&c, &["--config", cfg]);
    let b = serve(&c, &["--config", cfg]);
    let (ca, cb) = (client(&a, "").await, client(&b, "").await);
    ca.create(
        "jobs",
        &TopicSettings {
            capacity: Some(50),
            ..TopicSettings::default()
        },
    )
    .await
    .unwrap();
    until_listed(&cb, "jobs").await;
    // A's reader: takes messages and never acks the last (it dies).
    let ra = client(&a, "").await;
    let reader_a = tokio::spawn(async move {
        let mut p = ra.open_data("jobs").await.unwrap();
        let mut got = BTreeSet::new();
        while let Ok(Some(m)) = p.next().await {
            got.insert(
                String::from_utf8(m.to_vec())
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        got
    });
    // B's reader, of the same group, until the group is idle for 5 s.
    let reader_b = tokio::spawn(async move {
        let mut p = cb.open_data("jobs").await.unwrap();
        let (mut got, mut dups) = (BTreeSet::new(), 0);
        while let Ok(Some(m)) = p.next_timeout(Duration::from_secs(5)).await {
            let i: u64 = String::from_utf8(m.to_vec())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if !got.insert(i) {
                dups += 1;
            }
        }
        (got, dups)
    });
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..1000 {
                match ca.push("jobs", format!("{i}\n")).await {
                    Ok(()) => acked.lock().push(i),
                    Err(e) => {
                        println!("push {i}: {e}"); // its server is gone
                        break;
                    }
                }
            }
        })
    };
    // Mid-stream: once 100 pushes were acknowledged.
    eventually("100 pushes", || async {
        (acked.lock().len() >= 100).then_some(())
    })
    .await;
    a.child.kill().unwrap(); // SIGKILL
    let _ = a.child.wait();
    writer.await.unwrap();
    let acked = acked.lock().clone();
    let on_a = reader_a.await.unwrap();
    let (got, dups) = reader_b.await.unwrap();
    let lost: Vec<_> = acked
        .iter()
        .filter(|i| !got.contains(&(**i as u64)) && !on_a.contains(&(**i as u64)))
        .collect();
    let again = got.intersection(&on_a).count();
    println!(
        "dchan A killed: {} pushes acknowledged, {} read on A, {} read on B \
         ({dups} twice on B, {again} on both), {} lost",
        acked.len(),
        on_a.len(),
        got.len(),
        lost.len(),
    );
    assert!(
        lost.is_empty(),
        "acknowledged, and read by nobody: {lost:?}"
    );
}

/// The README's "More than one machine" commands, as pasted, on free
/// ports and in a temporary directory: three NATS nodes, two dchan
/// servers, a push through one and a pull through the other.
#[test]
fn the_readme_cluster_commands_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = server::readme_blocks(&readme, "sh nats");
    assert_eq!(blocks.len(), 1, "the README lost its cluster commands");
    let dir = tempfile::tempdir().unwrap();
    let mut script = blocks[0].replace("/tmp/", &format!("{}/", dir.path().display()));
    for port in [14221, 14222, 14223, 16221, 16222, 16223, 15641, 15642] {
        script = script.replace(&port.to_string(), &nats::free_port().to_string());
    }
    // Every process the commands start in the background is stopped by
    // its PID when they end.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -eu\n{script}");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_dchan"))
        .parent()
        .unwrap();
    let venv = nats::nats_server();
    let path = format!(
        "{}:{}:{}",
        venv.parent().unwrap().display(),
        bin.display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new("timeout")
        .args(["120", "bash", "-c", &script])
        .env("PATH", path)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resize a.png"), "{stdout}");
    assert!(stdout.contains("jobs"), "{stdout}");
}

/// A batch reader (`GROUP:batch`, as `dchan pull --follow` reads) gets
/// every message once and in order while a writer pushes against a small
/// capacity, and end of file once the topic is closed, with nothing left
/// unacknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_reader_gets_every_message_in_order() {
    let c = nats::Cluster::start(1).await;
    let a = serve(&c, &[]);
    let ca = client(&a, "").await;
    ca.create(
        "b",
        &TopicSettings {
            capacity: Some(5),
            ..TopicSettings::default()
        },
    )
    .await
    .unwrap();
    let reader = Client::connect(&a.addr(), &Options::group("").batch())
        .await
        .unwrap();
    let read = tokio::spawn(async move {
        let mut p = reader.open_data("b").await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = p.next_timeout(LIMIT).await.unwrap() {
            let text = String::from_utf8(m.to_vec()).unwrap();
            got.extend(text.lines().map(|l| l[1..].parse::<u32>().unwrap()));
        }
        got
    });
    let n = 200;
    let w = ca.open_push("b").await.unwrap();
    for i in 0..n {
        w.push(format!("m{i}\n")).await.unwrap();
    }
    ca.ctl_write("b", "close").await.unwrap();
    let got = read.await.unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every message, in order");
    let ctl = ca.ctl("b").await.unwrap();
    assert!(ctl.contains("unacked 0"), "{ctl}");
}

/// Two groups that start reading a fresh topic at the same moment (as
/// two `dchan pull --follow` do) both exist at once and each gets every
/// message pushed after, in order.
#[tokio::test(flavor = "multi_thread")]
async fn two_groups_starting_together_both_get_every_message() {
    let c = nats::Cluster::start(1).await;
    let a = serve(&c, &[]);
    let ca = client(&a, "").await;
    let n = 50;
    for k in 0..4 {
        let topic = format!("g{k}");
        ca.create(
            &topic,
            &TopicSettings {
                capacity: Some(5),
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
        let readers: Vec<_> = ["", "g2"]
            .into_iter()
            .map(|g| {
                let (addr, topic) = (a.addr(), topic.clone());
                tokio::spawn(async move {
                    let c = Client::connect(&addr, &Options::group(g).batch())
                        .await
                        .unwrap();
                    let mut p = c.open_data(&topic).await.unwrap();
                    let mut got = Vec::new();
                    while let Ok(Some(m)) = p.next_timeout(LIMIT).await {
                        let text = String::from_utf8(m.to_vec()).unwrap();
                        got.extend(text.lines().map(|l| l[1..].parse::<u32>().unwrap()));
                    }
                    got
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ctl = ca.ctl(&topic).await.unwrap();
        let w = ca.open_push(&topic).await.unwrap();
        for i in 0..n {
            w.push(format!("m{i}\n")).await.unwrap();
        }
        ca.close(&topic).await.unwrap();
        for r in readers {
            let got = r.await.unwrap();
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "{topic}: {ctl}");
        }
    }
}

/// With NATS gone, reading the topics file (`dchan ls`) fails within the
/// broker's timeout with "broker unavailable", rather than waiting that
/// timeout for every topic, or more.
#[tokio::test(flavor = "multi_thread")]
async fn the_topics_file_fails_at_once_while_nats_is_down() {
    let mut c = nats::Cluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dchan.toml");
    std::fs::write(
        &conf,
        format!(
            "[broker]\nengine = \"jetstream\"\nnats = [{:?}]\ntimeout = \"2s\"\n",
            c.url_list()[0]
        ),
    )
    .unwrap();
    let a = Server::start(&["--config", conf.to_str().unwrap(), "--log", "warn"]);
    let ca = client(&a, "").await;
    for i in 0..8 {
        ca.create(&format!("t{i}"), &TopicSettings::default())
            .await
            .unwrap();
    }
    assert!(ca.topics_file().await.unwrap().contains("t7 "));
    c.kill(0);
    // 8 topics at 2 s each, or more, would pass the limit.
    let t0 = Instant::now();
    let listed = tokio::time::timeout(Duration::from_secs(12), ca.topics_file())
        .await
        .expect("the topics file hung with NATS gone");
    println!(
        "topics file with NATS gone: {listed:?} after {:?}",
        t0.elapsed()
    );
    let e = listed.expect_err("a listing without NATS");
    assert!(e.to_string().contains("unavailable"), "{e}");
}

/// `[topic_defaults]` this engine cannot keep (`retain`, `max_bytes`,
/// `rate`) stop the server at start, as `[[topic]]` ones do, rather than
/// fail every create after; a server that starts names its engine in its
/// root ctl.
#[tokio::test(flavor = "multi_thread")]
async fn defaults_the_engine_cannot_keep_stop_the_server_and_ctl_names_it() {
    let c = nats::Cluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    for setting in ["retain = \"100\"", "max_bytes = \"1M\"", "rate = \"10/s\""] {
        let conf = dir.path().join("dchan.toml");
        std::fs::write(
            &conf,
            format!(
                "[broker]\nengine = \"jetstream\"\nnats = [{:?}]\n[topic_defaults]\n{setting}\n",
                c.url_list()[0]
            ),
        )
        .unwrap();
        // A server that starts is stopped after 20 s (a failure).
        let out = Command::new("timeout")
            .args(["20", env!("CARGO_BIN_EXE_dchan")])
            .args(["serve", "--listen", "tcp!127.0.0.1!0"])
            .args(["--config", conf.to_str().unwrap()])
            .output()
            .expect("run dchan serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting}: started");
        assert!(err.contains("topic_defaults"), "{setting}: {err}");
    }
    let a = serve(&c, &[]);
    let root = client(&a, "").await.server_ctl().await.unwrap();
    assert!(root.contains("\nengine jetstream\n"), "{root}");
}

/// A topic made through A is there through B at once: a walk of a name B
/// has not heard of yet reads the registry before it says "does not
/// exist" (issue 8 measured 12 of 30 missing within 5 ms before).
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_made_on_a_is_walkable_on_b_at_once() {
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let (ca, cb) = (client(&a, "").await, client(&b, "").await);
    let mut missing = Vec::new();
    for i in 0..30 {
        let t = format!("v{i}");
        ca.create(&t, &TopicSettings::default()).await.unwrap();
        if let Err(e) = cb.ctl(&t).await {
            missing.push(format!("{t}: {e}"));
        }
    }
    assert_eq!(missing, Vec::<String>::new());
    // A name nobody made is still not there.
    let e = cb.ctl("never").await.unwrap_err().to_string();
    assert!(e.contains("no such topic"), "{e}");
}

/// B's ctl counts a reader blocked on A, and says which figures are B's
/// own.
#[tokio::test(flavor = "multi_thread")]
async fn b_counts_a_reader_blocked_on_a_and_says_what_is_local() {
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let (ca, cb) = (client(&a, "").await, client(&b, "").await);
    ca.create("w", &TopicSettings::default()).await.unwrap();
    let reader = tokio::spawn(async move { ca.pull("w").await.unwrap() });
    eventually("B counts A's blocked reader", || async {
        let ctl = cb.ctl("w").await.ok()?;
        ctl.contains("blocked_readers 1\n").then_some(())
    })
    .await;
    let ctl = cb.ctl("w").await.unwrap();
    assert!(
        ctl.contains("\nlocal readers pulled blocked_writers\n"),
        "{ctl}"
    );
    assert!(
        ctl.contains("group \"\" offset 0 lag 0 unacked 0 blocked 1\n"),
        "{ctl}"
    );
    cb.push("w", "x\n").await.unwrap();
    assert_eq!(reader.await.unwrap(), Some(Bytes::from("x\n")));
}

/// `writers` writers on each of `servers`, pushing numbered messages to
/// `topic` from the moment all (and `also` more) passed one barrier
/// until `until`: what each was told was stored.
async fn writers_on(
    servers: [&Server; 2],
    topic: &str,
    writers: u64,
    start: &std::sync::Arc<tokio::sync::Barrier>,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let mut handles = Vec::new();
    for (s, name) in servers.into_iter().zip(["a", "b"]) {
        for w in 0..writers {
            let pusher = client(s, "").await.open_push(topic).await.unwrap();
            let start = start.clone();
            handles.push(tokio::spawn(async move {
                // All at once, so that both servers look before either
                // filled the topic.
                start.wait().await;
                let mut stored = Vec::new();
                let mut i = 0;
                while Instant::now() < until {
                    let msg = format!("{name}{w}-{i}\n");
                    if pusher
                        .push_timeout(msg.clone(), Duration::from_millis(200))
                        .await
                        .is_ok()
                    {
                        stored.push(msg);
                    }
                    i += 1;
                }
                stored
            }));
        }
    }
    handles
}

/// The `pending` line of a topic's status.
fn pending_in(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("pending "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pending in {status}"))
}

/// Writers on two servers and no reader: the topic holds at most its
/// capacity plus the pushes in flight (one per writer), though each
/// server's own pushes alone would leave it room; every push they were
/// told was stored is read afterwards, once.
#[tokio::test(flavor = "multi_thread")]
async fn capacity_holds_across_writers_on_two_servers() {
    const CAPACITY: u64 = 10;
    const WRITERS: u64 = 3;
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let ca = client(&a, "").await;
    ca.create(
        "full",
        &TopicSettings {
            capacity: Some(CAPACITY),
            ..TopicSettings::default()
        },
    )
    .await
    .unwrap();
    let cb = client(&b, "").await;
    until_listed(&cb, "full").await;
    let until = Instant::now() + Duration::from_secs(3);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(2 * WRITERS as usize));
    let writers = writers_on([&a, &b], "full", WRITERS, &start, until).await;
    let mut stored = BTreeSet::new();
    for w in writers {
        stored.extend(w.await.unwrap());
    }
    let status = ca.ctl("full").await.unwrap();
    let pending = pending_in(&status);
    assert!(
        pending <= CAPACITY + 2 * WRITERS,
        "{pending} held with capacity {CAPACITY} and {} writers:\n{status}",
        2 * WRITERS
    );
    assert_eq!(pending, stored.len() as u64, "{status}");
    let mut read = BTreeSet::new();
    let mut p = ca.open_data("full").await.unwrap();
    while let Ok(Some(m)) = p.next_timeout(Duration::from_millis(500)).await {
        assert!(read.insert(String::from_utf8(m.to_vec()).unwrap()));
    }
    assert_eq!(read, stored);
}

/// As above, with a slow reader on A: the room A's reader makes is A's
/// to use only between two looks (at most C/8 pushes), so B's writes are
/// seen. The topic holds at most C, plus C/8 per server for a burst that
/// starts on both at once, plus the pushes in flight.
#[tokio::test(flavor = "multi_thread")]
async fn capacity_holds_with_a_slow_reader_and_writers_on_two_servers() {
    const CAPACITY: u64 = 40;
    const WRITERS: u64 = 3;
    let c = nats::Cluster::start(1).await;
    let (a, b) = (serve(&c, &[]), serve(&c, &[]));
    let ca = client(&a, "").await;
    let settings = TopicSettings {
        capacity: Some(CAPACITY),
        ..TopicSettings::default()
    };
    ca.create("slow", &settings).await.unwrap();
    let cb = client(&b, "").await;
    until_listed(&cb, "slow").await;
    let until = Instant::now() + Duration::from_secs(4);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(2 * WRITERS as usize + 1));
    let writers = writers_on([&a, &b], "slow", WRITERS, &start, until).await;
    let reader = {
        let ra = client(&a, "").await;
        let start = start.clone();
        tokio::spawn(async move {
            let mut p = ra.open_data("slow").await.unwrap();
            start.wait().await;
            let mut got = Vec::new();
            while Instant::now() < until {
                if let Ok(Some(m)) = p.next_timeout(Duration::from_millis(200)).await {
                    got.push(String::from_utf8(m.to_vec()).unwrap());
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            got
        })
    };
    let mut most = 0;
    while Instant::now() < until {
        most = most.max(pending_in(&ca.ctl("slow").await.unwrap()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stored = BTreeSet::new();
    for w in writers {
        stored.extend(w.await.unwrap());
    }
    let mut read = reader.await.unwrap();
    let bound = CAPACITY + 2 * (CAPACITY / 8) + 2 * WRITERS;
    assert!(most <= bound, "{most} held, bound {bound}");
    let mut p = ca.open_data("slow").await.unwrap();
    while let Ok(Some(m)) = p.next_timeout(Duration::from_millis(500)).await {
        read.push(String::from_utf8(m.to_vec()).unwrap());
    }
    let once: BTreeSet<String> = read.iter().cloned().collect();
    assert_eq!(once.len(), read.len(), "a message read twice");
    assert_eq!(once, stored);
}

/// With topics in JetStream a server runs half as many worker threads as
/// there are cores (at least one), unless `--threads` says otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_jetstream_server_runs_half_the_cores_unless_told() {
    let c = nats::Cluster::start(1).await;
    let cores = std::thread::available_parallelism().unwrap().get();
    let a = serve(&c, &[]);
    client(&a, "").await.server_ctl().await.unwrap();
    assert_eq!(a.worker_threads(), (cores / 2).max(1));
    let b = serve(&c, &["--threads", "3"]);
    client(&b, "").await.server_ctl().await.unwrap();
    assert_eq!(b.worker_threads(), 3);
}
