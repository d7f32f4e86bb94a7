//! One copy of a stage: its own connection, reading the stage's input
//! topic as the group [`GROUP`] (so copies share the work), writing the
//! next topic, and the end of stream.
//!
//! End of stream. A copy holds the stage's `K.copies` topic open for
//! reading while it works (it never reads it: the server counts it in the
//! topic's `readers`, and forgets it when its connection goes, however the
//! copy ends). A copy that saw its input end pushes what it has, closes
//! its files, and then, if `K.copies` has no reader left, closes the
//! stage's output topic (and its dead letters, `K.failed`). The server orders those closes, so the last copy
//! to finish always sees 0: the close travels down the pipeline once every
//! copy on every machine is done, and never before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ahead::{AHEAD, Ahead};
use super::spec::{GROUP, Kind, Stage, copies, dead_letters, deaths, input};
use super::{each, filter};
use crate::client::{Client, Error, Options, Puller, Pusher};

/// How often a copy waiting for a message looks whether it should stop.
pub(super) const TICK: Duration = Duration::from_millis(500);

/// How often a copy that read the end of its input, while its group still
/// had messages out with other copies, looks again (see [`next`]).
const SETTLE: Duration = Duration::from_millis(100);

/// What the copies of one stage share in one process.
#[derive(Debug)]
pub struct StageRun {
    /// The server.
    pub addr: String,
    /// The pipeline's name.
    pub name: String,
    /// The stage's 1-based number.
    pub k: usize,
    pub stage: Stage,
    /// Cancelled to stop: copies finish their message, give back the rest.
    pub stop: CancellationToken,
    /// Messages dead-lettered by the copies in this process.
    pub dead: AtomicU64,
    /// Filter processes that died here (a signal, or a non-zero exit),
    /// restarted or not, and how the last one did.
    pub died: AtomicU64,
    pub last_death: std::sync::Mutex<String>,
    /// The status of a filter process that exited by itself, not 0, once
    /// its input had ended (`grep` that matched nothing: 1), as sh gives
    /// it: its answer, not a failure (the highest, with several copies).
    pub exit: AtomicU32,
    /// Copies started here so far: numbers them.
    pub started: AtomicU64,
}

impl StageRun {
    /// "stage 2 (grep x)" for logs.
    pub fn label(&self) -> String {
        format!("stage {} ({})", self.stage.name, self.stage.command)
    }

    /// A message went to the dead letters.
    pub(super) fn dead_lettered(&self) {
        self.dead.fetch_add(1, Ordering::Relaxed);
    }

    /// A filter process died (`how`: its exit status).
    pub(super) fn died(&self, how: &std::process::ExitStatus) {
        self.died.fetch_add(1, Ordering::Relaxed);
        *self.last_death.lock().expect("not poisoned") = how.to_string();
    }

    /// Filter processes that died here, and how the last one did.
    pub fn deaths(&self) -> (u64, String) {
        let how = self.last_death.lock().expect("not poisoned").clone();
        (self.died.load(Ordering::Relaxed), how)
    }

    /// A filter process ended after its input did, with `how`: a signal
    /// is a death (lines it held may be lost; true), an exit status its
    /// answer.
    pub(super) fn ended(&self, how: &std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match how.code() {
            Some(0) => false,
            Some(code) => {
                self.exit.fetch_max(code as u32, Ordering::Relaxed);
                false
            }
            None if how.signal() == Some(libc::SIGPIPE) => false,
            None => {
                tracing::warn!("{}: {how}", self.label());
                self.died(how);
                true
            }
        }
    }

    /// A new stage's shared state.
    pub fn new(addr: &str, name: &str, k: usize, stage: Stage, stop: CancellationToken) -> Self {
        StageRun {
            addr: addr.to_string(),
            name: name.to_string(),
            k,
            stage,
            stop,
            dead: Default::default(),
            died: Default::default(),
            last_death: Default::default(),
            exit: Default::default(),
            started: Default::default(),
        }
    }
}

