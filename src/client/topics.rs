//! [`Client`]: dchan's topics by name — push, pull, ctl, offset, create,
//! remove, list — over one attached 9P connection.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};

use super::conn::{ConnectOptions, Connection};
use super::data::{Puller, Pusher};
use super::error::{Error, Result};
use super::file::{DirEntry, File, Mode};
use crate::proto::Dialect;

/// How many topics [`Client::ctl_each`] and [`Client::topics_under`] read
/// at once: each read holds a fid, and a server bounds a connection's fids.
pub const TOPICS_AT_ONCE: usize = 64;

/// How many levels deep [`Client::topics_under`] goes below its prefix;
/// a deeper tree is a protocol error (a server whose directory contains
/// itself would otherwise be listed for ever). dchan's topic names have
/// no depth limit of their own; 64 levels is far beyond any naming scheme.
pub const MAX_DEPTH: usize = 64;

/// How to connect: the group to read as, and the session's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The reader group (the attach name); "" is the default group.
    pub group: String,
    /// The user name sent in Tattach.
    pub uname: String,
    /// Dialect and msize to propose.
    pub connect: ConnectOptions,
    /// Read in batches: attach as `GROUP:batch`, so that each
    /// [`Puller::next`] returns every whole message available at that
    /// moment (up to one read's count), joined; see [`Options::batch`].
    pub batch: bool,
    /// Read as a Linux mount does: attach without `:short`, so that every
    /// message is followed by a 0-byte read (two Treads a message instead
    /// of one). For measuring that path; see [`Options::linux_reads`].
    pub linux_reads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            group: String::new(),
            uname: std::env::var("USER").unwrap_or_else(|_| "none".into()),
            connect: ConnectOptions::default(),
            batch: false,
            linux_reads: false,
        }
    }
}

impl Options {
    /// The default options, reading as `group`.
    pub fn group(group: impl Into<String>) -> Options {
        Options {
            group: group.into(),
            ..Options::default()
        }
    }

    /// These options reading in batches. A [`Puller`] then returns, from
    /// each `next`, the messages available when it asked (at least one,
    /// waiting for it as usual; at most one read's count, unless a single
    /// message is longer), joined: every message but the last of a batch
    /// ends in a newline, so a line-framed topic's batch is whole lines.
    /// Batches cost one request per batch instead of one per message;
    /// they suit a reader that wants the bytes (a pipe), not one that
    /// counts messages.
    pub fn batch(mut self) -> Options {
        self.batch = true;
        self
    }

    /// These options reading as a Linux mount does (two Treads a
    /// message, see [`Puller`]): slower, and there to measure what a
    /// mount's reader pays.
    pub fn linux_reads(mut self) -> Options {
        self.linux_reads = true;
        self
    }

    /// These options with another dialect proposed.
    pub fn dialect(mut self, dialect: Dialect) -> Options {
        self.connect.dialect = dialect;
        self
    }
}

/// How a topic's writes become messages (see the topic tree's `framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each newline-terminated line is a message.
    Line,
    /// Each write is a message.
    Write,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Line => "line",
            Framing::Write => "write",
        }
    }
}

/// Settings for a new topic; `None` takes the server's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicSettings {
    pub capacity: Option<u64>,
    pub framing: Option<Framing>,
    /// How long a push or pull may wait before failing with "timed out".
    pub timeout: Option<Duration>,
}

/// A connection to a dchan server, attached as one reader group. Cheap to
/// share by reference across tasks: every call may run concurrently.
#[derive(Debug)]
pub struct Client {
    /// The tree's root, from Tattach; every call walks from a clone of it.
    root: File,
    /// Whether the session reads with the Linux loop's zeros (see [`Puller`]).
    zero_after_short: bool,
}

impl Client {
    /// Connect to `addr` (`tcp!HOST!PORT`, `HOST:PORT`, `unix!PATH`) and attach.
    pub async fn connect(addr: &str, opts: &Options) -> Result<Client> {
        let conn = Connection::connect(addr, &opts.connect).await?;
        Client::attach(&conn, opts).await
    }

