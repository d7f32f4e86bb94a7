//! The topic tree driven through `FileTree`, the way the engine drives it,
//! over the in-memory broker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::proto::{DMAPPEND, DMEXCL, QTAPPEND};

type Tree = TopicTree<MemoryBroker>;
type H = Handle<<MemoryBroker as Broker>::Delivery>;

const MAX: u32 = 8168;

fn tree() -> Arc<Tree> {
    Arc::new(TopicTree::new(
        MemoryBroker::new(),
        TreeConfig::default(),
        || 7,
    ))
}

/// Fail instead of hanging (never a measure of time).
async fn soon<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("operation hung")
}

fn attach(t: &Tree, aname: &str, dialect: Dialect) -> Node {
    t.attach(&Attach {
        uname: "glenda".into(),
        aname: aname.into(),
        n_uname: 0,
        dialect,
        user: None,
        peer: String::new(),
    })
    .unwrap()
}

fn walk(t: &Tree, root: &Node, path: &str) -> Result<Node> {
    let mut n = root.clone();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        n = t.walk(&n, c)?;
    }
    Ok(n)
}

fn mode(access: Access) -> OpenMode {
    OpenMode {
        access,
        truncate: false,
        append: false,
        nonblock: false,
    }
}

async fn open(t: &Tree, root: &Node, path: &str, access: Access) -> Result<Arc<H>> {
    let n = walk(t, root, path)?;
    Ok(Arc::new(t.open(&n, mode(access)).await?))
}

async fn write(t: &Tree, h: &H, s: &str) -> Result<u32> {
    soon(t.write(h, 0, Bytes::from(s.to_string()))).await
}

fn req(offset: u64, count: u32) -> ReadReq {
    ReadReq {
        offset,
        count,
        max_count: MAX,
        overlaps: false,
    }
}

async fn read(t: &Tree, h: &H, offset: u64, count: u32) -> Result<Bytes> {
    soon(t.read(h, req(offset, count))).await
}

/// A file that reads like a text file: at offset 0 with a large count.
async fn cat(t: &Tree, root: &Node, path: &str) -> String {
    let h = open(t, root, path, Access::Read).await.unwrap();
    let b = read(t, &h, 0, MAX).await.unwrap();
    String::from_utf8(b.to_vec()).unwrap()
}

async fn echo(t: &Tree, root: &Node, path: &str, s: &str) -> Result<u32> {
    let h = open(t, root, path, Access::Write).await?;
    let n = write(t, &h, s).await?;
    close(t, h).await?;
    Ok(n)
}

fn clunk(t: &Tree, h: Arc<H>, how: Clunk) {
    let h = Arc::into_inner(h).expect("handle still in use");
    let node = h.node.clone();
    t.clunk(&node, Some(h), how);
}

/// A Tclunk the way the engine does it: finish an unfinished file, then
/// clunk it.
async fn close(t: &Tree, h: Arc<H>) -> Result<()> {
    let r = match t.unfinished(&h) {
        true => soon(t.close(&h)).await,
        false => Ok(()),
    };
    clunk(t, h, Clunk::Client);
    r
}

fn status(t: &Tree, topic: &str) -> broker::TopicStatus {
    t.broker().status(topic).unwrap()
}

/// Wait until the topic shows this state (a blocked operation has reached
/// the broker); state, not time.
async fn until(t: &Tree, topic: &str, f: impl Fn(&broker::TopicStatus) -> bool) {
    soon(async {
        while !f(&status(t, topic)) {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// A tree with topic `t` of capacity 100 and a Linux (9P2000.L) root.
async fn setup() -> (Arc<Tree>, Node) {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000L);
    echo(&t, &root, "ctl", "create t capacity=100\n")
        .await
        .unwrap();
    (t, root)
}

#[tokio::test]
async fn line_framing_pushes_each_line_and_the_partial_one_at_close() {
    let (t, root) = setup().await;
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    assert_eq!(write(&t, &w, "a\nb\nc").await, Ok(5));
    assert_eq!(write(&t, &w, "d\ne").await, Ok(3));
    assert_eq!(status(&t, "t").pending, 3);
    assert!(t.unfinished(&w));
    close(&t, w).await.unwrap();
    assert_eq!(
        status(&t, "t").pending,
        4,
        "the close pushed the partial line"
    );
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    let mut pos = 0;
    for want in ["a\n", "b\n", "cd\n", "e"] {
        let got = read(&t, &r, pos, MAX).await.unwrap();
        assert_eq!(got, want);
        pos += got.len() as u64;
        assert_eq!(read(&t, &r, pos, MAX - got.len() as u32).await.unwrap(), "");
    }
}

#[tokio::test]
async fn a_partial_line_at_close_keeps_the_rendezvous_or_is_dropped() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "capacity 0\n").await.unwrap();
    // The close waits for a reader, like a write of a whole line.
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    write(&t, &w, "abc").await.unwrap();
    let closing = {
        let t = t.clone();
        tokio::spawn(async move { close(&t, w).await })
    };
    until(&t, "t", |s| s.blocked_writers == 1).await;
    assert!(!closing.is_finished());
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, MAX).await.unwrap(), "abc");
    assert_eq!(soon(closing).await.unwrap(), Ok(()));
    // A lost connection (or a cancelled close) drops it: nothing waits on.
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    write(&t, &w, "lost").await.unwrap();
    clunk(&t, w, Clunk::Lost);
    assert_eq!(status(&t, "t").blocked_writers, 0);
    // Under O_NONBLOCK the close fails as the write would.
    let n = walk(&t, &root, "t/data").unwrap();
    let nb = OpenMode {
        nonblock: true,
        ..mode(Access::Write)
    };
    let w = Arc::new(t.open(&n, nb).await.unwrap());
    write(&t, &w, "nb").await.unwrap();
    assert_eq!(close(&t, w).await.unwrap_err().errno, errno::EAGAIN);
    assert_eq!(status(&t, "t").blocked_writers, 0);
}

