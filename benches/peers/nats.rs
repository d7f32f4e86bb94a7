//! NATS as systems under test.
//!
//! Core: a topic is a subject, a push a publish, a group a queue group.
//! Nothing is kept (a slow reader loses messages), so what a group has not
//! received once draining stops is lost. A publish returns once buffered in
//! the client; to acknowledge as the others do, every `--depth`-th push
//! also flushes (a PING/PONG round trip: the server has everything before).
//!
//! JetStream: a topic is a stream on *memory* storage with interest
//! retention (a message goes once every group has acked it, as dchan drops
//! it once every group read it), a push an acknowledged publish, a group a
//! durable pull consumer whose every message is acked before the pull
//! returns (the ack is sent, not confirmed). The consumer allows as many
//! unacknowledged messages as the group has pulls in flight (`max_ack_pending`)
//! and each reader asks for `--depth` at a time, so "depth 1" is depth 1.
//! With `--batch` k: core publishes k and flushes once per batch (times
//! the depth), a reader takes what has arrived, up to k; JetStream has k
//! publishes in flight per push, its consumers pull batches of depth × k
//! (as many unacked allowed), and a reader takes up to k of them at once.
//! Streams are deleted after each run.

use bytes::Bytes;
use dchan::bench::{Conn, Reader, Result, System, Workload, Writer};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// NATS core publish/subscribe.
pub struct Core {
    addr: String,
    /// Pushes per flush: the run's depth.
    depth: u64,
}

impl Core {
    pub fn new(addr: &str, depth: usize) -> Result<Core> {
        Ok(Core {
            addr: addr.to_string(),
            depth: depth.max(1) as u64,
        })
    }
}

/// A client connection and the queue group its readers join.
pub struct CoreConn {
    client: async_nats::Client,
    group: String,
    depth: u64,
}

pub struct Publisher {
    client: async_nats::Client,
    subject: String,
    /// Pushes so far; every `depth`-th one flushes.
    pushed: AtomicU64,
    depth: u64,
}

/// A subscription; pulls in flight take turns on it.
pub struct Subscription {
    sub: tokio::sync::Mutex<async_nats::Subscriber>,
}

impl System for Core {
    type Conn = CoreConn;

    fn name(&self) -> &'static str {
        "nats"
    }

    fn variant(&self) -> Option<String> {
        Some(format!("core, flush every {} publishes", self.depth))
    }

    fn supports(&self, workload: Workload) -> bool {
        workload != Workload::Backlog
    }

    async fn create(&self, _topic: &str, _capacity: u64) -> Result<()> {
        Ok(())
    }

    async fn remove(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    /// Core NATS keeps nothing: once draining stopped, a message a group
    /// has not received was dropped.
    async fn pending(&self, _topic: &str, _group: &str) -> Option<u64> {
        Some(0)
    }

    async fn connect(&self, group: &str) -> Result<CoreConn> {
        Ok(CoreConn {
            client: async_nats::connect(&self.addr).await?,
            group: group_name(group),
            depth: self.depth,
        })
    }
}

/// The default group "" as a NATS queue group name.
fn group_name(group: &str) -> String {
    if group.is_empty() {
        "default".to_string()
    } else {
        group.to_string()
    }
}

impl Conn for CoreConn {
    type Writer = Publisher;
    type Reader = Subscription;

    async fn writer(&self, topic: &str) -> Result<Publisher> {
        Ok(Publisher {
            client: self.client.clone(),
            subject: topic.to_string(),
            pushed: AtomicU64::new(0),
            depth: self.depth,
        })
    }

    async fn reader(&self, topic: &str) -> Result<Subscription> {
        let sub = self
            .client
            .queue_subscribe(topic.to_string(), self.group.clone())
            .await?;
        // A round trip, so the server has the subscription before any push.
        self.client.flush().await?;
        Ok(Subscription {
            sub: tokio::sync::Mutex::new(sub),
        })
    }
}

impl Writer for Publisher {
    async fn push(&self, msg: Bytes) -> Result<()> {
        self.client.publish(self.subject.clone(), msg).await?;
        if (self.pushed.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.depth) {
            self.client.flush().await?;
        }
        Ok(())
    }

    /// k publishes (buffered by the client), then the depth's flushes.
    async fn push_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        for m in msgs {
            self.client.publish(self.subject.clone(), m).await?;
        }
        if (self.pushed.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.depth) {
            self.client.flush().await?;
        }
        Ok(())
    }
}

impl Reader for Subscription {
    async fn pull(&self) -> Result<Bytes> {
        match self.sub.lock().await.next().await {
            Some(m) => Ok(m.payload),
            None => Err("subscription ended".into()),
        }
    }

    /// The next message, waiting, then those already received (up to k).
    async fn pull_batch(&self, max: usize) -> Result<Vec<Bytes>> {
        use futures_util::FutureExt;
        let mut sub = self.sub.lock().await;
        let Some(first) = sub.next().await else {
            return Err("subscription ended".into());
        };
        let mut msgs = vec![first.payload];
        while msgs.len() < max {
            match sub.next().now_or_never() {
                Some(Some(m)) => msgs.push(m.payload),
                _ => break,
            }
        }
        Ok(msgs)
    }
}

/// NATS JetStream with durable pull consumers, on memory storage (or,
/// `file`, on file storage: the durable rows' peer).
pub struct JetStream {
    addr: String,
    /// Streams and consumers on file storage.
    file: bool,
    /// Each stream's replicas (1, or 3 on a 3-node cluster).
    replicas: usize,
    /// For creating and deleting streams, and asking consumers' state.
    admin: async_nats::jetstream::Context,
    /// Messages each reader asks for at a time: the run's depth.
    batch: usize,
    /// Unacknowledged messages a group's consumer may have out: its pulls
    /// in flight.
    ack_pending: i64,
}