    /// Attach on an existing connection (several clients, one per group,
    /// may share one connection). The attach name is the group with the
    /// `:short` option (one Tread per message: see [`Puller`]) and, for
    /// [`Options::batch`], `:batch`.
    pub async fn attach(conn: &Connection, opts: &Options) -> Result<Client> {
        let short = if opts.linux_reads { "" } else { ":short" };
        let batch = if opts.batch { ":batch" } else { "" };
        let aname = format!("{}{short}{batch}", opts.group);
        let root = conn.attach(&opts.uname, &aname).await?;
        let zero_after_short = opts.linux_reads && conn.dialect() != Dialect::P2000;
        Ok(Client {
            root,
            zero_after_short,
        })
    }

    /// The connection underneath, for raw 9P.
    pub fn connection(&self) -> &Connection {
        self.root.connection()
    }

    /// The attached root directory.
    pub fn root(&self) -> &File {
        &self.root
    }

    /// Push one message to `topic` (write framing: exactly these bytes, at
    /// most one write's worth, see [`Pusher`]; line framing: end it with a
    /// newline). Waits as a writer would: for a
    /// reader if the topic's capacity is 0, for room otherwise.
    pub async fn push(&self, topic: &str, msg: impl Into<Bytes>) -> Result<()> {
        let pusher = self.open_push(topic).await?;
        pusher.push(msg).await?;
        pusher.close().await
    }

    /// Pull one message from `topic`, waiting for one; `None` if the topic
    /// is closed and drained.
    pub async fn pull(&self, topic: &str) -> Result<Option<Bytes>> {
        let mut puller = self.open_data(topic).await?;
        let msg = puller.next().await?;
        puller.close().await?;
        Ok(msg)
    }

    /// Open `topic`'s data file for a stream of pulls on one fid.
    pub async fn open_data(&self, topic: &str) -> Result<Puller> {
        let file = self.open(topic, "data", Mode::Read).await?;
        Ok(Puller::new(file, self.zero_after_short))
    }

    /// Open `topic`'s data file for a stream of pushes on one fid, reading
    /// its framing from its ctl meanwhile (see [`Pusher`]).
    pub async fn open_push(&self, topic: &str) -> Result<Pusher> {
        let (data, framing) =
            futures_util::future::join(self.open(topic, "data", Mode::Write), self.framing(topic))
                .await;
        Ok(Pusher::new(data?, framing?))
    }

    /// The topic's framing, from its ctl's `framing` line (near the top,
    /// so one read finds it); `None` if that cannot be read, as from a
    /// server other than dchan. A lost connection is that error instead.
    async fn framing(&self, topic: &str) -> Result<Option<Framing>> {
        let text = async {
            let ctl = self.open(topic, "ctl", Mode::Read).await?;
            ctl.read(0, ctl.max_io()).await
        };
        let text = match text.await {
            Ok(t) => t,
            Err(e @ (Error::Disconnected(_) | Error::Io(_))) => return Err(e),
            Err(_) => return Ok(None),
        };
        let framing = text.split(|&b| b == b'\n').find_map(|l| match l {
            b"framing line" => Some(Framing::Line),
            b"framing write" => Some(Framing::Write),
            _ => None,
        });
        Ok(framing)
    }

    /// The topic's status: its ctl file's "key value" lines.
    pub async fn ctl(&self, topic: &str) -> Result<String> {
        self.read_text(topic, "ctl").await
    }

    /// The status of each of `topics` (as [`Client::ctl`]), in their order,
    /// read [`TOPICS_AT_ONCE`] at a time. Each read holds a fid from its walk
    /// to its clunk, and a server bounds the fids one connection may hold
    /// (dchan: `[limits] max_fids`), so reading thousands of topics at once
    /// could fail.
    /// A server that holds fewer is met by reading fewer at once.
    pub async fn ctl_each(&self, topics: &[String]) -> Vec<Result<String>> {
        at_once(topics, |t| self.ctl(t)).await
    }

