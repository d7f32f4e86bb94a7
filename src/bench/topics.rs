//! The `topics` workload of `dchan bench`: what a topic costs when there
//! are many (dchan only; the peers' driver reports it as not applicable).
//!
//! On one connection: a one-topic status read (`dchan stat`'s walk, open,
//! read and clunk of `NAME/ctl`) timed with 10 topics; then `--count`
//! topics (default 1 000 000) created, many `create` lines to a write of
//! the root ctl as `dchan create A B C…` does (the create rate); the
//! server's resident memory per idle topic; the same status read timed
//! again among them all; one read of the whole root `topics` listing, as
//! `dchan ls` reads it (checked to hold every topic); and the removal of
//! all of them, the same way (the remove rate). The topics are flat names,
//! `PREFIX-tN`.

use std::future::Future;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::report::ProcStat;
use super::{Options, Result};
use crate::client::{Client, TopicSettings};

/// How many status reads are timed at each size.
const STATS: usize = 2000;

/// One result of the topics workload: the JSON line `dchan bench topics`
/// prints.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TopicsReport {
    pub workload: &'static str,
    pub system: &'static str,
    /// Topics made (`--count`).
    pub topics: u64,
    /// Topics created per second through one connection.
    pub create_per_sec: f64,
    /// Topics removed per second through one connection.
    pub remove_per_sec: f64,
    /// The server's resident memory growth per idle topic, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_topic: Option<f64>,
    /// The server's resident memory with every topic made, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// Median µs of one topic's status read with 10 topics, and with all.
    pub stat_p50_us_at_10: f64,
    pub stat_p50_us_at_all: f64,
    /// Seconds to read the whole `topics` listing, as `dchan ls` does.
    pub ls_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

impl TopicsReport {
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a report serializes")
        );
    }
}

/// How many names one `create_all`/`remove_all` call takes (each is many
/// writes of the root ctl; this only bounds the names held at once).
const CHUNK: usize = 100_000;

/// Run the workload on `client`, ended early (and cleaned up) when
/// `cancel` finishes with a reason.
pub async fn run(
    client: &Client,
    opts: &Options,
    cancel: impl Future<Output = String>,
) -> TopicsReport {
    let mut report = TopicsReport {
        workload: "topics",
        system: "dchan",
        topics: opts.count,
        ..TopicsReport::default()
    };
    let name = |i: u64| format!("{}-t{i}", opts.prefix);
    let made = std::sync::atomic::AtomicU64::new(0);
    let outcome = tokio::select! {
        r = measure(client, opts, &name, &made, &mut report) => Ok(r),
        why = cancel => Err(why),
    };
    let result = match outcome {
        Ok(r) => r,
        Err(why) => {
            report.interrupted = Some(why.clone());
            Err(format!("interrupted by {why}").into())
        }
    };
    // Whatever was made goes, however the run ended.
    let made = made.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let removed = remove(client, (0..made).map(name)).await;
    if result.is_ok() && removed.is_ok() && made > 0 {
        report.remove_per_sec = (made as f64 / start.elapsed().as_secs_f64()).round();
    }
    if let Err(e) = result.and(removed) {
        report.error = Some(e.to_string());
    }
    report
}

async fn measure(
    client: &Client,
    opts: &Options,
    name: &impl Fn(u64) -> String,
    made: &std::sync::atomic::AtomicU64,
    report: &mut TopicsReport,
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let few = 10.min(opts.count);
    create(client, (0..few).map(name)).await?;
    made.store(few, Relaxed);
    report.stat_p50_us_at_10 = stat_p50(client, few, name).await?;
    let before = ProcStat::read(opts.server_pid);
    let start = Instant::now();
    let mut i = few;
    while i < opts.count {
        let end = (i + CHUNK as u64).min(opts.count);
        create(client, (i..end).map(name)).await?;
        made.store(end, Relaxed);
        i = end;
    }
    let secs = start.elapsed().as_secs_f64();
    if opts.count > few {
        report.create_per_sec = ((opts.count - few) as f64 / secs).round();
    }
    let after = ProcStat::read(opts.server_pid);
    if let (Some(b), Some(a)) = (before, after) {
        let grown = a.rss_bytes as f64 - b.rss_bytes as f64;
        report.server_rss_mib = Some((a.rss_bytes as f64 / (1 << 20) as f64).round());
        if opts.count > few {
            report.rss_bytes_per_topic = Some((grown / (opts.count - few) as f64).round());
        }
    }
    report.stat_p50_us_at_all = stat_p50(client, opts.count, name).await?;
    let start = Instant::now();
    let text = client.topics_file().await?;
    report.ls_secs = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let listed = text.lines().skip(1).count() as u64;
    if listed < opts.count {
        return Err(format!("the topics file lists {listed} topics of {}", opts.count).into());
    }
    Ok(())
}

/// Median µs of [`STATS`] status reads of topics spread over the first `n`.
async fn stat_p50(client: &Client, n: u64, name: &impl Fn(u64) -> String) -> Result<f64> {
    let mut hist = Histogram::<u64>::new(3)?;
    // A fixed stride over the names: the same topics each run, all over
    // the map.
    let stride = 7_919;
    for k in 0..STATS as u64 {
        let topic = name(k * stride % n);
        let start = Instant::now();
        client.ctl(&topic).await?;
        hist.record(start.elapsed().as_nanos() as u64)?;
    }
    Ok((hist.value_at_quantile(0.5) as f64 / 100.0).round() / 10.0)
}

async fn create(client: &Client, names: impl Iterator<Item = String>) -> Result<()> {
    let names: Vec<String> = names.collect();
    client
        .create_all(&names, &TopicSettings::default())
        .await
        .map_err(|(n, e)| format!("create: {e} ({n} created)").into())
}

async fn remove(client: &Client, names: impl Iterator<Item = String>) -> Result<()> {
    let mut names = names.peekable();
    while names.peek().is_some() {
        let chunk: Vec<String> = names.by_ref().take(CHUNK).collect();
        client
            .remove_all(&chunk)
            .await
            .map_err(|(n, e)| -> super::Error { format!("remove: {e} ({n} removed)").into() })?;
    }
    Ok(())
}
