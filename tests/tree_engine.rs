//! The topic tree behind the 9P engine on a real socket: a push and a pull
//! in 9P bytes (the project's codec), the way a client sends them.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dchan::broker::memory::MemoryBroker;
use dchan::engine::{self, Limits, Listener};
use dchan::proto::codec::{decode, encode};
use dchan::proto::frame::FrameDecoder;
use dchan::proto::*;
use dchan::tree::{TopicTree, TreeConfig};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

const MSIZE: u32 = 8192;

/// One 9P connection, speaking raw frames.
struct Conn {
    rd: FramedRead<OwnedReadHalf, FrameDecoder>,
    wr: OwnedWriteHalf,
    dialect: Dialect,
}

impl Conn {
    async fn send(&mut self, tag: Tag, body: Fcall) {
        let mut out = BytesMut::new();
        encode(&Msg { tag, body }, self.dialect, &mut out);
        self.wr.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Msg {
        let frame = tokio::time::timeout(Duration::from_secs(10), self.rd.next())
            .await
            .expect("no reply")
            .expect("connection closed")
            .unwrap();
        decode(frame, self.dialect).unwrap()
    }

    async fn rpc(&mut self, tag: Tag, body: Fcall) -> Fcall {
        self.send(tag, body).await;
        let m = self.recv().await;
        assert_eq!(m.tag, tag);
        m.body
    }

    /// Version, then attach `aname` on fid 0.
    async fn connect(port: u16, dialect: Dialect, aname: &str) -> Conn {
        let (r, w) = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap()
            .into_split();
        let mut c = Conn {
            rd: FramedRead::new(r, FrameDecoder::new(MSIZE)),
            wr: w,
            dialect,
        };
        let v = c
            .rpc(
                NOTAG,
                Fcall::Tversion {
                    msize: MSIZE,
                    version: dialect.as_str().into(),
                },
            )
            .await;
        assert!(matches!(v, Fcall::Rversion { .. }), "{v:?}");
        let a = c
            .rpc(
                1,
                Fcall::Tattach {
                    fid: 0,
                    afid: NOFID,
                    uname: "glenda".into(),
                    aname: aname.into(),
                    n_uname: 1000,
                },
            )
            .await;
        assert!(matches!(a, Fcall::Rattach { .. }), "{a:?}");
        c
    }

    /// Walk from the root to `path` as `fid` and open it (Tlopen flags).
    async fn open(&mut self, fid: Fid, path: &str, flags: u32) {
        let wnames = path.split('/').map(String::from).collect();
        let w = self
            .rpc(
                2,
                Fcall::Twalk {
                    fid: 0,
                    newfid: fid,
                    wnames,
                },
            )
            .await;
        assert!(matches!(w, Fcall::Rwalk { .. }), "{w:?}");
        let o = self.rpc(3, Fcall::Tlopen { fid, flags }).await;
        assert!(matches!(o, Fcall::Rlopen { .. }), "{o:?}");
    }
}

#[tokio::test]
async fn push_and_pull_over_9p() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tree = Arc::new(TopicTree::new(
        MemoryBroker::new(),
        TreeConfig::default(),
        || 0,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engine::serve(
        vec![Listener::Tcp(tcp)],
        tree,
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let mut reader = Conn::connect(port, Dialect::P2000L, "").await;
    let mut writer = Conn::connect(port, Dialect::P2000L, "").await;

    // make the topic through the root ctl
    writer.open(1, "ctl", 1).await;
    let r = writer
        .rpc(
            4,
            Fcall::Twrite {
                fid: 1,
                offset: 0,
                data: Bytes::from_static(b"create jobs\n"),
            },
        )
        .await;
    assert_eq!(r, Fcall::Rwrite { count: 12 });

    // a blocked read, then a push that waits for it (capacity 0)
    reader.open(1, "jobs/data", 0).await;
    let max = MSIZE - IOHDRSZ;
    reader
        .send(
            10,
            Fcall::Tread {
                fid: 1,
                offset: 0,
                count: max,
            },
        )
        .await;
    writer.open(2, "jobs/data", 1).await;
    let w = writer
        .rpc(
            11,
            Fcall::Twrite {
                fid: 2,
                offset: 0,
                data: Bytes::from_static(b"hello\n"),
            },
        )
        .await;
    assert_eq!(w, Fcall::Rwrite { count: 6 });
    let got = reader.recv().await;
    assert_eq!(got.tag, 10);
    assert_eq!(
        got.body,
        Fcall::Rread {
            data: Bytes::from_static(b"hello\n")
        }
    );
    // the Linux read loop: a zero ends that read(2)
    let z = reader
        .rpc(
            12,
            Fcall::Tread {
                fid: 1,
                offset: 6,
                count: max - 6,
            },
        )
        .await;
    assert_eq!(z, Fcall::Rread { data: Bytes::new() });

    // a bad ctl command comes back as an error
    let e = writer
        .rpc(
            13,
            Fcall::Twrite {
                fid: 1,
                offset: 0,
                data: Bytes::from_static(b"frob\n"),
            },
        )
        .await;
    assert!(matches!(e, Fcall::Rlerror { ecode: 22 }), "{e:?}");

    drop((reader, writer));
    stop_server(stop, server).await;
}

/// A server on an ephemeral port and a way to stop it.
async fn start() -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_with(Limits::default()).await
}

/// Stop a server from `start` and wait (bounded) for it to end.
async fn stop_server(stop: tokio::sync::oneshot::Sender<()>, server: tokio::task::JoinHandle<()>) {
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop")
        .unwrap();
}

async fn start_with(
    limits: Limits,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tree = Arc::new(TopicTree::new(
        MemoryBroker::new(),
        TreeConfig::default(),
        || 0,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engine::serve(
        vec![Listener::Tcp(tcp)],
        tree,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    (port, stop, server)
}

/// A Tread whose offset is near u64::MAX (a hostile or confused client)
/// gets the message, and the connection goes on.
#[tokio::test]
async fn a_read_at_the_largest_offset_does_not_kill_the_connection() {
    let (port, stop, server) = start().await;
    let mut c = Conn::connect(port, Dialect::P2000L, "").await;
    c.open(1, "ctl", 1).await;
    let r = c
        .rpc(
            4,
            Fcall::Twrite {
                fid: 1,
                offset: 0,
                data: Bytes::from_static(b"create t capacity=5\n"),
            },
        )
        .await;
    assert!(matches!(r, Fcall::Rwrite { .. }), "{r:?}");
    c.open(2, "t/data", 2).await;
    let w = c
        .rpc(
            5,
            Fcall::Twrite {
                fid: 2,
                offset: 0,
                data: Bytes::from_static(b"one\ntwo\n"),
            },
        )
        .await;
    assert_eq!(w, Fcall::Rwrite { count: 8 });
    let r = c
        .rpc(
            6,
            Fcall::Tread {
                fid: 2,
                offset: u64::MAX - 1,
                count: 100,
            },
        )
        .await;
    assert_eq!(
        r,
        Fcall::Rread {
            data: Bytes::from_static(b"one\n")
        }
    );
    let r = c
        .rpc(
            7,
            Fcall::Tread {
                fid: 2,
                offset: 0,
                count: 100,
            },
        )
        .await;
    assert_eq!(
        r,
        Fcall::Rread {
            data: Bytes::from_static(b"two\n")
        }
    );
    drop(c);
    stop_server(stop, server).await;
}

impl Conn {
    /// One line of a topic's ctl text, e.g. `blocked_writers`.
    async fn status(&mut self, topic: &str, key: &str) -> u64 {
        self.open(90, &format!("{topic}/ctl"), 0).await;
        let r = self
            .rpc(
                91,
                Fcall::Tread {
                    fid: 90,
                    offset: 0,
                    count: 4096,
                },
            )
            .await;
        self.rpc(92, Fcall::Tclunk { fid: 90 }).await;
        let Fcall::Rread { data } = r else {
            panic!("{r:?}")
        };
        let text = String::from_utf8_lossy(&data).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    }

    async fn ctl(&mut self, path: &str, cmd: &str) -> Fcall {
        self.open(80, path, 1).await;
        let r = self
            .rpc(
                81,
                Fcall::Twrite {
                    fid: 80,
                    offset: 0,
                    data: Bytes::from(cmd.to_string()),
                },
            )
            .await;
        self.rpc(82, Fcall::Tclunk { fid: 80 }).await;
        r
    }
}

/// Issue 14.4: walk, open, write a line without its newline, clunk, again
/// and again on one connection without waiting, on a capacity-0 topic with
/// no reader: each clunk waits to push its partial line, as a request in
/// flight, so past the connection's limit such a clunk fails with EAGAIN
/// (its partial line dropped), and once the client has gone nothing waits.
#[tokio::test]
async fn clunks_with_partial_lines_count_against_the_limit_and_go_with_the_client() {
    let limits = Limits {
        max_in_flight: 8,
        ..Limits::default()
    };
    let (port, stop, server) = start_with(limits).await;
    let mut admin = Conn::connect(port, Dialect::P2000L, "").await;
    let r = admin.ctl("ctl", "create t capacity=0\n").await;
    assert!(matches!(r, Fcall::Rwrite { .. }), "{r:?}");
    let mut c = Conn::connect(port, Dialect::P2000L, "").await;
    const N: u16 = 2000;
    for i in 0..N {
        let tag = 100 + 4 * i;
        let fid = 10;
        let wnames = vec!["t".to_string(), "data".to_string()];
        c.send(
            tag,
            Fcall::Twalk {
                fid: 0,
                newfid: fid,
                wnames,
            },
        )
        .await;
        c.send(tag + 1, Fcall::Tlopen { fid, flags: 1 }).await;
        let data = Bytes::from_static(b"yy");
        c.send(
            tag + 2,
            Fcall::Twrite {
                fid,
                offset: 0,
                data,
            },
        )
        .await;
        c.send(tag + 3, Fcall::Tclunk { fid }).await;
    }
    // Every request but the 8 waiting clunks is answered: once 8 wait, the
    // opens, writes and clunks that would wait fail with EAGAIN (a write to
    // a fid whose open failed, EBADF).
    for _ in 0..(4 * N - 8) {
        let m = c.recv().await;
        match m.body {
            Fcall::Rlerror { ecode } => assert!(ecode == 11 || ecode == 9, "{m:?}"),
            _ => assert!((m.tag - 100) % 4 != 3 || m.body == Fcall::Rclunk, "{m:?}"),
        }
    }
    assert_eq!(admin.status("t", "blocked_writers").await, 8);
    drop(c);
    for _ in 0..1000 {
        if admin.status("t", "blocked_writers").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(admin.status("t", "blocked_writers").await, 0);
    drop(admin);
    stop_server(stop, server).await;
}

/// Issue 15.4: a data file takes one read at a time. A second Tread sent
/// while the first is in flight could not prove that the first's reply
/// arrived (the ack a read gives the message before it), so it is refused
/// with EBUSY; the first goes on, and nothing is acked that was not
/// proven: a message in hand when the connection drops comes again.
#[tokio::test]
async fn a_second_read_in_flight_on_a_data_fid_is_refused_and_nothing_is_lost() {
    let (port, stop, server) = start().await;
    let mut admin = Conn::connect(port, Dialect::P2000L, "").await;
    let r = admin.ctl("ctl", "create t capacity=5\n").await;
    assert!(matches!(r, Fcall::Rwrite { .. }), "{r:?}");
    let mut c = Conn::connect(port, Dialect::P2000L, "").await;
    c.open(1, "t/data", 0).await;
    let read = |offset| Fcall::Tread {
        fid: 1,
        offset,
        count: 100,
    };
    c.send(10, read(0)).await;
    let busy = c.rpc(11, read(0)).await;
    assert_eq!(busy, Fcall::Rlerror { ecode: 16 }, "EBUSY");
    admin.open(2, "t/data", 1).await;
    let data = Bytes::from_static(b"a\nb\n");
    let w = admin
        .rpc(
            5,
            Fcall::Twrite {
                fid: 2,
                offset: 0,
                data,
            },
        )
        .await;
    assert_eq!(w, Fcall::Rwrite { count: 4 });
    let a = c.recv().await;
    assert_eq!((a.tag, data_of(a.body)), (10, Bytes::from_static(b"a\n")));
    // Sent after its reply came: the Linux loop's zero, which acks "a".
    assert_eq!(data_of(c.rpc(12, read(2)).await), "");
    assert_eq!(data_of(c.rpc(13, read(2)).await), "b\n");
    drop(c);
    // "b" was in hand, unacked: it comes again; "a" does not.
    let mut r = Conn::connect(port, Dialect::P2000L, "").await;
    r.open(1, "t/data", 0).await;
    let again = r.rpc(20, read(0)).await;
    assert_eq!(data_of(again), "b\n");
    drop((admin, r));
    stop_server(stop, server).await;
}

fn data_of(f: Fcall) -> Bytes {
    match f {
        Fcall::Rread { data } => data,
        other => panic!("not an Rread: {other:?}"),
    }
}

/// Issue 14.5/15.1 through 9P: a push that one group took is not withdrawn
/// by a Tflush; its Rwrite goes out before the Rflush, so the writer knows
/// it was delivered (and a Linux writer does not write it again). A push
/// nobody took is withdrawn: only the Rflush, and no reader gets it.
#[tokio::test]
async fn a_flushed_push_a_group_took_is_answered_before_the_rflush() {
    let (port, stop, server) = start().await;
    let mut writer = Conn::connect(port, Dialect::P2000L, "").await;
    let mut g1 = Conn::connect(port, Dialect::P2000L, "g1").await;
    let mut g2 = Conn::connect(port, Dialect::P2000L, "g2").await;
    writer.open(1, "ctl", 1).await;
    let create = Fcall::Twrite {
        fid: 1,
        offset: 0,
        data: Bytes::from_static(b"create jobs\n"),
    };
    assert_eq!(writer.rpc(4, create).await, Fcall::Rwrite { count: 12 });
    // Group g2 exists (reading offset makes it) but does not read.
    g2.open(1, "jobs/offset", 0).await;
    let read = |fid, tag_count: u32| Fcall::Tread {
        fid,
        offset: 0,
        count: tag_count,
    };
    let o = g2.rpc(5, read(1, 100)).await;
    assert!(matches!(o, Fcall::Rread { .. }), "{o:?}");
    g1.open(1, "jobs/data", 0).await;
    g1.send(10, read(1, 100)).await;
    writer.open(2, "jobs/data", 1).await;
    let write = |data: &'static [u8]| Fcall::Twrite {
        fid: 2,
        offset: 0,
        data: Bytes::from_static(data),
    };
    writer.send(11, write(b"m\n")).await;
    let got = g1.recv().await;
    assert_eq!(
        (got.tag, got.body),
        (
            10,
            Fcall::Rread {
                data: Bytes::from_static(b"m\n")
            }
        )
    );
    // g1 took it; the push still waits for g2. Flush it.
    writer.send(12, Fcall::Tflush { oldtag: 11 }).await;
    let a = writer.recv().await;
    assert_eq!((a.tag, a.body), (11, Fcall::Rwrite { count: 2 }));
    let b = writer.recv().await;
    assert_eq!((b.tag, b.body), (12, Fcall::Rflush));
    // g2 still gets it.
    g2.open(2, "jobs/data", 0).await;
    let got = g2.rpc(13, read(2, 100)).await;
    assert_eq!(
        got,
        Fcall::Rread {
            data: Bytes::from_static(b"m\n")
        }
    );

    // Nobody reads now: a flushed push is withdrawn, with only the Rflush.
    writer.send(14, write(b"gone\n")).await;
    writer.send(15, Fcall::Tflush { oldtag: 14 }).await;
    let b = writer.recv().await;
    assert_eq!((b.tag, b.body), (15, Fcall::Rflush));
    writer.open(3, "jobs/ctl", 0).await;
    let s = writer.rpc(16, read(3, 4096)).await;
    let Fcall::Rread { data } = s else {
        panic!("{s:?}")
    };
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("pushed 1"), "{text}");

    drop((writer, g1, g2));
    stop_server(stop, server).await;
}

/// A directory fid walked to a topic that is then removed and created again
/// stays the removed topic's: walks, stat and open from it fail with
/// "topic removed", and nothing reaches the new topic through it.
#[tokio::test]
async fn a_directory_fid_of_a_removed_topic_stays_stale_after_it_is_created_again() {
    let (port, stop, server) = start().await;
    let mut c = Conn::connect(port, Dialect::P2000L, "").await;
    c.open(1, "ctl", 1).await;
    let ctl = |text: &'static [u8]| Fcall::Twrite {
        fid: 1,
        offset: 0,
        data: Bytes::from_static(text),
    };
    assert!(matches!(
        c.rpc(4, ctl(b"create s9\n")).await,
        Fcall::Rwrite { .. }
    ));
    let walk = |fid, newfid, name: &str| Fcall::Twalk {
        fid,
        newfid,
        wnames: vec![name.to_string()],
    };
    assert!(matches!(
        c.rpc(5, walk(0, 2, "s9")).await,
        Fcall::Rwalk { .. }
    ));
    assert!(matches!(
        c.rpc(4, ctl(b"remove s9\n")).await,
        Fcall::Rwrite { .. }
    ));
    assert!(matches!(
        c.rpc(4, ctl(b"create s9\n")).await,
        Fcall::Rwrite { .. }
    ));
    let enoent = Fcall::Rlerror { ecode: 2 };
    assert_eq!(c.rpc(6, walk(2, 3, "data")).await, enoent);
    assert_eq!(c.rpc(7, walk(2, 3, "ctl")).await, enoent);
    assert_eq!(
        c.rpc(
            8,
            Fcall::Tgetattr {
                fid: 2,
                request_mask: 0x7ff
            }
        )
        .await,
        enoent
    );
    assert_eq!(c.rpc(9, Fcall::Tlopen { fid: 2, flags: 0 }).await, enoent);
    // A fresh walk reaches the new topic, which got nothing.
    c.open(10, "s9/ctl", 0).await;
    let Fcall::Rread { data } = c
        .rpc(
            11,
            Fcall::Tread {
                fid: 10,
                offset: 0,
                count: 1000,
            },
        )
        .await
    else {
        panic!("ctl read failed")
    };
    let text = String::from_utf8_lossy(&data).to_string();
    assert!(text.contains("pushed 0"), "{text}");

    drop(c);
    stop_server(stop, server).await;
}

/// Issue 14.7: files opened on a topic that is then removed and created
/// again keep failing (as between the removal and the re-creation); a new
/// open reaches the new topic.
#[tokio::test]
async fn files_of_a_removed_topic_stay_stale_after_it_is_created_again() {
    let (port, stop, server) = start().await;
    let mut c = Conn::connect(port, Dialect::P2000L, "").await;
    c.open(1, "ctl", 1).await;
    let ctl = |text: &'static [u8]| Fcall::Twrite {
        fid: 1,
        offset: 0,
        data: Bytes::from_static(text),
    };
    assert!(matches!(
        c.rpc(4, ctl(b"create s8 capacity=5\n")).await,
        Fcall::Rwrite { .. }
    ));
    c.open(2, "s8/data", 1).await; // writer
    c.open(3, "s8/data", 0).await; // reader
    c.open(5, "s8/ctl", 0).await;
    let write = |fid| Fcall::Twrite {
        fid,
        offset: 0,
        data: Bytes::from_static(b"m\n"),
    };
    let read = |fid| Fcall::Tread {
        fid,
        offset: 0,
        count: 100,
    };
    assert_eq!(c.rpc(6, write(2)).await, Fcall::Rwrite { count: 2 });
    assert_eq!(
        c.rpc(7, read(3)).await,
        Fcall::Rread {
            data: Bytes::from_static(b"m\n")
        }
    );
    assert!(matches!(
        c.rpc(4, ctl(b"remove s8\n")).await,
        Fcall::Rwrite { .. }
    ));
    let enoent = Fcall::Rlerror { ecode: 2 };
    assert_eq!(c.rpc(8, write(2)).await, enoent);
    assert!(matches!(
        c.rpc(4, ctl(b"create s8 capacity=5\n")).await,
        Fcall::Rwrite { .. }
    ));
    // The old files: still the removed topic's.
    assert_eq!(c.rpc(9, write(2)).await, enoent);
    assert_eq!(c.rpc(10, read(3)).await, enoent);
    assert_eq!(c.rpc(11, read(5)).await, enoent);
    // A new open is the new topic, which got nothing from the old files.
    c.open(12, "s8/ctl", 0).await;
    let whole = Fcall::Tread {
        fid: 12,
        offset: 0,
        count: 8192,
    };
    let Fcall::Rread { data } = c.rpc(13, whole).await else {
        panic!("ctl read failed")
    };
    let text = String::from_utf8_lossy(&data).to_string();
    assert!(text.contains("pushed 0"), "{text}");

    drop(c);
    stop_server(stop, server).await;
}