/// Partial lines of all open data files together stay within the
/// server's `max_unfinished_bytes`: the write that would pass it fails with
/// ENOBUFS and drops its file's partial line; completing, dropping or
/// closing a line gives its bytes back; no max_message may be above it.
#[tokio::test]
async fn partial_lines_of_all_files_share_one_budget() {
    let t = Arc::new(TopicTree::new(
        MemoryBroker::new(),
        TreeConfig {
            max_unfinished_bytes: 10,
            ..TreeConfig::default()
        },
        || 0,
    ));
    let root = attach(&t, "", Dialect::P2000L);
    echo(&t, &root, "ctl", "create u capacity=100 max_message=8\n")
        .await
        .unwrap();
    let a = open(&t, &root, "u/data", Access::Write).await.unwrap();
    let b = open(&t, &root, "u/data", Access::Write).await.unwrap();
    let c = open(&t, &root, "u/data", Access::Write).await.unwrap();
    assert_eq!(write(&t, &a, "aaaaaa").await, Ok(6));
    assert_eq!(write(&t, &b, "bbb").await, Ok(3));
    assert_eq!(t.budget.held(), 9);
    let e = write(&t, &b, "bb").await.unwrap_err();
    assert_eq!(e.errno, errno::ENOBUFS);
    assert!(e.message.contains("no buffer space"), "{e:?}");
    assert_eq!(t.budget.held(), 6, "b's partial line is dropped");
    // A completed line gives its bytes back (and the tail it leaves counts).
    assert_eq!(write(&t, &a, "a\nxy").await, Ok(4));
    assert_eq!(t.budget.held(), 2);
    assert_eq!(write(&t, &c, "cccccccc").await, Ok(8));
    assert_eq!(t.budget.held(), 10);
    // A lost file and a closed one give theirs back.
    clunk(&t, c, Clunk::Lost);
    assert_eq!(t.budget.held(), 2);
    close(&t, a).await.unwrap();
    assert_eq!(t.budget.held(), 0);
    assert_eq!(status(&t, "u").pending, 2, "aaaaaaa, then xy at close");
    close(&t, b).await.unwrap();
    // No max_message above the budget, by create or by ctl.
    let e = echo(&t, &root, "ctl", "create v max_message=11\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL);
    assert!(e.message.contains("max_unfinished_bytes"), "{e:?}");
    let e = echo(&t, &root, "u/ctl", "max_message 18446744073709551615\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL);
    assert!(cat(&t, &root, "u/ctl").await.contains("max_message 8\n"));
}

/// Issue 14.3: a line without a newline cannot grow past the topic's
/// max_message; the write that would make it fails with EMSGSIZE and the
/// partial line is dropped; the same bound holds with write framing.
#[tokio::test]
async fn a_message_longer_than_max_message_is_refused_and_its_line_dropped() {
    let (t, root) = setup().await;
    echo(&t, &root, "ctl", "create m capacity=10 max_message=8\n")
        .await
        .unwrap();
    let w = open(&t, &root, "m/data", Access::Write).await.unwrap();
    assert_eq!(write(&t, &w, "12345").await, Ok(5));
    let e = write(&t, &w, "6789").await.unwrap_err();
    assert_eq!(e.errno, errno::EMSGSIZE);
    assert!(e.message.contains("message too large"), "{e:?}");
    assert_eq!(write(&t, &w, "ok\n").await, Ok(3), "the long line is gone");
    let e = write(&t, &w, "a\n123456789\n").await.unwrap_err();
    assert_eq!(e.errno, errno::EMSGSIZE, "nothing of the write goes out");
    assert_eq!(status(&t, "m").pending, 1);
    close(&t, w).await.unwrap();
    // Write framing, and a live change through ctl (for files opened after).
    echo(&t, &root, "m/ctl", "framing write\nmax_message 4\n")
        .await
        .unwrap();
    assert!(cat(&t, &root, "m/ctl").await.contains("max_message 4\n"));
    let w = open(&t, &root, "m/data", Access::Write).await.unwrap();
    assert_eq!(write(&t, &w, "abcd").await, Ok(4));
    assert_eq!(
        write(&t, &w, "abcde").await.unwrap_err().errno,
        errno::EMSGSIZE
    );
    // The broker refuses it too, for every engine.
    let e = t
        .broker()
        .push("m", Bytes::from_static(b"12345"), Wait::NonBlock);
    assert!(matches!(
        e.await,
        Err(broker::Error::TooLong { size: 5, max: 4 })
    ));
    let e = echo(&t, &root, "m/ctl", "max_message 0\n")
        .await
        .unwrap_err();
    assert!(e.message.contains("bad max_message"), "{e:?}");
}

#[tokio::test]
async fn write_framing_makes_each_write_a_message() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "framing write\n").await.unwrap();
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    write(&t, &w, "a\nb").await.unwrap();
    write(&t, &w, "c").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, MAX).await.unwrap(), "a\nb");
    assert_eq!(read(&t, &r, 3, MAX).await.unwrap(), "");
    assert_eq!(read(&t, &r, 3, MAX).await.unwrap(), "c");
}

