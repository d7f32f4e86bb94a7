//! `dchan push TOPIC [MSG]...`: push each MSG, or each line of standard
//! input, over one open data file.

use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ConnArgs, Context, Failure, parse_duration};

const HELP: &str = "\
Each MSG is one message; with none, every line of standard input is one.
A newline is added to a message that does not end with one (so a
line-framed topic gets one message each, and a write-framed topic keeps
the newline; a MSG with newlines inside is several messages on a
line-framed topic). Messages go out one at a time, in order, over one
open data file. Each push waits as a writer of the topic's data file does:
for a reader when its capacity is 0, for room otherwise.

Examples:
  dchan push jobs 'resize a.png' 'resize b.png'
  find . -name '*.png' | dchan push jobs
  dchan push --timeout 5s jobs urgent || echo 'nobody took it'";

#[derive(Args)]
#[command(after_help = HELP)]
pub struct PushArgs {
    /// The topic, e.g. jobs or metrics/eu.
    pub topic: String,
    /// The messages; none: read lines from standard input.
    pub msgs: Vec<String>,
    /// Give up on a push that waited this long (e.g. 5s); it is withdrawn,
    /// unless the server took it as time ran out: then it counts as pushed.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: PushArgs) -> Result<(), Failure> {
    let what = || format!("push {}", args.topic);
    let client = args.conn.connect().await?;
    let pusher = client.open_push(&args.topic).await.what(what)?;
    let push = async |msg: Bytes| -> Result<(), Failure> {
        // The timeout flushes the Twrite and waits for the server's verdict
        // (push_timeout): a push the server took as time ran out is not
        // reported "timed out", which would have the user push it twice.
        match args.timeout {
            None => pusher.push(msg).await.what(what),
            Some(t) => pusher.push_timeout(msg, t).await.what(what),
        }
    };
    if args.msgs.is_empty() {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            let n = stdin
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| Failure::new("read standard input", dchan::client::io_reason(&e)))?;
            if n == 0 {
                break;
            }
            push(terminated(line.into())).await?;
        }
    } else {
        for msg in &args.msgs {
            push(terminated(Bytes::copy_from_slice(msg.as_bytes()))).await?;
        }
    }
    pusher.close().await.what(what)
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
