//! The small subcommands that read or write one control file: `stat`,
//! `offset`, `create`, `rm`, `reset`, `close`.

use clap::{Args, ValueEnum};
use dchan::client::{Framing, TopicSettings};

use super::{ConnArgs, Context, Failure, parse_timeout, print_out};

#[derive(Args)]
pub struct TopicArg {
    /// The topic, e.g. jobs or metrics/eu.
    pub topic: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

const OFFSET_HELP: &str = "\
Output (without N): the group's next sequence number, in decimal, and a
newline. With N: moves the group there (back to replay messages still
held, forward to skip), and prints nothing. N is a sequence number from
the topic's \"first\" (the oldest message held) to its \"next\" (the one
the next push gets), or one of those two words.

Examples:
  dchan offset jobs                       where the default group is
  dchan offset jobs first --group audit   replay what is held, for group audit
  dchan offset jobs next                  skip everything held";

/// Where `dchan offset` moves a group.
#[derive(Clone, Copy, Debug)]
pub enum Seq {
    /// This sequence number.
    At(u64),
    /// The oldest message the topic holds.
    First,
    /// Past the newest: the next message pushed.
    Next,
}

fn parse_seq(s: &str) -> Result<Seq, String> {
    match s {
        "first" => Ok(Seq::First),
        "next" => Ok(Seq::Next),
        n => n
            .parse()
            .map(Seq::At)
            .map_err(|_| "want a sequence number, first or next".to_string()),
    }
}

#[derive(Args)]
#[command(after_help = OFFSET_HELP)]
pub struct OffsetArgs {
    /// The topic.
    pub topic: String,
    /// A sequence number to move the group to, or first or next.
    #[arg(value_name = "N", value_parser = parse_seq)]
    pub seq: Option<Seq>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FramingArg {
    /// Each newline-terminated line is a message.
    Line,
    /// Each write is a message.
    Write,
}

const CREATE_HELP: &str = "\
Examples:
  dchan create jobs                    the server's defaults (capacity 0: a rendezvous)
  dchan create logs --capacity 1000    writers run up to 1000 messages ahead
  dchan create frames --framing write  each write is one message, newlines and all
  dchan create u1/inbox u2/inbox u3/inbox   several at once, many to a message
  seq -f 'job/%g' 100000 | xargs dchan create   a hundred thousand, in seconds

With several topics, as many create lines go in one write of the server's
ctl as one message holds; each write is checked whole before any of it is
made, and an error says how many were made before it: \"(N created)\".";

#[derive(Args)]
#[command(after_help = CREATE_HELP)]
pub struct CreateArgs {
    /// The topics, e.g. jobs or metrics/eu.
    #[arg(required = true, value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// How far the slowest group may lag before pushes wait (0: each push waits for a reader).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// How writes become messages.
    #[arg(long, value_enum)]
    pub framing: Option<FramingArg>,
    /// How long a push or pull may wait before it fails (e.g. 30s; not 0;
    /// left out: the server's default, "none" unless configured).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    /// The topic, e.g. jobs or metrics/eu; left out: the server (its
    /// engine, sync mode, bytes on disk, totals).
    pub topic: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn stat(a: StatArgs) -> Result<(), Failure> {
    let client = a.conn.connect().await?;
    let text = match &a.topic {
        Some(topic) => client.ctl(topic).await,
        None => client.server_ctl().await,
    };
    let text = text.what(|| format!("stat {}", a.topic.as_deref().unwrap_or("")))?;
    print_out(&text)
}

pub async fn offset(a: OffsetArgs) -> Result<(), Failure> {
    let what = || format!("offset {}", a.topic);
    let client = a.conn.connect().await?;
    let key = match a.seq {
        None => return print_out(&format!("{}\n", client.offset(&a.topic).await.what(what)?)),
        Some(Seq::At(n)) => return client.set_offset(&a.topic, n).await.what(what),
        Some(Seq::First) => "first",
        Some(Seq::Next) => "next",
    };
    // The topic may move between reading its ctl and moving the group:
    // a number it no longer holds is looked up again (a few times).
    let mut tries = 0;
    loop {
        let ctl = client.ctl(&a.topic).await.what(what)?;
        let seq = ctl
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
            .ok_or_else(|| Failure::new(what(), format!("the topic's ctl has no {key:?}")))?;
        match client.set_offset(&a.topic, seq).await {
            Err(e) if tries < 3 && e.errno() == Some(dchan::fs::errno::ERANGE) => tries += 1,
            done => return done.what(what),
        }
    }
}

pub async fn create(a: CreateArgs) -> Result<(), Failure> {
    let what = || several("create", &a.topics);
    named_once(&a.topics, what, "created")?;
    let client = a.conn.connect().await?;
    let settings = TopicSettings {
        capacity: a.capacity,
        framing: a.framing.map(|f| match f {
            FramingArg::Line => Framing::Line,
            FramingArg::Write => Framing::Write,
        }),
        timeout: a.timeout,
    };
    if let [topic] = &a.topics[..] {
        return client.create(topic, &settings).await.what(what);
    }
    let done = client.create_all(&a.topics, &settings).await;
    done.map_err(|(n, e)| Failure::new(what(), format!("{e} ({})", counted(n, &e, "created"))))
}

/// Refuse a list that names a topic twice, before anything is done: the
/// server would take the second for a topic that exists (or is gone).
fn named_once(topics: &[String], what: impl Fn() -> String, done: &str) -> Result<(), Failure> {
    let mut seen = std::collections::HashSet::new();
    match topics.iter().find(|t| !seen.insert(t.as_str())) {
        Some(t) => Err(Failure::new(
            what(),
            format!("{t} is named twice (0 {done})"),
        )),
        None => Ok(()),
    }
}

/// What a command on `topics` is called in its errors: `create a`, or
/// `create a and 99 more` (not a hundred thousand names in one line).
pub fn several(cmd: &str, topics: &[String]) -> String {
    match topics {
        [] => cmd.to_string(),
        [one] => format!("{cmd} {one}"),
        [first, rest @ ..] => format!("{cmd} {first} and {} more", rest.len()),
    }
}

#[derive(Args)]
pub struct RmArgs {
    /// The topics, e.g. jobs or metrics/eu.
    #[arg(required = true, value_name = "TOPIC")]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn rm(a: RmArgs) -> Result<(), Failure> {
    let what = || several("rm", &a.topics);
    named_once(&a.topics, what, "removed")?;
    let client = a.conn.connect().await?;
    if let [topic] = &a.topics[..] {
        return client.remove(topic).await.what(what);
    }
    let done = client.remove_all(&a.topics).await;
    done.map_err(|(n, e)| Failure::new(what(), format!("{e} ({})", counted(n, &e, "removed"))))
}

pub async fn reset(a: TopicArg) -> Result<(), Failure> {
    let client = a.conn.connect().await?;
    client
        .reset(&a.topic)
        .await
        .what(|| format!("reset {}", a.topic))
}

pub async fn close(a: TopicArg) -> Result<(), Failure> {
    let client = a.conn.connect().await?;
    client
        .close(&a.topic)
        .await
        .what(|| format!("close {}", a.topic))
}

/// "N created": the lines of the writes the server answered. When the
/// connection went with a write unanswered, what that write did is not
/// known (a server killed in it may have applied part), and that is said.
fn counted(n: usize, e: &dchan::client::Error, done: &str) -> String {
    match e {
        dchan::client::Error::Disconnected(_) => {
            format!(
                "{n} {done}, and perhaps some of the write the server did not answer: see `dchan ls`"
            )
        }
        _ => format!("{n} {done}"),
    }
}
