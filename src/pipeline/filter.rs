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
//! 1`) has finished: as in sh, the rest of its input is read and dropped,
//! so the stages before it do not wait for ever.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::ahead::Ahead;
use super::pgroup::{Proc, own_group};
use super::spec::Stage;
use super::stage::{Next, StageRun, next_ahead};
use crate::client::Pusher;

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
                match next_ahead(run, from, || out_done.load(Relaxed)).await? {
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
            let r = loop {
                match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = to.push(Bytes::copy_from_slice(&buf[..n])).await {
                            drop(stdout);
                            break Err(format!("{label}: push output: {e}"));
                        }
                    }
                }
            };
            out_done.store(true, Relaxed);
            r
        };
        let (fed, drained): (Result<Feed, String>, _) = tokio::join!(feed, drain);
        drained?;
        let fed = fed?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("{label}: wait: {e}"))?;
        match fed {
            Feed::End | Feed::Stop => {
                if !status.success() {
                    tracing::warn!("{label}: exited with {status}");
                    run.died(&status);
                }
                return Ok(matches!(fed, Feed::End));
            }
            Feed::Died(_) if status.success() => {
                // Finished early (head): drop the rest of the input.
                loop {
                    match next_ahead(run, from, || false).await? {
                        Next::Msg(_) => continue,
                        Next::End => return Ok(true),
                        Next::Stop => return Ok(false),
                    }
                }
            }
            Feed::Died(m) => {
                run.died(&status);
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
