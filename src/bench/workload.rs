//! The workloads, written once against the [`System`] traits: rendezvous,
//! the flows (pipe, queue, fanout), conns and backlog.
//!
//! Producers stop pushing after `--secs`; readers then take what is left
//! until every group has every acknowledged message, or until `--drain`
//! passes without it, and whatever is missing then is reported as lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::ledger::{Tally, Verdict};
use super::payload::{self, Stamp};
use super::report::{ProcStat, Report};
use super::{Conn, Options, Reader, Result, System, Workload, Writer};

/// Run one workload against `system` and report it. Errors and losses end
/// up in the report's `error`; the caller decides how loudly to fail.
pub async fn run<S: System>(system: &S, workload: Workload, opts: &Options) -> Report {
    let mut report = Report::new(workload, system.name(), opts);
    if !system.supports(workload) {
        report.error = Some(format!("n/a: {} has no such workload", system.name()));
        return report;
    }
    let result = if opts.size < payload::MIN_SIZE {
        Err(format!("--size must be at least {} bytes", payload::MIN_SIZE).into())
    } else {
        let names = Names::new(&opts.prefix, workload);
        match workload {
            Workload::Rendezvous => rendezvous(system, opts, &names, &mut report).await,
            Workload::Pipe => flow(system, opts, &names, Shape::pipe(opts), &mut report).await,
            Workload::Queue => flow(system, opts, &names, Shape::queue(opts), &mut report).await,
            Workload::Fanout => flow(system, opts, &names, Shape::fanout(opts), &mut report).await,
            Workload::Conns => conns(system, opts, &names, &mut report).await,
            Workload::Backlog => backlog(system, opts, &names, &mut report).await,
        }
    };
    match result {
        Err(e) => report.error = Some(e.to_string()),
        Ok(()) if !report.check.is_clean() => report.error = Some(report.check.describe()),
        Ok(()) => {}
    }
    report
}

/// Topic names unique to this run, so runs against one server never meet.
struct Names {
    base: String,
}

impl Names {
    fn new(prefix: &str, workload: Workload) -> Names {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Names {
            base: format!(
                "{prefix}-{}-{nanos}-{}-{workload:?}",
                std::process::id(),
                RUN.fetch_add(1, Ordering::Relaxed)
            )
            .to_lowercase(),
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.base)
    }
}

/// Rendezvous: each round, the producer pushes to `a` while pulling from `b`;
/// the consumer pulls from `a` and pushes the message back to `b`. The
/// latency is the producer's round trip.
async fn rendezvous<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let (a, b) = (names.topic("a"), names.topic("b"));
    sys.create(&a, 0).await?;
    let answers = if sys.echoes() {
        &a
    } else {
        sys.create(&b, 0).await?;
        &b
    };
    let producer = sys.connect("").await?;
    let (out, back) = (producer.writer(&a).await?, producer.reader(answers).await?);
    let (done, _) = watch::channel(false);
    let mut consumer_task = None;
    let mut consumer_conn = None;
    if !sys.echoes() {
        let conn = sys.connect("").await?;
        let (r, w) = (conn.reader(&a).await?, conn.writer(&b).await?);
        consumer_conn = Some(conn);
        consumer_task = Some(tokio::spawn(echo(r, w, done.subscribe())));
    }

    let epoch = Instant::now();
    let mut tally = Tally::new(opts.size, 0, epoch);
    let stop = stop_after(opts.secs());
    let before = ProcStat::read(opts.server_pid);
    let mut seq = 0;
    let result: Result<()> = async {
        while !stop.load(Ordering::Relaxed) {
            let msg = payload::encode(stamp(0, seq, epoch), opts.size);
            let (pushed, answer) = tokio::join!(out.push(msg), back.pull());
            pushed?;
            let got = tally.record(&answer?)?;
            if got.seq != seq {
                return Err(format!("sent message {seq}, got back {}", got.seq).into());
            }
            seq += 1;
        }
        Ok(())
    }
    .await;
    let elapsed = epoch.elapsed();
    let after = ProcStat::read(opts.server_pid);
    done.send_replace(true);
    if let Some(task) = consumer_task {
        join(task).await?;
    }
    drop(consumer_conn);
    result?;
    report.check = Verdict::of_group(std::slice::from_ref(&tally), &[seq], true);
    report.measured(seq, elapsed, &tally.latency);
    report.server(before, after, seq * 2);
    Ok(())
}

