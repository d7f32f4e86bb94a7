//! dchan itself as a system under test, through `dchan::client`.
//!
//! A connection is a [`Client`] attached as the reader group; a writer is
//! one open data fid ([`Pusher`], which takes concurrent pushes); a reader is
//! a pool of open data fids ([`Puller`]s, one pull in flight each), grown
//! to as many as there are pulls in flight (the warm-up fills the pool
//! before the timed window). Sessions speak 9P2000.L by default, the dialect
//! of Linux mounts and of the CLI: there a message takes a second Tread for
//! the end-of-message zero of the Linux read loop rule, where plain 9P2000
//! (`--dialect 9p2000`) takes one. A topic is removed through the root ctl
//! file; what a group still holds is its `lag` plus `unacked` in the
//! topic's ctl file.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Conn, Reader, Result, System, Writer};
use crate::client::{Client, Options, Puller, Pusher, TopicSettings};
use crate::proto::Dialect;

pub struct Dchan {
    addr: String,
    dialect: Dialect,
    /// A connection for creating topics.
    admin: Client,
}

impl Dchan {
    pub async fn connect(addr: &str, dialect: Dialect) -> Result<Dchan> {
        let admin = Client::connect(addr, &Options::group("").dialect(dialect)).await?;
        Ok(Dchan {
            addr: addr.to_string(),
            dialect,
            admin,
        })
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
        Some(format!("{}, memory", self.dialect.as_str()))
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
        let opts = Options::group(group).dialect(self.dialect);
        Ok(DchanConn {
            client: Arc::new(Client::connect(&self.addr, &opts).await?),
        })
    }
}

impl Conn for DchanConn {
    type Writer = Pusher;
    type Reader = Pullers;

    async fn writer(&self, topic: &str) -> Result<Pusher> {
        Ok(self.client.open_push(topic).await?)
    }

    async fn reader(&self, topic: &str) -> Result<Pullers> {
        // Reading the offset makes the group exist before anything is pushed.
        self.client.offset(topic).await?;
        let first = self.client.open_data(topic).await?;
        Ok(Pullers {
            client: self.client.clone(),
            topic: topic.to_string(),
            idle: Mutex::new(vec![first]),
        })
    }
}

impl Writer for Pusher {
    async fn push(&self, msg: Bytes) -> Result<()> {
        Ok(Pusher::push(self, msg).await?)
    }
}

impl Reader for Pullers {
    async fn pull(&self) -> Result<Bytes> {
        let idle = self.idle.lock().pop();
        let mut puller = match idle {
            Some(p) => p,
            None => self.client.open_data(&self.topic).await?,
        };
        let msg = puller.next().await?;
        self.idle.lock().push(puller);
        msg.ok_or_else(|| "topic closed".into())
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
