//! What a `/metrics` scrape costs with many topics (issue 11): a release
//! `dchan serve --metrics` with `SCRAPE_TOPICS` topics (10 000 by
//! default), each with `SCRAPE_GROUPS` reader groups (2) and one held
//! message; then `SCRAPE_RUNS` scrapes (21) over HTTP, each timed, with
//! its size; and meanwhile, one topic's status read (`dchan stat`'s walk,
//! open, read, clunk) timed in a loop, against the same loop with no
//! scrape, to show what a scrape does to the broker's other clients.
//!
//! `cargo build --release && cargo bench --bench scrape` (the server is
//! `DCHAN_BIN`, default `target/release/dchan`). Prints medians.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dchan::client::{Client, Options, TopicSettings};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn scrape(port: u16) -> (Duration, usize) {
    let start = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: dchan\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    sock.read_to_end(&mut body).await.unwrap();
    (start.elapsed(), body.len())
}

/// Status reads of `topic`, timed, until `stop`.
async fn stats(client: &Client, topic: &str, stop: impl Fn() -> bool) -> Vec<f64> {
    let mut out = Vec::new();
    while !stop() {
        let start = Instant::now();
        client.ctl(topic).await.unwrap();
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out
}

#[tokio::main]
async fn main() {
    let topics = env("SCRAPE_TOPICS", 10_000);
    let groups = env("SCRAPE_GROUPS", 2);
    let runs = env("SCRAPE_RUNS", 21);
    let bin = std::env::var("DCHAN_BIN").unwrap_or_else(|_| "target/release/dchan".into());
    let mut server = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "tcp!127.0.0.1!0",
            "--metrics",
            "tcp!127.0.0.1!0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start DCHAN_BIN");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (mut addr, mut mport) = (None, None);
    while addr.is_none() || mport.is_none() {
        let line = lines.next().expect("server output").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.to_string());
        } else if let Some(p) = line.strip_prefix("metrics on tcp!127.0.0.1!") {
            mport = Some(p.parse::<u16>().unwrap());
        }
    }
    let (addr, mport) = (addr.unwrap(), mport.unwrap());

    let client = Client::connect(&addr, &Options::default()).await.unwrap();
    let names: Vec<String> = (0..topics).map(|i| format!("scrape-t{i}")).collect();
    let settings = TopicSettings {
        capacity: Some(10),
        ..TopicSettings::default()
    };
    client
        .create_all(&names, &settings)
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    futures_util::stream::iter(&names)
        .for_each_concurrent(64, |t| {
            let client = &client;
            async move { client.push(t, &b"held"[..]).await.unwrap() }
        })
        .await;
    for g in 0..groups {
        let reader = Client::connect(&addr, &Options::group(format!("g{g}")))
            .await
            .unwrap();
        futures_util::stream::iter(&names)
            .for_each_concurrent(64, |t| {
                let reader = &reader;
                async move {
                    reader.offset(t).await.unwrap();
                }
            })
            .await;
    }

    // Status reads alone, for the baseline.
    let until = Instant::now() + Duration::from_secs(2);
    let mut alone = stats(&client, "scrape-t0", || Instant::now() > until).await;
    // Scrapes, one after another, while status reads go on.
    let done = std::sync::atomic::AtomicBool::new(false);
    let scraping = async {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let (t, n) = scrape(mport).await;
            times.push(t.as_secs_f64() * 1e3);
            size = n;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (times, size)
    };
    let reading = stats(&client, "scrape-t0", || {
        done.load(std::sync::atomic::Ordering::Relaxed)
    });
    let ((mut times, size), mut during) = tokio::join!(scraping, reading);
    println!(
        "topics {topics}, groups {groups} each: scrape p50 {:.1} ms (min {:.1}, max {:.1}), {} bytes ({:.0} per topic); \
         a topic's status read p50 {:.0} µs alone, {:.0} µs during scrapes (max {:.0} µs)",
        median(&mut times),
        times[0],
        times[times.len() - 1],
        size,
        size as f64 / topics as f64,
        median(&mut alone),
        median(&mut during),
        during.last().copied().unwrap_or(0.0),
    );
    let _ = server.kill();
    let _ = server.wait();
}