impl JetStream {
    /// Streams replicated `n` times.
    pub fn with_replicas(self, n: usize) -> JetStream {
        JetStream {
            replicas: n.max(1),
            ..self
        }
    }

    pub async fn new(
        addr: &str,
        depth: usize,
        group_in_flight: usize,
        file: bool,
    ) -> Result<JetStream> {
        Ok(JetStream {
            addr: addr.to_string(),
            file,
            replicas: 1,
            admin: async_nats::jetstream::new(async_nats::connect(addr).await?),
            // At least 2: with 1 (and one ack pending), async-nats's pull
            // stream stalled for more than the drain's 10 s (pipe --depth
            // 1, NATS 2.15.1), failing JetStream's own row.
            batch: depth.max(2),
            ack_pending: group_in_flight.max(2) as i64,
        })
    }
}

pub struct JsConn {
    js: async_nats::jetstream::Context,
    file: bool,
    group: String,
    batch: usize,
    ack_pending: i64,
}

pub struct JsPublisher {
    js: async_nats::jetstream::Context,
    subject: String,
}

/// A durable consumer's message stream; pulls in flight take turns on it.
pub struct JsSubscription {
    messages: tokio::sync::Mutex<async_nats::jetstream::consumer::pull::Stream>,
}

impl System for JetStream {
    type Conn = JsConn;

    fn name(&self) -> &'static str {
        if self.file {
            "jetstream-file"
        } else {
            "jetstream"
        }
    }

    fn variant(&self) -> Option<String> {
        Some(format!(
            "{} storage, {} replica(s), interest retention, batch {}, max_ack_pending {}",
            if self.file { "file" } else { "memory" },
            self.replicas,
            self.batch,
            self.ack_pending
        ))
    }

    fn supports(&self, workload: Workload) -> bool {
        // Ten thousand streams and consumers take minutes to set up.
        workload != Workload::Conns
    }

    async fn create(&self, topic: &str, _capacity: u64) -> Result<()> {
        use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
        let _ = self.admin.delete_stream(topic).await;
        self.admin
            .create_stream(Config {
                name: topic.to_string(),
                subjects: vec![topic.to_string()],
                storage: if self.file {
                    StorageType::File
                } else {
                    StorageType::Memory
                },
                retention: RetentionPolicy::Interest,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn remove(&self, topic: &str) -> Result<()> {
        self.admin.delete_stream(topic).await?;
        Ok(())
    }

    /// The group's consumer: messages not yet delivered plus those
    /// delivered and not acked.
    async fn pending(&self, topic: &str, group: &str) -> Option<u64> {
        let stream = self.admin.get_stream(topic).await.ok()?;
        let info = stream.consumer_info(group_name(group)).await.ok()?;
        Some(info.num_pending + info.num_ack_pending as u64)
    }

    async fn connect(&self, group: &str) -> Result<JsConn> {
        Ok(JsConn {
            js: async_nats::jetstream::new(async_nats::connect(&self.addr).await?),
            file: self.file,
            group: group_name(group),
            batch: self.batch,
            ack_pending: self.ack_pending,
        })
    }
}

impl Conn for JsConn {
    type Writer = JsPublisher;
    type Reader = JsSubscription;

    async fn writer(&self, topic: &str) -> Result<JsPublisher> {
        Ok(JsPublisher {
            js: self.js.clone(),
            subject: topic.to_string(),
        })
    }

    async fn reader(&self, topic: &str) -> Result<JsSubscription> {
        use async_nats::jetstream::consumer::{AckPolicy, pull};
        let stream = self.js.get_stream(topic).await?;
        let consumer = stream
            .get_or_create_consumer(
                &self.group,
                pull::Config {
                    durable_name: Some(self.group.clone()),
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: self.ack_pending,
                    memory_storage: !self.file,
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await?;
        Ok(JsSubscription {
            messages: tokio::sync::Mutex::new(messages),
        })
    }
}

impl Writer for JsPublisher {
    async fn push(&self, msg: Bytes) -> Result<()> {
        self.js.publish(self.subject.clone(), msg).await?.await?;
        Ok(())
    }

    /// k asynchronous publishes in flight, then every acknowledgement.
    async fn push_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        let mut acks = Vec::with_capacity(msgs.len());
        for m in msgs {
            acks.push(self.js.publish(self.subject.clone(), m).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

impl Reader for JsSubscription {
    async fn pull(&self) -> Result<Bytes> {
        let m = match self.messages.lock().await.next().await {
            Some(m) => m?,
            None => return Err("consumer stream ended".into()),
        };
        m.ack().await?;
        Ok(m.payload.clone())
    }

    /// The next message, waiting, then those the pull batch already
    /// brought (up to k), each acked.
    async fn pull_batch(&self, max: usize) -> Result<Vec<Bytes>> {
        use futures_util::FutureExt;
        let mut messages = self.messages.lock().await;
        let mut got = match messages.next().await {
            Some(m) => vec![m?],
            None => return Err("consumer stream ended".into()),
        };
        while got.len() < max {
            match messages.next().now_or_never() {
                Some(Some(m)) => got.push(m?),
                _ => break,
            }
        }
        drop(messages);
        let mut msgs = Vec::with_capacity(got.len());
        for m in got {
            m.ack().await?;
            msgs.push(m.payload.clone());
        }
        Ok(msgs)
    }
}
