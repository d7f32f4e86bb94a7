//! Shared by the client and CLI tests: a real dchan server (the engine
//! serving the topic tree over the in-memory broker) on 127.0.0.1, port 0.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use dchan::broker::memory::MemoryBroker;
use dchan::engine::{self, Addr, Limits, Listener};
use dchan::tree::{TopicTree, TreeConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Fails a test that would otherwise hang; never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A server on an ephemeral port, in this process.
pub struct Server {
    /// Its address, as `tcp!127.0.0.1!PORT`.
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Limits::default()).await
    }

    /// A server with these limits on each connection.
    pub async fn start_with(limits: Limits) -> Server {
        let l = Listener::bind(&"tcp!127.0.0.1!0".parse::<Addr>().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tree = TopicTree::new(MemoryBroker::new(), TreeConfig::default(), || 0);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(engine::serve(vec![l], Arc::new(tree), limits, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    /// Shut the server down and wait until every connection is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// `fut`, or a panic if it takes longer than [`PATIENCE`].
pub async fn patiently<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .expect("took too long")
}
