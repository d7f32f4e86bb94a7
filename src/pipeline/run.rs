//! `dchan run` and `dchan worker`: set a pipeline's topics up, start the
//! copies of its stages, feed standard input in, print the output, and
//! tell what failed.
//!
//! Topics of pipeline NAME with N stages: `NAME/1` … `NAME/N+1` (stage K
//! reads `NAME/K`, writes `NAME/K+1`), `NAME/K.failed` (dead letters),
//! `NAME/K.copies` (the live copies, see `stage`), `NAME/K.died` (a note
//! per filter process that died, on any machine), and `NAME/pipeline`,
//! which holds the pipeline's description (the file format) for workers
//! that join with only its name. A topic written by an *each* stage is
//! write-framed (a message is a whole stdout); the others are line-framed.
//! Every reader of the pipeline reads as the group [`GROUP`], created
//! before anything is pushed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ahead::{AHEAD, Ahead};
use super::progress::Progress;
use super::spec::{GROUP, Kind, Pipeline, copies, dead_letters, deaths, input, spec_topic};
use super::stage::{StageRun, TICK, closed, copy, field, reader_options};
use crate::client::{Client, Error, Framing, Options, TopicSettings};
use futures_util::FutureExt;

/// The group that holds the pipeline's description in `NAME/pipeline`
/// (it never reads, so the message stays for every worker's own group).
const HOLD: &str = "hold";

/// How a run or a worker ended.
#[derive(Debug, Default)]
pub struct Report {
    /// The signal that stopped the run (SIGINT, SIGTERM), if one did; or
    /// SIGPIPE when standard output's reader went away (`| head`), which
    /// stops a run as it stops a Unix command (but silently, by status 141).
    pub signal: Option<i32>,
    /// What failed, one line each, naming the stage: a copy that could
    /// not go on and why, the messages dead-lettered (how many, where),
    /// the filter processes that died (how often, how). Each failure is
    /// counted once.
    pub failures: Vec<String>,
    /// The filter processes' own answer, as sh's `set -o pipefail` gives
    /// it: the exit status of the last stage (in pipeline order) whose
    /// process exited non-zero by itself after its input ended (`grep`
    /// that matched nothing: 1), 0 if none did. Only of the copies run
    /// here: a worker elsewhere has its own status.
    pub exit: u8,
}

impl Report {
    /// The exit status: 128 + the signal that stopped the run (130 SIGINT,
    /// 143 SIGTERM, 141 standard output's reader gone); else 1 when
    /// something failed (a failure sh has no word for: dead letters, a
    /// process that died, a stage that could not start or go on); else
    /// [`Report::exit`], as sh with pipefail. (2 is bad usage.)
    pub fn status(&self) -> u8 {
        match self.signal {
            Some(sig) => 128 + sig as u8,
            None if !self.failures.is_empty() => 1,
            None => self.exit,
        }
    }

    /// Note what stage `run` lost: `dead` messages dead-lettered and
    /// filter processes `died` (how many, how the last did), on every
    /// machine for a run, here for a worker; and its processes' exit
    /// status (stages noted in order: the last non-zero one stays, as
    /// pipefail).
    fn stage(&mut self, run: &StageRun, dead: u64, died: (u64, String)) {
        let label = run.label();
        if dead > 0 {
            let topic = dead_letters(&run.name, run.k);
            let s = if dead == 1 { "" } else { "s" };
            self.failures.push(format!(
                "{label}: {dead} message{s} failed (tried up to {} times, or an output too \
                 large to pass on; the log says which), put in {topic}",
                run.stage.attempts
            ));
        }
        let exit = run.exit.load(Ordering::Relaxed);
        if exit != 0 {
            self.exit = exit.min(255) as u8;
        }
        let (died, how) = died;
        if died > 0 {
            let s = if died == 1 { "" } else { "s" };
            self.failures.push(format!(
                "{label}: its process died {died} time{s} (last: {how}); \
                 lines it had taken in may be lost"
            ));
        }
    }
}

/// What `dchan run` was asked.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub addr: String,
    pub name: String,
    pub pipeline: Pipeline,
    /// No progress lines even on a terminal.
    pub quiet: bool,
    /// Leave the topics on the server at the end.
    pub keep: bool,
}

