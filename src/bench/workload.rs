//! The workloads, written once against the [`System`] traits: rendezvous,
//! the flows (pipe, queue, fanout), conns and backlog.
//!
//! Each run first warms up untimed (`--warmup` messages per producer
//! through the same connections, so every system's connections, buffers and
//! dchan's pool of open data files are in place), then times its window.
//! Producers stop pushing after `--secs`; readers then take what is left for
//! as long as messages keep arriving (`--drain` of silence ends it, and
//! `--drain-max` in all, from the moment the producers are told to stop).
//! The groups still missing messages then ask the system, all at once,
//! what it holds for them: those held are unfinished, only the rest
//! lost. Rates count what was delivered. Every topic the run made is
//! removed at the end.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::ledger::{Tally, Verdict};
use super::payload::{self, Stamp};
use super::report::{ProcStat, Report};
use super::{Conn, Options, Reader, Result, System, Workload, Writer};

/// Run one workload against `system` and report it. Errors and losses end
/// up in the report's `error`; the caller decides how loudly to fail.
pub async fn run<S: System>(system: &S, workload: Workload, opts: &Options) -> Report {
    run_until(system, workload, opts, std::future::pending()).await
}

/// How long removing the run's topics may take once the run was
/// interrupted (or a signal came during the removal).
const CLEANUP_AFTER_INTERRUPT: Duration = Duration::from_secs(5);

/// [`run`], ended early when `cancel` finishes with a reason (`"SIGINT"`):
/// the workers stop, the topics the run made are removed (for at most
/// [`CLEANUP_AFTER_INTERRUPT`]), and the report says `interrupted`, with
/// its error and no rate. A panic in the workload is an error, and the
/// topics are removed too.
pub async fn run_until<S: System>(
    system: &S,
    workload: Workload,
    opts: &Options,
    cancel: impl Future<Output = String>,
) -> Report {
    let mut report = Report::new(workload, system.name(), opts);
    report.variant = system.variant();
    if !system.supports(workload) {
        report.error = Some(format!("n/a: {} has no such workload", system.name()));
        return report;
    }
    let names = Names::new(&opts.prefix, workload);
    let work = async {
        if opts.size < payload::MIN_SIZE {
            return Err(format!("--size must be at least {} bytes", payload::MIN_SIZE).into());
        }
        opts.check(workload)?;
        let report = &mut report;
        match workload {
            Workload::Rendezvous => rendezvous(system, opts, &names, report).await,
            Workload::Pipe => flow(system, opts, &names, Shape::pipe(opts), report).await,
            Workload::Queue => flow(system, opts, &names, Shape::queue(opts), report).await,
            Workload::Fanout => flow(system, opts, &names, Shape::fanout(opts), report).await,
            Workload::Conns => conns(system, opts, &names, report).await,
            Workload::Backlog => backlog(system, opts, &names, report).await,
            Workload::Topics => Err("n/a: the topics workload runs in dchan bench only".into()),
        }
    };
    tokio::pin!(cancel);
    let mut interrupted = None;
    let result: Result<()> = tokio::select! {
        r = AssertUnwindSafe(work).catch_unwind() => match r {
            Ok(r) => r,
            Err(panic) => Err(format!("benchmark panicked: {}", panic_text(&panic)).into()),
        },
        why = &mut cancel => {
            interrupted = Some(why);
            Ok(())
        }
    };
    let cleanup = match interrupted {
        Some(_) => names.remove_within(system, CLEANUP_AFTER_INTERRUPT).await,
        None => tokio::select! {
            r = names.remove_all(system) => r,
            why = &mut cancel => {
                interrupted = Some(why);
                names.remove_within(system, CLEANUP_AFTER_INTERRUPT).await
            }
        },
    };
    if let Some(why) = interrupted {
        // Whatever the workload measured so far is no result.
        let mut bare = Report::new(workload, system.name(), opts);
        bare.variant = report.variant.take();
        bare.error = Some(match cleanup {
            Ok(()) => format!("interrupted by {why}"),
            Err(e) => format!("interrupted by {why}; {e}"),
        });
        bare.interrupted = Some(why);
        return bare;
    }
    match result.and(cleanup) {
        Err(e) => report.error = Some(e.to_string()),
        Ok(()) if !report.check.is_clean() => report.error = Some(report.check.describe()),
        Ok(()) => {}
    }
    report
}

/// The text of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}

/// A spawned worker, aborted when dropped: an interrupted run's workers
/// stop with it.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T> {
    Task(tokio::spawn(f))
}