#[tokio::test]
async fn a_message_longer_than_the_count_continues_in_the_next_reads() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/data", "hello world\nnext\n")
        .await
        .unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 5).await.unwrap(), "hello");
    assert_eq!(read(&t, &r, 5, 5).await.unwrap(), " worl");
    // filled to a count below the maximum: no zero armed after the end
    assert_eq!(read(&t, &r, 10, 2).await.unwrap(), "d\n");
    assert_eq!(read(&t, &r, 12, 100).await.unwrap(), "next\n");
}

#[tokio::test]
async fn the_linux_read_loop() {
    let (t, root) = setup().await;
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    write(&t, &w, "abc\nabc\nabc\n").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    // unfilled: a zero once, at the offset after the message
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "abc\n");
    assert_eq!(read(&t, &r, 4, 96).await.unwrap(), "");
    // filled to a count below the maximum: the buffer is full, no zero
    assert_eq!(read(&t, &r, 4, 4).await.unwrap(), "abc\n");
    assert_eq!(read(&t, &r, 8, 100).await.unwrap(), "abc\n");
    assert_eq!(read(&t, &r, 12, 100).await.unwrap(), "");
    // filled to the maximum: a zero follows
    let big = "x".repeat(MAX as usize - 1) + "\n";
    write(&t, &w, &big).await.unwrap();
    assert_eq!(read(&t, &r, 12, MAX).await.unwrap().len(), MAX as usize);
    assert_eq!(read(&t, &r, 12 + MAX as u64, 100).await.unwrap(), "");
}

#[tokio::test]
async fn plain_9p2000_reads_a_stream_unless_linux_is_asked_for() {
    let (t, _) = setup().await;
    let plain = attach(&t, "", Dialect::P2000);
    echo(&t, &plain, "t/data", "one\ntwo\n").await.unwrap();
    let r = open(&t, &plain, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "one\n");
    assert_eq!(read(&t, &r, 4, 100).await.unwrap(), "two\n");

    let linux = attach(&t, ":linux", Dialect::P2000);
    echo(&t, &linux, "t/data", "three\n").await.unwrap();
    let r = open(&t, &linux, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "three\n");
    assert_eq!(read(&t, &r, 6, 94).await.unwrap(), "");
    // ":linux" is not part of the group name
    assert_eq!(status(&t, "t").groups.len(), 1);

    let u = attach(&t, "", Dialect::P2000u);
    echo(&t, &u, "t/data", "four\n").await.unwrap();
    let r = open(&t, &u, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "four\n");
    assert_eq!(read(&t, &r, 5, 95).await.unwrap(), "");
}

#[tokio::test]
async fn a_message_is_acked_by_the_next_read_or_a_close() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/data", "a\nb\nc\n").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "a\n");
    assert_eq!(status(&t, "t").groups[0].unacked, 1);
    assert_eq!(read(&t, &r, 2, 98).await.unwrap(), "");
    assert_eq!(status(&t, "t").groups[0].unacked, 0);
    assert_eq!(read(&t, &r, 2, 100).await.unwrap(), "b\n");
    clunk(&t, r, Clunk::Client);
    assert_eq!(status(&t, "t").groups[0].unacked, 0);
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "c\n");
}

#[tokio::test]
async fn a_lost_connection_puts_the_unacked_message_back_in_front() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/data", "a\nb\n").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "a\n");
    clunk(&t, r, Clunk::Lost);
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "a\n");
    assert_eq!(read(&t, &r, 2, 98).await.unwrap(), "");
    assert_eq!(read(&t, &r, 2, 100).await.unwrap(), "b\n");
}

#[tokio::test]
async fn a_cancelled_read_takes_nothing() {
    let (t, root) = setup().await;
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    let task = {
        let (t, r) = (t.clone(), r.clone());
        tokio::spawn(async move { t.read(&r, req(0, 100)).await })
    };
    until(&t, "t", |s| s.blocked_readers == 1).await;
    task.abort();
    let _ = task.await;
    until(&t, "t", |s| s.blocked_readers == 0).await;
    echo(&t, &root, "t/data", "m\n").await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "m\n");
}

