//! Version negotiation, and walk/open/read/write/clunk/remove on the RAM
//! tree in each dialect, over a real socket.

mod engine_support;

use dchan::engine::Limits;
use dchan::proto::*;
use engine_support::*;

const DIALECTS: [Dialect; 3] = [Dialect::P2000, Dialect::P2000u, Dialect::P2000L];

#[tokio::test]
async fn version_negotiation() {
    let limits = Limits {
        max_msize: 65536,
        ..Limits::default()
    };
    let srv = Server::start(limits).await;
    let mut c = srv.client().await;
    for v in ["9P2000", "9P2000.u", "9P2000.L"] {
        let r = c.version(8192, v).await;
        assert_eq!(
            r,
            Fcall::Rversion {
                msize: 8192,
                version: v.into()
            }
        );
    }
    // Anything after "9P2000" is plain 9P2000 (version(5)).
    let r = c.version(8192, "9P2000.x").await;
    assert_eq!(
        r,
        Fcall::Rversion {
            msize: 8192,
            version: "9P2000".into()
        }
    );
    // A dialect with a period-separated extension is that dialect: the
    // longest known one the string starts with (ZeroFS sends "9P2000.L.Z").
    for (asked, answered) in [
        ("9P2000.L.Z", "9P2000.L"),
        ("9P2000.u.x", "9P2000.u"),
        ("9P2000.Lx", "9P2000"),
    ] {
        let r = c.version(8192, asked).await;
        assert_eq!(
            r,
            Fcall::Rversion {
                msize: 8192,
                version: answered.into()
            },
            "{asked}"
        );
    }
    // ...and the connection speaks it: 9P2000.L requests work.
    c.version(8192, "9P2000.L.Z").await;
    c.dialect = Dialect::P2000L;
    c.attach(0, "").await;
    let r = c
        .rpc(
            2,
            Fcall::Tgetattr {
                fid: 0,
                request_mask: 0x7ff,
            },
        )
        .await;
    assert!(matches!(r, Fcall::Rgetattr { .. }), "{r:?}");
    c.dialect = Dialect::P2000;
    let r = c.version(8192, "HTTP/1.1").await;
    assert_eq!(
        r,
        Fcall::Rversion {
            msize: 8192,
            version: "unknown".into()
        }
    );
    // Clamped to the server's maximum.
    let r = c.version(1 << 24, "9P2000.L").await;
    assert_eq!(
        r,
        Fcall::Rversion {
            msize: 65536,
            version: "9P2000.L".into()
        }
    );
    // Too small to be useful.
    assert_error(&c.version(16, "9P2000").await);
    srv.stop().await;
}

#[tokio::test]
async fn requests_before_version_fail() {
    let srv = Server::start(Limits::default()).await;
    let mut c = srv.client().await;
    let r = c
        .rpc(
            1,
            Fcall::Tattach {
                fid: 0,
                afid: NOFID,
                uname: "u".into(),
                aname: "".into(),
                n_uname: 0,
            },
        )
        .await;
    assert_error(&r);
    srv.stop().await;
}

#[tokio::test]
async fn a_new_version_clunks_every_fid() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::session(srv.addr, Dialect::P2000L).await;
    assert!(matches!(c.walk(0, 1, &[]).await, Fcall::Rwalk { .. }));
    c.version(8192, "9P2000.L").await;
    assert_error(&c.walk(0, 2, &[]).await);
    assert_error(&c.walk(1, 2, &[]).await);
    // Fid 0 is free again.
    c.attach(0, "").await;
    srv.stop().await;
}