fn say(what: &str) -> impl Fn(Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Run a whole pipeline: standard input in, standard output out.
pub async fn run(opts: RunOptions) -> Result<Report, String> {
    let RunOptions {
        addr,
        name,
        pipeline,
        quiet,
        keep,
    } = opts;
    let n = pipeline.stages.len();
    // From here on, SIGINT and SIGTERM stop the run cleanly (below).
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).map_err(|e| format!("signals: {e}"));
    let (mut int, mut term) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    let client = Client::connect(&addr, &reader_options(Kind::Filter))
        .await
        .map_err(say(&format!("connect {addr}")))?;
    set_up(&client, &name, &pipeline).await?;

    let stop = CancellationToken::new();
    let mut copies_set = JoinSet::new();
    let mut runs = Vec::new();
    for (i, stage) in pipeline.stages.iter().enumerate() {
        let run = Arc::new(StageRun::new(
            &addr,
            &name,
            i + 1,
            stage.clone(),
            stop.clone(),
        ));
        for _ in 0..stage.replicas {
            let run = run.clone();
            copies_set.spawn(async move { (run.k, copy(run).await) });
        }
        runs.push(run);
    }
    for (k, stage) in (1..).zip(&pipeline.stages) {
        if stage.replicas == 0 {
            // Said even with -q: else the run seems to hang.
            eprintln!("dchan: run: stage {k} has no copies here; waiting for `dchan worker`");
        }
    }
    let progress = (!quiet).then(|| Progress::start(&addr, &name, &pipeline));
    let feed = tokio::spawn(feed(client_for(&addr).await?, input(&name, 1)));
    let output = input(&name, n + 1);
    // In order unless the last stage has several copies.
    let ahead = match pipeline.stages[n - 1].replicas {
        0 | 1 => 1,
        _ => AHEAD,
    };
    let print = print(&client, &output, ahead);
    tokio::pin!(print);
    let mut report = Report::default();
    let mut printed = None;
    // Whether standard output's reader went away (`| head`).
    let mut gone = false;
    // The stages a copy of which could not go on (could not start, or gave
    // up): the run is cut there, as a pipe whose process died.
    let mut cut: Vec<usize> = Vec::new();
    // Wait for the output's end, noting copies that fail meanwhile (a
    // stage whose copies all broke would never end: stop then).
    while printed.is_none() || !copies_set.is_empty() {
        tokio::select! {
            _ = int.recv() => {
                report.signal = Some(libc::SIGINT);
                break;
            }
            _ = term.recv() => {
                report.signal = Some(libc::SIGTERM);
                break;
            }
            r = &mut print, if printed.is_none() => {
                if r == Ok(true) {
                    // As sh's SIGPIPE: every stage stops, its pushes fail.
                    gone = true;
                    stop.cancel();
                    for k in 1..=n + 1 {
                        let _ = client.close(&input(&name, k)).await;
                    }
                }
                printed = Some(r);
            }
            Some(done) = copies_set.join_next() => match done {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(_))) if gone => {}
                // A stage before a cut one: its pushes failed on the close.
                Ok((k, Err(_))) if cut.iter().any(|&c| c > k) => {}
                Ok((k, Err(why))) => {
                    report.failures.push(why);
                    // As in a pipe whose process died: the stages before it
                    // stop (their pushes fail), the ones after it see the
                    // end of what it had written, and the run ends.
                    cut.push(k);
                    for t in [input(&name, k), input(&name, k + 1), dead_letters(&name, k)] {
                        let _ = client.close(&t).await;
                    }
                }
                Err(e) => report.failures.push(format!("a copy panicked: {e}")),
            },
        }
        if !report.failures.is_empty() && printed.is_none() && copies_set.is_empty() {
            break;
        }
    }
    if report.signal.is_some() {
        // Stop every copy here now (their processes are killed with them:
        // the run is going away, and its topics with it).
        stop.cancel();
        copies_set.abort_all();
        while copies_set.join_next().await.is_some() {}
        report.failures.clear();
    }
    if let Some(p) = progress {
        p.finish().await;
    }
    feed.abort();
    if let Some(Err(why)) = printed {
        report.failures.push(why);
    }
    let mut keep_dead = Vec::new();
    for run in &runs {
        // Dead letters from every machine: the topic counts them.
        let dead = match client.ctl(&dead_letters(&name, run.k)).await {
            Ok(text) => field(&text, "pushed").unwrap_or(0),
            Err(_) => 0,
        };
        if dead > 0 {
            keep_dead.push(run.k);
        }
        report.stage(run, dead, died(&client, run).await);
    }
    if gone {
        // Stopped as by SIGPIPE: what failed on the way out is no failure.
        report.failures.clear();
        report.signal = Some(libc::SIGPIPE);
    }
    if !keep {
        let mut gone = Vec::new();
        for k in 1..=n + 1 {
            gone.push(input(&name, k));
            if k <= n {
                gone.push(copies(&name, k));
                gone.push(deaths(&name, k));
                if !keep_dead.contains(&k) {
                    gone.push(dead_letters(&name, k));
                }
            }
        }
        gone.push(spec_topic(&name));
        for t in gone {
            let _ = client.remove(&t).await;
        }
    }
    Ok(report)
}