#[tokio::test]
async fn groups_fan_out_and_readers_of_a_group_share() {
    let (t, root) = setup().await;
    let g1 = attach(&t, "g1", Dialect::P2000L);
    let g2 = attach(&t, "g2", Dialect::P2000L);
    let r1 = open(&t, &g1, "t/data", Access::Read).await.unwrap();
    let r2 = open(&t, &g2, "t/data", Access::Read).await.unwrap();
    let r2b = open(&t, &g2, "t/data", Access::Read).await.unwrap();
    // groups exist from their first offset access
    assert_eq!(cat(&t, &g1, "t/offset").await, "0\n");
    assert_eq!(cat(&t, &g2, "t/offset").await, "0\n");
    echo(&t, &root, "t/data", "x\ny\n").await.unwrap();
    assert_eq!(read(&t, &r1, 0, 100).await.unwrap(), "x\n");
    assert_eq!(read(&t, &r1, 2, 100).await.unwrap(), "");
    assert_eq!(read(&t, &r1, 2, 100).await.unwrap(), "y\n");
    assert_eq!(read(&t, &r2, 0, 100).await.unwrap(), "x\n");
    assert_eq!(read(&t, &r2b, 0, 100).await.unwrap(), "y\n");
    assert_eq!(cat(&t, &g1, "t/offset").await, "2\n");
}

#[tokio::test]
async fn offset_reads_and_moves_the_group() {
    let (t, root) = setup().await;
    // a group that reads nothing keeps the messages held
    let slow = attach(&t, "slow", Dialect::P2000L);
    assert_eq!(cat(&t, &slow, "t/offset").await, "0\n");
    echo(&t, &root, "t/data", "a\nb\nc\n").await.unwrap();
    assert_eq!(cat(&t, &root, "t/offset").await, "0\n");
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 2).await.unwrap(), "a\n");
    assert_eq!(read(&t, &r, 2, 2).await.unwrap(), "b\n");
    assert_eq!(cat(&t, &root, "t/offset").await, "2\n");
    clunk(&t, r, Clunk::Client);
    // replay: back to 1
    echo(&t, &root, "t/offset", "1\n").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(read(&t, &r, 0, 2).await.unwrap(), "b\n");
    clunk(&t, r, Clunk::Client);
    // out of range, not a number: errors that change nothing
    let e = echo(&t, &root, "t/offset", "99\n").await.unwrap_err();
    assert_eq!(e.errno, errno::ERANGE, "{e}");
    assert!(e.message.contains("out of range"), "{e}");
    let e = echo(&t, &root, "t/offset", "soon\n").await.unwrap_err();
    assert_eq!(e.errno, errno::EINVAL);
    assert!(e.message.contains("bad offset"), "{e}");
    assert_eq!(cat(&t, &root, "t/offset").await, "2\n");
    // skip to the end
    echo(&t, &root, "t/offset", "3").await.unwrap();
    assert_eq!(cat(&t, &root, "t/offset").await, "3\n");
}

