//! `dchan pull TOPIC [-n N] [--follow]`: print messages as they come, over
//! one open data file. Into a pipe, a message is taken only once the
//! pipe's reader has read it (see [`read_out_of_pipe`]).

use std::io::Write;
use std::sync::atomic::Ordering;

use clap::Args;
use dchan::client::{Client, Options, Puller};
use tokio_util::sync::CancellationToken;

use super::{ConnArgs, Context, Failure, on_signal, parse_timeout, stop_or_after, within};

const HELP: &str = "\
Output: each message as it is, followed by a newline if it does not end
with one (--raw: exactly as it is). Messages are printed as they arrive.

Exit status: 0 when N messages were printed, or with --follow when the
topic was closed and drained; 1 when the topic was closed before N
messages came (\"topic closed\"), on a timeout, or on any other failure.
If standard output goes away (`| head` has had enough), the message that
could not be printed goes back to the topic for the next reader, and the
status is 1 (\"standard output: broken pipe\"). When standard output is a
pipe or FIFO, each message is taken only once the reader has read it out
of the pipe: pull waits for the pipe to empty before asking for the next
message (or exiting), and a message the reader left unread in the pipe
when it went away goes back too. So `dchan pull jobs -n 10 | head -n 3`
takes exactly 3; the next pull gets the 4th. With standard output closed
(`>&-`) or open only for reading, pull takes nothing and fails.

Interrupted (Ctrl-C, SIGINT or SIGTERM) once connected, a wait for a
message is flushed and the server's answer awaited (a message that came
anyway is printed); a message being printed is finished (into a pipe:
until its reader has read it, or gone away). Then what was printed is
acknowledged, and the command ends with \"interrupted (N printed)\" and
status 130 (143 for SIGTERM): the next reader gets the next message, not
the last one printed again (on servers sharing JetStream, one it had
not printed may come back only after the ack wait: README, \"More than
one machine\"). A second signal kills it at once; then
what it printed since its last acknowledgement (its last message, or
its last batch, see Batches) may come back, as it
does when its server dies mid-read.

Batches. With --follow, pull takes every message waiting at once (as
many as fit one read, about 1 MiB), printing them in one go: one request
per batch rather than per message. Into a pipe or FIFO it does so only
with --batch: its reader may then read a whole batch out of the pipe at
once. A batch left partly unread in the pipe goes back whole (its read
part comes again), but a batch the reader read out of the pipe is
taken, whatever the reader did with it: `pull --follow --batch | head
-n 3` takes a whole batch and head prints 3 of it. So use --batch with a
reader that uses all it reads (gzip, wc, a file). Without --batch, a
pipe gets one message at a time, each taken only once read (above).

Into a pipe, a pull waiting for a message ends once the pipe's reader
has gone (status 1, \"standard output: its reader went away\"), as
`tail -f` does, taking nothing more.

Examples:
  dchan pull jobs                      one message
  dchan pull jobs -n 10                ten messages
  dchan pull jobs --follow | worker    until the topic is closed
  dchan pull logs --follow --batch | gzip >logs.gz    fast: in batches
  dchan pull jobs --timeout 30s        give up after 30 seconds (nothing is taken)
  while msg=$(dchan pull jobs); do echo \"got $msg\"; done";

#[derive(Args)]
#[command(after_help = HELP)]
pub struct PullArgs {
    /// The topic, e.g. jobs or metrics/eu.
    pub topic: String,
    /// How many messages to print.
    #[arg(short = 'n', long = "count", default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Print messages until the topic is closed.
    #[arg(long, short, conflicts_with = "count")]
    pub follow: bool,
    /// Print messages exactly as they are, adding no newline.
    #[arg(long)]
    pub raw: bool,
    /// With --follow into a pipe: take messages in batches (see below).
    #[arg(long, requires = "follow")]
    pub batch: bool,
    /// Give up waiting for a message after this long (e.g. 30s; not 0; left
    /// out: wait for ever); nothing is taken then, and a message that came
    /// as time ran out is printed, not lost. Connecting and opening the
    /// topic count against the first message's wait.
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: PullArgs) -> Result<(), Failure> {
    let what = || format!("pull {}", args.topic);
    // A closed standard output would take messages into nowhere.
    if let Some(why) = super::unusable(1) {
        return Err(Failure::new(
            what(),
            format!("standard output is {why}; nothing taken"),
        ));
    }
    // Connecting and opening the data file count against --timeout too,
    // and never take longer than --connect-timeout.
    let start = std::time::Instant::now();
    let setup = async {
        let client = match batches(&args) {
            true => connect_batch(&args.conn).await?,
            false => args.conn.connect().await?,
        };
        let puller = client.open_data(&args.topic).await.what(what)?;
        Ok((client, puller))
    };
    let limit = args.timeout.map_or(args.conn.connect_timeout, |t| {
        t.min(args.conn.connect_timeout)
    });
    let (_client, mut puller) = within(limit, what(), setup).await?;
    let first = args.timeout.map(|t| t.saturating_sub(start.elapsed()));
    // From here a signal ends the wait in flight truthfully (a killed
    // pull's last message, printed but not yet acknowledged, would come
    // back and be printed twice).
    let stop = CancellationToken::new();
    let signalled = on_signal(stop.clone());
    let code = || signalled.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
    match print_messages(&args, first, &mut puller, &stop).await {
        // A message pulled but not printed (standard output is gone, as
        // when `| head` has had enough) must go back to the group. The
        // server gives a fid's last message back when its connection ends
        // without the fid's clunk (the clunk would acknowledge it): so the
        // fid is not clunked, and the connection ends with the process.
        Err(Stopped::Unprinted(failure)) => {
            std::mem::forget(puller);
            Err(failure)
        }
        // Otherwise clunk before exiting, whatever happened: the clunk
        // acknowledges the last message printed, which would otherwise
        // come back and be printed twice.
        printed => {
            let closed = puller.close().await.what(what);
            printed
                .map_err(|s| s.into_failure(&what(), code()))
                .and(closed)
        }
    }
}

/// Whether to read in batches: with --follow, into anything but a pipe
/// (where what is written is printed), or with --batch.
fn batches(args: &PullArgs) -> bool {
    args.follow && (args.batch || !pipe::stdout_is_pipe())
}

/// [`ConnArgs::connect`], attached to read in batches.
async fn connect_batch(conn: &ConnArgs) -> Result<Client, Failure> {
    let what = format!("connect {}", conn.addr);
    let opts = Options::group(conn.group.clone()).batch();
    let connect = async {
        (Client::connect(&conn.addr, &opts).await).map_err(|e| Failure::new(what.clone(), e))
    };
    within(conn.connect_timeout, what.clone(), connect).await
}

/// Why printing stopped early.
enum Stopped {
    /// A failure before a message was taken, or after it was printed.
    Failed(Failure),
    /// A message was taken but could not be printed.
    Unprinted(Failure),
    /// A signal, after this many messages were printed.
    Interrupted(u64),
}

impl Stopped {
    /// The failure to report; `what` failed, `code` is the signal's status.
    fn into_failure(self, what: &str, code: u8) -> Failure {
        match self {
            Stopped::Failed(f) | Stopped::Unprinted(f) => f,
            Stopped::Interrupted(n) => {
                Failure::new(what, format!("interrupted ({n} printed)")).with_code(code)
            }
        }
    }
}

impl From<Failure> for Stopped {
    fn from(f: Failure) -> Stopped {
        Stopped::Failed(f)
    }
}

/// Print messages; the first waits at most `first` (what is left of
/// --timeout after setup), each later one at most --timeout, and none
/// once `stop` is cancelled.
async fn print_messages(
    args: &PullArgs,
    first: Option<std::time::Duration>,
    puller: &mut Puller,
    stop: &CancellationToken,
) -> Result<(), Stopped> {
    let what = || format!("pull {}", args.topic);
    let mut printed = 0u64;
    while args.follow || printed < args.count {
        if stop.is_cancelled() {
            return Err(Stopped::Interrupted(printed));
        }
        // The timeout or a signal flushes the Tread and waits for the
        // server's verdict (next_unless), so a message that arrived as
        // time ran out is printed, not lost; a plain timeout() around
        // next() could lose it.
        // Into a pipe, the wait ends too once the pipe's reader is gone
        // (`| head -n 3` had enough), as `tail -f` does: what was printed
        // was read, and nothing more is taken.
        let limit = if printed == 0 { first } else { args.timeout };
        let ends = async {
            tokio::select! {
                _ = stop_or_after(stop, limit) => {}
                _ = pipe::reader_gone() => {}
            }
        };
        let msg = match puller.next_unless(ends).await {
            Err(dchan::client::Error::TimedOut) if stop.is_cancelled() => {
                return Err(Stopped::Interrupted(printed));
            }
            Err(dchan::client::Error::TimedOut) if pipe::stdout_is_pipe() && pipe::gone() => {
                return Err(Failure::new(
                    what(),
                    format!("standard output: its reader went away ({printed} printed)"),
                )
                .into());
            }
            msg => msg.what(what)?,
        };
        let Some(msg) = msg else {
            if args.follow {
                return Ok(());
            }
            return Err(Failure::new(what(), "topic closed").into());
        };
        let written = {
            let mut out = std::io::stdout().lock();
            out.write_all(&msg)
                .and_then(|_| match args.raw || msg.ends_with(b"\n") {
                    true => Ok(()),
                    false => out.write_all(b"\n"),
                })
                .and_then(|_| out.flush())
        };
        if let Err(e) = written {
            let why = dchan::client::io_reason(&e);
            return Err(Stopped::Unprinted(Failure::new(
                what(),
                format!("standard output: {why}; the message not printed goes back to the topic"),
            )));
        }
        if !read_out_of_pipe().await {
            return Err(Stopped::Unprinted(Failure::new(
                what(),
                "standard output: its reader went away without reading the last message; it goes back to the topic",
            )));
        }
        // A batch (line framing) is as many messages as lines.
        printed += match batches(args) {
            true => memchr::memchr_iter(b'\n', &msg).count().max(1) as u64,
            false => 1,
        };
    }
    Ok(())
}

/// When standard output is a pipe or FIFO, wait until its reader has read
/// everything in it (true) or has gone away leaving bytes unread (false).
/// Called after each message is written and flushed, before the next pull
/// (which acknowledges the message) or the close: so a message still in
/// the pipe when `| head` exits goes back rather than being lost. Polls
/// with a backoff from 50 µs to 2 ms; a fast reader costs one ioctl. True
/// at once for any other standard output (a file, a tty).
async fn read_out_of_pipe() -> bool {
    if !pipe::stdout_is_pipe() {
        return true;
    }
    match pipe::state() {
        pipe::State::Empty => true,
        pipe::State::Abandoned => false,
        // Wait on a blocking thread: the runtime's timers are too coarse
        // for a consumer that empties the pipe in microseconds.
        pipe::State::Unread => tokio::task::spawn_blocking(pipe::wait)
            .await
            .unwrap_or(false),
    }
}

/// Standard output (fd 1) as a pipe: its type, and what its reader did.
mod pipe {
    use std::sync::OnceLock;
    use std::time::Duration;

    /// What the reader has done with what was written.
    pub enum State {
        /// Read it all.
        Empty,
        /// Not yet read it all, and still there.
        Unread,
        /// Gone, leaving bytes unread.
        Abandoned,
    }

    /// Standard output is a pipe or FIFO (S_ISFIFO), asked once.
    pub fn stdout_is_pipe() -> bool {
        static PIPE: OnceLock<bool> = OnceLock::new();
        *PIPE.get_or_init(|| {
            // SAFETY: fstat writes into the zeroed stat it is given.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::fstat(1, &mut st) } == 0;
            ok && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        })
    }

    /// The pipe's reader has gone (POLLERR on the write end); false for
    /// anything but a pipe.
    pub fn gone() -> bool {
        let mut fd = libc::pollfd {
            fd: 1,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let polled = unsafe { libc::poll(&mut fd, 1, 0) };
        polled > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }

    /// Ends once standard output is a pipe whose reader has gone, looking
    /// every 100 ms; never for anything but a pipe.
    pub async fn reader_gone() {
        if !stdout_is_pipe() {
            return std::future::pending().await;
        }
        while !gone() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pipe's state now. Whether the reader is gone is asked first
    /// (POLLERR on the write end: no readers left), then what is unread:
    /// once the readers are gone the count can no longer fall, so a zero
    /// after that means everything was read.
    pub fn state() -> State {
        let gone = gone();
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        if unsafe { libc::ioctl(1, libc::FIONREAD, &mut unread) } != 0 {
            // Cannot tell: keep today's behaviour (taken once written).
            return State::Empty;
        }
        match (unread, gone) {
            (0, _) => State::Empty,
            (_, true) => State::Abandoned,
            (_, false) => State::Unread,
        }
    }

    /// Block until the pipe is empty (true) or abandoned (false).
    pub fn wait() -> bool {
        let mut pause = Duration::from_micros(50);
        loop {
            match state() {
                State::Empty => return true,
                State::Abandoned => return false,
                State::Unread => std::thread::sleep(pause),
            }
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}