/// The filter processes of stage `run` that died on every machine (each
/// copy notes each death in `NAME/K.died`), and how the last one did;
/// this process's own count if the notes cannot be read.
async fn died(client: &Client, run: &StageRun) -> (u64, String) {
    let (here, how) = run.deaths();
    let topic = deaths(&run.name, run.k);
    let noted = match client.ctl(&topic).await {
        Ok(text) => field(&text, "pushed").unwrap_or(0),
        Err(_) => 0,
    };
    if noted <= here {
        return (here, how);
    }
    // One batch read takes every note (see `stage::reader_options`).
    match client.pull(&topic).await {
        Ok(Some(notes)) => {
            let notes = String::from_utf8_lossy(&notes);
            let last = notes.lines().last().unwrap_or_default();
            let how = last.split_once(": ").map_or(last, |(_, how)| how);
            (noted, how.to_string())
        }
        _ => (noted, how),
    }
}

async fn client_for(addr: &str) -> Result<Client, String> {
    Client::connect(addr, &Options::group(GROUP))
        .await
        .map_err(say(&format!("connect {addr}")))
}

/// Create the pipeline's topics and groups, and leave its description.
/// Refused part way (a topic of that name exists), it removes the topics
/// it created, and only those.
async fn set_up(client: &Client, name: &str, p: &Pipeline) -> Result<(), String> {
    let mut made = Vec::new();
    let r = create_all(client, name, p, &mut made).await;
    if r.is_err() {
        for t in made {
            let _ = client.remove(&t).await;
        }
    }
    r
}

/// [`set_up`]'s work, noting in `made` each topic it created.
async fn create_all(
    client: &Client,
    name: &str,
    p: &Pipeline,
    made: &mut Vec<String>,
) -> Result<(), String> {
    let n = p.stages.len();
    let create = async |made: &mut Vec<String>, topic: String, capacity: u64, framing: Framing| {
        let settings = TopicSettings {
            capacity: Some(capacity),
            framing: Some(framing),
            timeout: None,
        };
        let r = client.create(&topic, &settings).await;
        if r.is_ok() {
            made.push(topic.clone());
        }
        r.map_err(|e| match e.to_string() {
            why if why.ends_with("exists") => format!(
                "topic {topic} exists: a pipeline named {name} is running, or was \
                     left behind (--keep, dead letters, a crash); see `dchan ls {name}`, \
                     remove its topics with `dchan rm TOPIC...`, or give another --name"
            ),
            // The server's reason names the topic already.
            why if why.contains(&topic) => why,
            why => format!("create {topic}: {why}"),
        })
    };
    for k in 1..=n + 1 {
        let framing = match k {
            1 => Framing::Line,
            _ if p.stages[k - 2].kind == Kind::Each => Framing::Write,
            _ => Framing::Line,
        };
        let capacity = p
            .stages
            .get(k - 1)
            .map_or(super::spec::DEFAULT_CAPACITY, |s| s.capacity);
        create(made, input(name, k), capacity, framing).await?;
        // The stage's group exists before the first push, so it waits for it.
        client
            .offset(&input(name, k))
            .await
            .map_err(say(&input(name, k)))?;
        if k <= n {
            // Framed as the input, so that a line longer than one Twrite
            // (a line-framed input's message can be) fits there too.
            create(made, dead_letters(name, k), u64::MAX / 2, framing).await?;
            create(made, copies(name, k), 0, Framing::Line).await?;
            // Read by us alone, at the end (see `died`).
            create(made, deaths(name, k), u64::MAX / 2, Framing::Write).await?;
            client
                .offset(&deaths(name, k))
                .await
                .map_err(say(&deaths(name, k)))?;
        }
    }
    let spec = spec_topic(name);
    create(made, spec.clone(), 1, Framing::Write).await?;
    let hold = Client::attach(client.connection(), &Options::group(HOLD))
        .await
        .map_err(say(&spec))?;
    hold.offset(&spec).await.map_err(say(&spec))?;
    let mut described = p.clone();
    described.name = Some(name.to_string());
    client
        .push(&spec, described.to_toml())
        .await
        .map_err(say(&spec))?;
    Ok(())
}