/// Run one copy until its input ends (or it is told to stop).
pub async fn copy(run: Arc<StageRun>) -> Result<(), String> {
    let what = |e: Error| format!("{}: {e}", run.label());
    let n = run.started.fetch_add(1, Ordering::Relaxed) + 1;
    let me = format!("{}.{n}", std::process::id());
    let client = Client::connect(&run.addr, &reader_options(run.stage.kind))
        .await
        .map_err(what)?;
    let member = client
        .open_data(&copies(&run.name, run.k))
        .await
        .map_err(what)?;
    let topic = input(&run.name, run.k);
    let to = client
        .open_push(&input(&run.name, run.k + 1))
        .await
        .map_err(what)?;
    let ended = match run.stage.kind {
        Kind::Filter => {
            let ahead = match run.stage.replicas {
                1 => 1,
                _ => AHEAD,
            };
            let mut from = Ahead::open(&client, &topic, ahead, TICK)
                .await
                .map_err(what)?;
            let ended = filter::run(&run, &me, &client, &mut from, &to).await?;
            close_output(to).await.map_err(what)?;
            from.finish().await.map_err(what)?;
            ended
        }
        Kind::Each => {
            let mut from = client.open_data(&topic).await.map_err(what)?;
            let ended = each::run(&run, &me, &client, &mut from, &to).await?;
            close_output(to).await.map_err(what)?;
            // Acknowledge the last message only now that its output is out.
            from.close().await.map_err(what)?;
            ended
        }
    };
    member.close().await.map_err(what)?;
    if ended
        && readers(&client, &copies(&run.name, run.k))
            .await
            .map_err(what)?
            == 0
    {
        // The stage's dead letters end with it too, so `cat` of them ends.
        for t in [input(&run.name, run.k + 1), dead_letters(&run.name, run.k)] {
            client.close(&t).await.map_err(what)?;
        }
    }
    Ok(())
}

/// Close a copy's output (the clunk pushes an unterminated last line, as
/// a filter's output cut at a write's end has). Refused because the next
/// stage closed the topic (it ended early, as `head`), that line had
/// nowhere to go: as SIGPIPE, not a failure.
async fn close_output(to: Pusher) -> Result<(), Error> {
    match to.close().await {
        Err(e) if closed(&e) => Ok(()),
        r => r,
    }
}

/// How a reader of a stage's input connects. A filter, and the printer of
/// the output, turn messages into one stream of bytes, so they read in
/// batches (`GROUP:batch`): one Tread takes every whole message there is,
/// up to the count, and the next Tread acknowledges the whole batch. An
/// *each* stage reads one message at a time, since it acknowledges each
/// only once its output was pushed (a batch is acknowledged whole, and
/// joins multi-line messages). Either way one Tread a read (the client's
/// `:short` sessions).
pub(super) fn reader_options(kind: Kind) -> Options {
    let o = Options::group(GROUP);
    match kind {
        Kind::Filter => o.batch(),
        Kind::Each => o,
    }
}

/// The topic's `readers` count, from its ctl.
pub(super) async fn readers(client: &Client, topic: &str) -> Result<u64, Error> {
    let text = client.ctl(topic).await?;
    Ok(field(&text, "readers").unwrap_or(0))
}

/// The number after `key ` on a line of a ctl text.
pub(super) fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The stage's group in its input topic: messages not yet taken (`lag`,
/// with those given back) and taken but not acknowledged (`unacked`).
pub(super) async fn group(client: &Client, topic: &str) -> Result<GroupLine, Error> {
    Ok(group_line(&client.ctl(topic).await?))
}

/// One group's line of a topic's ctl text.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct GroupLine {
    pub offset: u64,
    pub lag: u64,
    pub unacked: u64,
}

/// The line of [`GROUP`] in a topic's ctl text (zeros if it has none).
pub(super) fn group_line(ctl: &str) -> GroupLine {
    let prefix = format!("group {GROUP:?} ");
    let Some(line) = ctl.lines().find_map(|l| l.strip_prefix(&prefix)) else {
        return GroupLine::default();
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |key| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0)
    };
    GroupLine {
        offset: get("offset"),
        lag: get("lag"),
        unacked: get("unacked"),
    }
}

