//! `dchan push TOPIC [MSG]...`: push each MSG, or each line of standard
//! input, over one open data file.

use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ConnArgs, Failure, parse_timeout};

const HELP: &str = "\
Each MSG is one message; with none, every line of standard input is one.
A newline is added to a message that does not end with one (so a
line-framed topic gets one message each, and a write-framed topic keeps
the newline; a MSG with newlines inside is several messages on a
line-framed topic). A MSG is taken as bytes, as the shell passes it (UTF-8
or not), as a line of standard input is. Messages go out one at a time, in
order, over one open data file. On a write-framed topic a message must fit
one 9P write (msize - 24 bytes: about 1 MiB against dchan's default); a
longer one is refused, and nothing of it pushed. Each push waits as a writer of the topic's
data file does: for a reader when its capacity is 0, for room otherwise.

Once connected, a failed push's error ends with \"(N pushed)\": the first
N messages (MSGs, or lines of standard input) went out, the one after them
and the rest did not, so pushing again from message N+1 duplicates
nothing. Only if the connection was lost (\"connection lost\") may message
N+1 have gone out too.

Examples:
  dchan push jobs 'resize a.png' 'resize b.png'
  find . -name '*.png' | dchan push jobs
  dchan push --timeout 5s jobs urgent || echo 'nobody took it'
  dchan push jobs a b c                on \"dchan: push jobs: timed out (1 pushed)\",
                                       a went out: push b and c again";

#[derive(Args)]
#[command(after_help = HELP)]
pub struct PushArgs {
    /// The topic, e.g. jobs or metrics/eu.
    pub topic: String,
    /// The messages; none: read lines from standard input.
    #[arg(value_parser = clap::value_parser!(std::ffi::OsString))]
    pub msgs: Vec<std::ffi::OsString>,
    /// Give up on a push that waited this long (e.g. 5s; not 0; left out: wait
    /// for ever); it is withdrawn, unless the server took it as time ran
    /// out: then it counts as pushed. Connecting and opening the topic
    /// count against the first MSG's wait (they too must end within it).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: PushArgs) -> Result<(), Failure> {
    let what = || format!("push {}", args.topic);
    // A failure says how many went out before it, for a script to resume.
    let failed =
        |pushed: u64, why: String| Failure::new(what(), format!("{why} ({pushed} pushed)"));
    // Connecting and opening the data file count against --timeout too,
    // and never take longer than --connect-timeout.
    let start = std::time::Instant::now();
    let setup = async {
        let client = args.conn.connect().await?;
        let pusher = client
            .open_push(&args.topic)
            .await
            .map_err(|e| failed(0, e.to_string()))?;
        Ok((client, pusher))
    };
    let limit = args.timeout.map_or(args.conn.connect_timeout, |t| {
        t.min(args.conn.connect_timeout)
    });
    let (_client, pusher) = match tokio::time::timeout(limit, setup).await {
        Ok(done) => done?,
        Err(_) => {
            let limit = humantime::format_duration(limit);
            return Err(failed(0, format!("timed out after {limit}")));
        }
    };
    // The first MSG has what setup left of --timeout; a line of standard
    // input, which may come much later, the whole of it.
    let first = match args.msgs.is_empty() {
        true => args.timeout,
        false => args.timeout.map(|t| t.saturating_sub(start.elapsed())),
    };
    let mut pushed = 0u64;
    let push = async |msg: Bytes, pushed: &mut u64| -> Result<(), Failure> {
        // The timeout flushes the Twrite and waits for the server's verdict
        // (push_timeout): a push the server took as time ran out is not
        // reported "timed out", which would have the user push it twice.
        let limit = if *pushed == 0 { first } else { args.timeout };
        let done = match limit {
            None => pusher.push(msg).await,
            Some(t) => pusher.push_timeout(msg, t).await,
        };
        match done {
            Ok(()) => {
                *pushed += 1;
                Ok(())
            }
            Err(e) => Err(failed(*pushed, e.to_string())),
        }
    };
    if args.msgs.is_empty() {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            let n = stdin.read_until(b'\n', &mut line).await.map_err(|e| {
                let why = dchan::client::io_reason(&e);
                failed(pushed, format!("read standard input: {why}"))
            })?;
            if n == 0 {
                break;
            }
            push(terminated(line.into()), &mut pushed).await?;
        }
    } else {
        use std::os::unix::ffi::OsStrExt;
        for msg in &args.msgs {
            let msg = Bytes::copy_from_slice(msg.as_bytes());
            push(terminated(msg), &mut pushed).await?;
        }
    }
    pusher
        .close()
        .await
        .map_err(|e| failed(pushed, e.to_string()))
}

/// `msg` ending in a newline.
fn terminated(msg: Bytes) -> Bytes {
    if msg.ends_with(b"\n") {
        return msg;
    }
    let mut m = BytesMut::with_capacity(msg.len() + 1);
    m.extend_from_slice(&msg);
    m.extend_from_slice(b"\n");
    m.freeze()
}