#[tokio::test]
async fn files_in_every_dialect() {
    let srv = Server::start(Limits::default()).await;
    for d in DIALECTS {
        let mut c = Client::session(srv.addr, d).await;
        let dir = format!("d-{}", d.as_str());
        // mkdir: Tcreate with DMDIR, or Tmkdir.
        c.walk(0, 1, &[]).await;
        let r = match d {
            Dialect::P2000L => {
                c.rpc(
                    1,
                    Fcall::Tmkdir {
                        dfid: 1,
                        name: dir.clone(),
                        mode: 0o755,
                        gid: 0,
                    },
                )
                .await
            }
            _ => {
                c.rpc(
                    1,
                    Fcall::Tcreate {
                        fid: 1,
                        name: dir.clone(),
                        perm: DMDIR | 0o755,
                        mode: OREAD,
                        extension: String::new(),
                    },
                )
                .await
            }
        };
        assert!(!is_error(&r), "{r:?}");
        c.clunk(1).await;
        // Create a file in it, write, read back.
        let r = c.walk(0, 2, &[&dir]).await;
        let Fcall::Rwalk { wqids } = r else {
            panic!("{r:?}")
        };
        assert_eq!(wqids.len(), 1);
        assert_eq!(wqids[0].ty, QTDIR);
        let r = c.create(2, "f").await;
        assert!(!is_error(&r), "{r:?}");
        assert_eq!(c.write(2, 0, b"hello").await, Fcall::Rwrite { count: 5 });
        assert_eq!(data(&c.read(2, 0, 100).await), &b"hello"[..]);
        assert_eq!(data(&c.read(2, 3, 100).await), &b"lo"[..]);
        assert_eq!(data(&c.read(2, 5, 100).await), &b""[..]);
        assert_eq!(c.clunk(2).await, Fcall::Rclunk);
        // Walk two names, stat, open read-only.
        let r = c.walk(0, 3, &[&dir, "f"]).await;
        assert!(
            matches!(&r, Fcall::Rwalk { wqids } if wqids.len() == 2),
            "{r:?}"
        );
        match d {
            Dialect::P2000L => {
                let r = c
                    .rpc(
                        1,
                        Fcall::Tgetattr {
                            fid: 3,
                            request_mask: 0x7ff,
                        },
                    )
                    .await;
                let Fcall::Rgetattr { attr } = r else {
                    panic!("{r:?}")
                };
                assert_eq!(attr.size, 5);
                assert_eq!(attr.mode, 0o100644);
                assert_eq!(attr.uid, 1000);
            }
            _ => {
                let r = c.rpc(1, Fcall::Tstat { fid: 3 }).await;
                let Fcall::Rstat { stat } = r else {
                    panic!("{r:?}")
                };
                assert_eq!((stat.length, stat.name.as_str()), (5, "f"));
            }
        }
        assert!(!is_error(&c.open(3, false).await));
        assert_eq!(data(&c.read(3, 0, 100).await), &b"hello"[..]);
        // Read-only: writing fails; opening twice fails; walking an open fid fails.
        assert_error(&c.write(3, 0, b"x").await);
        assert_error(&c.open(3, false).await);
        assert_error(&c.walk(3, 4, &[]).await);
        // Truncate through wstat/setattr.
        let r = match d {
            Dialect::P2000L => {
                let attr = SetAttr {
                    valid: 1 << 3,
                    size: 0,
                    ..SetAttr::default()
                };
                c.rpc(1, Fcall::Tsetattr { fid: 3, attr }).await
            }
            _ => {
                let stat = Stat {
                    ty: u16::MAX,
                    dev: u32::MAX,
                    qid: Qid {
                        ty: u8::MAX,
                        version: u32::MAX,
                        path: u64::MAX,
                    },
                    mode: u32::MAX,
                    atime: u32::MAX,
                    mtime: u32::MAX,
                    length: 0,
                    n_uid: u32::MAX,
                    n_gid: u32::MAX,
                    n_muid: u32::MAX,
                    ..Stat::default()
                };
                c.rpc(1, Fcall::Twstat { fid: 3, stat }).await
            }
        };
        assert!(!is_error(&r), "{r:?}");
        assert_eq!(data(&c.read(3, 0, 100).await), &b""[..]);
        // Remove the file, then the directory.
        assert_eq!(c.rpc(1, Fcall::Tremove { fid: 3 }).await, Fcall::Rremove);
        assert_error(&c.clunk(3).await);
        c.walk(0, 5, &[&dir]).await;
        match d {
            Dialect::P2000L => {
                let r = c
                    .rpc(
                        1,
                        Fcall::Tunlinkat {
                            dirfid: 0,
                            name: dir.clone(),
                            flags: 0x200,
                        },
                    )
                    .await;
                assert_eq!(r, Fcall::Runlinkat);
                c.clunk(5).await;
            }
            _ => assert_eq!(c.rpc(1, Fcall::Tremove { fid: 5 }).await, Fcall::Rremove),
        }
        assert_error(&c.walk(0, 6, &[&dir]).await);
    }
    srv.stop().await;
}

