//! NATS as systems under test. Core: a topic is a subject, a push a publish
//! (no acknowledgement, nothing kept: a slow reader loses messages), a group
//! a queue group. JetStream: a topic is a stream on file storage, a push an
//! acknowledged publish, a group a durable pull consumer whose every message
//! is acked.

use bytes::Bytes;
use dchan::bench::{Conn, Reader, Result, System, Workload, Writer};
use futures_util::StreamExt;

/// NATS core publish/subscribe.
pub struct Core {
    addr: String,
}

impl Core {
    pub fn new(addr: &str) -> Result<Core> {
        Ok(Core {
            addr: addr.to_string(),
        })
    }
}

/// A client connection and the queue group its readers join.
pub struct CoreConn {
    client: async_nats::Client,
    group: String,
}

pub struct Publisher {
    client: async_nats::Client,
    subject: String,
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

    fn supports(&self, workload: Workload) -> bool {
        workload != Workload::Backlog
    }

    async fn create(&self, _topic: &str, _capacity: u64) -> Result<()> {
        Ok(())
    }

    async fn connect(&self, group: &str) -> Result<CoreConn> {
        Ok(CoreConn {
            client: async_nats::connect(&self.addr).await?,
            group: group_name(group),
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
}

/// NATS JetStream with durable pull consumers.
pub struct JetStream {
    addr: String,
}

impl JetStream {
    pub fn new(addr: &str) -> Result<JetStream> {
        Ok(JetStream {
            addr: addr.to_string(),
        })
    }
}

pub struct JsConn {
    js: async_nats::jetstream::Context,
    group: String,
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
        "jetstream"
    }

    fn supports(&self, workload: Workload) -> bool {
        // Ten thousand streams and consumers take minutes to set up.
        workload != Workload::Conns
    }

    async fn create(&self, topic: &str, _capacity: u64) -> Result<()> {
        let js = async_nats::jetstream::new(async_nats::connect(&self.addr).await?);
        let _ = js.delete_stream(topic).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: topic.to_string(),
            subjects: vec![topic.to_string()],
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    async fn connect(&self, group: &str) -> Result<JsConn> {
        Ok(JsConn {
            js: async_nats::jetstream::new(async_nats::connect(&self.addr).await?),
            group: group_name(group),
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
                    ..Default::default()
                },
            )
            .await?;
        Ok(JsSubscription {
            messages: tokio::sync::Mutex::new(consumer.messages().await?),
        })
    }
}

impl Writer for JsPublisher {
    async fn push(&self, msg: Bytes) -> Result<()> {
        self.js.publish(self.subject.clone(), msg).await?.await?;
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
}
