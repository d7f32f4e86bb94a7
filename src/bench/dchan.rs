//! dchan itself as a system under test, through `dchan::client`.
//!
//! A connection is a [`Client`] attached as the reader group; a writer is
//! one open data fid ([`Pusher`], which takes concurrent pushes); a reader is
//! a pool of open data fids ([`Puller`]s, one pull in flight each), grown
//! to as many as there are pulls in flight (the warm-up fills the pool
//! before the timed window). Sessions speak 9P2000.L by default, the dialect
//! of Linux mounts and of the CLI, and read as the CLI does, one Tread a
//! message (the `:short` session option); `--linux-reads` reads as a Linux
//! mount does, with a second Tread per message for the zero that ends a
//! read(2). A topic is removed through the root ctl
//! file; what a group still holds is its `lag` plus `unacked` in the
//! topic's ctl file. A refusal reads in the server's words where the wire
//! has them: a connection refused in 9P2000.L (an errno alone) is asked
//! again in 9P2000.u for its reason. With `--batch` k above 1 a writer
//! sends its k messages (lines) in one Twrite, and readers attach as
//! `GROUP:batch`, so that each Tread returns every whole message there.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Conn, Reader, Result, System, Writer};
use crate::client::{Client, Error, Options, Puller, Pusher, TopicSettings, errno_message};
use crate::fs::errno::EAGAIN;
use crate::proto::Dialect;

pub struct Dchan {
    addr: String,
    dialect: Dialect,
    /// Whether readers attach as `GROUP:batch` (`--batch` above 1).
    batch: bool,
    /// Whether readers read as a Linux mount does (`--linux-reads`).
    linux_reads: bool,
    /// A connection for creating topics.
    admin: Client,
    /// The server's engine (`memory`, `durable`...), from its root ctl.
    engine: String,
}

impl Dchan {
    pub async fn connect(addr: &str, dialect: Dialect) -> Result<Dchan> {
        let admin = attach(addr, Options::group("").dialect(dialect)).await?;
        let ctl = admin.server_ctl().await?;
        let engine = ctl
            .lines()
            .find_map(|l| l.strip_prefix("engine "))
            .unwrap_or("memory")
            .to_string();
        Ok(Dchan {
            addr: addr.to_string(),
            dialect,
            batch: false,
            linux_reads: false,
            admin,
            engine,
        })
    }

    /// Readers take batches: each pull returns every whole message there.
    pub fn with_batches(mut self, batch: bool) -> Dchan {
        self.batch = batch;
        self
    }

    /// How a connection attaches as `group`.
    fn options(&self, group: &str) -> Options {
        Options {
            batch: self.batch,
            linux_reads: self.linux_reads,
            ..Options::group(group).dialect(self.dialect)
        }
    }

    /// Readers read as a Linux mount does: two Treads a message.
    pub fn with_linux_reads(mut self, linux_reads: bool) -> Dchan {
        self.linux_reads = linux_reads;
        self
    }
}

/// A client attached as one group; shared by its readers, which open more
/// fids on it as they need them.
pub struct DchanConn {
    client: Arc<Client>,
}

/// A topic's data fids open for reading, one pull in flight on each.
pub struct Pullers {
    client: Arc<Client>,
    topic: String,
    /// The fids not pulling right now. A parking_lot mutex, held only to
    /// take or return one, never across an `.await`.
    idle: Mutex<Vec<Puller>>,
}

impl System for Dchan {
    type Conn = DchanConn;

    fn name(&self) -> &'static str {
        "dchan"
    }

    fn variant(&self) -> Option<String> {
        let reads = if self.linux_reads {
            ", Linux reads"
        } else {
            ""
        };
        Some(format!("{}{reads}, {}", self.dialect.as_str(), self.engine))
    }

    async fn create(&self, topic: &str, capacity: u64) -> Result<()> {
        let settings = TopicSettings {
            capacity: Some(capacity),
            ..TopicSettings::default()
        };
        self.admin.create(topic, &settings).await?;
        Ok(())
    }

    async fn remove(&self, topic: &str) -> Result<()> {
        match self.admin.remove(topic).await {
            // A create an interrupted run gave up on may never have landed.
            Err(crate::client::Error::NoTopic(_)) => Ok(()),
            r => Ok(r?),
        }
    }

    async fn pending(&self, topic: &str, group: &str) -> Option<u64> {
        let ctl = self.admin.ctl(topic).await.ok()?;
        group_held(&ctl, group)
    }

    async fn connect(&self, group: &str) -> Result<DchanConn> {
        Ok(DchanConn {
            client: Arc::new(attach(&self.addr, self.options(group)).await?),
        })
    }
}

