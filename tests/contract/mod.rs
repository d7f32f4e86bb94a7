//! The broker contract, one suite for every engine: `rules.rs` holds the
//! tests, written against the `Broker` trait only, and `broker_rules.rs`
//! includes it once per engine, in a module that says what `Engine` is and
//! how to make a fresh one (`new_engine`).
//!
//! [`Under`] is the engine under test as the suite sees it: the trait's
//! operations, with the names taken as `&str` or a `Target` so that the
//! tests read as the broker's users write them.

#![allow(dead_code)] // each test binary uses part of it

use std::ops::Deref;

use dchan::broker::durable::{DurableBroker, Options};
use dchan::broker::{Broker, Result, Seq, Setting, Target, TopicConfig, TopicStatus};

/// An engine seen only through the `Broker` trait, with whatever must live
/// as long as it (a data directory, a NATS server's handle).
pub struct Under<E> {
    pub engine: E,
    pub _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<E> Under<E> {
    pub fn new(engine: E) -> Under<E> {
        Under {
            engine,
            _keep: None,
        }
    }
}

impl<E: Broker> Deref for Under<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.engine
    }
}

impl<E: Broker> Under<E> {
    pub async fn create(&self, name: &str, config: TopicConfig) -> Result<()> {
        Broker::create(&self.engine, name, config).await
    }
    pub async fn remove(&self, name: &str) -> Result<()> {
        Broker::remove(&self.engine, name).await
    }
    pub async fn status<'a>(&self, t: impl Into<Target<'a>>) -> Result<TopicStatus> {
        let t = t.into();
        Broker::status(&self.engine, t).await
    }
    pub async fn set<'a>(&self, t: impl Into<Target<'a>>, s: Setting) -> Result<()> {
        let t = t.into();
        Broker::set(&self.engine, t, s).await
    }
    pub async fn reset<'a>(&self, t: impl Into<Target<'a>>) -> Result<()> {
        let t = t.into();
        Broker::reset(&self.engine, t).await
    }
    pub async fn close<'a>(&self, t: impl Into<Target<'a>>) -> Result<()> {
        let t = t.into();
        Broker::close(&self.engine, t).await
    }
    pub async fn forget<'a>(&self, t: impl Into<Target<'a>>, group: &str) -> Result<()> {
        let t = t.into();
        Broker::forget(&self.engine, t, group).await
    }
    pub async fn offset<'a>(&self, t: impl Into<Target<'a>>, group: &str) -> Result<Seq> {
        let t = t.into();
        Broker::offset(&self.engine, t, group).await
    }
    pub async fn seek<'a>(&self, t: impl Into<Target<'a>>, group: &str, seq: Seq) -> Result<()> {
        let t = t.into();
        Broker::seek(&self.engine, t, group, seq).await
    }
}

/// The durable engine on a fresh data directory (default sync mode), which
/// lives as long as it. It keeps at most 512 bytes of each topic's messages
/// in memory and rolls its segments every 32 KiB, so that the rules hold
/// of messages read back from disk, across segments, as well.
pub fn durable() -> Under<DurableBroker> {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        memory: 512,
        segment_bytes: 32 << 10,
        ..Options::default()
    };
    let engine = DurableBroker::open(dir.path(), options).unwrap();
    Under {
        engine,
        _keep: Some(Box::new(dir)),
    }
}