/// The consumer half of a rendezvous: answer each message on the other
/// topic, with the next pull already in flight while the answer goes out.
async fn echo<R: Reader, W: Writer>(from: R, to: W, mut done: watch::Receiver<bool>) -> Result<()> {
    let mut msg = tokio::select! {
        m = from.pull() => m?,
        _ = done.wait_for(|d| *d) => return Ok(()),
    };
    loop {
        let next = async {
            tokio::select! {
                m = from.pull() => Some(m),
                _ = done.wait_for(|d| *d) => None,
            }
        };
        let (pushed, next) = tokio::join!(to.push(msg), next);
        pushed?;
        match next {
            Some(m) => msg = m?,
            None => return Ok(()),
        }
    }
}

/// Who pushes and who pulls in a flow.
struct Shape {
    producers: usize,
    /// Reader groups; the single-group shapes use the default group "".
    groups: usize,
    consumers_per_group: usize,
}

impl Shape {
    fn pipe(_: &Options) -> Shape {
        Shape {
            producers: 1,
            groups: 1,
            consumers_per_group: 1,
        }
    }
    fn queue(o: &Options) -> Shape {
        Shape {
            producers: o.producers.max(1),
            groups: 1,
            consumers_per_group: o.consumers.max(1),
        }
    }
    fn fanout(o: &Options) -> Shape {
        Shape {
            producers: 1,
            groups: o.groups.max(1),
            consumers_per_group: 1,
        }
    }
    fn group_name(&self, g: usize) -> String {
        if self.groups == 1 {
            String::new()
        } else {
            format!("g{g:03}")
        }
    }
}

/// How far one group has got, shared by its readers and the driver.
struct Progress {
    /// Messages the group's readers received so far.
    received: AtomicU64,
    /// How many the group must receive: unknown (u64::MAX) until the
    /// producers stopped.
    target: AtomicU64,
    /// Nanoseconds since the epoch of the latest arrival.
    last_ns: AtomicU64,
    /// Set once the group has everything, or the drain time ran out: the
    /// readers stop.
    done: watch::Sender<bool>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            received: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            done: watch::channel(false).0,
        }
    }

    /// A reader got a message (SeqCst pairs with `expect`, so one of the two
    /// sees the other and the group finishes).
    fn arrived(&self, at_ns: u64) {
        self.last_ns.fetch_max(at_ns, Ordering::Relaxed);
        let got = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if got >= self.target.load(Ordering::SeqCst) {
            self.done.send_replace(true);
        }
    }

    /// The producers stopped, having pushed `total`.
    fn expect(&self, total: u64) {
        self.target.store(total, Ordering::SeqCst);
        if self.received.load(Ordering::SeqCst) >= total {
            self.done.send_replace(true);
        }
    }
}