#[tokio::test]
async fn directory_reads() {
    let srv = Server::start(Limits::default()).await;
    for d in DIALECTS {
        let mut c = Client::session(srv.addr, d).await;
        for name in ["a", "b", "c"] {
            c.walk(0, 1, &[]).await;
            c.create(1, &format!("{name}{}", d.as_str())).await;
            c.clunk(1).await;
        }
        c.walk(0, 2, &[]).await;
        assert!(!is_error(&c.open(2, false).await));
        let mut names = Vec::new();
        match d {
            Dialect::P2000L => {
                let mut offset = 0;
                loop {
                    let r = c
                        .rpc(
                            1,
                            Fcall::Treaddir {
                                fid: 2,
                                offset,
                                count: 100,
                            },
                        )
                        .await;
                    let Fcall::Rreaddir { data } = r else {
                        panic!("{r:?}")
                    };
                    if data.is_empty() {
                        break;
                    }
                    let mut p = &data[..];
                    while !p.is_empty() {
                        // qid[13] offset[8] type[1] name[s]
                        offset = u64::from_le_bytes(p[13..21].try_into().unwrap());
                        let n = u16::from_le_bytes([p[22], p[23]]) as usize;
                        names.push(String::from_utf8(p[24..24 + n].to_vec()).unwrap());
                        p = &p[24 + n..];
                    }
                }
            }
            _ => {
                let mut offset = 0;
                loop {
                    let r = data(&c.read(2, offset, 150).await);
                    if r.is_empty() {
                        break;
                    }
                    offset += r.len() as u64;
                    let mut p = &r[..];
                    while !p.is_empty() {
                        let (stat, n) =
                            dchan::proto::codec::decode_stat(&bytes::Bytes::copy_from_slice(p), d)
                                .unwrap();
                        names.push(stat.name);
                        p = &p[n..];
                    }
                }
            }
        }
        for name in ["a", "b", "c"] {
            assert!(
                names.contains(&format!("{name}{}", d.as_str())),
                "{names:?}"
            );
        }
        assert!(names.contains(&"block".to_string()));
        assert_eq!(names.contains(&"..".to_string()), d == Dialect::P2000L);
        // Writing a directory fails.
        assert_error(&c.write(2, 0, b"x").await);
    }
    srv.stop().await;
}

#[tokio::test]
async fn fid_errors() {
    let srv = Server::start(Limits::default()).await;
    for d in DIALECTS {
        let mut c = Client::session(srv.addr, d).await;
        // Unknown fids.
        assert_error(&c.walk(42, 43, &[]).await);
        assert_error(&c.read(42, 0, 10).await);
        assert_error(&c.clunk(42).await);
        assert_error(&c.rpc(1, Fcall::Tremove { fid: 42 }).await);
        // Fid in use: attach and walk.
        let r = c
            .rpc(
                1,
                Fcall::Tattach {
                    fid: 0,
                    afid: NOFID,
                    uname: "u".into(),
                    aname: "".into(),
                    n_uname: 0,
                },
            )
            .await;
        assert_error(&r);
        c.walk(0, 1, &[]).await;
        assert_error(&c.walk(0, 1, &[]).await);
        // I/O on an unopened fid.
        c.walk(0, 2, &["block"]).await;
        assert_error(&c.read(2, 0, 10).await);
        assert_error(&c.write(2, 0, b"x").await);
        // A walk whose first name fails is an error; a later one gives the qids so far, no newfid.
        assert_error(&c.walk(0, 3, &["nope"]).await);
        let r = c.walk(0, 3, &["block", "nope"]).await;
        assert!(
            matches!(&r, Fcall::Rwalk { wqids } if wqids.len() == 1),
            "{r:?}"
        );
        assert_error(&c.clunk(3).await);
        // newfid == fid moves the fid.
        let r = c.walk(1, 1, &["block"]).await;
        assert!(
            matches!(&r, Fcall::Rwalk { wqids } if wqids.len() == 1),
            "{r:?}"
        );
        // Tauth: no authentication.
        assert_error(
            &c.rpc(
                1,
                Fcall::Tauth {
                    afid: 9,
                    uname: "u".into(),
                    aname: "".into(),
                    n_uname: 0,
                },
            )
            .await,
        );
        // Write-only fids do not read.
        c.walk(0, 4, &["block"]).await;
        let body = match d {
            Dialect::P2000L => Fcall::Tlopen { fid: 4, flags: 1 },
            _ => Fcall::Topen {
                fid: 4,
                mode: OWRITE,
            },
        };
        assert!(!is_error(&c.rpc(1, body).await));
        assert_error(&c.read(4, 0, 10).await);
        // Several attaches on one connection, each with its aname.
        c.attach(7, "other").await;
        assert!(matches!(
            c.walk(7, 8, &["block"]).await,
            Fcall::Rwalk { .. }
        ));
    }
    srv.stop().await;
}

