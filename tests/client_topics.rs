//! The client library against a real dchan server (engine, topic tree,
//! memory broker) in this process, in each dialect.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use dchan::client::{Client, Error, Framing, Options, TopicSettings};
use dchan::proto::Dialect;
use support::{Server, patiently};

const DIALECTS: [Dialect; 3] = [Dialect::P2000, Dialect::P2000u, Dialect::P2000L];

async fn client(server: &Server, dialect: Dialect, group: &str) -> Client {
    let opts = Options::group(group).dialect(dialect);
    Client::connect(&server.addr, &opts).await.expect("connect")
}

/// A topic-name part for a dialect.
fn name(d: Dialect) -> String {
    d.as_str().replace('.', "_")
}

fn buffered(capacity: u64) -> TopicSettings {
    TopicSettings {
        capacity: Some(capacity),
        ..TopicSettings::default()
    }
}

#[tokio::test]
async fn push_then_pull_in_every_dialect() {
    let server = Server::start().await;
    for d in DIALECTS {
        let c = client(&server, d, "").await;
        assert_eq!(c.connection().dialect(), d);
        let topic = format!("t{}", name(d));
        c.create(&topic, &buffered(10)).await.unwrap();
        c.push(&topic, "hello\n").await.unwrap();
        c.push(&topic, "two\nthree\n").await.unwrap();
        let got = patiently(c.pull(&topic)).await.unwrap();
        assert_eq!(got, Some(Bytes::from("hello\n")), "{d:?}");
        let mut p = c.open_data(&topic).await.unwrap();
        assert_eq!(patiently(p.next()).await.unwrap().unwrap(), "two\n");
        assert_eq!(patiently(p.next()).await.unwrap().unwrap(), "three\n");
        c.close(&topic).await.unwrap();
        assert_eq!(
            patiently(p.next()).await.unwrap(),
            None,
            "{d:?}: closed is EOF"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_rendezvous_push_waits_for_the_pull() {
    let server = Server::start().await;
    let c = client(&server, Dialect::P2000L, "").await;
    c.create("r", &TopicSettings::default()).await.unwrap();
    let pusher = tokio::spawn({
        let addr = server.addr.clone();
        async move {
            let c = Client::connect(&addr, &Options::default()).await.unwrap();
            c.push("r", "meet\n").await
        }
    });
    assert_eq!(patiently(c.pull("r")).await.unwrap().unwrap(), "meet\n");
    patiently(pusher).await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn many_pulls_in_flight_on_one_connection_share_the_messages() {
    let server = Server::start().await;
    for d in [Dialect::P2000u, Dialect::P2000L] {
        let c = std::sync::Arc::new(client(&server, d, "").await);
        let topic = format!("many{}", name(d));
        c.create(&topic, &buffered(0)).await.unwrap();
        let mut pulls = Vec::new();
        for _ in 0..100 {
            let c = c.clone();
            let topic = topic.clone();
            pulls.push(tokio::spawn(async move { c.pull(&topic).await }));
        }
        let producer = client(&server, d, "").await;
        let mut pushes = Vec::new();
        for i in 0..100 {
            pushes.push(producer.push(&topic, format!("m{i}\n")));
        }
        for r in patiently(futures_util::future::join_all(pushes)).await {
            r.unwrap();
        }
        let mut seen = HashSet::new();
        for p in pulls {
            let msg = patiently(p).await.unwrap().unwrap().unwrap();
            assert!(seen.insert(msg), "a message pulled twice");
        }
        assert_eq!(seen.len(), 100);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_pull_is_flushed_and_the_next_pull_gets_the_message() {
    let server = Server::start().await;
    for d in DIALECTS {
        let c = client(&server, d, "").await;
        let topic = format!("f{}", name(d));
        c.create(&topic, &buffered(5)).await.unwrap();
        let mut p = c.open_data(&topic).await.unwrap();
        // Nothing there: give up waiting (the future is dropped).
        let waited = tokio::time::timeout(Duration::from_millis(100), p.next()).await;
        assert!(waited.is_err(), "{d:?}: nothing should have come");
        c.push(&topic, "kept\n").await.unwrap();
        assert_eq!(
            patiently(p.next()).await.unwrap().unwrap(),
            "kept\n",
            "{d:?}"
        );
        // And once more, with a whole pull dropped while it waits.
        let waited = tokio::time::timeout(Duration::from_millis(100), c.pull(&topic)).await;
        assert!(waited.is_err());
        c.push(&topic, "again\n").await.unwrap();
        assert_eq!(patiently(c.pull(&topic)).await.unwrap().unwrap(), "again\n");
    }
    server.stop().await;
}

#[tokio::test]
async fn messages_of_any_size_come_out_whole() {
    let server = Server::start().await;
    for d in [Dialect::P2000u, Dialect::P2000L] {
        let c = client(&server, d, "").await;
        let max = c.connection().msize() as usize - 24;
        let topic = format!("big{}", name(d));
        let settings = TopicSettings {
            capacity: Some(10),
            framing: Some(Framing::Write),
            ..TopicSettings::default()
        };
        c.create(&topic, &settings).await.unwrap();
        let sizes = [1, max - 1, max, 65512, 100_000];
        let pusher = c.open_push(&topic).await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let msg: Vec<u8> = (0..n).map(|j| (i + j) as u8).collect();
            pusher.push(msg).await.unwrap();
        }
        let line_topic = format!("bigline{}", name(d));
        c.create(&line_topic, &buffered(10)).await.unwrap();
        let mut long_line = vec![b'x'; 3 * max + 17];
        long_line.push(b'\n');
        c.push(&line_topic, long_line.clone()).await.unwrap();

        let mut p = c.open_data(&topic).await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let msg = patiently(p.next()).await.unwrap().unwrap();
            assert_eq!(msg.len(), n, "{d:?}");
            assert_eq!(msg[0], i as u8);
        }
        let got = patiently(c.pull(&line_topic)).await.unwrap().unwrap();
        assert_eq!(
            got.len(),
            long_line.len(),
            "{d:?}: a line longer than msize"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_write_framed_message_larger_than_one_write_is_refused_whole() {
    use dchan::client::ConnectOptions;
    let server = Server::start().await;
    for d in DIALECTS {
        let opts = Options {
            connect: ConnectOptions {
                dialect: d,
                msize: 4096,
                ..ConnectOptions::default()
            },
            ..Options::default()
        };
        let c = Client::connect(&server.addr, &opts).await.unwrap();
        let max = 4096 - 24;
        let topic = format!("bigw{}", name(d));
        let settings = TopicSettings {
            capacity: Some(5),
            framing: Some(Framing::Write),
            ..TopicSettings::default()
        };
        c.create(&topic, &settings).await.unwrap();
        let pusher = c.open_push(&topic).await.unwrap();
        // One write's worth goes (one byte less on plain 9P2000, where a
        // full-size read does not end a message).
        let first = if d == Dialect::P2000 { max - 1 } else { max };
        pusher.push(vec![b'a'; first]).await.unwrap();
        for push in [
            pusher.push(vec![b'b'; max + 1]).await,
            pusher
                .push_timeout(vec![b'b'; 3 * max], Duration::from_secs(60))
                .await,
        ] {
            let e = push.unwrap_err();
            assert!(matches!(e, Error::TooLarge { .. }), "{d:?}: {e:?}");
            assert!(
                e.to_string()
                    .starts_with("message too large for one write: "),
                "{e}"
            );
            assert!(e.to_string().contains(&format!("at most {max} ")), "{e}");
        }
        // A line as long on a topic switched to line framing goes out in
        // parts, and comes out as one line, from a data file opened since
        // (the server, too, takes a file's framing at its open).
        c.ctl_write(&topic, "framing line").await.unwrap();
        let mut line = vec![b'c'; 2 * max];
        line.push(b'\n');
        let e = pusher.push(line.clone()).await.unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{d:?}: {e:?}");
        pusher.close().await.unwrap();
        let pusher = c.open_push(&topic).await.unwrap();
        pusher.push(line.clone()).await.unwrap();
        pusher.close().await.unwrap();
        let ctl = c.ctl(&topic).await.unwrap();
        assert!(ctl.contains("pushed 2\n"), "{d:?}: {ctl}");
        let mut p = c.open_data(&topic).await.unwrap();
        assert_eq!(patiently(p.next()).await.unwrap().unwrap().len(), first);
        assert_eq!(patiently(p.next()).await.unwrap().unwrap(), line);
        p.close().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn errors_carry_the_servers_message() {
    let server = Server::start().await;
    let c = client(&server, Dialect::P2000u, "").await;
    match c.pull("nosuch").await {
        Err(Error::NoTopic(t)) => assert_eq!(t, "nosuch"),
        other => panic!("{other:?}"),
    }
    c.create("e", &buffered(1)).await.unwrap();
    let e = c.ctl_write("e", "frobnicate").await.unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
    let e = c.create("e", &buffered(1)).await.unwrap_err();
    assert!(e.to_string().contains("exist"), "{e}");
    c.close("e").await.unwrap();
    let e = c.push("e", "late\n").await.unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
    assert!(matches!(
        c.create("../x", &buffered(1)).await,
        Err(Error::BadTopic(_))
    ));

    // Plain 9P2000 says it in words only; still "no such topic".
    let plain = client(&server, Dialect::P2000, "").await;
    assert!(matches!(plain.pull("nosuch").await, Err(Error::NoTopic(_))));
    assert!(matches!(
        plain.ctl("e/nosuch").await,
        Err(Error::NoTopic(_))
    ));

    // 9P2000.L carries only an errno; the client names it.
    let l = client(&server, Dialect::P2000L, "").await;
    let e = l.ctl_write("e", "frobnicate").await.unwrap_err();
    assert_eq!(e.errno(), Some(22));
    assert_eq!(e.to_string(), "invalid argument");
    server.stop().await;
}

#[tokio::test]
async fn reset_fails_a_blocked_push() {
    let server = Server::start().await;
    let c = client(&server, Dialect::P2000u, "").await;
    c.create("z", &TopicSettings::default()).await.unwrap();
    let blocked = tokio::spawn({
        let addr = server.addr.clone();
        async move {
            let c = Client::connect(&addr, &Options::default()).await.unwrap();
            c.push("z", "lost\n").await
        }
    });
    // Wait until the push is blocked, as the topic's status says.
    patiently(async {
        while !c.ctl("z").await.unwrap().contains("blocked_writers 1") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    c.reset("z").await.unwrap();
    let e = patiently(blocked).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("reset"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn offsets_groups_and_listing() {
    let server = Server::start().await;
    let a = client(&server, Dialect::P2000L, "a").await;
    let b = client(&server, Dialect::P2000u, "b").await;
    a.create("log", &buffered(10)).await.unwrap();
    a.create("metrics/eu", &buffered(10)).await.unwrap();
    // Both groups exist before the pushes, so each gets every message.
    let start = a.offset("log").await.unwrap();
    assert_eq!(b.offset("log").await.unwrap(), start);
    for m in ["1\n", "2\n", "3\n"] {
        a.push("log", m).await.unwrap();
    }
    let mut p = a.open_data("log").await.unwrap();
    for m in ["1\n", "2\n", "3\n"] {
        assert_eq!(patiently(p.next()).await.unwrap().unwrap(), m);
    }
    assert_eq!(a.offset("log").await.unwrap(), start + 3);
    // Group b has not read them, so they are held: a can replay.
    a.set_offset("log", start + 1).await.unwrap();
    assert_eq!(patiently(a.pull("log")).await.unwrap().unwrap(), "2\n");
    let e = a.set_offset("log", start + 99).await.unwrap_err();
    assert_eq!(e.errno(), Some(34), "{e}");
    let mut p = b.open_data("log").await.unwrap();
    for m in ["1\n", "2\n", "3\n"] {
        assert_eq!(patiently(p.next()).await.unwrap().unwrap(), m);
    }

    assert_eq!(a.topics().await.unwrap(), ["log", "metrics/eu"]);
    assert_eq!(a.topics_under("metrics").await.unwrap(), ["metrics/eu"]);
    let status = a.ctl("log").await.unwrap();
    assert!(status.contains("capacity 10"), "{status}");
    assert!(a.server_ctl().await.unwrap().contains("topics 2"));
    a.remove("metrics/eu").await.unwrap();
    assert_eq!(a.topics().await.unwrap(), ["log"]);
    assert!(matches!(
        a.remove("metrics/eu").await,
        Err(Error::NoTopic(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn connects_over_a_unix_socket() {
    use dchan::broker::memory::MemoryBroker;
    use dchan::engine::{self, Addr, Limits, Listener};
    use dchan::tree::{TopicTree, TreeConfig};

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix!{}", dir.path().join("dchan.sock").display());
    let l = Listener::bind(&addr.parse::<Addr>().unwrap())
        .await
        .unwrap();
    let tree = TopicTree::new(MemoryBroker::new(), TreeConfig::default(), || 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engine::serve(
        vec![l],
        std::sync::Arc::new(tree),
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let c = Client::connect(&addr, &Options::default()).await.unwrap();
    c.create("u", &buffered(1)).await.unwrap();
    c.push("u", "local\n").await.unwrap();
    assert_eq!(patiently(c.pull("u")).await.unwrap().unwrap(), "local\n");
    drop(c);
    let _ = stop.send(());
    patiently(server).await.unwrap();
}

#[tokio::test]
async fn bad_addresses_and_refused_connections_are_errors() {
    let e = Client::connect("nonsense", &Options::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Address(_)), "{e}");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
    drop(l);
    let e = Client::connect(&down, &Options::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "connection refused");
}

#[tokio::test]
async fn raw_fids_walk_mkdir_readdir_stat_remove() {
    use dchan::client::Mode;
    let server = Server::start().await;
    for d in DIALECTS {
        let c = client(&server, d, "").await;
        let topic = format!("raw{}", name(d));
        // mkdir makes a topic with the server's defaults.
        c.root().mkdir(&topic).await.unwrap();
        assert!(c.topics().await.unwrap().contains(&topic), "{d:?}");
        let mut dir = c.root().walk(&topic).await.unwrap();
        assert!(dir.qid().ty & dchan::proto::QTDIR != 0);
        dir.open(Mode::Read).await.unwrap();
        let mut names: Vec<String> = dir
            .readdir()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        assert_eq!(names, ["ctl", "data", "offset"], "{d:?}");
        dir.clunk().await.unwrap();

        let data = c.root().walk(&format!("{topic}/data")).await.unwrap();
        match d {
            Dialect::P2000L => assert_eq!(data.getattr().await.unwrap().size, 0),
            _ => assert_eq!(data.stat().await.unwrap().name, "data"),
        }
        let mut ctl = c.root().walk(&format!("{topic}/ctl")).await.unwrap();
        assert!(data.walk("x").await.is_err(), "a walk from a file");
        ctl.open(Mode::Read).await.unwrap();
        let text = ctl.read_to_end().await.unwrap();
        assert!(text.starts_with(b"capacity 0\n"), "{d:?}");
        ctl.clunk().await.unwrap();
        drop(data);

        let missing = c.root().walk(&format!("{topic}/nothing/here")).await;
        assert!(
            matches!(missing, Err(Error::NotFound(_))),
            "{d:?}: {missing:?}"
        );

        // Removing the directory removes the topic.
        c.root().walk(&topic).await.unwrap().remove().await.unwrap();
        assert!(!c.topics().await.unwrap().contains(&topic), "{d:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn message_boundaries_hold_at_every_multiple_of_a_small_msize() {
    use dchan::client::ConnectOptions;
    let server = Server::start().await;
    // Every dialect with the client's `:short` sessions, and .L read as a
    // Linux mount reads (a zero after every message).
    let cases = [
        (Dialect::P2000, false),
        (Dialect::P2000u, false),
        (Dialect::P2000L, false),
        (Dialect::P2000L, true),
    ];
    for (d, linux_reads) in cases {
        let opts = Options {
            connect: ConnectOptions {
                dialect: d,
                msize: 4096,
                ..ConnectOptions::default()
            },
            linux_reads,
            ..Options::default()
        };
        let c = Client::connect(&server.addr, &opts).await.unwrap();
        let max = 4096 - 24;
        let topic = format!("small{}{}", name(d), if linux_reads { "linux" } else { "" });
        c.create(&topic, &buffered(100)).await.unwrap();
        let sizes = [
            1,
            max - 1,
            max,
            max + 1,
            2 * max,
            2 * max + 1,
            3 * max - 1,
            5,
        ];
        let pusher = c.open_push(&topic).await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let mut line = vec![b'a' + i as u8; n - 1];
            line.push(b'\n');
            pusher.push(line).await.unwrap();
        }
        pusher.close().await.unwrap();
        let mut p = c.open_data(&topic).await.unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let msg = patiently(p.next()).await.unwrap().unwrap();
            assert_eq!(msg.len(), n, "{d:?} linux_reads {linux_reads}: message {i}");
            assert!(msg[..n - 1].iter().all(|&b| b == b'a' + i as u8));
        }
        p.close().await.unwrap();
    }
    server.stop().await;
}

/// Retention through the ctl files over 9P: set at create and changed
/// later, shown in the ctl file; a group that comes after the others
/// reads the retained history; a bad limit is refused with its reason.
#[tokio::test]
async fn retention_through_the_ctl_files() {
    let server = Server::start().await;
    let c = client(&server, Dialect::P2000L, "").await;
    c.server_command("create r capacity=10 retain=2\n")
        .await
        .unwrap();
    for m in ["a", "b", "c"] {
        c.push("r", format!("{m}\n")).await.unwrap();
    }
    for m in ["a", "b", "c"] {
        assert_eq!(c.pull("r").await.unwrap().unwrap(), format!("{m}\n"));
    }
    let ctl = c.ctl("r").await.unwrap();
    assert!(
        ctl.contains("retain 2\n") && ctl.contains("retained 2\n") && ctl.contains("first 1\n"),
        "{ctl}"
    );
    let late = client(&server, Dialect::P2000L, "late").await;
    assert_eq!(late.pull("r").await.unwrap().unwrap(), "b\n");
    // The default group rewinds over the history.
    c.set_offset("r", 1).await.unwrap();
    assert_eq!(c.pull("r").await.unwrap().unwrap(), "b\n");
    c.ctl_write("r", "retain 64M").await.unwrap();
    assert!(c.ctl("r").await.unwrap().contains("retain 64M\n"));
    // 9P2000 carries the reason as text (9P2000.L only an errno).
    let text = client(&server, Dialect::P2000, "").await;
    let e = text.ctl_write("r", "retain lots").await.unwrap_err();
    assert!(e.to_string().contains("bad retain \"lots\""), "{e}");
    c.ctl_write("r", "retain none").await.unwrap();
    let ctl = c.ctl("r").await.unwrap();
    assert!(ctl.contains("retain none\n"), "{ctl}");
}
