//! The client against a server that breaks the rules, played by a script
//! (tests/script): replies it must refuse (a readdir that leads back, an
//! iounit too large for msize, an Rwalk of the wrong shape), fids it must
//! not leak however a walk ends, and message boundaries that hold when a
//! `Puller::next` is dropped in the middle of a message, and files and
//! directories that never end or repeat, which are bounded.

mod script;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dchan::client::{Client, Error, File, Mode, Options, Puller};
use dchan::proto::codec::encode_dirent;
use dchan::proto::{Dialect, Fcall, Msg, QTDIR, Qid};
use script::{LIMIT, MSIZE, Script, pair};
use tokio::task::JoinHandle;

fn dir() -> Qid {
    Qid {
        ty: QTDIR,
        version: 0,
        path: 1,
    }
}

fn file(path: u64) -> Qid {
    Qid {
        ty: 0,
        version: 0,
        path,
    }
}

fn is_protocol(e: &Error) -> bool {
    matches!(e, Error::Protocol(_))
}

/// Attach with a connection from `pair`, the script answering.
async fn attach(dialect: Dialect) -> (File, Script) {
    let (conn, mut script) = pair(dialect).await;
    let root = tokio::spawn(async move { conn.attach("u", "").await });
    script
        .answer(
            |m| matches!(m, Fcall::Tattach { .. }),
            Fcall::Rattach { qid: dir() },
        )
        .await;
    (root.await.unwrap().unwrap(), script)
}

fn open_reply(dialect: Dialect, qid: Qid, iounit: u32) -> Fcall {
    match dialect {
        Dialect::P2000L => Fcall::Rlopen { qid, iounit },
        _ => Fcall::Ropen { qid, iounit },
    }
}

fn is_open(m: &Fcall) -> bool {
    matches!(m, Fcall::Topen { .. } | Fcall::Tlopen { .. })
}

#[tokio::test]
async fn a_readdir_that_leads_back_is_refused() {
    // The second reply names as next an offset already read from: the
    // same one again, or the start.
    for back in [7, 0] {
        let (root, mut script) = attach(Dialect::P2000L).await;
        let list = tokio::spawn(async move {
            let mut d = root.walk("").await?;
            d.open(Mode::Read).await?;
            d.readdir().await
        });
        script
            .answer(
                |m| matches!(m, Fcall::Twalk { .. }),
                Fcall::Rwalk { wqids: vec![] },
            )
            .await;
        script
            .answer(is_open, open_reply(Dialect::P2000L, dir(), 0))
            .await;
        for (offset, next) in [(0, 7), (7, back)] {
            let mut data = BytesMut::new();
            encode_dirent(&file(offset + 2), next, 8, &format!("f{offset}"), &mut data);
            let reply = Fcall::Rreaddir {
                data: data.freeze(),
            };
            script
                .answer(
                    |m| matches!(m, Fcall::Treaddir { offset: o, .. } if *o == offset),
                    reply,
                )
                .await;
        }
        let got = tokio::time::timeout(LIMIT, list)
            .await
            .expect("readdir loops")
            .unwrap();
        let e = got.unwrap_err();
        assert!(is_protocol(&e), "{e}");
    }
}

#[tokio::test]
async fn an_iounit_larger_than_msize_allows_is_refused() {
    for d in [Dialect::P2000u, Dialect::P2000L] {
        for (iounit, ok) in [(MSIZE - 24, true), (MSIZE - 23, false), (u32::MAX, false)] {
            let (root, mut script) = attach(d).await;
            let open = tokio::spawn(async move {
                let mut f = root.walk("t/data").await?;
                f.open(Mode::Write).await?;
                Ok::<_, Error>(f.max_io())
            });
            script
                .answer(
                    |m| matches!(m, Fcall::Twalk { .. }),
                    Fcall::Rwalk {
                        wqids: vec![dir(), file(2)],
                    },
                )
                .await;
            script.answer(is_open, open_reply(d, file(2), iounit)).await;
            let got = open.await.unwrap();
            match ok {
                true => assert_eq!(got.unwrap(), iounit),
                false => assert!(is_protocol(&got.unwrap_err())),
            }
        }
    }
}