#[tokio::test]
async fn errors_per_dialect() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::session(srv.addr, Dialect::P2000).await;
    let r = c.walk(0, 1, &["nope"]).await;
    assert!(
        matches!(&r, Fcall::Rerror { ename, .. } if !ename.is_empty()),
        "{r:?}"
    );
    let mut c = Client::session(srv.addr, Dialect::P2000u).await;
    let r = c.walk(0, 1, &["nope"]).await;
    assert!(matches!(&r, Fcall::Rerror { errno: 2, .. }), "{r:?}");
    let mut c = Client::session(srv.addr, Dialect::P2000L).await;
    let r = c.walk(0, 1, &["nope"]).await;
    assert_eq!(r, Fcall::Rlerror { ecode: 2 });
    srv.stop().await;
}

#[tokio::test]
async fn orclose_removes_at_clunk() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::session(srv.addr, Dialect::P2000).await;
    c.walk(0, 1, &[]).await;
    let r = c
        .rpc(
            1,
            Fcall::Tcreate {
                fid: 1,
                name: "tmp".into(),
                perm: 0o644,
                mode: ORDWR | ORCLOSE,
                extension: String::new(),
            },
        )
        .await;
    assert!(!is_error(&r), "{r:?}");
    assert!(matches!(c.walk(0, 2, &["tmp"]).await, Fcall::Rwalk { .. }));
    assert_eq!(c.clunk(1).await, Fcall::Rclunk);
    assert_error(&c.walk(0, 3, &["tmp"]).await);
    srv.stop().await;
}

#[tokio::test]
async fn serves_a_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dchan.sock");
    let addr: dchan::engine::Addr = format!("unix!{}", path.display()).parse().unwrap();
    let l = dchan::engine::Listener::bind(&addr).await.unwrap();
    assert_eq!(l.local_addr().unwrap(), addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tree = std::sync::Arc::new(dchan::ramfs::RamFs::new());
    let server = tokio::spawn(dchan::engine::serve(
        vec![l],
        tree,
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    // Tversion, tag NOTAG, msize 8192, "9P2000".
    let mut t = vec![19, 0, 0, 0, 100, 0xff, 0xff, 0, 0x20, 0, 0, 6, 0];
    t.extend_from_slice(b"9P2000");
    s.write_all(&t).await.unwrap();
    let mut r = [0u8; 19];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r[4], 101);
    assert_eq!(&r[13..], b"9P2000");
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_failed_remove_still_clunks() {
    let srv = Server::start(Limits::default()).await;
    let mut c = Client::session(srv.addr, Dialect::P2000u).await;
    c.walk(0, 1, &[]).await;
    let r = c
        .rpc(
            1,
            Fcall::Tcreate {
                fid: 1,
                name: "full".into(),
                perm: DMDIR | 0o755,
                mode: OREAD,
                extension: String::new(),
            },
        )
        .await;
    assert!(!is_error(&r), "{r:?}");
    c.walk(0, 2, &["full"]).await;
    c.create(2, "f").await;
    // The directory is not empty: the remove fails, and fid 1 is gone anyway.
    assert_error(&c.rpc(1, Fcall::Tremove { fid: 1 }).await);
    assert_error(&c.clunk(1).await);
    assert!(matches!(
        c.walk(0, 3, &["full", "f"]).await,
        Fcall::Rwalk { .. }
    ));
    srv.stop().await;
}
