//! An *each* copy: one process per message, from a warm pool.
//!
//! The message is written to a process's stdin (then closed), its whole
//! stdout becomes one message of the next topic (write-framed, so it may
//! hold many lines; a newline is added if it does not end in one, so that
//! it cannot run into the next message where messages become a stream
//! again: a filter's stdin, the run's output; an empty stdout is no
//! message), and its exit status says whether it worked. Processes are
//! started ahead (`pool` per copy, so at most `replicas × (1 + pool)`
//! processes per stage and machine), held before they execute the command
//! (see `warm`): a message waits for less of a process's start, and one
//! never given a message never runs. A message is acknowledged
//! only after its output was pushed (by the copy's next read): a copy
//! killed mid-message leaves it to another copy, which runs it again (at
//! least once). A message that failed `attempts` times (exit status, a
//! timeout, a command that cannot start) goes untouched to `NAME/K.failed`,
//! with the reason in the log. So does, at once, a message whose output is
//! larger than one message of the next topic can be (one Twrite: about 1
//! MiB, the connection's msize; or the topic's `max_message`): cutting it
//! into several would break "one message per output", and a stage that
//! died of it would stop the whole run for one message.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pgroup::Proc;
use super::spec::dead_letters;
use super::stage::{Next, StageRun, closed, next, piped};
use super::warm::{self, Warm};
use crate::client::{Client, Error, Puller, Pusher};

/// Run messages through the stage's command until the input ends (true)
/// or the copy is stopped (false).
pub(super) async fn run(
    run: &StageRun,
    copy: &str,
    client: &Client,
    from: &mut Puller,
    to: &Pusher,
) -> Result<bool, String> {
    let label = run.label();
    // Forked ahead, held before exec: dropped unused, they never run.
    let mut pool: VecDeque<std::io::Result<Warm>> = VecDeque::new();
    let mut dead: Option<Pusher> = None;
    let ended = loop {
        let msg = match next(run, client, from, || false).await? {
            Next::Msg(m) => m,
            Next::End => break true,
            Next::Stop => break false,
        };
        let mut reason = String::new();
        let mut out = None;
        for _ in 0..run.stage.attempts {
            let child = pool
                .pop_front()
                .unwrap_or_else(|| warm::start(&run.stage, copy))
                .and_then(Warm::go);
            // One fork at a time, letting the runtime in between: a
            // SIGINT or SIGTERM stops the run while the pool fills.
            while pool.len() < run.stage.pool as usize && !run.stop.is_cancelled() {
                pool.push_back(warm::start(&run.stage, copy));
                tokio::task::yield_now().await;
            }
            match one(run, child, &msg).await {
                Ok(o) => {
                    out = Some(o);
                    break;
                }
                Err(why) => reason = why,
            }
        }
        let failed = match out {
            // Wrote nothing: no message (as grep that matched nothing).
            Some(o) if o.is_empty() => None,
            Some(o) => {
                let len = o.len();
                match to.push(o).await {
                    Ok(()) => None,
                    Err(e) if closed(&e) => {
                        // The next stage ended early: stop as by SIGPIPE.
                        piped(run, client).await;
                        break true;
                    }
                    Err(e) if too_large(&e) => Some(format!(
                        "its output, {len} bytes, is larger than one message of the next \
                         topic can be: {e}"
                    )),
                    Err(e) => return Err(format!("{label}: push output: {e}")),
                }
            }
            None => Some(format!(
                "{} attempts, the last: {reason}",
                run.stage.attempts
            )),
        };
        if let Some(why) = failed {
            let topic = dead_letters(&run.name, run.k);
            if dead.is_none() {
                dead = Some(
                    client
                        .open_push(&topic)
                        .await
                        .map_err(|e| format!("{label}: open {topic}: {e}"))?,
                );
            }
            let d = dead.as_ref().expect("opened");
            d.push(msg.clone())
                .await
                .map_err(|e| format!("{label}: push to {topic}: {e}"))?;
            run.dead_lettered();
            tracing::warn!(
                "{label}: a message failed ({why}); put in {topic}: {:?}",
                String::from_utf8_lossy(&msg[..msg.len().min(80)])
            );
        }
    };
    if let Some(d) = dead {
        d.close().await.map_err(|e| format!("{label}: {e}"))?;
    }
    Ok(ended)
}

/// Whether a push was refused for the message's size: larger than one
/// Twrite on a write-framed topic, or than the topic's `max_message`.
fn too_large(e: &Error) -> bool {
    matches!(e, Error::TooLarge { .. }) || e.errno() == Some(crate::fs::errno::EMSGSIZE)
}

/// Run one process over `msg`: its stdout, or why it failed.
async fn one(run: &StageRun, child: std::io::Result<Proc>, msg: &Bytes) -> Result<Bytes, String> {
    let mut child = child.map_err(|e| format!("cannot start: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let work = async {
        let write = async move {
            // A command that does not read its stdin is no failure.
            let _ = stdin.write_all(msg).await;
        };
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let (_, r) = tokio::join!(write, read);
        r.map_err(|e| format!("read its output: {e}"))?;
        let status = child.wait().await.map_err(|e| format!("wait: {e}"))?;
        // One message, ending in a newline whatever the process wrote, so
        // it cannot run into the next where messages become a stream
        // again (a filter's stdin, the run's output).
        if out.last().is_some_and(|&b| b != b'\n') {
            out.push(b'\n');
        }
        match status.success() {
            true => Ok(Bytes::from(out)),
            false => Err(status.to_string()),
        }
    };
    let Some(limit) = run.stage.timeout else {
        return work.await;
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => {
            // The command and whatever it started: nothing of it may
            // act once the message was given up.
            child.kill();
            let _ = child.wait().await;
            Err(format!(
                "timed out after {}",
                humantime::format_duration(limit)
            ))
        }
    }
}
