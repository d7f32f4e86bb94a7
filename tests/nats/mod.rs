//! A NATS JetStream cluster for the JetStream engine's tests: 1 or 3
//! `nats-server` processes on loopback ports, their stores in a temporary
//! directory, each killed (by its own PID) when dropped, and each can be
//! killed with SIGKILL and started again mid-test. The binary is
//! `.venv/bin/nats-server` (scripts/setup-nats) unless DCHAN_NATS_SERVER
//! names another.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to elect its JetStream leader.
const READY: Duration = Duration::from_secs(30);

/// How long a fresh cluster may take before it is started again on new
/// ports: its ports were free when chosen, but another test process may
/// have taken one before nats-server bound it (a node that never answers,
/// seen as "not ready" after 30 s about once a CI run, passing at once on
/// a retry).
const FRESH_READY: Duration = Duration::from_secs(15);
const FRESH_ATTEMPTS: usize = 3;

pub fn nats_server() -> PathBuf {
    match std::env::var_os("DCHAN_NATS_SERVER") {
        Some(p) => p.into(),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server"),
    }
}

/// A port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node: its config and, while running, its process.
struct Node {
    config: PathBuf,
    /// Its standard output and error, appended to across restarts.
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

pub struct Cluster {
    nodes: Vec<Node>,
    /// Holds the stores and configs; removed on drop.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start `n` nodes (1, or 3 for a cluster) and wait until JetStream
    /// answers.
    pub async fn start(n: usize) -> Cluster {
        let mut why = String::new();
        for attempt in 1..=FRESH_ATTEMPTS {
            let cluster = Cluster::launch(n);
            let ready = async {
                cluster.ready_within(FRESH_READY).await?;
                cluster.placeable_within(FRESH_READY).await
            };
            match ready.await {
                Ok(()) => return cluster,
                Err(e) => {
                    why = e;
                    eprintln!("nats cluster, attempt {attempt}: {why}");
                }
            }
        }
        panic!("{why}");
    }

    /// Write the nodes' configs on fresh ports and start them.
    fn launch(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = dir.path().join(format!("n{i}"));
            let mut text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nmax_payload: 16MB\n\
                 jetstream {{ store_dir: {:?} }}\n",
                ports[i], store
            );
            if n > 1 {
                let list: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                text += &format!(
                    "cluster {{ name: dchan-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    routes[i],
                    list.join(", ")
                );
            }
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, text).unwrap();
            nodes.push(Node {
                config,
                log: dir.path().join(format!("n{i}.log")),
                port: ports[i],
                child: None,
            });
        }
        let mut cluster = Cluster { nodes, _dir: dir };
        for i in 0..n {
            cluster.restart(i);
        }
        cluster
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    pub fn url_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// The directory of the nodes' stores.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Kill node `i` with SIGKILL (by its PID).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop node `i` as an operator would (SIGTERM, by its PID): it
    /// writes its state out first.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Start node `i` (again), on its port and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .expect("open the node's log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log's handle"))
            .stderr(log)
            .spawn()
            .expect("start nats-server (scripts/setup-nats installs it)");
        self.nodes[i].child = Some(child);
    }

    /// Wait until JetStream answers account requests on every running node.
    pub async fn ready(&self) {
        if let Err(why) = self.ready_within(READY).await {
            panic!("{why}");
        }
    }

    /// [`Cluster::ready`] within `limit`; else which node was not, with
    /// the end of its log.
    async fn ready_within(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = format!("nats://127.0.0.1:{}", node.port);
            loop {
                if start.elapsed() >= limit {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
                    return Err(format!(
                        "JetStream at {url} not ready after {limit:?}; its log ends:\n{tail}"
                    ));
                }
                let ok = async {
                    let c = async_nats::connect(&url).await.ok()?;
                    async_nats::jetstream::new(c).query_account().await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(2), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Every node answering is not yet every node placeable: the meta
    /// leader may still count one offline ("no suitable peers for
    /// placement", seen once in CI at a fresh cluster's first bucket). A
    /// stream on all `n` nodes, made and deleted, is what the engine's
    /// first bucket needs.
    async fn placeable_within(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let n = self.nodes.len();
        if n == 1 {
            return Ok(());
        }
        let url = format!("nats://127.0.0.1:{}", self.nodes[0].port);
        loop {
            let placed = async {
                let js = async_nats::jetstream::new(async_nats::connect(&url).await.ok()?);
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: "ready_probe".into(),
                    subjects: vec!["ready_probe".into()],
                    num_replicas: n,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await
                .ok()?;
                js.delete_stream("ready_probe").await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(5), placed)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(format!("no stream of {n} replicas placed within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The name of the node that leads `stream`'s replicas, if any.
    pub async fn leader(&self, stream: &str) -> Option<usize> {
        let url = self.url_list().into_iter().find(|_| true)?;
        let c = async_nats::connect(url).await.ok()?;
        let mut s = async_nats::jetstream::new(c)
            .get_stream(stream)
            .await
            .ok()?;
        let name = s.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
        name.strip_prefix('n')?.parse().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