/// Topic names unique to this run, so runs against one server never meet,
/// and the topics it made, to remove at the end.
struct Names {
    base: String,
    /// Every topic `create` made. A parking_lot mutex, never held across
    /// an `.await`.
    created: Mutex<Vec<String>>,
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
            created: Mutex::new(Vec::new()),
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.base)
    }

    /// Make topic `suffix` with `capacity`, remembering it for removal.
    async fn create<S: System>(&self, sys: &S, suffix: &str, capacity: u64) -> Result<String> {
        let topic = self.topic(suffix);
        self.created.lock().push(topic.clone());
        sys.create(&topic, capacity).await?;
        Ok(topic)
    }

    /// Remove every topic this run made; the first failure, if any.
    async fn remove_all<S: System>(&self, sys: &S) -> Result<()> {
        let topics = std::mem::take(&mut *self.created.lock());
        let results: Vec<Result<()>> = futures_util::stream::iter(&topics)
            .map(|t| sys.remove(t))
            .buffer_unordered(64)
            .collect()
            .await;
        let failed = results.into_iter().filter_map(|r| r.err()).count();
        match failed {
            0 => Ok(()),
            n => Err(format!("cleanup: {n} of {} topics not removed", topics.len()).into()),
        }
    }

    /// [`Names::remove_all`], given up after `limit`.
    async fn remove_within<S: System>(&self, sys: &S, limit: Duration) -> Result<()> {
        let count = self.created.lock().len();
        match tokio::time::timeout(limit, self.remove_all(sys)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "cleanup: removing {count} topics took longer than {limit:?}; some are left"
            )
            .into()),
        }
    }
}

