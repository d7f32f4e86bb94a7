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
