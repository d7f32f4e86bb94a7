//! What a topic and a group cost on JetStream (issue 16): the time to
//! create them, and the NATS server's memory and disk per topic. Prints
//! figures and asserts nothing on them; run on purpose with
//! `cargo nextest run --test jetstream_cost --run-ignored only --no-capture`.

mod nats;

use std::time::Instant;

use dchan::broker::jetstream::Storage;
use dchan::broker::{Broker, JetStreamBroker, JetStreamConfig, TopicConfig};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn du_kib(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run on purpose"]
async fn per_topic_cost() {
    const N: u64 = 500;
    for storage in [Storage::File, Storage::Memory] {
        let c = nats::Cluster::start(1).await;
        let b = JetStreamBroker::connect(JetStreamConfig {
            servers: c.url_list(),
            storage,
            ..Default::default()
        })
        .await
        .unwrap();
        let pid = c.pid(0).unwrap();
        let (rss0, du0) = (rss_kib(pid), du_kib(c.dir()));
        let t0 = Instant::now();
        for i in 0..N {
            b.create(&format!("t{i}"), TopicConfig::default())
                .await
                .unwrap();
        }
        let create = t0.elapsed() / N as u32;
        let (rss1, du1) = (rss_kib(pid), du_kib(c.dir()));
        let t0 = Instant::now();
        for i in 0..N {
            b.offset(format!("t{i}").as_str().into(), "g")
                .await
                .unwrap();
        }
        let group = t0.elapsed() / N as u32;
        let (rss2, du2) = (rss_kib(pid), du_kib(c.dir()));
        println!(
            "{storage:?} storage, {N} topics: create {create:?}/topic, +{} KiB RSS/topic, +{} KiB disk/topic; \
             first group {group:?}/topic, +{} KiB RSS/group, +{} KiB disk/group",
            (rss1 - rss0) / N,
            du1.saturating_sub(du0) / N,
            (rss2.saturating_sub(rss1)) / N,
            du2.saturating_sub(du1) / N,
        );
    }
}
