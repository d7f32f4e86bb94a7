//! How fast the in-memory broker moves messages on its own (no 9P): a pipe
//! (capacity 1024, one producer, one consumer), a rendezvous (capacity 0),
//! and a fan-out to 16 groups. Prints one line per workload.
//!
//! `cargo bench --bench broker_speed -- [MESSAGES]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dchan::broker::{Broker, Delivery, MemoryBroker, TopicConfig, Wait};

async fn pipe(name: &str, capacity: u64, groups: usize, n: u64) {
    let broker = Arc::new(MemoryBroker::new());
    let config = TopicConfig {
        capacity,
        ..TopicConfig::default()
    };
    broker.create("t", config).unwrap();
    for g in 0..groups {
        broker.offset("t", &g.to_string()).unwrap();
    }
    let start = Instant::now();
    let mut readers = Vec::new();
    for g in 0..groups {
        let broker = broker.clone();
        readers.push(tokio::spawn(async move {
            let group = g.to_string();
            for i in 0..n {
                let d = broker
                    .pull("t", &group, Wait::Block)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(d.data()[..8], i.to_le_bytes());
                d.ack();
            }
        }));
    }
    let payload = [7u8; 64];
    for i in 0..n {
        let mut m = payload;
        m[..8].copy_from_slice(&i.to_le_bytes());
        broker
            .push("t", Bytes::copy_from_slice(&m), Wait::Block)
            .await
            .unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name}: {n} messages x {groups} group(s) in {secs:.3}s: {:.0} msg/s pushed, {:.0} delivered/s",
        n as f64 / secs,
        (n * groups as u64) as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench` too: take the first number.
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    pipe("pipe", 1024, 1, n).await;
    pipe("rendezvous", 0, 1, n / 10).await;
    pipe("fanout", 1024, 16, n / 10).await;
}