#[tokio::test]
async fn topic_ctl_commands_and_status() {
    let (t, root) = setup().await;
    echo(
        &t,
        &root,
        "t/ctl",
        "capacity 5\nframing write\ntimeout 2s\n",
    )
    .await
    .unwrap();
    let c = status(&t, "t").config;
    assert_eq!(c.capacity, 5);
    assert_eq!(c.framing, broker::Framing::Write);
    assert_eq!(c.timeout, Some(Duration::from_secs(2)));
    let g = attach(&t, "workers", Dialect::P2000L);
    cat(&t, &g, "t/offset").await;
    let _r = open(&t, &g, "t/data", Access::Read).await.unwrap();
    let text = cat(&t, &root, "t/ctl").await;
    for line in [
        "capacity 5\n",
        "framing write\n",
        "timeout 2s\n",
        "readers 1\n",
        "group \"workers\" offset 0 lag 0",
        "closed false\n",
    ] {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
    echo(&t, &root, "t/ctl", "forget workers\ntimeout none")
        .await
        .unwrap();
    assert!(status(&t, "t").groups.is_empty());
    assert_eq!(status(&t, "t").config.timeout, None);
}

#[tokio::test]
async fn bad_ctl_commands_fail_and_change_nothing() {
    let (t, root) = setup().await;
    let e = echo(&t, &root, "t/ctl", "capacity 5\nfrob\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL);
    assert!(
        e.message
            .starts_with("unknown command \"frob\"; want reset, close, capacity N"),
        "{e}"
    );
    assert_eq!(status(&t, "t").config.capacity, 100);
    let e = echo(&t, &root, "t/ctl", "capacity 5\nforget nobody\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::ENOENT, "{e}");
    assert_eq!(status(&t, "t").config.capacity, 100);

    let e = echo(&t, &root, "ctl", "create u\ncreate t\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EEXIST, "{e}");
    let e = echo(&t, &root, "ctl", "create u\nremove nope\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::ENOENT, "{e}");
    let e = echo(&t, &root, "ctl", "create u\ncreate v/data\n")
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL, "{e}");
    assert!(e.message.contains("name of a file"), "{e}");
    let e = echo(&t, &root, "ctl", "create u capacity=lots\n")
        .await
        .unwrap_err();
    assert!(e.message.contains("bad capacity"), "{e}");
    assert_eq!(t.broker().topics(), vec!["t"]);
}

#[tokio::test]
async fn root_ctl_creates_removes_and_reports() {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000L);
    echo(
        &t,
        &root,
        "ctl",
        "create a framing=write timeout=1s\ncreate m/eu\n",
    )
    .await
    .unwrap();
    assert_eq!(t.broker().topics(), vec!["a", "m/eu"]);
    assert_eq!(status(&t, "a").config.framing, broker::Framing::Write);
    let text = cat(&t, &root, "ctl").await;
    assert!(text.starts_with("version "), "{text}");
    for line in [
        "\ntopics 2\n",
        "\nconnections 7\n",
        "\npushed 0\n",
        "\npulled 0\n",
        "\nuptime ",
        "\nengine memory\n",
    ] {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
    echo(&t, &root, "ctl", "remove a").await.unwrap();
    assert_eq!(t.broker().topics(), vec!["m/eu"]);
}

#[tokio::test]
async fn ctl_reads_like_a_text_file_of_a_snapshot() {
    let (t, root) = setup().await;
    let h = open(&t, &root, "t/ctl", Access::Read).await.unwrap();
    let first = read(&t, &h, 0, 10).await.unwrap();
    echo(&t, &root, "t/data", "x\n").await.unwrap();
    let rest = read(&t, &h, 10, MAX).await.unwrap();
    let whole = [first, rest].concat();
    assert!(String::from_utf8_lossy(&whole).contains("pending 0\n"));
    assert_eq!(read(&t, &h, whole.len() as u64, MAX).await.unwrap(), "");
    // a new read at 0 sees now
    let now = read(&t, &h, 0, MAX).await.unwrap();
    assert!(String::from_utf8_lossy(&now).contains("pending 1\n"));
}

#[tokio::test]
async fn close_ends_readers_after_the_drain_and_fails_pushes() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/data", "last\n").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    echo(&t, &root, "t/ctl", "close").await.unwrap();
    assert_eq!(read(&t, &r, 0, 100).await.unwrap(), "last\n");
    assert_eq!(read(&t, &r, 5, 95).await.unwrap(), "");
    assert_eq!(read(&t, &r, 5, 100).await.unwrap(), "");
    let e = echo(&t, &root, "t/data", "more\n").await.unwrap_err();
    assert_eq!((e.errno, &*e.message), (errno::EPIPE, "topic closed"));
    // reset reopens
    echo(&t, &root, "t/ctl", "reset").await.unwrap();
    echo(&t, &root, "t/data", "again\n").await.unwrap();
}

#[tokio::test]
async fn reset_fails_a_blocked_writer() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "capacity 0").await.unwrap();
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    let task = {
        let (t, w) = (t.clone(), w.clone());
        tokio::spawn(async move { t.write(&w, 0, Bytes::from_static(b"lost\n")).await })
    };
    until(&t, "t", |s| s.blocked_writers == 1).await;
    echo(&t, &root, "t/ctl", "reset").await.unwrap();
    let e = soon(task).await.unwrap().unwrap_err();
    assert_eq!((e.errno, &*e.message), (errno::ECANCELED, "topic reset"));
    assert_eq!(status(&t, "t").pending, 0);
}

#[tokio::test]
async fn rmdir_wakes_blocked_readers_and_writers_with_errors() {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000L);
    let dir = soon(t.create(&root, "q", DMDIR | 0o777, mode(Access::Read)))
        .await
        .unwrap()
        .0;
    assert_eq!(status(&t, "q").config, TopicConfig::default());
    let r = open(&t, &root, "q/data", Access::Read).await.unwrap();
    let other = attach(&t, "other", Dialect::P2000L);
    cat(&t, &other, "q/offset").await; // a group that never reads: pushes wait
    let w = open(&t, &root, "q/data", Access::Write).await.unwrap();
    let reader = {
        let (t, r) = (t.clone(), r.clone());
        tokio::spawn(async move { t.read(&r, req(0, 100)).await })
    };
    until(&t, "q", |s| s.blocked_readers == 1).await;
    // the default group takes it, the other group never does
    let writer = {
        let (t, w) = (t.clone(), w.clone());
        tokio::spawn(async move { t.write(&w, 0, Bytes::from_static(b"x\n")).await })
    };
    let got = soon(reader).await.unwrap().unwrap();
    assert_eq!(got, "x\n");
    let reader = {
        let (t, r) = (t.clone(), r.clone());
        tokio::spawn(async move { t.read(&r, req(2, 100)).await })
    };
    let reader = {
        // the zero read, then a blocking one
        assert_eq!(soon(reader).await.unwrap().unwrap(), "");
        let (t, r) = (t.clone(), r.clone());
        tokio::spawn(async move { t.read(&r, req(2, 100)).await })
    };
    until(&t, "q", |s| {
        s.blocked_readers == 1 && s.blocked_writers == 1
    })
    .await;
    soon(t.remove(&dir)).await.unwrap();
    assert_eq!(
        soon(reader).await.unwrap().unwrap_err().errno,
        errno::ENOENT
    );
    // The default group took the message: its writer is told it was
    // pushed, not that it failed (issue 14.5).
    assert_eq!(soon(writer).await.unwrap().unwrap(), 2);
    assert!(walk(&t, &root, "q").is_err());
}

