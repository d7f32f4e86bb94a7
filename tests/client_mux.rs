//! The client's multiplexer against a scripted server on an in-memory pipe:
//! replies out of order reach the right request, and a dropped request
//! sends Tflush and keeps its tag until the Rflush, and a cancel that waits
//! for the verdict returns a reply that beat the Rflush.

mod script;

use std::collections::HashSet;
use std::time::Duration;

use dchan::client::Connection;
use dchan::proto::{Dialect, Fcall, Msg};
use script::{LIMIT, pair};

fn read_of(msg: &Msg) -> u32 {
    match msg.body {
        Fcall::Tread { fid, .. } => fid,
        ref other => panic!("expected Tread, got {other:?}"),
    }
}

#[tokio::test]
async fn replies_out_of_order_reach_their_requests() {
    let (conn, mut script) = pair(Dialect::P2000L).await;
    let mut calls = Vec::new();
    for fid in 0..50u32 {
        let conn = conn.clone();
        calls.push(tokio::spawn(async move {
            let r = conn
                .rpc(Fcall::Tread {
                    fid,
                    offset: 0,
                    count: 10,
                })
                .await;
            (fid, r.unwrap())
        }));
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        let m = script.recv().await;
        got.push((m.tag, read_of(&m)));
    }
    let tags: HashSet<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(tags.len(), 50, "tags in flight must differ");
    // Answer in reverse order, each with its fid as data.
    for (tag, fid) in got.into_iter().rev() {
        let data = fid.to_string().into_bytes().into();
        script.send(tag, Fcall::Rread { data }).await;
    }
    for call in calls {
        let (fid, reply) = call.await.unwrap();
        assert_eq!(
            reply,
            Fcall::Rread {
                data: fid.to_string().into_bytes().into()
            }
        );
    }
}

#[tokio::test]
async fn a_dropped_request_is_flushed_and_its_tag_held_until_rflush() {
    let (conn, mut script) = pair(Dialect::P2000).await;
    // A request given up after it was sent.
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        conn.rpc(Fcall::Tread {
            fid: 1,
            offset: 0,
            count: 10,
        }),
    );
    let (sent, _) = tokio::join!(script.recv(), given_up);
    let old = sent.tag;
    let flush = script.recv().await;
    assert_eq!(flush.body, Fcall::Tflush { oldtag: old });
    // While the flush is pending, new requests avoid both tags.
    let mut calls = Vec::new();
    for fid in 10..20u32 {
        let conn = conn.clone();
        calls.push(tokio::spawn(async move {
            conn.rpc(Fcall::Tread {
                fid,
                offset: 0,
                count: 10,
            })
            .await
        }));
    }
    let mut pending = Vec::new();
    for _ in 10..20 {
        let m = script.recv().await;
        assert!(m.tag != old && m.tag != flush.tag, "tag {} reused", m.tag);
        pending.push(m.tag);
    }
    // The old reply arrives first (the server had sent it), then the
    // Rflush: the old reply goes nowhere.
    script
        .send(
            old,
            Fcall::Rread {
                data: "late".into(),
            },
        )
        .await;
    script.send(flush.tag, Fcall::Rflush).await;
    for tag in pending {
        script.send(tag, Fcall::Rread { data: "ok".into() }).await;
    }
    for call in calls {
        assert_eq!(
            call.await.unwrap().unwrap(),
            Fcall::Rread { data: "ok".into() }
        );
    }
}

#[tokio::test]
async fn errors_carry_the_servers_words() {
    let (conn, mut script) = pair(Dialect::P2000u).await;
    let call = tokio::spawn({
        let conn = conn.clone();
        async move { conn.rpc(Fcall::Tclunk { fid: 9 }).await }
    });
    let m = script.recv().await;
    let ename = "topic reset".to_string();
    script
        .send(m.tag, Fcall::Rerror { ename, errno: 125 })
        .await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(
        (e.to_string(), e.errno()),
        ("topic reset".into(), Some(125))
    );

    let (conn, mut script) = pair(Dialect::P2000L).await;
    let call = tokio::spawn(async move { conn.rpc(Fcall::Tclunk { fid: 9 }).await });
    let m = script.recv().await;
    script.send(m.tag, Fcall::Rlerror { ecode: 2 }).await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), "no such file or directory");
}

