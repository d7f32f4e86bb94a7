//! Tflush and the other cancellations (clunk, Tversion, a dropped
//! connection, shutdown), and requests in flight side by side, on the RAM
//! tree's `/block` queue file: a read of it waits for a write.

mod engine_support;

use bytes::Bytes;
use dchan::engine::Limits;
use dchan::proto::*;
use engine_support::*;

/// A .L session with fid 1 = /block open for reading and writing.
async fn blocked_setup(srv: &Server) -> Client {
    let mut c = Client::session(srv.addr, Dialect::P2000L).await;
    c.walk(0, 1, &["block"]).await;
    assert!(!is_error(&c.open(1, true).await));
    c
}

fn tread(fid: Fid) -> Fcall {
    Fcall::Tread {
        fid,
        offset: 0,
        count: 100,
    }
}

/// Puts one message in /block through a fresh fid of `c`.
async fn put(c: &mut Client, fid: Fid, msg: &str) {
    c.walk(0, fid, &["block"]).await;
    assert!(!is_error(&c.open(fid, true).await));
    let n = msg.len() as u32;
    assert_eq!(
        c.write(fid, 0, msg.as_bytes()).await,
        Fcall::Rwrite { count: n }
    );
    c.clunk(fid).await;
}

#[tokio::test]
async fn flush_cancels_a_blocked_read_without_a_trace() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(10, tread(1)).await;
    c.send(11, Fcall::Tflush { oldtag: 10 }).await;
    let m = c.recv().await;
    assert_eq!((m.tag, m.body), (11, Fcall::Rflush));
    // The message written now must go to the next read, not the flushed one
    // (which would have answered on tag 10 before anything else).
    put(&mut c, 2, "x").await;
    c.send(13, tread(1)).await;
    let m = c.recv().await;
    assert_eq!(m.tag, 13);
    assert_eq!(data(&m.body), &b"x"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn flush_of_an_answered_request_follows_its_reply() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    // Already answered: plain Rflush.
    put(&mut c, 2, "a").await;
    assert_eq!(data(&c.rpc(20, tread(1)).await), &b"a"[..]);
    assert_eq!(c.rpc(21, Fcall::Tflush { oldtag: 20 }).await, Fcall::Rflush);
    // Unknown tag: plain Rflush.
    assert_eq!(
        c.rpc(22, Fcall::Tflush { oldtag: 999 }).await,
        Fcall::Rflush
    );
    // Racing a read that can complete at once: either it answered first and
    // the Rflush follows, or it was cancelled and left the message in place.
    for i in 0..50u16 {
        put(&mut c, 2, "b").await;
        c.send(30, tread(1)).await;
        c.send(31, Fcall::Tflush { oldtag: 30 }).await;
        let first = c.recv().await;
        if first.tag == 30 {
            assert_eq!(data(&first.body), &b"b"[..]);
            let m = c.recv().await;
            assert_eq!((m.tag, m.body), (31, Fcall::Rflush), "round {i}");
        } else {
            assert_eq!((first.tag, first.body), (31, Fcall::Rflush), "round {i}");
            assert_eq!(data(&c.rpc(32, tread(1)).await), &b"b"[..]);
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn several_flushes_of_one_request() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(40, tread(1)).await;
    c.send(41, Fcall::Tflush { oldtag: 40 }).await;
    c.send(42, Fcall::Tflush { oldtag: 40 }).await;
    for tag in [41, 42] {
        let m = c.recv().await;
        assert_eq!((m.tag, m.body), (tag, Fcall::Rflush));
    }
    // The tag is free again, and nothing comes for the old request.
    put(&mut c, 2, "c").await;
    assert_eq!(data(&c.rpc(40, tread(1)).await), &b"c"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn a_blocked_read_delays_nothing_else() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(50, tread(1)).await;
    // Walk, getattr, create, write, read of other fids all answer meanwhile.
    let r = c.walk(0, 3, &[]).await;
    assert!(matches!(r, Fcall::Rwalk { .. }), "{r:?}");
    let r = c
        .rpc(
            1,
            Fcall::Tgetattr {
                fid: 1,
                request_mask: 0x7ff,
            },
        )
        .await;
    assert!(matches!(r, Fcall::Rgetattr { .. }), "{r:?}");
    assert!(!is_error(&c.create(3, "other").await));
    assert_eq!(c.write(3, 0, b"hi").await, Fcall::Rwrite { count: 2 });
    assert_eq!(data(&c.read(3, 0, 10).await), &b"hi"[..]);
    // Then the read answers once there is something to read.
    c.write(1, 0, b"late").await;
    let m = c.recv().await;
    assert_eq!(m.tag, 50);
    assert_eq!(data(&m.body), &b"late"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn clunk_cancels_the_requests_on_its_fid() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(60, tread(1)).await;
    c.send(61, Fcall::Tclunk { fid: 1 }).await;
    let m = c.recv().await;
    assert_eq!(m.tag, 60);
    assert_error(&m.body);
    let m = c.recv().await;
    assert_eq!((m.tag, m.body), (61, Fcall::Rclunk));
    put(&mut c, 2, "d").await;
    let mut c = blocked_setup(&srv).await;
    assert_eq!(data(&c.rpc(62, tread(1)).await), &b"d"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn a_new_version_aborts_requests_without_replies() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(70, tread(1)).await;
    let r = c.version(8192, "9P2000.L").await;
    assert!(matches!(r, Fcall::Rversion { .. }), "{r:?}");
    c.attach(0, "").await;
    put(&mut c, 2, "e").await;
    c.walk(0, 1, &["block"]).await;
    c.open(1, false).await;
    assert_eq!(data(&c.rpc(71, tread(1)).await), &b"e"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_cancels_its_blocked_read() {
    // One connection at a time: once a new one is served, the old one's
    // teardown (which cancels its read) is over.
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let srv = Server::start(limits).await;
    let mut c = blocked_setup(&srv).await;
    c.send(80, tread(1)).await;
    // The read is in flight once a later request has been answered.
    assert!(matches!(c.walk(0, 5, &[]).await, Fcall::Rwalk { .. }));
    drop(c);
    let mut c = loop {
        let mut c = srv.client().await;
        c.send(
            NOTAG,
            Fcall::Tversion {
                msize: 8192,
                version: "9P2000.L".into(),
            },
        )
        .await;
        if c.try_recv().await.is_some() {
            c.dialect = Dialect::P2000L;
            break c;
        }
    };
    c.attach(0, "").await;
    put(&mut c, 2, "f").await;
    c.walk(0, 1, &["block"]).await;
    c.open(1, false).await;
    assert_eq!(data(&c.rpc(81, tread(1)).await), &b"f"[..]);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_answers_blocked_reads_then_closes() {
    let srv = Server::start(Limits::default()).await;
    let mut c = blocked_setup(&srv).await;
    c.send(90, tread(1)).await;
    assert!(matches!(c.walk(0, 5, &[]).await, Fcall::Rwalk { .. }));
    let stop = tokio::spawn(srv.stop());
    let m = c.recv().await;
    assert_eq!(m.tag, 90);
    assert_eq!(m.body, Fcall::Rlerror { ecode: 108 });
    assert!(c.try_recv().await.is_none());
    stop.await.unwrap();
}

#[tokio::test]
async fn large_reads_and_writes_round_trip() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::connect(srv.addr).await;
    c.version(1 << 20, "9P2000.L").await;
    c.dialect = Dialect::P2000L;
    c.attach(0, "").await;
    c.walk(0, 1, &[]).await;
    c.create(1, "big").await;
    let big: Vec<u8> = (0..(1 << 20) - 24).map(|i| (i % 251) as u8).collect();
    let data_ = Bytes::from(big.clone());
    let r = c
        .rpc(
            1,
            Fcall::Twrite {
                fid: 1,
                offset: 0,
                data: data_,
            },
        )
        .await;
    assert_eq!(
        r,
        Fcall::Rwrite {
            count: big.len() as u32
        }
    );
    // Several large reads in flight at once come back whole and in order.
    for tag in 100..104 {
        c.send(
            tag,
            Fcall::Tread {
                fid: 1,
                offset: 0,
                count: u32::MAX,
            },
        )
        .await;
    }
    for tag in 100..104 {
        let m = c.recv().await;
        assert_eq!(m.tag, tag);
        assert_eq!(data(&m.body), &big[..]);
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_reads_its_replies_late_gets_them_all() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::connect(srv.addr).await;
    c.version(1 << 20, "9P2000.L").await;
    c.dialect = Dialect::P2000L;
    c.attach(0, "").await;
    c.walk(0, 1, &[]).await;
    c.create(1, "f").await;
    let chunk: Vec<u8> = (0..65536).map(|i| (i % 253) as u8).collect();
    c.write(1, 0, &chunk).await;
    // 400 reads of 64 KiB (25 MiB of replies, more than the server will
    // hold unwritten), all sent before any reply is read.
    let mut frames = bytes::BytesMut::new();
    for tag in 0..400u16 {
        let m = Msg {
            tag,
            body: Fcall::Tread {
                fid: 1,
                offset: 0,
                count: 65536,
            },
        };
        dchan::proto::codec::encode(&m, Dialect::P2000L, &mut frames);
    }
    let (mut rd, mut wr) = c.stream.into_split();
    let sender = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&frames).await.unwrap();
        wr
    });
    use tokio::io::AsyncReadExt;
    for tag in 0..400u16 {
        let mut head = [0u8; 11];
        tokio::time::timeout(PATIENCE, rd.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u16::from_le_bytes([head[5], head[6]]), tag);
        let n = u32::from_le_bytes(head[7..11].try_into().unwrap()) as usize;
        assert_eq!(n, chunk.len());
        let mut body = vec![0u8; n];
        rd.read_exact(&mut body).await.unwrap();
        assert!(body == chunk);
    }
    sender.await.unwrap();
    srv.stop().await;
}
