//! A *filter* copy: one long-running process, the stage's messages written
//! to its stdin as they come, its stdout pushed to the next topic in big
//! writes (the topic is line-framed: the server cuts the lines, and joins
//! a line split across two writes).
//!
//! A process that dies before its input ended is started again (at most
//! `attempts` times per copy). What that can lose or repeat: the copy
//! reads in batches (every whole line there is, up to one read's count,
//! see `stage::reader_options`), and a batch is acknowledged when the copy
//! reads the next one, which is once it was written into the process's
//! stdin pipe, not once the process answered. So the lines the process had
//! taken in but not yet written out (read ahead, or buffered in its own
//! stdout, as a C program does when its stdout is a pipe) are lost with
//! it; the batch the copy was writing when the process died is given
//! whole to the new process, not lost (its lines the dead process had
//! answered are then repeated). A line the process wrote only in part is
//! finished by the new process's first line. A copy killed as a whole (its
//! connection lost) gives back its last, unacknowledged batch to the group
//! (each of its Treads in flight, with several replicas): those lines are
//! not lost, and the ones of them the process had already answered and
//! the copy pushed are repeated; the batches acknowledged before it, still
//! in the process's stdin pipe or buffers, are lost with the process.
//!
//! A process that exits with status 0 before its input ended (`head -n
//! 1`) has finished, and ends its stage as in sh: the stage's input is
//! closed, so the stages before it stop as a process writing into a pipe
//! whose reader exited (their pushes fail; see `stage::closed`), and so
//! does `dchan run`'s reading of its standard input; what was left in
//! the input is dropped. A copy whose push fails so (the next stage ended
//! early) kills its process (as SIGPIPE would) and closes its own input
//! in turn. Neither is a failure.
//!
//! A process that exits by itself once its input ended gives its exit
//! status as its answer (`grep` that matched nothing: 1), not a failure;
//! the run's status is made of them as sh's `pipefail` (see `run`). One
//! killed by a signal then has died (lines it held may be lost).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::ahead::Ahead;
use super::pgroup::{Proc, own_group};
use super::spec::Stage;
use super::stage::{Next, StageRun, closed, next_ahead, piped, tell_death};
use crate::client::{Client, Pusher};

/// Start the stage's command with its stdin and stdout piped to us, in a
/// process group of its own (killed whole if we drop it, see `pgroup`).
/// It finds the stage's name in `$DCHAN_STAGE`
/// and which copy runs it in `$DCHAN_COPY` (`PID.N`: dchan's process id
/// and the copy's number there).
pub(super) fn spawn(stage: &Stage, copy: &str) -> std::io::Result<Proc> {
    let argv = stage.argv();
    let mut cmd = Command::new(&argv[0]);
    own_group(&mut cmd)
        .args(&argv[1..])
        .env("DCHAN_STAGE", &stage.name)
        .env("DCHAN_COPY", copy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(Proc)
}

/// How feeding one process ended.
enum Feed {
    /// The input ended (closed and drained).
    End,
    /// Told to stop.
    Stop,
    /// The process stopped taking input; the message it did not take.
    Died(Option<Bytes>),
}

/// Run the stage's processes over the input until it ends (true) or the
/// copy is stopped (false).
pub(super) async fn run(
    run: &StageRun,
    copy: &str,
    client: &Client,
    from: &mut Ahead,
    to: &Pusher,
) -> Result<bool, String> {
    let label = run.label();
    let mut held: Option<Bytes> = None;
    let mut deaths = 0;
    loop {
        let mut child =
            spawn(&run.stage, copy).map_err(|e| format!("{label}: cannot start: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let out_done = AtomicBool::new(false);
        let feed = async {
            let mut stdin = stdin; // dropped on return: the process sees its input end
            if let Some(m) = held.take()
                && stdin.write_all(&m).await.is_err()
            {
                return Ok(Feed::Died(Some(m)));
            }
            loop {
                match next_ahead(run, client, from, || out_done.load(Relaxed)).await? {
                    Next::Msg(m) => {
                        if stdin.write_all(&m).await.is_err() {
                            return Ok(Feed::Died(Some(m)));
                        }
                    }
                    Next::End => return Ok(Feed::End),
                    Next::Stop if out_done.load(Relaxed) => return Ok(Feed::Died(None)),
                    Next::Stop => {
                        // The reads in flight may bring messages: they are ours.
                        let left = from.finish().await;
                        let left = left.map_err(|e| format!("{}: read input: {e}", run.label()))?;
                        for m in left {
                            if stdin.write_all(&m).await.is_err() {
                                tracing::warn!(
                                    "{}: a message lost: the process stopped reading",
                                    run.label()
                                );
                            }
                        }
                        return Ok(Feed::Stop);
                    }
                }
            }
        };
        let drain = async {
            // Owned here: dropped when a push fails, so the process, whose
            // output has nowhere to go, dies of SIGPIPE (and stops taking
            // input) as in a pipe whose reader went away.
            let mut stdout = stdout;
            let mut buf = vec![0u8; 1 << 16];
            // Ok(true): the next stage ended early (our output is closed).
            let r = loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break Ok(false),
                    Ok(n) => match to.push(Bytes::copy_from_slice(&buf[..n])).await {
                        Ok(()) => {}
                        Err(e) if closed(&e) => break Ok(true),
                        Err(e) => break Err(format!("{label}: push output: {e}")),
                    },
                }
            };
            drop(stdout);
            out_done.store(true, Relaxed);
            r
        };
        let (fed, drained): (Result<Feed, String>, _) = tokio::join!(feed, drain);
        if drained? {
            // As SIGPIPE: the process, and the stages before.
            child.kill();
            let _ = child.wait().await;
            piped(run, client).await;
            return Ok(true);
        }
        let fed = fed?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("{label}: wait: {e}"))?;
        match fed {
            Feed::End | Feed::Stop => {
                if run.ended(&status) {
                    tell_death(run, client, copy, &status.to_string()).await;
                }
                return Ok(matches!(fed, Feed::End));
            }
            Feed::Died(_) if status.success() => {
                // Finished early (head): the stages before stop, and what
                // is left of the input is dropped.
                piped(run, client).await;
                loop {
                    match next_ahead(run, client, from, || false).await? {
                        Next::Msg(_) => continue,
                        Next::End => return Ok(true),
                        Next::Stop => return Ok(false),
                    }
                }
            }
            Feed::Died(m) => {
                run.died(&status);
                tell_death(run, client, copy, &status.to_string()).await;
                deaths += 1;
                if deaths > run.stage.attempts {
                    let attempts = run.stage.attempts;
                    return Err(format!(
                        "{label}: gave up (it may restart {attempts} times)"
                    ));
                }
                tracing::warn!("{label}: exited with {status} before its input ended; restarting");
                held = m;
            }
        }
    }
}
