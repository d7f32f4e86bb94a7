//! Every broker engine under random load: producers, groups of readers,
//! cancelled and non-blocking pushes and pulls, deliveries dropped unacked,
//! resets and capacity changes at random. Then every group must have acked every
//! message whose push returned Ok exactly once (a reset may remove what no
//! reader of that group had taken yet), no message more than once, each
//! producer's messages in push order, and a group's lone reader in order.
//!
//! Seeded: the single-threaded runs (paused clock) repeat exactly; the
//! multi-threaded run hunts races. A failure prints its seed; rerun one
//! seed with `DCHAN_SEED=N cargo test --test broker_random`, or run more
//! seeds with `DCHAN_SEEDS=COUNT`. A push that would block is never
//! delivered.

mod contract;

/// The in-process engine.
mod memory {
    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, MemoryBroker, Seq, Setting, TopicConfig, Wait, resolve_now,
    };
    use parking_lot::Mutex;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::contract::Under;

    type B = Under<MemoryBroker>;
    /// Whether the engine's waits follow tokio's clock, so that a paused
    /// clock can run the seeds exactly.
    const PAUSED_CLOCK: bool = true;

    async fn new_engine() -> B {
        Under::new(MemoryBroker::new())
    }

    include!("contract/random.rs");
}

/// The durable engine, on a fresh data directory (default sync mode).
mod durable {
    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::durable::DurableBroker;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, Seq, Setting, TopicConfig, Wait, resolve_now,
    };
    use parking_lot::Mutex;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::contract::Under;

    type B = Under<DurableBroker>;
    /// Whether the engine's waits follow tokio's clock, so that a paused
    /// clock can run the seeds exactly.
    const PAUSED_CLOCK: bool = true;

    async fn new_engine() -> B {
        super::contract::durable()
    }

    include!("contract/random.rs");
}

#[path = "nats/mod.rs"]
mod nats;

/// The JetStream engine, on a one-node NATS server of its own per run.
/// Its waits are on the real clock (JetStream's), so only the
/// multi-threaded runs apply.
mod jetstream {
    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use bytes::Bytes;
    use dchan::broker::{
        Broker, Cut, Delivery, Error, JetStreamBroker, JetStreamConfig, Seq, Setting, TopicConfig,
        Wait, resolve_now,
    };
    use parking_lot::Mutex;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::contract::Under;

    type B = Under<JetStreamBroker>;
    const PAUSED_CLOCK: bool = false;

    async fn new_engine() -> B {
        let cluster = super::nats::Cluster::start(1).await;
        let engine = JetStreamBroker::connect(JetStreamConfig {
            servers: cluster.url_list(),
            // A delivery that reached no reader (its pull's request was
            // answered after the client gave up on it) comes back then.
            ack_wait: Duration::from_secs(2),
            // Readers' pullers stop between the runs' reads and start
            // again: the rules hold across that too.
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

    include!("contract/random.rs");
}