/// A client attached as the default group with `t/data` open for reading.
async fn open_puller(dialect: Dialect) -> (Client, Puller, Script) {
    let (conn, mut script) = pair(dialect).await;
    let opened = tokio::spawn(async move {
        let client = Client::attach(&conn, &Options::default()).await?;
        let puller = client.open_data("t").await?;
        Ok::<_, Error>((client, puller))
    });
    script
        .answer(
            |m| matches!(m, Fcall::Tattach { .. }),
            Fcall::Rattach { qid: dir() },
        )
        .await;
    let wqids = vec![dir(), file(2)];
    script
        .answer(|m| matches!(m, Fcall::Twalk { .. }), Fcall::Rwalk { wqids })
        .await;
    script
        .answer(is_open, open_reply(dialect, file(2), 0))
        .await;
    let (client, puller) = opened.await.unwrap().unwrap();
    (client, puller, script)
}

/// The offset of a Tread of the largest count.
fn read_at(m: &Fcall) -> u64 {
    match m {
        Fcall::Tread { offset, count, .. } if *count == MSIZE - 24 => *offset,
        other => panic!("expected a Tread of {}, got {other:?}", MSIZE - 24),
    }
}

/// Drives `next` until the client sends a message, and returns it.
async fn sent_by<F: std::future::Future>(next: std::pin::Pin<&mut F>, script: &mut Script) -> Msg
where
    F::Output: std::fmt::Debug,
{
    tokio::select! {
        r = next => panic!("next returned {r:?} before its reply"),
        m = script.recv() => m,
    }
}

#[tokio::test]
async fn a_next_dropped_during_its_zero_byte_read_keeps_message_boundaries() {
    let max = (MSIZE - 24) as usize;
    let full = Bytes::from(vec![b'a'; max]);
    for d in [Dialect::P2000u, Dialect::P2000L] {
        let (_client, mut puller, mut script) = open_puller(d).await;
        // A message of one full-size reply: the Tread for the 0 that ends
        // it goes out in the same call, which is dropped meanwhile.
        let zero = {
            let mut next = Box::pin(puller.next());
            let first = sent_by(next.as_mut(), &mut script).await;
            assert_eq!(read_at(&first.body), 0);
            script
                .send(first.tag, Fcall::Rread { data: full.clone() })
                .await;
            let zero = sent_by(next.as_mut(), &mut script).await;
            assert_eq!(read_at(&zero.body), max as u64);
            zero
        };
        // The server answers it: its 0 ends the message and is used up.
        script
            .send(zero.tag, Fcall::Rread { data: Bytes::new() })
            .await;
        let got = tokio::select! {
            r = puller.next() => r,
            m = script.recv() => panic!("sent {:?}: the reply in flight ends the message", m.body),
        };
        assert_eq!(got.unwrap().unwrap(), full, "{d:?}");
        // The next message comes alone.
        let serve = async {
            let m = script.recv().await;
            assert_eq!(read_at(&m.body), max as u64);
            script
                .send(
                    m.tag,
                    Fcall::Rread {
                        data: "m2\n".into(),
                    },
                )
                .await;
        };
        let (got, ()) = tokio::join!(puller.next(), serve);
        assert_eq!(got.unwrap().unwrap(), "m2\n", "{d:?}");

        // A message that ended short: its 0 is read at the start of the
        // next call, which is dropped meanwhile (and so flushes that read).
        let at = max as u64 + 3;
        let zero = {
            let mut next = Box::pin(puller.next());
            sent_by(next.as_mut(), &mut script).await
        };
        assert_eq!(read_at(&zero.body), at);
        let flush = script.recv().await;
        assert_eq!(flush.body, Fcall::Tflush { oldtag: zero.tag });
        script
            .send(zero.tag, Fcall::Rread { data: Bytes::new() })
            .await;
        script.send(flush.tag, Fcall::Rflush).await;
        // The next Tread, at the same offset, gets the next message whole.
        let serve = async {
            let m = script.recv().await;
            assert_eq!(read_at(&m.body), at);
            script
                .send(
                    m.tag,
                    Fcall::Rread {
                        data: "m3\n".into(),
                    },
                )
                .await;
        };
        let (got, ()) = tokio::join!(puller.next(), serve);
        assert_eq!(got.unwrap().unwrap(), "m3\n", "{d:?}");
    }
}

/// The fid a Twalk asks for.
fn newfid_of(m: &Fcall) -> u32 {
    match m {
        Fcall::Twalk { newfid, .. } => *newfid,
        other => panic!("expected Twalk, got {other:?}"),
    }
}

