//! Malformed input and limits: each bad client gets an error or a closed
//! connection, and a connection opened before it keeps being served.

mod engine_support;

use dchan::engine::Limits;
use dchan::proto::*;
use engine_support::*;
use tokio::io::AsyncWriteExt;

/// A raw frame: size[4] type[1] tag[2] body.
fn frame(ty: u8, tag: Tag, body: &[u8]) -> Vec<u8> {
    let mut f = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// A Twalk body with raw names.
fn walk_body(fid: Fid, newfid: Fid, names: &[&[u8]]) -> Vec<u8> {
    let mut b = fid.to_le_bytes().to_vec();
    b.extend_from_slice(&newfid.to_le_bytes());
    b.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for n in names {
        b.extend_from_slice(&(n.len() as u16).to_le_bytes());
        b.extend_from_slice(n);
    }
    b
}

const TWALK: u8 = 110;

/// The bystander is still served: a walk and a getattr answer.
async fn still_served(c: &mut Client) {
    let r = c.walk(0, 99, &["block"]).await;
    assert!(matches!(r, Fcall::Rwalk { .. }), "{r:?}");
    assert_eq!(c.clunk(99).await, Fcall::Rclunk);
}

/// Runs `bad` on a fresh connection while a bystander stays connected.
async fn with_bystander<F, Fut>(bad: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let srv = Server::start(Limits::default()).await;
    let mut bystander = Client::session(srv.addr, Dialect::P2000L).await;
    let c = Client::session(srv.addr, Dialect::P2000L).await;
    bad(c).await;
    still_served(&mut bystander).await;
    srv.stop().await;
}

#[tokio::test]
async fn truncated_frame_then_close() {
    with_bystander(|mut c| async move {
        let f = frame(TWALK, 5, &walk_body(0, 1, &[b"block"]));
        c.send_raw(&f[..f.len() - 3]).await;
        c.stream.shutdown().await.unwrap();
        assert!(c.closed().await);
    })
    .await;
}

#[tokio::test]
async fn size_over_msize_closes() {
    with_bystander(|mut c| async move {
        c.send_raw(&100_000u32.to_le_bytes()).await;
        c.send_raw(&[TWALK, 1, 0]).await;
        assert!(c.closed().await);
    })
    .await;
}

#[tokio::test]
async fn size_under_header_closes() {
    for size in [0u32, 3, 6] {
        with_bystander(|mut c| async move {
            c.send_raw(&size.to_le_bytes()).await;
            c.send_raw(&[0; 8]).await;
            assert!(c.closed().await);
        })
        .await;
    }
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_connection_goes_on() {
    with_bystander(|mut c| async move {
        // Unknown type.
        c.send_raw(&frame(200, 5, &[])).await;
        // A 9P2000.L message with a short body.
        c.send_raw(&frame(12, 6, &[0, 0, 0, 0, 0])).await;
        // A name that is not UTF-8.
        c.send_raw(&frame(TWALK, 7, &walk_body(0, 1, &[b"\xff\xfe"])))
            .await;
        // 17 names.
        let names = [&b"a"[..]; 17];
        c.send_raw(&frame(TWALK, 8, &walk_body(0, 1, &names))).await;
        // A body shorter than its fields.
        c.send_raw(&frame(TWALK, 9, &[1, 2])).await;
        // Trailing bytes.
        let mut body = walk_body(0, 1, &[]);
        body.push(0);
        c.send_raw(&frame(TWALK, 10, &body)).await;
        // An R-message sent to the server.
        c.send_raw(&frame(101, 11, &[])).await;
        for tag in 5..=11 {
            let m = c.recv().await;
            assert_eq!(m.tag, tag);
            assert_error(&m.body);
        }
        still_served(&mut c).await;
    })
    .await;
}

#[tokio::test]
async fn counts_over_msize_are_clamped() {
    with_bystander(|mut c| async move {
        c.walk(0, 1, &[]).await;
        c.create(1, "f").await;
        let chunk = vec![7u8; 4000];
        for i in 0..3 {
            c.write(1, i * 4000, &chunk).await;
        }
        let r = c.read(1, 0, u32::MAX).await;
        assert_eq!(data(&r).len(), 8192 - 24);
    })
    .await;
}

#[tokio::test]
async fn a_tag_reused_while_busy_closes_the_connection() {
    with_bystander(|mut c| async move {
        c.walk(0, 1, &["block"]).await;
        c.open(1, false).await;
        let tread = Fcall::Tread {
            fid: 1,
            offset: 0,
            count: 10,
        };
        c.send(5, tread.clone()).await;
        c.send(5, tread).await;
        assert!(c.closed().await);
    })
    .await;
}

#[tokio::test]
async fn a_fid_reused_while_busy_is_refused() {
    with_bystander(|mut c| async move {
        c.walk(0, 1, &["block"]).await;
        c.open(1, false).await;
        c.send(
            5,
            Fcall::Tread {
                fid: 1,
                offset: 0,
                count: 10,
            },
        )
        .await;
        assert_error(&c.walk(0, 1, &[]).await);
        assert_error(&c.open(1, false).await);
        assert_error(&c.attach_raw(1).await);
        // The read is still there, and answers.
        let mut w = c;
        w.walk(0, 2, &["block"]).await;
        w.open(2, true).await;
        w.write(2, 0, b"x").await;
        let m = w.recv().await;
        assert_eq!(m.tag, 5);
        assert_eq!(data(&m.body), &b"x"[..]);
    })
    .await;
}

#[tokio::test]
async fn too_many_connections_are_closed_others_unaffected() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let srv = Server::start(limits).await;
    let mut a = Client::session(srv.addr, Dialect::P2000L).await;
    let mut b = Client::session(srv.addr, Dialect::P2000).await;
    let mut c = srv.client().await;
    c.send(
        NOTAG,
        Fcall::Tversion {
            msize: 8192,
            version: "9P2000".into(),
        },
    )
    .await;
    assert!(c.closed().await);
    still_served(&mut a).await;
    still_served(&mut b).await;
    srv.stop().await;
}

#[tokio::test]
async fn too_many_fids_are_refused() {
    let limits = Limits {
        max_fids: 3,
        ..Limits::default()
    };
    let srv = Server::start(limits).await;
    let mut c = Client::session(srv.addr, Dialect::P2000u).await;
    assert!(matches!(c.walk(0, 1, &[]).await, Fcall::Rwalk { .. }));
    assert!(matches!(c.walk(0, 2, &[]).await, Fcall::Rwalk { .. }));
    assert_error(&c.walk(0, 3, &[]).await);
    assert_error(&c.attach_raw(3).await);
    c.clunk(2).await;
    assert!(matches!(c.walk(0, 3, &[]).await, Fcall::Rwalk { .. }));
    srv.stop().await;
}

#[tokio::test]
async fn too_many_requests_in_flight_get_errors() {
    let limits = Limits {
        max_in_flight: 2,
        ..Limits::default()
    };
    let srv = Server::start(limits).await;
    let mut c = Client::session(srv.addr, Dialect::P2000L).await;
    c.walk(0, 1, &["block"]).await;
    c.open(1, true).await;
    let tread = Fcall::Tread {
        fid: 1,
        offset: 0,
        count: 10,
    };
    c.send(5, tread.clone()).await;
    c.send(6, tread.clone()).await;
    assert_eq!(c.rpc(7, tread.clone()).await, Fcall::Rlerror { ecode: 11 });
    // Requests answered at once are still served, and a flush frees a slot.
    still_served(&mut c).await;
    assert_eq!(c.rpc(8, Fcall::Tflush { oldtag: 5 }).await, Fcall::Rflush);
    c.send(9, tread).await;
    // At the limit, writes on this connection would be refused too: write
    // from another one.
    let mut w = Client::session(srv.addr, Dialect::P2000L).await;
    w.walk(0, 2, &["block"]).await;
    w.open(2, true).await;
    let mut got = Vec::new();
    for msg in ["m0", "m1"] {
        w.write(2, 0, msg.as_bytes()).await;
        let m = c.recv().await;
        got.push((m.tag, data(&m.body)));
    }
    got.sort();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0, got[1].0), (6, 9));
    assert_ne!(got[0].1, got[1].1);
    srv.stop().await;
}
