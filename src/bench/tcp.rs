//! The floor: a raw TCP echo server, and the [`System`] that pushes a message
//! by writing it to a socket and pulls it by reading the echo back.
//!
//! Every topic is one socket to the echo server; its writer and its reader
//! are the two halves. No broker can beat this, so it is what the others
//! are measured against (rendezvous = ping-pong, pipe = a stream through
//! the echo, conns = N sockets each waiting for one line).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;

use super::{Conn, Reader, Result, System, Workload, Writer};

/// Echo every byte back on every connection accepted, until the process ends.
pub async fn serve_echo(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// One socket per topic name, each made once by whoever needs it first.
type Sockets = Arc<Mutex<HashMap<String, Arc<OnceCell<Arc<Socket>>>>>>;

/// The echo server as a system under test.
pub struct Tcp {
    addr: String,
    /// One socket per topic, made on first use by its writer or its reader.
    /// The lock is a parking_lot mutex, never held across an `.await`.
    sockets: Sockets,
}

impl Tcp {
    pub fn new(addr: &str) -> Tcp {
        Tcp {
            addr: addr.to_string(),
            sockets: Arc::default(),
        }
    }
}

/// A socket to the echo server, split so a write and a read can be in
/// flight at once (tokio mutexes: each is held while its half is in use).
pub struct Socket {
    read: tokio::sync::Mutex<BufReader<OwnedReadHalf>>,
    write: tokio::sync::Mutex<OwnedWriteHalf>,
}

/// A handle on the echo server's sockets.
pub struct TcpConn {
    addr: String,
    sockets: Sockets,
}

impl TcpConn {
    async fn socket(&self, topic: &str) -> Result<Arc<Socket>> {
        let cell = self
            .sockets
            .lock()
            .entry(topic.to_string())
            .or_default()
            .clone();
        let socket = cell
            .get_or_try_init(|| async {
                let s = TcpStream::connect(&self.addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok::<_, std::io::Error>(Arc::new(Socket {
                    read: tokio::sync::Mutex::new(BufReader::new(r)),
                    write: tokio::sync::Mutex::new(w),
                }))
            })
            .await?;
        Ok(socket.clone())
    }
}

impl System for Tcp {
    type Conn = TcpConn;

    fn name(&self) -> &'static str {
        "tcp"
    }

    fn supports(&self, workload: Workload) -> bool {
        matches!(
            workload,
            Workload::Rendezvous | Workload::Pipe | Workload::Conns
        )
    }

    fn echoes(&self) -> bool {
        true
    }

    async fn create(&self, _topic: &str, _capacity: u64) -> Result<()> {
        Ok(())
    }

    async fn remove(&self, topic: &str) -> Result<()> {
        self.sockets.lock().remove(topic);
        Ok(())
    }

    async fn connect(&self, _group: &str) -> Result<TcpConn> {
        Ok(TcpConn {
            addr: self.addr.clone(),
            sockets: self.sockets.clone(),
        })
    }
}

impl Conn for TcpConn {
    type Writer = Arc<Socket>;
    type Reader = Arc<Socket>;

    async fn writer(&self, topic: &str) -> Result<Arc<Socket>> {
        self.socket(topic).await
    }

    async fn reader(&self, topic: &str) -> Result<Arc<Socket>> {
        self.socket(topic).await
    }
}

impl Writer for Arc<Socket> {
    async fn push(&self, msg: Bytes) -> Result<()> {
        self.write.lock().await.write_all(&msg).await?;
        Ok(())
    }

    /// The k messages in one write.
    async fn push_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        let joined = msgs.concat();
        self.write.lock().await.write_all(&joined).await?;
        Ok(())
    }
}

impl Reader for Arc<Socket> {
    async fn pull(&self) -> Result<Bytes> {
        let mut line = Vec::with_capacity(64);
        let n = self.read.lock().await.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err("echo server closed the connection".into());
        }
        Ok(line.into())
    }

    /// The first line, waiting for it, then the lines already buffered
    /// (at most `max` in all).
    async fn pull_batch(&self, max: usize) -> Result<Vec<Bytes>> {
        let mut read = self.read.lock().await;
        let mut msgs = Vec::with_capacity(max);
        while msgs.len() < max {
            if !msgs.is_empty() && !read.buffer().contains(&b'\n') {
                break;
            }
            let mut line = Vec::with_capacity(64);
            if read.read_until(b'\n', &mut line).await? == 0 {
                return Err("echo server closed the connection".into());
            }
            msgs.push(line.into());
        }
        Ok(msgs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Options, run};
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        opts: Options,
    }

    #[tokio::test]
    async fn workloads_run_clean_against_the_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve_echo(listener));
        let opts = Args::parse_from(["x", "--secs", "0.2", "--conns", "50", "--depth", "8"]).opts;
        let sys = Tcp::new(&addr);
        for w in [Workload::Rendezvous, Workload::Pipe, Workload::Conns] {
            let r = run(&sys, w, &opts).await;
            assert_eq!(r.error, None, "{w:?}: {r:?}");
            assert!(r.messages > 0 && r.check.is_clean(), "{r:?}");
        }
        let r = run(&sys, Workload::Queue, &opts).await;
        assert!(r.error.unwrap().starts_with("n/a"));
    }
}