/// A request after which the script sees nothing more from the client
/// unless it sent something before it: the next message must be this one.
async fn in_step(root: &File, script: &mut Script) {
    let sync = root.connection().rpc(Fcall::Tclunk { fid: 9999 });
    let serve = script.answer(|m| matches!(m, Fcall::Tclunk { fid: 9999 }), Fcall::Rclunk);
    let (r, _) = tokio::join!(sync, serve);
    r.unwrap();
}

/// `root.walk(path)` on its own task.
fn walk(root: &Arc<File>, path: &'static str) -> JoinHandle<dchan::client::Result<File>> {
    let root = root.clone();
    tokio::spawn(async move { root.walk(path).await })
}

#[tokio::test]
async fn a_walk_answered_oddly_clunks_its_fid_and_a_failed_one_does_not() {
    let (root, mut script) = attach(Dialect::P2000L).await;
    let root = Arc::new(root);
    // Answers the server may have made the fid with: it is clunked.
    let odd = [
        Fcall::Rclunk,
        Fcall::Rwalk {
            wqids: vec![file(2), file(3)],
        },
    ];
    for reply in odd {
        let call = walk(&root, "x");
        let m = script.recv().await;
        let newfid = newfid_of(&m.body);
        script.send(m.tag, reply).await;
        assert!(is_protocol(&call.await.unwrap().unwrap_err()));
        let m = script.recv().await;
        assert_eq!(m.body, Fcall::Tclunk { fid: newfid });
        script.send(m.tag, Fcall::Rclunk).await;
    }
    // An error or a partial walk makes no fid: nothing to clunk.
    let failed = [
        Fcall::Rlerror { ecode: 2 },
        Fcall::Rwalk { wqids: vec![dir()] },
    ];
    for reply in failed {
        let call = walk(&root, "x/y");
        let m = script.recv().await;
        script.send(m.tag, reply).await;
        assert!(matches!(call.await.unwrap(), Err(Error::NotFound(_))));
        in_step(&root, &mut script).await;
    }
}

#[tokio::test]
async fn a_walk_dropped_before_or_after_its_reply_clunks_its_fid() {
    let (root, mut script) = attach(Dialect::P2000u).await;
    let root = Arc::new(root);
    // Dropped after the reply came: the server made the fid.
    {
        let mut call = Box::pin(root.walk("x"));
        let m = tokio::select! {
            r = &mut call => panic!("walk returned {r:?} before any reply"),
            m = script.recv() => m,
        };
        let newfid = newfid_of(&m.body);
        script
            .send(
                m.tag,
                Fcall::Rwalk {
                    wqids: vec![file(2)],
                },
            )
            .await;
        // Once a later request has its reply, the reader passed the Rwalk;
        // the walk, not polled meanwhile, is then dropped.
        in_step(&root, &mut script).await;
        drop(call);
        let m = script.recv().await;
        assert_eq!(m.body, Fcall::Tclunk { fid: newfid });
        script.send(m.tag, Fcall::Rclunk).await;
    }
    // Dropped before the reply: flushed, then clunked (the server may
    // have answered the walk before it saw the Tflush).
    {
        let mut call = Box::pin(root.walk("x"));
        let m = tokio::select! {
            r = &mut call => panic!("walk returned {r:?} before any reply"),
            m = script.recv() => m,
        };
        let newfid = newfid_of(&m.body);
        drop(call);
        let flush = script.recv().await;
        assert_eq!(flush.body, Fcall::Tflush { oldtag: m.tag });
        let clunk = script.recv().await;
        assert_eq!(clunk.body, Fcall::Tclunk { fid: newfid });
    }
}

/// Plays a server answering each message with `reply` until `task` ends,
/// and returns what the task returned.
async fn serve_until<T>(
    script: &mut Script,
    task: impl std::future::Future<Output = T>,
    mut reply: impl FnMut(&Fcall) -> Fcall,
) -> T {
    let mut task = std::pin::pin!(task);
    let ended = async {
        loop {
            tokio::select! {
                r = &mut task => return r,
                m = script.recv() => {
                    let body = reply(&m.body);
                    script.send(m.tag, body).await;
                }
            }
        }
    };
    tokio::time::timeout(LIMIT * 12, ended)
        .await
        .expect("the client never ended")
}