/// Whether the end of input a copy just read is the stage's end: its
/// group has nothing left to take and nothing out with another copy. A
/// message out with a copy that dies (a `dchan worker` killed) comes back
/// to the group, and one of the copies still here must take it: so no
/// copy leaves, and the stage's output is not closed, while any is out.
async fn drained(run: &StageRun, client: &Client) -> Result<bool, String> {
    let g = group(client, &input(&run.name, run.k))
        .await
        .map_err(|e| format!("{}: read input's state: {e}", run.label()))?;
    Ok(g.lag == 0 && g.unacked == 0)
}

/// Tell whoever runs the pipeline that a filter process of copy `copy`
/// died (`how`): one message in `NAME/K.died` (see `run`), on top of this
/// process's own count and log. Best effort: the death is logged here
/// whatever happens to the note.
pub(super) async fn tell_death(run: &StageRun, client: &Client, copy: &str, how: &str) {
    let topic = deaths(&run.name, run.k);
    if let Err(e) = client.push(&topic, format!("{copy}: {how}\n")).await {
        tracing::debug!("{}: note the death in {topic}: {e}", run.label());
    }
}

/// Whether a push failed because its topic was closed: the next stage
/// ended early (as `head` does) and closed its input, or the run was cut
/// there. As a write into a pipe whose reader exited (EPIPE, SIGPIPE).
pub(super) fn closed(e: &Error) -> bool {
    e.errno() == Some(crate::fs::errno::EPIPE)
        || matches!(e, Error::Server { message, .. } if message.contains("topic closed"))
}

/// The next stage stopped reading (its input is closed): stop as a process
/// killed by SIGPIPE, and stop the stages before this one the same way, by
/// closing this stage's input (their pushes fail in turn).
pub(super) async fn piped(run: &StageRun, client: &Client) {
    tracing::debug!("{}: the next stage ended early; stopping", run.label());
    let _ = client.close(&input(&run.name, run.k)).await;
}

/// [`next`] over an [`Ahead`].
pub(super) async fn next_ahead(
    run: &StageRun,
    client: &Client,
    from: &mut Ahead,
    gone: impl Fn() -> bool,
) -> Result<Next, String> {
    loop {
        if run.stop.is_cancelled() || gone() {
            return Ok(Next::Stop);
        }
        match from.next().await {
            Ok(Some(m)) => return Ok(Next::Msg(m)),
            Ok(None) if drained(run, client).await? => return Ok(Next::End),
            Ok(None) => {
                tokio::time::sleep(SETTLE).await;
                from.resume();
            }
            Err(Error::TimedOut) => continue,
            Err(e) => return Err(format!("{}: read input: {e}", run.label())),
        }
    }
}

/// What waiting for the next message gave.
pub(super) enum Next {
    Msg(bytes::Bytes),
    End,
    Stop,
}

/// The next message, looking every [`TICK`] whether to stop (or whether
/// `gone` says the consumer went away). `next_timeout` flushes and waits
/// for the server's verdict, so giving up loses nothing. The end of input
/// is [`Next::End`] only once the stage's group is drained (see
/// [`drained`]); till then the copy reads again, now and then.
pub(super) async fn next(
    run: &StageRun,
    client: &Client,
    from: &mut Puller,
    gone: impl Fn() -> bool,
) -> Result<Next, String> {
    loop {
        if run.stop.is_cancelled() || gone() {
            return Ok(Next::Stop);
        }
        match from.next_timeout(TICK).await {
            Ok(Some(m)) => return Ok(Next::Msg(m)),
            Ok(None) if drained(run, client).await? => return Ok(Next::End),
            Ok(None) => tokio::time::sleep(SETTLE).await,
            Err(Error::TimedOut) => continue,
            Err(e) => return Err(format!("{}: read input: {e}", run.label())),
        }
    }
}