/// Pipe, queue and fanout: producers push for `--secs`, every group's readers
/// take everything.
async fn flow<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    shape: Shape,
    report: &mut Report,
) -> Result<()> {
    let topic = names.topic("t");
    sys.create(&topic, opts.capacity).await?;
    let depth = opts.depth.max(1) as u64;
    let window = (depth - 1) + (depth - 1) * shape.consumers_per_group as u64;
    let epoch = Instant::now();

    // Readers first, so that every group exists before the first push.
    let mut conns = Vec::new();
    let mut readers = Vec::new();
    for g in 0..shape.groups {
        for _ in 0..shape.consumers_per_group {
            let conn = sys.connect(&shape.group_name(g)).await?;
            readers.push((g, conn.reader(&topic).await?));
            conns.push(conn);
        }
    }
    let mut writers = Vec::new();
    for _ in 0..shape.producers {
        let conn = sys.connect("").await?;
        writers.push(conn.writer(&topic).await?);
        conns.push(conn);
    }

    let progress: Vec<Arc<Progress>> = (0..shape.groups)
        .map(|_| Arc::new(Progress::new()))
        .collect();
    let mut consumers = Vec::new();
    for (g, reader) in readers {
        let tally = Tally::new(opts.size, window, epoch);
        let task = consume(reader, opts.depth.max(1), tally, progress[g].clone(), epoch);
        consumers.push((g, tokio::spawn(task)));
    }

    let before = ProcStat::read(opts.server_pid);
    let start = epoch.elapsed();
    let stop = stop_after(opts.secs());
    let producers: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(id, w)| {
            let task = produce(
                w,
                id as u32,
                opts.size,
                opts.depth.max(1),
                epoch,
                stop.clone(),
            );
            tokio::spawn(task)
        })
        .collect();
    let mut pushed = Vec::new();
    let mut failure = None;
    for p in producers {
        match join(p).await {
            Ok(n) => pushed.push(n),
            Err(e) => {
                failure.get_or_insert(e);
                pushed.push(0);
            }
        }
    }
    let total: u64 = pushed.iter().sum();
    for p in &progress {
        p.expect(total);
    }
    // Wait for every group to have everything, or for the drain time.
    let deadline = tokio::time::Instant::now() + opts.drain();
    for p in &progress {
        let mut done = p.done.subscribe();
        let _ = tokio::time::timeout_at(deadline, done.wait_for(|d| *d)).await;
        p.done.send_replace(true);
    }
    let after = ProcStat::read(opts.server_pid);

    let mut tallies: Vec<Vec<Tally>> = (0..shape.groups).map(|_| Vec::new()).collect();
    for (g, task) in consumers {
        match join(task).await {
            Ok(t) => tallies[g].push(t),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    drop(conns);
    if let Some(e) = failure {
        return Err(e);
    }

    let mut verdict = Verdict::default();
    let mut latency = super::ledger::histogram();
    for group in &tallies {
        verdict.add(&Verdict::of_group(group, &pushed, depth == 1));
        for t in group {
            latency.add(&t.latency).expect("same histogram bounds");
        }
    }
    let last = progress
        .iter()
        .map(|p| p.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let elapsed = Duration::from_nanos(last).saturating_sub(start);
    report.check = verdict;
    report.measured(total, elapsed, &latency);
    report.server(before, after, total * shape.groups as u64);
    Ok(())
}

/// One producer: keep `depth` pushes in flight until told to stop; returns
/// how many were acknowledged (sequence numbers `0..n`).
async fn produce<W: Writer>(
    writer: W,
    id: u32,
    size: usize,
    depth: usize,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let mut seq = 0;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < depth && !stop.load(Ordering::Relaxed) {
            let msg = payload::encode(stamp(id, seq, epoch), size);
            in_flight.push(writer.push(msg));
            seq += 1;
        }
        match in_flight.next().await {
            Some(r) => r?,
            None => return Ok(seq),
        }
    }
}

/// One reader: keep `depth` pulls in flight until its group is done.
async fn consume<R: Reader>(
    reader: R,
    depth: usize,
    mut tally: Tally,
    progress: Arc<Progress>,
    epoch: Instant,
) -> Result<Tally> {
    let mut done = progress.done.subscribe();
    let mut pulls = FuturesUnordered::new();
    for _ in 0..depth {
        pulls.push(reader.pull());
    }
    loop {
        tokio::select! {
            biased;
            _ = done.wait_for(|d| *d) => return Ok(tally),
            Some(msg) = pulls.next() => {
                tally.record(&msg?)?;
                progress.arrived(epoch.elapsed().as_nanos() as u64);
                pulls.push(reader.pull());
            }
        }
    }
}

/// Conns: `--conns` connections each blocked in a read on its own topic,
/// then one push to each from one connection.
async fn conns<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let n = opts.conns;
    let topics: Vec<String> = (0..n).map(|i| names.topic(&format!("c{i}"))).collect();
    let parallel = 64;
    futures_util::stream::iter(&topics)
        .map(|t| sys.create(t, 0))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let opened: Vec<(S::Conn, <S::Conn as Conn>::Reader)> = futures_util::stream::iter(&topics)
        .map(|t| async move {
            let conn = sys.connect("").await?;
            let reader = conn.reader(t).await?;
            Ok::<_, super::Error>((conn, reader))
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let writer_conn = sys.connect("").await?;
    let mut writers = Vec::with_capacity(n);
    for t in &topics {
        writers.push(writer_conn.writer(t).await?);
    }

    let epoch = Instant::now();
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let mut conns = Vec::with_capacity(n);
    for (conn, reader) in opened {
        conns.push(conn);
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let msg = reader.pull().await;
            let _ = arrivals.send((msg, epoch.elapsed()));
        });
    }
    drop(arrivals);
    // Let every read reach the server and block there.
    tokio::time::sleep(Duration::from_millis(500 + n as u64 / 10)).await;
    let blocked = ProcStat::read(opts.server_pid);

    let before = ProcStat::read(opts.server_pid);
    let start = epoch.elapsed();
    let pushes = writers.iter().enumerate().map(|(i, w)| {
        let msg = payload::encode(stamp(0, i as u64, epoch), opts.size);
        w.push(msg)
    });
    futures_util::stream::iter(pushes)
        .buffer_unordered(opts.depth.max(parallel))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;

    let mut tally = Tally::new(opts.size, n as u64, epoch);
    let mut last = start;
    let deadline = tokio::time::Instant::now() + opts.drain();
    while tally.received < n as u64 {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some((msg, at))) => {
                tally.record(&msg?)?;
                last = last.max(at);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let after = ProcStat::read(opts.server_pid);
    drop(conns);
    report.check = Verdict::of_group(std::slice::from_ref(&tally), &[n as u64], false);
    let elapsed = last.saturating_sub(start);
    report.measured(tally.received, elapsed, &tally.latency);
    report.server(before, after, n as u64);
    if let Some(b) = blocked {
        report.server_rss_mib = Some((b.rss_bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0);
    }
    report.deliver_all_ms = Some((elapsed.as_secs_f64() * 1e5).round() / 100.0);
    Ok(())
}

/// Backlog: `--count` messages pushed with a group that takes none of them,
/// the server's memory measured, then all drained and checked.
async fn backlog<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let topic = names.topic("t");
    let count = opts.count;
    sys.create(&topic, count).await?;
    let reader_conn = sys.connect("").await?;
    let reader = reader_conn.reader(&topic).await?;
    let writer_conn = sys.connect("").await?;
    let writer = writer_conn.writer(&topic).await?;

    let epoch = Instant::now();
    let before = ProcStat::read(opts.server_pid);
    let depth = opts.depth.max(64);
    let pushes =
        (0..count).map(|seq| writer.push(payload::encode(stamp(0, seq, epoch), opts.size)));
    futures_util::stream::iter(pushes)
        .buffer_unordered(depth)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let full = ProcStat::read(opts.server_pid);

    let progress = Arc::new(Progress::new());
    progress.expect(count);
    let tally = Tally::new(opts.size, (depth - 1) as u64 * 2, epoch);
    let task = tokio::spawn(consume(reader, depth, tally, progress.clone(), epoch));
    let _ = tokio::time::timeout(opts.drain(), progress.done.subscribe().wait_for(|d| *d)).await;
    progress.done.send_replace(true);
    let tally = join(task).await?;
    let after = ProcStat::read(opts.server_pid);
    drop((reader_conn, writer_conn));

    report.check = Verdict::of_group(std::slice::from_ref(&tally), &[count], false);
    let elapsed = Duration::from_nanos(progress.last_ns.load(Ordering::Relaxed));
    report.measured(count, elapsed, &tally.latency);
    report.server(before, after, count);
    if let (Some(b), Some(f)) = (before, full) {
        let grown = f.rss_bytes as f64 - b.rss_bytes as f64;
        report.overhead_bytes_per_msg = Some((grown / count as f64 - opts.size as f64).round());
        report.server_rss_mib = Some((f.rss_bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0);
    }
    Ok(())
}

fn stamp(producer: u32, seq: u64, epoch: Instant) -> Stamp {
    Stamp {
        producer,
        seq,
        sent_ns: epoch.elapsed().as_nanos() as u64,
    }
}

/// A flag that turns true after `d`.
fn stop_after(d: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Wait for a task, turning a panic into an error.
async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await
        .map_err(|e| format!("benchmark task failed: {e}"))?
}