/// A hostile server's answer to walks, opens and clunks: every walk
/// reaches a directory, unless it names `data` or `ctl` (a file).
fn tree_reply(dialect: Dialect, m: &Fcall) -> Option<Fcall> {
    Some(match m {
        Fcall::Twalk { wnames, .. } => Fcall::Rwalk {
            wqids: wnames
                .iter()
                .map(|n| match n.as_str() {
                    "data" | "ctl" => file(3),
                    _ => dir(),
                })
                .collect(),
        },
        Fcall::Topen { .. } | Fcall::Tlopen { .. } => open_reply(dialect, dir(), 0),
        Fcall::Tclunk { .. } => Fcall::Rclunk,
        _ => return None,
    })
}

/// A directory entry as a plain 9P2000 stat.
fn dir_stat(name: &str) -> Bytes {
    let stat = dchan::proto::Stat {
        qid: dir(),
        mode: dchan::proto::DMDIR | 0o755,
        name: name.into(),
        uid: "u".into(),
        gid: "g".into(),
        muid: "u".into(),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    dchan::proto::codec::encode_stat(&stat, Dialect::P2000, &mut out);
    out.freeze()
}

async fn client(dialect: Dialect) -> (Client, Script) {
    let (conn, mut script) = pair(dialect).await;
    let c = tokio::spawn(async move { Client::attach(&conn, &Options::default()).await });
    script
        .answer(
            |m| matches!(m, Fcall::Tattach { .. }),
            Fcall::Rattach { qid: dir() },
        )
        .await;
    (c.await.unwrap().unwrap(), script)
}

#[tokio::test]
async fn a_ctl_file_that_never_ends_is_refused_past_its_bound() {
    let (client, mut script) = client(Dialect::P2000).await;
    let task = client.ctl("t");
    let got = serve_until(&mut script, task, |m| match m {
        Fcall::Tread { count, .. } => Fcall::Rread {
            data: Bytes::from(vec![b'y'; *count as usize]),
        },
        m => tree_reply(Dialect::P2000, m).unwrap(),
    })
    .await;
    let e = got.unwrap_err();
    assert!(
        is_protocol(&e) && e.to_string().contains("too large"),
        "{e}"
    );
}

#[tokio::test]
async fn a_directory_that_repeats_an_entry_is_refused() {
    // Plain 9P2000: the server ignores the offset and sends one entry
    // again and again.
    let (client, mut script) = client(Dialect::P2000).await;
    let task = client.topics();
    let got = serve_until(&mut script, task, |m| match m {
        Fcall::Tread { .. } => Fcall::Rread {
            data: dir_stat("same"),
        },
        m => tree_reply(Dialect::P2000, m).unwrap(),
    })
    .await;
    let e = got.unwrap_err();
    assert!(is_protocol(&e) && e.to_string().contains("twice"), "{e}");
}

#[tokio::test]
async fn a_directory_that_never_ends_is_refused_past_its_bound() {
    let (client, mut script) = client(Dialect::P2000).await;
    let task = client.topics();
    let mut n = 0u64;
    let got = serve_until(&mut script, task, |m| match m {
        Fcall::Tread { count, .. } => {
            // As many new entries as fit.
            let mut data = BytesMut::new();
            loop {
                let s = dir_stat(&format!("t{n:012}"));
                if data.len() + s.len() > *count as usize {
                    break;
                }
                n += 1;
                data.extend_from_slice(&s);
            }
            Fcall::Rread {
                data: data.freeze(),
            }
        }
        m => tree_reply(Dialect::P2000, m).unwrap(),
    })
    .await;
    let e = got.unwrap_err();
    assert!(
        is_protocol(&e) && e.to_string().contains("too large"),
        "{e}"
    );
}

#[tokio::test]
async fn a_directory_that_contains_itself_is_listed_to_a_bounded_depth() {
    let (client, mut script) = client(Dialect::P2000).await;
    let task = client.topics();
    let got = serve_until(&mut script, task, |m| match m {
        Fcall::Tread { offset: 0, .. } => Fcall::Rread {
            data: dir_stat("alpha"),
        },
        Fcall::Tread { .. } => Fcall::Rread { data: Bytes::new() },
        m => tree_reply(Dialect::P2000, m).unwrap(),
    })
    .await;
    let e = got.unwrap_err();
    assert!(is_protocol(&e) && e.to_string().contains("deeper"), "{e}");
}