impl Conn for DchanConn {
    type Writer = Pusher;
    type Reader = Pullers;

    async fn writer(&self, topic: &str) -> Result<Pusher> {
        self.client.open_push(topic).await.map_err(explain)
    }

    async fn reader(&self, topic: &str) -> Result<Pullers> {
        // Reading the offset makes the group exist before anything is pushed.
        self.client.offset(topic).await.map_err(explain)?;
        let first = self.client.open_data(topic).await.map_err(explain)?;
        Ok(Pullers {
            client: self.client.clone(),
            topic: topic.to_string(),
            idle: Mutex::new(vec![first]),
        })
    }
}

impl Writer for Pusher {
    async fn push(&self, msg: Bytes) -> Result<()> {
        Pusher::push(self, msg).await.map_err(explain)
    }

    /// The messages (lines) joined, in one Twrite where they fit.
    async fn push_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        let mut joined = bytes::BytesMut::with_capacity(msgs.iter().map(Bytes::len).sum());
        for m in &msgs {
            joined.extend_from_slice(m);
        }
        let (n, done) = self.push_lines(joined.freeze()).await;
        done.map_err(explain)?;
        match n as usize == msgs.len() {
            true => Ok(()),
            false => Err(format!("{} lines pushed of {}", n, msgs.len()).into()),
        }
    }
}

impl Reader for Pullers {
    async fn pull(&self) -> Result<Bytes> {
        let idle = self.idle.lock().pop();
        let mut puller = match idle {
            Some(p) => p,
            None => self.client.open_data(&self.topic).await.map_err(explain)?,
        };
        let msg = puller.next().await.map_err(explain)?;
        self.idle.lock().push(puller);
        msg.ok_or_else(|| "topic closed".into())
    }

    /// On a `:batch` session a pull is every whole message there, each a
    /// line: cut at the newlines (`max` does not apply).
    async fn pull_batch(&self, _max: usize) -> Result<Vec<Bytes>> {
        let batch = self.pull().await?;
        let mut msgs = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &batch) {
            msgs.push(batch.slice(start..=nl));
            start = nl + 1;
        }
        if start < batch.len() {
            msgs.push(batch.slice(start..));
        }
        Ok(msgs)
    }
}

/// Connect and attach. A refusal in 9P2000.L is an errno
/// alone, so the server is asked again in 9P2000.u, whose Rerror carries
/// its own words ("too many connections (the server serves 2 at once)").
async fn attach(addr: &str, opts: Options) -> Result<Client> {
    match Client::connect(addr, &opts).await {
        Ok(c) => Ok(c),
        Err(e @ Error::Server { .. }) if opts.connect.dialect == Dialect::P2000L => {
            let again = opts.dialect(Dialect::P2000u);
            match Client::connect(addr, &again).await {
                Err(Error::Server { message, .. }) => Err(message.into()),
                _ => Err(explain(e)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A client error as the bench reports it. The server's refusal in
/// 9P2000.L is an errno alone (the client names it, "resource temporarily
/// unavailable"); EAGAIN is dchan's answer to a request past a limit,
/// which is said.
fn explain(e: Error) -> super::Error {
    match e {
        Error::Server {
            errno: Some(EAGAIN),
            ref message,
        } if *message == errno_message(EAGAIN) => format!(
            "{e}: the server refused it at one of its limits, such as max_in_flight \
             (9P2000.L carries only the errno; --dialect 9p2000.u shows the server's words)"
        )
        .into(),
        e => e.into(),
    }
}

/// From a topic's ctl text, what `group` still holds: its `lag` (pushed,
/// not yet read) plus `unacked` (delivered, not yet acknowledged), from the
/// line `group "NAME" offset N lag N unacked N blocked N`.
fn group_held(ctl: &str, group: &str) -> Option<u64> {
    let quoted = format!("group {group:?} ");
    let line = ctl.lines().find_map(|l| l.strip_prefix(&quoted))?;
    let field = |key: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key)?;
        words.next()?.parse().ok()
    };
    Some(field("lag")? + field("unacked")?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_held_reads_lag_and_unacked() {
        let ctl = "capacity 1024\ngroup \"\" offset 7 lag 3 unacked 2 blocked 0\ngroup \"g1\" offset 9 lag 0 unacked 0 blocked 1\n";
        assert_eq!(super::group_held(ctl, ""), Some(5));
        assert_eq!(super::group_held(ctl, "g1"), Some(0));
        assert_eq!(super::group_held(ctl, "g2"), None);
    }
}