/// Standard input into `topic`, in big writes (the server cuts the
/// lines), then close it. If the first stage closed it first (it ended
/// early, as `head`), stop reading: as a process writing into a pipe whose
/// reader exited, and the process writing into our standard input gets
/// SIGPIPE once we exit.
async fn feed(client: Client, topic: String) -> Result<(), String> {
    let what = say(&topic);
    let pusher = client.open_push(&topic).await.map_err(&what)?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdin
            .read(&mut buf)
            .await
            .map_err(|e| format!("standard input: {e}"))?;
        if n == 0 {
            break;
        }
        match pusher.push(Bytes::copy_from_slice(&buf[..n])).await {
            Ok(()) => {}
            Err(e) if closed(&e) => return Ok(()),
            Err(e) => return Err(what(e)),
        }
    }
    pusher.close().await.map_err(&what)?;
    client.close(&topic).await.map_err(&what)
}

/// Print every message of `topic` until it is closed and drained, with
/// `ahead` reads in flight (1 where the order is promised); true if
/// standard output's reader went away first. Output is buffered and written out when the buffer fills or the
/// next message is not there yet.
async fn print(client: &Client, topic: &str, ahead: usize) -> Result<bool, String> {
    let what = say(topic);
    let mut from = Ahead::open(client, topic, ahead, TICK)
        .await
        .map_err(&what)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 16, tokio::io::stdout());
    let mut gone = false;
    loop {
        // Write out what is buffered when the next message is not there yet
        // (a dropped `Ahead::next` loses nothing).
        let got = match from.next().now_or_never() {
            Some(got) => got,
            None => {
                if out.flush().await.is_err() {
                    gone = true;
                    break;
                }
                from.next().await
            }
        };
        match got {
            Ok(Some(m)) => {
                if out.write_all(&m).await.is_err() {
                    gone = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(Error::TimedOut) => continue,
            Err(e) => return Err(what(e)),
        }
    }
    gone |= out.flush().await.is_err();
    from.finish().await.map_err(&what)?;
    Ok(gone)
}

/// What `dchan worker` was asked.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub addr: String,
    /// The pipeline's name (from the file, or `--pipeline`).
    pub name: String,
    /// The pipeline, if given as a file; else read from `NAME/pipeline`.
    pub pipeline: Option<Pipeline>,
    /// The stage's name or number.
    pub stage: String,
    /// Copies to run here (default: the stage's replicas).
    pub replicas: Option<u32>,
}

/// Join a running pipeline's stage until its input ends, or until
/// SIGTERM or SIGINT (then each copy finishes its message and gives the
/// rest back).
pub async fn worker(opts: WorkerOptions) -> Result<Report, String> {
    let pipeline = match opts.pipeline {
        Some(p) => p,
        None => described(&opts.addr, &opts.name).await?,
    };
    let k = pipeline.stage_named(&opts.stage).ok_or_else(|| {
        format!(
            "pipeline {} has no stage {:?} (it has {})",
            opts.name,
            opts.stage,
            pipeline.stages.len()
        )
    })?;
    let mut stage = pipeline.stages[k - 1].clone();
    stage.replicas = match opts.replicas {
        Some(0) => return Err("--replicas 0: a worker runs at least one copy".into()),
        Some(r) => r,
        // A stage with no copies where `dchan run` runs waits for
        // workers: one copy, unless told.
        None => stage.replicas.max(1),
    };
    let stop = CancellationToken::new();
    let run = Arc::new(StageRun::new(
        &opts.addr,
        &opts.name,
        k,
        stage,
        stop.clone(),
    ));
    let mut set = JoinSet::new();
    for _ in 0..run.stage.replicas {
        set.spawn(copy(run.clone()));
    }
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return None;
        };
        let sig = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        stop.cancel();
        Some(sig)
    });
    let mut report = Report::default();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(why)) => report.failures.push(why),
            Err(e) => report.failures.push(format!("a copy panicked: {e}")),
        }
    }
    signals.abort();
    // Stopped by a signal, the worker says so by its status (130, 143),
    // once its copies finished their messages.
    if let Ok(Some(sig)) = signals.await {
        report.signal = Some(sig);
    }
    report.stage(&run, run.dead.load(Ordering::Relaxed), run.deaths());
    Ok(report)
}

/// The description `dchan run` left in `NAME/pipeline`, read as a group of
/// our own (then forgotten), so it stays for the next worker.
async fn described(addr: &str, name: &str) -> Result<Pipeline, String> {
    let topic = spec_topic(name);
    let group = format!("worker-{}", std::process::id());
    let client = Client::connect(addr, &Options::group(group.clone()))
        .await
        .map_err(say(&format!("connect {addr}")))?;
    let text = match client.pull(&topic).await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(format!("pipeline {name} has ended")),
        Err(Error::NoTopic(_)) => return Err(format!("no pipeline {name} running there")),
        Err(e) => return Err(format!("{topic}: {e}")),
    };
    let _ = client.ctl_write(&topic, &format!("forget {group}")).await;
    let text = String::from_utf8_lossy(&text);
    Pipeline::from_toml(&topic, &text)
}
