//! The broker contract, rule by rule, driven through the `Broker` trait as
//! the topic tree drives it, once per engine (tests/contract/). Blocking is
//! observed by polling a future once (it must stay pending) and completing
//! it after the event that frees it; the timeouts only turn a hang into a
//! failure.

mod contract;

/// The in-process engine.
mod memory {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, MemoryBroker, Seq, Setting, Target, TopicConfig, Wait,
        resolve_now,
    };
    use futures_util::poll;

    use super::contract::Under;

    type Engine = MemoryBroker;
    type B = Under<Engine>;

    async fn new_engine() -> B {
        Under::new(MemoryBroker::new())
    }

    include!("contract/rules.rs");
}

/// The durable engine, on a fresh data directory (default sync mode).
mod durable {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::durable::DurableBroker;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, Seq, Setting, Target, TopicConfig, Wait, resolve_now,
    };
    use futures_util::poll;

    use super::contract::Under;

    type Engine = DurableBroker;
    type B = Under<Engine>;

    async fn new_engine() -> B {
        super::contract::durable()
    }

    include!("contract/rules.rs");
}

#[path = "nats/mod.rs"]
mod nats;

/// The JetStream engine, on a one-node NATS server of its own per test
/// (scripts/setup-nats installs it). Where a rule cannot hold across
/// machines the test says so (`JETSTREAM`) and chapter 7 says why.
mod jetstream {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, JetStreamBroker, JetStreamConfig, Seq, Setting, Target,
        TopicConfig, Wait, resolve_now,
    };
    use futures_util::poll;

    use super::contract::Under;

    type Engine = JetStreamBroker;
    type B = Under<Engine>;

    async fn new_engine() -> B {
        let cluster = super::nats::Cluster::start(1).await;
        let engine = JetStreamBroker::connect(JetStreamConfig {
            servers: cluster.url_list(),
            // Each group's puller stops once idle this long, and the next
            // pull starts it again: every rule holds across that too.
            idle_puller: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("connect to the test's NATS");
        Under {
            engine,
            _keep: Some(Box::new(cluster)),
        }
    }

    include!("contract/rules.rs");
}

/// The same rules on a 3-node NATS cluster with every stream kept on all
/// three (`replicas = 3`), the deployment the JetStream engine is for:
/// each push and ack waits for a quorum, so the rules' timing is the
/// cluster's.
mod jetstream_r3 {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, JetStreamBroker, JetStreamConfig, Seq, Setting, Target,
        TopicConfig, Wait, resolve_now,
    };
    use futures_util::poll;

    use super::contract::Under;

    type Engine = JetStreamBroker;
    type B = Under<Engine>;

    async fn new_engine() -> B {
        let cluster = super::nats::Cluster::start(3).await;
        let engine = JetStreamBroker::connect(JetStreamConfig {
            servers: cluster.url_list(),
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect("connect to the test's NATS cluster");
        Under {
            engine,
            _keep: Some(Box::new(cluster)),
        }
    }

    include!("contract/rules.rs");
}
