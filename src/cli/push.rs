//! `dchan push TOPIC [MSG]...`: push each MSG, or each line of standard
//! input, over one open data file.

use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;

use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use dchan::client::{Framing, Pusher};

use super::{ConnArgs, Failure, on_signal, parse_timeout, stop_or_after};

const HELP: &str = "\
Each MSG is one message; with none, every line of standard input is one
(a standard input closed outright, `<&-`, is a failure, not an empty one).
A newline is added to a message that does not end with one (so a
line-framed topic gets one message each, and a write-framed topic keeps
the newline; a MSG with newlines inside is several messages on a
line-framed topic). A MSG is taken as bytes, as the shell passes it (UTF-8
or not), as a line of standard input is. Messages go out one at a time, in
order, over one open data file. On a write-framed topic a message must fit
one 9P write (msize - 24 bytes: about 1 MiB against dchan's default); a
longer one is refused, and nothing of it pushed. Each push waits as a writer of the topic's
data file does: for a reader when its capacity is 0, for room otherwise.

Interrupted (Ctrl-C, SIGINT or SIGTERM) once connected, the write in
flight is flushed and the server's answer awaited: a message the server
took counts as pushed, and the command ends with \"interrupted (N
pushed)\" and status 130 (143 for SIGTERM). (A MSG of several lines, or
one longer than a write, of which the server took a part, is finished
first.) A second signal kills it at once, with no such count.

Once connected, a failed push's error ends with \"(N pushed)\": the first
N messages (MSGs, or lines of standard input) went out, the one after them
and the rest did not, so pushing again from message N+1 duplicates
nothing. Only if the connection was lost (\"connection lost\") may more
have gone out: the write that was in flight, which is message N+1 for
MSGs, but for standard input every line of one 9P write (up to msize - 24
bytes of lines: thousands of short ones). A server that crashed keeps
what it had written of them, so a resume from N+1 can repeat those.

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
    if args.msgs.is_empty()
        && let Some(why) = super::unusable(0)
    {
        return Err(failed(0, format!("standard input is {why}")));
    }
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
    // From here a signal lets the push in flight end truthfully.
    let stop = CancellationToken::new();
    let signalled = on_signal(stop.clone());
    let code = || signalled.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
    let interrupted = |pushed: u64| failed(pushed, "interrupted".into()).with_code(code());
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
        if stop.is_cancelled() {
            return Err(interrupted(*pushed));
        }
        match pusher.push_unless(msg, stop_or_after(&stop, limit)).await {
            Ok(true) => {
                *pushed += 1;
                Ok(())
            }
            Ok(false) if stop.is_cancelled() => Err(interrupted(*pushed)),
            Ok(false) => Err(failed(*pushed, "timed out".into())),
            Err(e) => Err(failed(*pushed, e.to_string())),
        }
    };
    // Lines of standard input to a line-framed topic, with no --timeout,
    // go out many to a Twrite (see `batched`).
    let batch = args.timeout.is_none() && pusher.framing() == Some(Framing::Line);
    if args.msgs.is_empty() && batch {
        pushed = batched(&pusher, pushed, &stop).await.map_err(|(n, why)| {
            match stop.is_cancelled() {
                true => interrupted(n),
                false => failed(n, why),
            }
        })?;
    } else if args.msgs.is_empty() {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            // Waiting for input, a signal ends it at once.
            let read = tokio::select! {
                r = stdin.read_until(b'\n', &mut line) => r,
                _ = stop.cancelled() => return Err(interrupted(pushed)),
            };
            let n = read.map_err(|e| {
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

/// The lines of standard input, pushed in batches: a thread reads
/// standard input (each read(2) takes what is there, up to [`CHUNK`]) and
/// hands on its whole lines; each batch is one or more Twrites, one in
/// flight at a time, so the lines go out in order while the thread reads
/// on. A batch goes as soon as the read that made it returns: a pause in
/// the input sends what came before it. The last line, if it lacks a
/// newline, gets one. Returns the count pushed, or that count and why the
/// rest was not.
async fn batched(
    pusher: &Pusher,
    mut pushed: u64,
    stop: &CancellationToken,
) -> Result<u64, (u64, String)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    std::thread::spawn(move || read_lines(tx));
    loop {
        // Waiting for input, a signal ends it at once.
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = stop.cancelled() => return Err((pushed, "interrupted".into())),
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| {
            let why = dchan::client::io_reason(&e);
            (pushed, format!("read standard input: {why}"))
        })?;
        if stop.is_cancelled() {
            return Err((pushed, "interrupted".into()));
        }
        let (n, done) = pusher
            .push_lines_unless(terminated(chunk), stop.cancelled())
            .await;
        pushed += n;
        done.map_err(|e| (pushed, e.to_string()))?;
    }
    Ok(pushed)
}

/// The most one read of standard input takes.
const CHUNK: usize = 256 << 10;

/// Read standard input, sending on each read's whole lines (and at the end
/// the last line, unterminated); an error ends it.
fn read_lines(tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() - buf.len() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        let start = buf.len();
        let room = CHUNK.min(buf.capacity() - start);
        buf.resize(start + room, 0);
        let n = match stdin.read(&mut buf[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                buf.truncate(start);
                continue;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        buf.truncate(start + n);
        if n == 0 && room > 0 {
            if !buf.is_empty() {
                let _ = tx.blocking_send(Ok(buf.split().freeze()));
            }
            return;
        }
        if let Some(nl) = memchr::memrchr(b'\n', &buf[start..]) {
            let lines = buf.split_to(start + nl + 1).freeze();
            if tx.blocking_send(Ok(lines)).is_err() {
                return;
            }
        }
    }
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
