//! Shared by the engine tests: a RAM-tree server started in-process on
//! 127.0.0.1 (port 0), and a raw 9P client over a real socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dchan::engine::{self, Addr, Limits, Listener};
use dchan::proto::codec::{decode, encode};
use dchan::proto::*;
use dchan::ramfs::RamFs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Fails a test that would otherwise hang; never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A server on an ephemeral port, stopped when `stop` is called.
pub struct Server {
    pub addr: SocketAddr,
    pub tree: Arc<RamFs>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(limits: Limits) -> Server {
        let l = Listener::bind(&"tcp!127.0.0.1!0".parse::<Addr>().unwrap())
            .await
            .unwrap();
        let Addr::Tcp { port, .. } = l.local_addr().unwrap() else {
            unreachable!()
        };
        let tree = Arc::new(RamFs::new());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(engine::serve(vec![l], tree.clone(), limits, async {
            let _ = rx.await;
        }));
        Server {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tree,
            stop: Some(tx),
            task,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Shuts the server down and waits until every connection is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// A raw 9P client.
pub struct Client {
    pub stream: TcpStream,
    pub dialect: Dialect,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            dialect: Dialect::P2000,
        }
    }

    /// A connection that has agreed on `dialect` and attached fid 0.
    pub async fn session(addr: SocketAddr, dialect: Dialect) -> Client {
        let mut c = Client::connect(addr).await;
        c.version(8192, dialect.as_str()).await;
        c.dialect = dialect;
        c.attach(0, "").await;
        c
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, tag: Tag, body: Fcall) {
        let mut buf = BytesMut::new();
        encode(&Msg { tag, body }, self.dialect, &mut buf);
        self.send_raw(&buf).await;
    }

    /// The next message, or `None` if the server closed the connection.
    pub async fn try_recv(&mut self) -> Option<Msg> {
        tokio::time::timeout(PATIENCE, async {
            let mut size = [0u8; 4];
            if self.stream.read_exact(&mut size).await.is_err() {
                return None;
            }
            let n = u32::from_le_bytes(size) as usize;
            let mut frame = vec![0u8; n];
            frame[..4].copy_from_slice(&size);
            self.stream.read_exact(&mut frame[4..]).await.ok()?;
            Some(decode(Bytes::from(frame), self.dialect).expect("server sent a valid message"))
        })
        .await
        .expect("a reply or a close in time")
    }

    pub async fn recv(&mut self) -> Msg {
        self.try_recv().await.expect("connection open")
    }

    pub async fn rpc(&mut self, tag: Tag, body: Fcall) -> Fcall {
        self.send(tag, body).await;
        let m = self.recv().await;
        assert_eq!(m.tag, tag, "reply {:?}", m.body);
        m.body
    }

    /// True when the server closes the connection (after any replies).
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.try_recv().await {
                None => return true,
                Some(_) => continue,
            }
        }
    }

    pub async fn version(&mut self, msize: u32, version: &str) -> Fcall {
        self.rpc(
            NOTAG,
            Fcall::Tversion {
                msize,
                version: version.into(),
            },
        )
        .await
    }

    pub async fn attach(&mut self, fid: Fid, aname: &str) -> Fcall {
        let r = self
            .rpc(
                1,
                Fcall::Tattach {
                    fid,
                    afid: NOFID,
                    uname: "glenda".into(),
                    aname: aname.into(),
                    n_uname: 1000,
                },
            )
            .await;
        assert!(matches!(r, Fcall::Rattach { .. }), "{r:?}");
        r
    }

    /// A Tattach of `fid` whatever the reply.
    pub async fn attach_raw(&mut self, fid: Fid) -> Fcall {
        let body = Fcall::Tattach {
            fid,
            afid: NOFID,
            uname: "glenda".into(),
            aname: String::new(),
            n_uname: 1000,
        };
        self.rpc(1, body).await
    }

    pub async fn walk(&mut self, fid: Fid, newfid: Fid, names: &[&str]) -> Fcall {
        let wnames = names.iter().map(|s| s.to_string()).collect();
        self.rpc(
            1,
            Fcall::Twalk {
                fid,
                newfid,
                wnames,
            },
        )
        .await
    }

    /// Opens `fid` for reading and writing in this dialect.
    pub async fn open(&mut self, fid: Fid, write: bool) -> Fcall {
        let body = match self.dialect {
            Dialect::P2000L => Fcall::Tlopen {
                fid,
                flags: if write { 2 } else { 0 },
            },
            _ => Fcall::Topen {
                fid,
                mode: if write { ORDWR } else { OREAD },
            },
        };
        self.rpc(1, body).await
    }

    /// Creates `name` in the directory `fid` (which then names the new file, open).
    pub async fn create(&mut self, fid: Fid, name: &str) -> Fcall {
        let body = match self.dialect {
            Dialect::P2000L => Fcall::Tlcreate {
                fid,
                name: name.into(),
                flags: 2,
                mode: 0o644,
                gid: 0,
            },
            _ => Fcall::Tcreate {
                fid,
                name: name.into(),
                perm: 0o644,
                mode: ORDWR,
                extension: String::new(),
            },
        };
        self.rpc(1, body).await
    }

    pub async fn read(&mut self, fid: Fid, offset: u64, count: u32) -> Fcall {
        self.rpc(1, Fcall::Tread { fid, offset, count }).await
    }

    pub async fn write(&mut self, fid: Fid, offset: u64, data: &[u8]) -> Fcall {
        let data = Bytes::copy_from_slice(data);
        self.rpc(1, Fcall::Twrite { fid, offset, data }).await
    }

    pub async fn clunk(&mut self, fid: Fid) -> Fcall {
        self.rpc(1, Fcall::Tclunk { fid }).await
    }
}

/// True for an error reply of any dialect.
pub fn is_error(f: &Fcall) -> bool {
    matches!(f, Fcall::Rerror { .. } | Fcall::Rlerror { .. })
}

/// Asserts `f` is an error reply.
#[track_caller]
pub fn assert_error(f: &Fcall) {
    assert!(is_error(f), "expected an error, got {f:?}");
}

/// The data of an Rread.
#[track_caller]
pub fn data(f: &Fcall) -> Bytes {
    match f {
        Fcall::Rread { data } => data.clone(),
        other => panic!("expected Rread, got {other:?}"),
    }
}