#[tokio::test]
async fn nonblocking_opens_get_eagain() {
    let (t, root) = setup().await;
    let n = walk(&t, &root, "t/data").unwrap();
    let h = soon(t.open(
        &n,
        OpenMode {
            nonblock: true,
            ..mode(Access::Read)
        },
    ))
    .await
    .unwrap();
    let e = read(&t, &h, 0, 100).await.unwrap_err();
    assert_eq!(e.errno, errno::EAGAIN);
}

#[tokio::test]
async fn a_timeout_fails_with_etimedout() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "timeout 10ms").await.unwrap();
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    let e = read(&t, &r, 0, 100).await.unwrap_err();
    assert_eq!((e.errno, &*e.message), (errno::ETIMEDOUT, "timed out"));
    // Linux on plain 9P2000 maps Rerror texts to errnos: it gets its own
    let linux = attach(&t, ":linux", Dialect::P2000);
    let r = open(&t, &linux, "t/data", Access::Read).await.unwrap();
    let e = read(&t, &r, 0, 100).await.unwrap_err();
    assert_eq!(
        (e.errno, &*e.message),
        (errno::ETIMEDOUT, "Connection timed out")
    );
    let e = walk(&t, &linux, "nope").unwrap_err();
    assert_eq!(&*e.message, "No such file or directory");
    let plain = attach(&t, "", Dialect::P2000);
    assert_eq!(
        &*walk(&t, &plain, "nope").unwrap_err().message,
        "file does not exist"
    );
}

#[tokio::test]
async fn stat_and_truncation() {
    let (t, root) = setup().await;
    let data = walk(&t, &root, "t/data").unwrap();
    let i = t.stat(&data).unwrap();
    assert_eq!((i.qid.ty, i.qid.version, i.length), (QTFILE, 0, 0));
    assert_eq!(i.qid.ty & QTAPPEND, 0);
    assert_eq!(i.mode & (DMDIR | DMAPPEND | DMEXCL), 0);
    assert_eq!(i.name, "data");
    let dir = t.stat(&walk(&t, &root, "t").unwrap()).unwrap();
    assert_eq!((dir.qid.ty, dir.mode & DMDIR), (QTDIR, DMDIR));
    // qid paths: stable and distinct
    let mut paths = vec![t.stat(&root).unwrap().qid.path];
    for p in ["ctl", "t", "t/ctl", "t/data", "t/offset"] {
        let a = t.stat(&walk(&t, &root, p).unwrap()).unwrap().qid.path;
        assert_eq!(a, t.stat(&walk(&t, &root, p).unwrap()).unwrap().qid.path);
        paths.push(a);
    }
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 6);
    for p in ["t/data", "t/ctl", "t/offset"] {
        let n = walk(&t, &root, p).unwrap();
        let trunc = Changes {
            length: Some(0),
            mtime: Some(1),
            ..Changes::default()
        };
        soon(t.wstat(&n, trunc)).await.unwrap();
        let h = soon(t.open(
            &n,
            OpenMode {
                truncate: true,
                ..mode(Access::Write)
            },
        ))
        .await;
        assert!(h.is_ok());
    }
    let e = soon(t.wstat(
        &data,
        Changes {
            name: Some("x".into()),
            ..Changes::default()
        },
    ))
    .await
    .unwrap_err();
    assert_eq!(e.errno, errno::EPERM);
}