/// Rendezvous: each round, the producer pushes to `a` while pulling from `b`;
/// the consumer pulls from `a` and pushes the message back to `b`. The
/// latency is the producer's round trip. `--warmup` rounds go untimed first.
async fn rendezvous<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let start_mem = ProcStat::read(opts.server_pid);
    let a = names.create(sys, "a", 0).await?;
    let b = if sys.echoes() {
        a.clone()
    } else {
        names.create(sys, "b", 0).await?
    };
    let producer = sys.connect("").await?;
    let (out, back) = (producer.writer(&a).await?, producer.reader(&b).await?);
    let (done, _) = watch::channel(false);
    let mut consumer_task = None;
    let mut consumer_conn = None;
    if !sys.echoes() {
        let conn = sys.connect("").await?;
        let (r, w) = (conn.reader(&a).await?, conn.writer(&b).await?);
        consumer_conn = Some(conn);
        consumer_task = Some(spawn(echo(r, w, done.subscribe())));
    }

    // The producer runs as a task of its own, as every other workload's
    // producers do: on a worker thread, where the replies' wake-ups stay on
    // one thread, rather than on the thread that blocks on the run.
    let epoch = Instant::now();
    let o = opts.clone();
    let producer_task = spawn(async move {
        let mut tally = Tally::new(o.size, 0, epoch);
        let round = |producer: u32, seq: u64| {
            let msg = payload::encode(stamp(producer, seq, epoch), o.size);
            let (out, back) = (&out, &back);
            async move {
                let (pushed, answer) = tokio::join!(out.push(msg), back.pull());
                pushed?;
                let answer = answer?;
                let got = payload::decode(&answer, o.size)?;
                if (got.producer, got.seq) != (producer, seq) {
                    return Err(format!("sent message {seq}, got back {}", got.seq).into());
                }
                Ok::<_, super::Error>(answer)
            }
        };
        let mut seq = 0;
        let mut before = None;
        let mut start = Duration::ZERO;
        let result: Result<()> = async {
            for w in 0..o.warmup {
                round(payload::WARMUP, w).await?;
            }
            before = ProcStat::read(o.server_pid);
            start = epoch.elapsed();
            let stop = stop_after(o.secs());
            while !stop.load(Ordering::Relaxed) {
                tally.record(&round(0, seq).await?)?;
                seq += 1;
            }
            Ok(())
        }
        .await;
        Ok((tally, seq, before, start, result))
    });
    let (tally, seq, before, start, result) = join(producer_task).await?;
    let elapsed = epoch.elapsed().saturating_sub(start);
    let after = ProcStat::read(opts.server_pid);
    done.send_replace(true);
    if let Some(task) = consumer_task {
        join(task).await?;
    }
    drop(consumer_conn);
    result?;
    report.check = Verdict::of_group(std::slice::from_ref(&tally), &[seq], true);
    report.measured(report.check.delivered(), elapsed, &tally.latency);
    report.server_cpu(before, after, seq * 2);
    report.server_memory(start_mem, after);
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
    /// Timed messages the group's readers received so far.
    received: AtomicU64,
    /// Warm-up messages the group's readers received so far.
    warm: AtomicU64,
    /// How many the group must receive: unknown (u64::MAX) until the
    /// producers stopped.
    target: AtomicU64,
    /// Nanoseconds since the epoch of the latest timed arrival.
    last_ns: AtomicU64,
    /// Set once the driver is done with the group: the readers stop.
    done: watch::Sender<bool>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            received: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            done: watch::channel(false).0,
        }
    }

    /// A reader got a timed message.
    fn arrived(&self, at_ns: u64) {
        self.last_ns.fetch_max(at_ns, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the group has all it must receive.
    fn complete(&self) -> bool {
        self.received.load(Ordering::Relaxed) >= self.target.load(Ordering::Relaxed)
    }
}

/// Wait until `count` (summed over groups) says complete, or stops moving
/// for `idle`, or the deadline `until` passes; whether it got there.
async fn await_count(
    count: impl Fn() -> (u64, bool),
    idle: Duration,
    until: tokio::time::Instant,
) -> bool {
    let (mut seen, mut moved) = (count().0, tokio::time::Instant::now());
    loop {
        let (now, complete) = count();
        if complete {
            return true;
        }
        let t = tokio::time::Instant::now();
        if now != seen {
            (seen, moved) = (now, t);
        }
        if t - moved >= idle || t >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drain, which `began` when the producers were told to stop: wait while
/// every group still gets messages, for `--drain-max` from `began` at
/// most, then for each group missing some, ask the system (all at once)
/// what it still holds. Returns, per group, `None` if complete, else what
/// the system holds (`Some(None)`: cannot say).
async fn drain<S: System>(
    sys: &S,
    topic: &str,
    group_names: &[String],
    progress: &[Arc<Progress>],
    opts: &Options,
    began: tokio::time::Instant,
) -> Vec<Option<Option<u64>>> {
    let count = || {
        let got = progress
            .iter()
            .map(|p| p.received.load(Ordering::Relaxed))
            .sum();
        (got, progress.iter().all(|p| p.complete()))
    };
    await_count(count, opts.drain(), began + opts.drain_max()).await;
    let held = progress.iter().zip(group_names).map(|(p, g)| async move {
        match p.complete() {
            true => None,
            false => Some(sys.pending(topic, g).await),
        }
    });
    futures_util::future::join_all(held).await
}

/// Pipe, queue and fanout: warm up, then producers push for `--secs`, every
/// group's readers take everything.
async fn flow<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    shape: Shape,
    report: &mut Report,
) -> Result<()> {
    let start_mem = ProcStat::read(opts.server_pid);
    let topic = names.create(sys, "t", opts.capacity).await?;
    let depth = opts.depth.max(1);
    // Requests in flight may reorder a producer's messages by up to
    // this many (a batch keeps its own order, but batches may pass).
    let window = (depth as u64 * opts.batch as u64 - 1) * (1 + shape.consumers_per_group as u64);
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
        writers.push(Arc::new(conn.writer(&topic).await?));
        conns.push(conn);
    }

    let progress: Vec<Arc<Progress>> = (0..shape.groups)
        .map(|_| Arc::new(Progress::new()))
        .collect();
    let group_names: Vec<String> = (0..shape.groups).map(|g| shape.group_name(g)).collect();
    let mut consumers = Vec::new();
    for (g, reader) in readers {
        let tally = Tally::new(opts.size, window, epoch);
        let task = consume(reader, depth, opts.batch, tally, progress[g].clone(), epoch);
        consumers.push((g, spawn(task)));
    }

    // Warm-up: the same pushes and pulls, untimed, until every group has
    // every warm-up message (or they stop coming).
    let never = Arc::new(AtomicBool::new(false));
    let warmups = writers.iter().map(|w| {
        produce(
            w.clone(),
            payload::WARMUP,
            Pace::of(opts),
            epoch,
            never.clone(),
            opts.warmup,
        )
    });
    let mut failure = None;
    for r in futures_util::future::join_all(warmups).await {
        if let Err(e) = r {
            failure.get_or_insert(e);
        }
    }
    let warm_target = opts.warmup * shape.producers as u64;
    let warm_count = || {
        let got = progress
            .iter()
            .map(|p| p.warm.load(Ordering::Relaxed))
            .sum();
        (
            got,
            progress
                .iter()
                .all(|p| p.warm.load(Ordering::Relaxed) >= warm_target),
        )
    };
    if failure.is_none() {
        let until = tokio::time::Instant::now() + opts.drain_max();
        await_count(warm_count, opts.drain(), until).await;
    }

    let before = ProcStat::read(opts.server_pid);
    let start = epoch.elapsed();
    // The drain begins when the producers are told to stop: their last
    // pushes, waiting for room, wait on the readers too.
    let stopping = tokio::time::Instant::now() + opts.secs();
    let stop = stop_after(opts.secs());
    let producers: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(id, w)| {
            let task = produce(w, id as u32, Pace::of(opts), epoch, stop.clone(), u64::MAX);
            spawn(task)
        })
        .collect();
    let mut pushed = Vec::new();
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
        p.target.store(total, Ordering::Relaxed);
    }
    let held = drain(sys, &topic, &group_names, &progress, opts, stopping).await;
    for p in &progress {
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
    for (group, held) in tallies.iter().zip(held) {
        let mut v = Verdict::of_group(group, &pushed, depth == 1);
        if let Some(held) = held {
            v.settle(held);
        }
        verdict.add(&v);
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
    let delivered = verdict.delivered();
    report.check = verdict;
    report.measured(delivered / shape.groups as u64, elapsed, &latency);
    report.server_cpu(before, after, delivered);
    report.server_memory(start_mem, after);
    Ok(())
}

/// How a producer pushes: messages of `size` bytes, `batch` to a push,
/// `depth` pushes in flight.
#[derive(Clone, Copy)]
struct Pace {
    size: usize,
    depth: usize,
    batch: usize,
}

impl Pace {
    fn of(opts: &Options) -> Pace {
        Pace {
            size: opts.size,
            depth: opts.depth.max(1),
            batch: opts.batch,
        }
    }
}

/// One producer: keep `depth` pushes in flight until told to stop or
/// `limit` are pushed; returns how many were acknowledged (sequence numbers
/// `0..n`).
async fn produce<W: Writer>(
    writer: Arc<W>,
    id: u32,
    Pace { size, depth, batch }: Pace,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    limit: u64,
) -> Result<u64> {
    let mut seq = 0;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < depth && seq < limit && !stop.load(Ordering::Relaxed) {
            let k = (batch as u64).min(limit - seq);
            let msgs = (seq..seq + k)
                .map(|s| payload::encode(stamp(id, s, epoch), size))
                .collect();
            in_flight.push(writer.push_batch(msgs));
            seq += k;
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
    batch: usize,
    mut tally: Tally,
    progress: Arc<Progress>,
    epoch: Instant,
) -> Result<Tally> {
    let mut done = progress.done.subscribe();
    let mut pulls = FuturesUnordered::new();
    for _ in 0..depth {
        pulls.push(reader.pull_batch(batch));
    }
    loop {
        tokio::select! {
            biased;
            _ = done.wait_for(|d| *d) => return Ok(tally),
            Some(msgs) = pulls.next() => {
                for msg in msgs? {
                    if tally.record(&msg)?.is_warmup() {
                        progress.warm.fetch_add(1, Ordering::Relaxed);
                    } else {
                        progress.arrived(epoch.elapsed().as_nanos() as u64);
                    }
                }
                pulls.push(reader.pull_batch(batch));
            }
        }
    }
}

/// Conns: `--conns` connections each blocked in a read on its own topic,
/// then one push to each from one connection. Untimed set-up (every
/// connection made and its read blocked in the server) is its warm-up.
async fn conns<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let n = opts.conns;
    let start_mem = ProcStat::read(opts.server_pid);
    let parallel = 64;
    let topics: Vec<String> = futures_util::stream::iter(0..n)
        .map(|i| async move { names.create(sys, &format!("c{i}"), 0).await })
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let opened: Vec<(S::Conn, <S::Conn as Conn>::Reader)> = futures_util::stream::iter(&topics)
        .map(|t| async move {
            let conn = sys.connect("").await?;
            let reader = conn.reader(t).await?;
            Ok::<_, super::Error>((conn, reader))
        })
        .buffered(parallel)
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
    // Aborted when dropped, as an interrupted run is.
    let mut pulls = tokio::task::JoinSet::new();
    for (conn, reader) in opened {
        conns.push(conn);
        let arrivals = arrivals.clone();
        pulls.spawn(async move {
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
    let (begin, mut moved) = (tokio::time::Instant::now(), tokio::time::Instant::now());
    while tally.received < n as u64 {
        let deadline = (moved + opts.drain()).min(begin + opts.drain_max());
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some((msg, at))) => {
                tally.record(&msg?)?;
                last = last.max(at);
                moved = tokio::time::Instant::now();
            }
            Ok(None) | Err(_) => break,
        }
    }
    let after = ProcStat::read(opts.server_pid);
    let mut check = Verdict::of_group(std::slice::from_ref(&tally), &[n as u64], false);
    if check.lost > 0 {
        // What the system still holds on the topics whose reader got nothing.
        let got: std::collections::HashSet<u64> =
            (0..n as u64).filter(|&i| tally.has(0, i)).collect();
        let missing = topics
            .iter()
            .enumerate()
            .filter(|(i, _)| !got.contains(&(*i as u64)));
        let held: Vec<Option<u64>> = futures_util::stream::iter(missing)
            .map(|(_, t)| sys.pending(t, ""))
            .buffer_unordered(parallel)
            .collect()
            .await;
        check.settle(held.into_iter().sum());
    }
    drop((pulls, conns));
    let elapsed = last.saturating_sub(start);
    report.measured(check.delivered(), elapsed, &tally.latency);
    report.check = check;
    report.server_cpu(before, after, n as u64);
    report.server_memory(start_mem, blocked);
    report.deliver_all_ms = Some((elapsed.as_secs_f64() * 1e5).round() / 100.0);
    Ok(())
}

/// Backlog: `--count` messages pushed with a group that takes none of them,
/// the server's memory growth measured, then all drained and checked. The
/// warm-up pushes and drains `--warmup` messages through the same topic
/// first.
async fn backlog<S: System>(
    sys: &S,
    opts: &Options,
    names: &Names,
    report: &mut Report,
) -> Result<()> {
    let count = opts.count;
    let start_mem = ProcStat::read(opts.server_pid);
    let topic = names.create(sys, "t", count.max(opts.warmup)).await?;
    let reader_conn = sys.connect("").await?;
    let reader = reader_conn.reader(&topic).await?;
    let writer_conn = sys.connect("").await?;
    let writer = writer_conn.writer(&topic).await?;

    let epoch = Instant::now();
    let depth = opts.reader_depth(Workload::Backlog);
    let writer = &writer;
    let push_all = |producer: u32, n: u64| {
        let pushes = (0..n)
            .map(move |seq| writer.push(payload::encode(stamp(producer, seq, epoch), opts.size)));
        futures_util::stream::iter(pushes)
            .buffer_unordered(depth)
            .collect::<Vec<_>>()
    };
    push_all(payload::WARMUP, opts.warmup)
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let warm: Vec<Result<bytes::Bytes>> = futures_util::stream::iter(0..opts.warmup)
        .map(|_| reader.pull())
        .buffer_unordered(depth)
        .collect()
        .await;
    for msg in warm {
        if !payload::decode(&msg?, opts.size)?.is_warmup() {
            return Err("a timed message arrived during the warm-up".into());
        }
    }

    let before = ProcStat::read(opts.server_pid);
    push_all(0, count)
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let full = ProcStat::read(opts.server_pid);

    let progress = Arc::new(Progress::new());
    progress.target.store(count, Ordering::Relaxed);
    let tally = Tally::new(opts.size, (depth - 1) as u64 * 2, epoch);
    let task = spawn(consume(reader, depth, 1, tally, progress.clone(), epoch));
    let held = drain(
        sys,
        &topic,
        &[String::new()],
        std::slice::from_ref(&progress),
        opts,
        tokio::time::Instant::now(),
    )
    .await;
    progress.done.send_replace(true);
    let tally = join(task).await?;
    let after = ProcStat::read(opts.server_pid);
    drop((reader_conn, writer_conn));

    let mut check = Verdict::of_group(std::slice::from_ref(&tally), &[count], false);
    if let Some(Some(held)) = held.first() {
        check.settle(*held);
    }
    let elapsed = Duration::from_nanos(progress.last_ns.load(Ordering::Relaxed));
    report.measured(check.delivered(), elapsed, &tally.latency);
    report.check = check;
    report.server_cpu(before, after, count);
    report.server_memory(start_mem, full);
    if let (Some(b), Some(f)) = (before, full) {
        let grown = f.rss_bytes as f64 - b.rss_bytes as f64;
        report.overhead_bytes_per_msg = Some((grown / count as f64 - opts.size as f64).round());
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
async fn join<T>(mut task: Task<Result<T>>) -> Result<T> {
    (&mut task.0)
        .await
        .map_err(|e| format!("benchmark task failed: {e}"))?
}
