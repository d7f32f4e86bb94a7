//! A scripted 9P server for the client's tests: the test plays the server
//! on an in-memory pipe, reading each T-message the client sends and
//! answering with whatever R-message (well-formed or not) it wants.
#![allow(dead_code)]

use std::time::Duration;

use bytes::BytesMut;
use dchan::client::{ConnectOptions, Connection};
use dchan::proto::codec::{decode, encode};
use dchan::proto::frame::FrameDecoder;
use dchan::proto::{Dialect, Fcall, Msg};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio_util::codec::FramedRead;

/// Fails a test whose client sends nothing; never a measurement.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The msize the script agrees to.
pub const MSIZE: u32 = 4096;

/// The server's end: reads T-messages, writes R-messages.
pub struct Script {
    rx: FramedRead<tokio::io::ReadHalf<DuplexStream>, FrameDecoder>,
    tx: WriteHalf<DuplexStream>,
    pub dialect: Dialect,
}

impl Script {
    /// The next message from the client.
    pub async fn recv(&mut self) -> Msg {
        let frame = tokio::time::timeout(LIMIT, self.rx.next())
            .await
            .expect("client sent nothing")
            .expect("client hung up")
            .expect("bad frame");
        decode(frame, self.dialect).expect("bad message")
    }

    /// Answer `tag` with `body`.
    pub async fn send(&mut self, tag: u16, body: Fcall) {
        let mut buf = BytesMut::new();
        encode(&Msg { tag, body }, self.dialect, &mut buf);
        self.tx.write_all(&buf).await.unwrap();
    }

    /// Receive one message, check it with `want`, and answer it with `reply`.
    pub async fn answer(&mut self, want: impl FnOnce(&Fcall) -> bool, reply: Fcall) -> Msg {
        let m = self.recv().await;
        assert!(want(&m.body), "unexpected {:?}", m.body);
        self.send(m.tag, reply.clone()).await;
        m
    }
}

/// A connected client (it proposed msize 8192; the script agreed to
/// [`MSIZE`]) and the script playing its server.
pub async fn pair(dialect: Dialect) -> (Connection, Script) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let mut script = Script {
        rx: FramedRead::new(sr, FrameDecoder::new(1 << 20)),
        tx: sw,
        dialect,
    };
    let opts = ConnectOptions {
        dialect,
        msize: 8192,
        ..ConnectOptions::default()
    };
    let conn = tokio::spawn(async move { Connection::handshake(cr, cw, &opts).await });
    let tv = script.recv().await;
    assert!(matches!(tv.body, Fcall::Tversion { msize: 8192, .. }));
    script
        .send(
            tv.tag,
            Fcall::Rversion {
                msize: MSIZE,
                version: dialect.as_str().into(),
            },
        )
        .await;
    let conn = conn.await.unwrap().expect("handshake");
    assert_eq!((conn.msize(), conn.dialect()), (MSIZE, dialect));
    (conn, script)
}