#[tokio::test]
async fn nested_topics_directories_and_names() {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000L);
    echo(
        &t,
        &root,
        "ctl",
        "create metrics/eu\ncreate metrics/us\ncreate jobs",
    )
    .await
    .unwrap();
    let names = |p: &str| -> Vec<String> {
        let n = walk(&t, &root, p).unwrap();
        t.readdir(&n).unwrap().into_iter().map(|i| i.name).collect()
    };
    assert_eq!(names(""), vec!["ctl", "topics", "jobs", "metrics"]);
    assert_eq!(names("metrics"), vec!["eu", "us"]);
    assert_eq!(names("metrics/eu"), vec!["ctl", "data", "offset"]);
    // an intermediate directory has no files of its own
    assert_eq!(
        walk(&t, &root, "metrics/data").unwrap_err().errno,
        errno::ENOENT
    );
    assert_eq!(walk(&t, &root, "nope").unwrap_err().errno, errno::ENOENT);
    assert_eq!(
        walk(&t, &root, "jobs/data/x").unwrap_err().errno,
        errno::ENOTDIR
    );
    let up = walk(&t, &root, "metrics/eu/..").unwrap();
    assert_eq!(t.stat(&up).unwrap().name, "eu".replace("eu", "metrics"));
    // mkdir in a directory nests; reserved names are refused
    let m = walk(&t, &root, "metrics").unwrap();
    soon(t.create(&m, "asia", DMDIR | 0o777, mode(Access::Read)))
        .await
        .unwrap();
    assert!(t.broker().topics().contains(&"metrics/asia".to_string()));
    let jobs = walk(&t, &root, "jobs").unwrap();
    let e = soon(t.create(&jobs, "offset", DMDIR | 0o777, mode(Access::Read)))
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL, "{e}");
    // a top-level topic may be called offset or data
    soon(t.create(&root, "offset", DMDIR | 0o777, mode(Access::Read)))
        .await
        .unwrap();
    assert!(walk(&t, &root, "offset/data").is_ok());
    // plain files cannot be made; an existing one is opened
    let e = soon(t.create(&jobs, "notes", 0o666, mode(Access::Write)))
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EPERM);
    assert!(
        soon(t.create(&jobs, "data", 0o666, mode(Access::Write)))
            .await
            .is_ok()
    );
    // an intermediate directory is not removed; a file is not removed
    assert_eq!(
        soon(t.remove(&m)).await.unwrap_err().errno,
        errno::ENOTEMPTY
    );
    let f = walk(&t, &root, "jobs/ctl").unwrap();
    assert_eq!(soon(t.remove(&f)).await.unwrap_err().errno, errno::EPERM);
}

#[tokio::test]
async fn a_nonblocking_write_that_fills_the_topic_returns_a_short_count() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "capacity 1").await.unwrap();
    cat(&t, &root, "t/offset").await; // the default group exists, reads nothing
    let n = walk(&t, &root, "t/data").unwrap();
    let w = soon(t.open(
        &n,
        OpenMode {
            nonblock: true,
            ..mode(Access::Write)
        },
    ))
    .await
    .unwrap();
    assert_eq!(write(&t, &w, "ab\ncd\nef").await, Ok(3));
    assert_eq!(
        write(&t, &w, "cd\nef").await.unwrap_err().errno,
        errno::EAGAIN
    );
    assert_eq!(status(&t, "t").pending, 1);
    // not open for reading / writing
    let r = open(&t, &root, "t/data", Access::Read).await.unwrap();
    assert_eq!(write(&t, &r, "x\n").await.unwrap_err().errno, errno::EBADF);
    assert_eq!(read(&t, &w, 0, 10).await.unwrap_err().errno, errno::EBADF);
}

#[tokio::test]
async fn a_write_whose_later_lines_time_out_or_meet_a_close_returns_a_short_count() {
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "capacity 1\ntimeout 50ms")
        .await
        .unwrap();
    cat(&t, &root, "t/offset").await; // the default group exists, reads nothing
    let w = open(&t, &root, "t/data", Access::Write).await.unwrap();
    assert_eq!(write(&t, &w, "ab\ncd\n").await, Ok(3));
    assert_eq!(
        write(&t, &w, "cd\n").await.unwrap_err().errno,
        errno::ETIMEDOUT
    );
    assert_eq!(status(&t, "t").pending, 1);

    echo(&t, &root, "ctl", "create u capacity=1\n")
        .await
        .unwrap();
    cat(&t, &root, "u/offset").await;
    let w = open(&t, &root, "u/data", Access::Write).await.unwrap();
    let (t2, root2) = (t.clone(), root.clone());
    let closer = tokio::spawn(async move {
        until(&t2, "u", |s| s.blocked_writers == 1).await;
        echo(&t2, &root2, "u/ctl", "close").await.unwrap();
    });
    assert_eq!(write(&t, &w, "ab\ncd\n").await, Ok(3));
    closer.await.unwrap();
    assert_eq!(write(&t, &w, "cd\n").await.unwrap_err().errno, errno::EPIPE);
}

/// A name component longer than 255 bytes (Linux's NAME_MAX) is refused by
/// ctl and mkdir alike: Linux could not walk to it, and its stat record
/// would outgrow a small msize and break the listing of its parent for
/// every client.
#[tokio::test]
async fn overlong_names_are_refused() {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000L);
    let long = "x".repeat(256);
    let e = echo(&t, &root, "ctl", &format!("create {long}"))
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL, "{e}");
    let e = echo(&t, &root, "ctl", &format!("create a/{long}"))
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL, "{e}");
    let e = soon(t.create(&root, &long, DMDIR | 0o777, mode(Access::Read)))
        .await
        .unwrap_err();
    assert_eq!(e.errno, errno::EINVAL, "{e}");
    assert!(t.broker().topics().is_empty());
    let most = "y".repeat(255);
    echo(&t, &root, "ctl", &format!("create {most}/{most}"))
        .await
        .unwrap();
    let n = walk(&t, &root, &format!("{most}/{most}/data")).unwrap();
    assert!(t.stat(&n).is_ok());
}