    /// Write one command to the topic's ctl ("reset", "close", "capacity 3"...).
    pub async fn ctl_write(&self, topic: &str, command: &str) -> Result<()> {
        self.write_text(topic, "ctl", command).await
    }

    /// Empty the topic, fail its blocked pushes, reopen it if closed.
    pub async fn reset(&self, topic: &str) -> Result<()> {
        self.ctl_write(topic, "reset").await
    }

    /// Close the topic: readers drain it and then see end of file.
    pub async fn close(&self, topic: &str) -> Result<()> {
        self.ctl_write(topic, "close").await
    }

    /// The group's next sequence number in `topic`.
    pub async fn offset(&self, topic: &str) -> Result<u64> {
        let text = self.read_text(topic, "offset").await?;
        text.trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("offset file holds {text:?}")))
    }

    /// Move the group to sequence number `seq` in `topic` (replay or skip).
    pub async fn set_offset(&self, topic: &str, seq: u64) -> Result<()> {
        self.write_text(topic, "offset", &seq.to_string()).await
    }

    /// The server's status: the root ctl file's "key value" lines.
    pub async fn server_ctl(&self) -> Result<String> {
        let file = self.open_path("ctl", Mode::Read).await?;
        read_text(file).await
    }

    /// Write one command to the server's ctl ("create NAME ...", "remove NAME").
    pub async fn server_command(&self, command: &str) -> Result<()> {
        let file = self.open_path("ctl", Mode::Write).await?;
        write_text(file, command).await
    }

    /// Create `topic` with `settings`.
    pub async fn create(&self, topic: &str, settings: &TopicSettings) -> Result<()> {
        check_topic(topic)?;
        self.server_command(&create_line(topic, settings)).await
    }

    /// Create every one of `topics` with `settings`, many to a write of
    /// the root ctl (as many lines as one message holds): tens of
    /// thousands a second on one connection. Each write is checked whole
    /// before any of it is applied; on an error, the topics of the writes
    /// before it were made, and the count of those comes with the error
    /// (as `(N created)` in the CLI).
    pub async fn create_all(
        &self,
        topics: &[String],
        settings: &TopicSettings,
    ) -> Result<(), (usize, Error)> {
        for t in topics {
            check_topic(t).map_err(|e| (0, e))?;
        }
        let lines = topics.iter().map(|t| create_line(t, settings));
        self.ctl_batches(lines).await
    }

    /// Remove every one of `topics`, many to a write of the root ctl (see
    /// [`Client::create_all`]); on an error, the count removed before it.
    pub async fn remove_all(&self, topics: &[String]) -> Result<(), (usize, Error)> {
        for t in topics {
            check_topic(t).map_err(|e| (0, e))?;
        }
        let lines = topics.iter().map(|t| format!("remove {t}\n"));
        // The server's error names the topic ("remove a/b: no such topic").
        self.ctl_batches(lines).await
    }

    /// Write `lines` (each ending in a newline) to the root ctl, as many
    /// to a write as fit in one message, on one open fid; on an error, the
    /// count of lines of the writes that succeeded before it.
    async fn ctl_batches(&self, lines: impl Iterator<Item = String>) -> Result<(), (usize, Error)> {
        let file = self
            .open_path("ctl", Mode::Write)
            .await
            .map_err(|e| (0, e))?;
        let max = file.max_io() as usize;
        let (mut batch, mut in_batch, mut done) = (String::new(), 0, 0);
        let mut lines = lines.peekable();
        let result = loop {
            let line = lines.peek();
            let full = line.is_none_or(|l| !batch.is_empty() && batch.len() + l.len() > max);
            if full && !batch.is_empty() {
                let data = Bytes::from(std::mem::take(&mut batch));
                if let Err(e) = file.write_all(0, data).await {
                    break Err((done, e));
                }
                done += std::mem::take(&mut in_batch);
            }
            match lines.next() {
                Some(l) => {
                    batch.push_str(&l);
                    in_batch += 1;
                }
                None => break Ok(()),
            }
        };
        let clunk = file.clunk().await.map_err(|e| (done, e));
        result.and(clunk)
    }

    /// Remove `topic`, failing its blocked readers and writers.
    pub async fn remove(&self, topic: &str) -> Result<()> {
        check_topic(topic)?;
        self.topic_dir(topic).await?;
        // A directory that only holds topics (`a` of `a/b`) is none itself:
        // the server says "remove a: no such topic"; say it as for any other.
        match self.server_command(&format!("remove {topic}")).await {
            Err(Error::Server { message, .. }) if message.ends_with(": no such topic") => {
                Err(Error::NoTopic(topic.to_string()))
            }
            done => done,
        }
    }

    /// The server's root `topics` file: a header line naming the columns,
    /// then one line per topic with its status, in name order, read in
    /// one open (a few Treads of the connection's msize however many
    /// topics there are), never held whole by the server.
    pub async fn topics_file(&self) -> Result<String> {
        let file = self.open_path("topics", Mode::Read).await?;
        let max = file.max_io();
        let mut text = Vec::new();
        let read = async {
            loop {
                let data = file.read(text.len() as u64, max).await?;
                if data.is_empty() {
                    return Ok(());
                }
                text.extend_from_slice(&data);
            }
        };
        let read: Result<()> = read.await;
        file.clunk().await?;
        read?;
        String::from_utf8(text).map_err(|_| Error::Protocol("topics file not UTF-8".into()))
    }

    /// Every topic, nested ones included, in the tree's order.
    pub async fn topics(&self) -> Result<Vec<String>> {
        self.topics_under("").await
    }

    /// `prefix` itself if it is a topic, and every topic under it. Each
    /// level of the tree is listed [`TOPICS_AT_ONCE`] directories at a time,
    /// at most [`MAX_DEPTH`] levels below `prefix`.
    pub async fn topics_under(&self, prefix: &str) -> Result<Vec<String>> {
        if !prefix.is_empty() {
            check_topic(prefix)?;
        }
        let mut found = Vec::new();
        let mut level = vec![prefix.to_string()];
        let mut depth = 0;
        while !level.is_empty() {
            if depth > MAX_DEPTH {
                return Err(Error::Protocol(format!(
                    "topic tree deeper than {MAX_DEPTH} levels"
                )));
            }
            depth += 1;
            let listings = at_once(&level, |dir| self.list_dir(dir)).await;
            let mut next = Vec::new();
            for (dir, entries) in level.iter().zip(listings) {
                for e in entries? {
                    if !dir.is_empty() && e.name == "data" && !e.is_dir() {
                        found.push(dir.clone());
                    } else if e.is_dir() {
                        next.push(match dir.is_empty() {
                            true => e.name,
                            false => format!("{dir}/{}", e.name),
                        });
                    }
                }
            }
            level = next;
        }
        // Tree order, as the server's `topics` file lists them.
        found.sort_by(|a, b| crate::broker::order::cmp(a, b));
        Ok(found)
    }

    /// The entries of the directory `dir` ("" for the root), its fid
    /// clunked before this returns.
    async fn list_dir(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let mut file = match dir.is_empty() {
            true => self.root.walk("").await?,
            false => self.topic_dir(dir).await?,
        };
        file.open(Mode::Read).await?;
        let entries = file.readdir().await?;
        file.clunk().await?;
        Ok(entries)
    }

    /// Walk to the topic's directory; an unknown topic is `NoTopic`.
    async fn topic_dir(&self, topic: &str) -> Result<File> {
        self.walk_topic(topic, "").await
    }

    /// Walk to `file` in `topic` ("" for the directory itself). Any "no such
    /// file" on the way means no such topic.
    async fn walk_topic(&self, topic: &str, file: &str) -> Result<File> {
        check_topic(topic)?;
        let path = match file {
            "" => topic.to_string(),
            f => format!("{topic}/{f}"),
        };
        match self.root.walk(&path).await {
            Err(e) if is_not_found(&e) => Err(Error::NoTopic(topic.to_string())),
            r => r,
        }
    }

    async fn open(&self, topic: &str, file: &str, mode: Mode) -> Result<File> {
        let mut f = self.walk_topic(topic, file).await?;
        f.open(mode).await?;
        Ok(f)
    }

    async fn open_path(&self, path: &str, mode: Mode) -> Result<File> {
        let mut f = self.root.walk(path).await?;
        f.open(mode).await?;
        Ok(f)
    }

    async fn read_text(&self, topic: &str, file: &str) -> Result<String> {
        read_text(self.open(topic, file, Mode::Read).await?).await
    }

    async fn write_text(&self, topic: &str, file: &str, text: &str) -> Result<()> {
        write_text(self.open(topic, file, Mode::Write).await?, text).await
    }
}