#[tokio::test]
async fn a_server_hanging_up_fails_every_waiter() {
    let (conn, mut script) = pair(Dialect::P2000L).await;
    let call = tokio::spawn({
        let conn = conn.clone();
        async move { conn.rpc(Fcall::Tclunk { fid: 9 }).await }
    });
    script.recv().await;
    drop(script);
    let e = tokio::time::timeout(LIMIT, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().starts_with("connection lost"), "{e}");
    let e = conn.rpc(Fcall::Tclunk { fid: 9 }).await.unwrap_err();
    assert!(e.to_string().starts_with("connection lost"), "{e}");
}

/// Starts `rpc_unless(Tread)` on its own task, with a cancel the test fires.
fn cancellable_read(
    conn: &Connection,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<dchan::client::Result<Option<Fcall>>>,
) {
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let conn = conn.clone();
    let call = tokio::spawn(async move {
        let read = Fcall::Tread {
            fid: 1,
            offset: 0,
            count: 10,
        };
        conn.rpc_unless(read, async {
            let _ = cancelled.await;
        })
        .await
    });
    (cancel, call)
}

#[tokio::test]
async fn a_cancel_returns_the_reply_that_beat_the_rflush() {
    let (conn, mut script) = pair(Dialect::P2000L).await;
    let (cancel, call) = cancellable_read(&conn);
    let sent = script.recv().await;
    cancel.send(()).unwrap();
    let flush = script.recv().await;
    assert_eq!(flush.body, Fcall::Tflush { oldtag: sent.tag });
    // The server had answered the old tag before it saw the Tflush.
    let late = Fcall::Rread {
        data: "late".into(),
    };
    script.send(sent.tag, late.clone()).await;
    script.send(flush.tag, Fcall::Rflush).await;
    let got = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
    assert_eq!(got.unwrap(), Some(late), "the late reply is the outcome");
    // Both tags are free again: the next request works.
    let next = tokio::spawn({
        let conn = conn.clone();
        async move { conn.rpc(Fcall::Tclunk { fid: 1 }).await }
    });
    let m = script.recv().await;
    script.send(m.tag, Fcall::Rclunk).await;
    assert_eq!(next.await.unwrap().unwrap(), Fcall::Rclunk);
}

#[tokio::test]
async fn a_cancel_answered_by_rflush_alone_says_flushed() {
    let (conn, mut script) = pair(Dialect::P2000).await;
    let (cancel, call) = cancellable_read(&conn);
    let sent = script.recv().await;
    cancel.send(()).unwrap();
    let flush = script.recv().await;
    assert_eq!(flush.body, Fcall::Tflush { oldtag: sent.tag });
    script.send(flush.tag, Fcall::Rflush).await;
    let got = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
    assert_eq!(got.unwrap(), None, "flushed: the request never happened");
}

#[tokio::test]
async fn a_cancel_after_the_reply_sends_no_flush() {
    let (conn, mut script) = pair(Dialect::P2000u).await;
    let (cancel, call) = cancellable_read(&conn);
    let sent = script.recv().await;
    let data = Fcall::Rread {
        data: "on time".into(),
    };
    script.send(sent.tag, data.clone()).await;
    let got = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
    assert_eq!(got.unwrap(), Some(data));
    let _ = cancel.send(());
    // The next message the server sees is a new request, not a Tflush.
    let next = tokio::spawn({
        let conn = conn.clone();
        async move { conn.rpc(Fcall::Tclunk { fid: 1 }).await }
    });
    let m = script.recv().await;
    assert_eq!(m.body, Fcall::Tclunk { fid: 1 });
    script.send(m.tag, Fcall::Rclunk).await;
    next.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancel_answered_by_an_error_before_the_rflush_is_that_error() {
    let (conn, mut script) = pair(Dialect::P2000L).await;
    let (cancel, call) = cancellable_read(&conn);
    let sent = script.recv().await;
    cancel.send(()).unwrap();
    let flush = script.recv().await;
    script.send(sent.tag, Fcall::Rlerror { ecode: 4 }).await;
    script.send(flush.tag, Fcall::Rflush).await;
    let got = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap();
    assert_eq!(got.unwrap_err().errno(), Some(4));
}