/// Issue 14.1: Linux 6.12 retries a write answered EAGAIN for ever; after
/// more than `SPIN_REFUSALS` would-block refusals of one open file in a row,
/// each within `SPIN_GAP` of the last, with no push between, the refused
/// write gets EBUSY instead, and the count starts again. Nothing is pushed.
#[tokio::test(start_paused = true)]
async fn a_nonblocking_write_refused_in_a_fast_loop_gets_ebusy() {
    use data::{SPIN_GAP, SPIN_REFUSALS};
    let (t, root) = setup().await;
    echo(&t, &root, "t/ctl", "capacity 0").await.unwrap();
    cat(&t, &root, "t/offset").await; // the default group exists, reads nothing
    let n = walk(&t, &root, "t/data").unwrap();
    let nb = OpenMode {
        nonblock: true,
        ..mode(Access::Write)
    };
    let w = Arc::new(t.open(&n, nb).await.unwrap());
    let errno_of = |r: Result<u32>| r.unwrap_err().errno;
    // The clock is paused: every refusal comes at the same instant.
    for _ in 0..SPIN_REFUSALS {
        assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    }
    let e = write(&t, &w, "nb\n").await.unwrap_err();
    assert_eq!(e.errno, errno::EBUSY);
    assert!(e.message.starts_with("busy: "), "{}", e.message);
    assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    // A gap longer than SPIN_GAP starts the count again.
    for _ in 1..SPIN_REFUSALS {
        assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    }
    tokio::time::advance(SPIN_GAP + Duration::from_millis(1)).await;
    for _ in 0..SPIN_REFUSALS {
        assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    }
    assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EBUSY);
    let s = status(&t, "t");
    assert_eq!((s.pending, s.blocked_writers), (0, 0), "nothing pushed");
    // A push that goes out starts the count again.
    for _ in 1..SPIN_REFUSALS {
        assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    }
    echo(&t, &root, "t/ctl", "capacity 1").await.unwrap();
    assert_eq!(write(&t, &w, "one\n").await, Ok(4));
    // Full again: refused, counting from 1.
    for _ in 0..SPIN_REFUSALS {
        assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EAGAIN);
    }
    assert_eq!(errno_of(write(&t, &w, "nb\n").await), errno::EBUSY);
    assert_eq!(status(&t, "t").pending, 1);
    // Another open file counts its own refusals.
    let w2 = Arc::new(t.open(&n, nb).await.unwrap());
    assert_eq!(errno_of(write(&t, &w2, "nb\n").await), errno::EAGAIN);
}

/// Issue 15.3: qids cost no memory: an intermediate directory's is stable
/// without being stored, a topic's is its identity (a topic created again
/// is a new file), and stats racing removes leave nothing behind.
#[tokio::test]
async fn qids_are_stable_distinct_and_stored_nowhere() {
    let (t, root) = setup().await;
    let qid = |p: &str| t.stat(&walk(&t, &root, p).unwrap()).unwrap().qid.path;
    for i in 0..1000 {
        echo(&t, &root, "ctl", &format!("create u{i}/inbox\n"))
            .await
            .unwrap();
        let (dir, topic) = (qid(&format!("u{i}")), qid(&format!("u{i}/inbox")));
        assert_ne!(dir, topic);
        assert_eq!(dir, qid(&format!("u{i}")));
        echo(&t, &root, "ctl", &format!("remove u{i}/inbox\n"))
            .await
            .unwrap();
        echo(&t, &root, "ctl", &format!("create u{i}/inbox\n"))
            .await
            .unwrap();
        assert_ne!(
            topic,
            qid(&format!("u{i}/inbox")),
            "a new topic, a new file"
        );
        assert_eq!(dir, qid(&format!("u{i}")));
        // A stat racing the removal of what it stats.
        let n = walk(&t, &root, &format!("u{i}/inbox/data")).unwrap();
        let racer = {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let _ = t.stat(&n);
                }
            })
        };
        echo(&t, &root, "ctl", &format!("remove u{i}/inbox\n"))
            .await
            .unwrap();
        racer.join().unwrap();
    }
    assert!(t.places.lock().readers.is_empty());
}

/// A root ctl line cut between two writes (a mount cut a larger write)
/// waits for its end; a write without a line break is one command; an
/// unfinished last line runs at the close.
#[tokio::test]
async fn a_root_ctl_line_cut_between_writes_runs_whole() {
    let t = tree();
    let root = attach(&t, "", Dialect::P2000u);
    let h = open(&t, &root, "ctl", Access::Write).await.unwrap();
    write(&t, &h, "create a\ncre").await.unwrap();
    assert_eq!(t.broker().topics(), vec!["a"], "the cut line waits");
    write(&t, &h, "ate b\ncreate c\n").await.unwrap();
    assert_eq!(t.broker().topics(), vec!["a", "b", "c"]);
    write(&t, &h, "create d").await.unwrap();
    assert_eq!(t.broker().topics(), vec!["a", "b", "c", "d"], "one command");
    write(&t, &h, "create e\ncreate f").await.unwrap();
    assert_eq!(t.broker().topics(), vec!["a", "b", "c", "d", "e"]);
    close(&t, h).await.unwrap();
    assert_eq!(t.broker().topics(), vec!["a", "b", "c", "d", "e", "f"]);
}