/// The root ctl line that creates `topic` with `settings`.
fn create_line(topic: &str, settings: &TopicSettings) -> String {
    let mut cmd = format!("create {topic}");
    if let Some(c) = settings.capacity {
        cmd.push_str(&format!(" capacity={c}"));
    }
    if let Some(f) = settings.framing {
        cmd.push_str(&format!(" framing={}", f.as_str()));
    }
    if let Some(t) = settings.timeout {
        cmd.push_str(&format!(" timeout={}ms", t.as_millis()));
    }
    cmd.push('\n');
    cmd
}

/// A topic name: one or more '/'-separated components of `[A-Za-z0-9._-]`,
/// none "." or "..".
pub fn check_topic(topic: &str) -> Result<()> {
    let ok = !topic.is_empty()
        && !topic.starts_with('-')
        && topic.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    match ok {
        true => Ok(()),
        false => Err(Error::BadTopic(topic.to_string())),
    }
}

/// `read` of each of `items`, [`TOPICS_AT_ONCE`] at a time, in their order.
/// Each read holds a fid; those the server refused for "too many fids"
/// (fewer than [`TOPICS_AT_ONCE`] allowed, or held by others meanwhile)
/// are read again, half as many at once, down to one at a time. Only
/// reads, which may be repeated, go through here.
async fn at_once<'a, T, F, Fut>(items: &'a [String], read: F) -> Vec<Result<T>>
where
    F: Fn(&'a String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut results: Vec<Option<Result<T>>> = items.iter().map(|_| None).collect();
    let mut todo: Vec<usize> = (0..items.len()).collect();
    let mut width = TOPICS_AT_ONCE;
    while !todo.is_empty() {
        let done: Vec<Result<T>> = stream::iter(&todo)
            .map(|&i| read(&items[i]))
            .buffered(width)
            .collect()
            .await;
        let mut again = Vec::new();
        for (&i, r) in todo.iter().zip(done) {
            match r {
                Err(e) if width > 1 && is_too_many_fids(&e) => again.push(i),
                r => results[i] = Some(r),
            }
        }
        todo = again;
        width /= 2;
    }
    results.into_iter().flatten().collect()
}

/// The server's "too many fids" (EMFILE), however the dialect says it.
fn is_too_many_fids(e: &Error) -> bool {
    match e {
        Error::Server { errno: Some(n), .. } => *n == crate::fs::errno::EMFILE,
        Error::Server { message, .. } => message.to_lowercase().contains("too many fids"),
        _ => false,
    }
}

/// A walk's "no such file", however the dialect says it (plain 9P2000
/// Rerror has only text).
fn is_not_found(e: &Error) -> bool {
    match e {
        Error::NotFound(_) => true,
        Error::Server { errno: Some(n), .. } => *n == crate::fs::errno::ENOENT,
        Error::Server { message, .. } => {
            let m = message.to_lowercase();
            m.contains("not found") || m.contains("no such") || m.contains("not exist")
        }
        _ => false,
    }
}

async fn read_text(file: File) -> Result<String> {
    let data = file.read_to_end().await?;
    file.clunk().await?;
    String::from_utf8(data.to_vec()).map_err(|_| Error::Protocol("text file not UTF-8".into()))
}

async fn write_text(file: File, text: &str) -> Result<()> {
    let mut line = text.to_string();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    file.write_all(0, Bytes::from(line)).await?;
    file.clunk().await
}
