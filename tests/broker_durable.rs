//! The durable engine across restarts, driven through the `Broker` trait:
//! a broker dropped and opened again on its directory finds every topic,
//! its settings, its messages and each group's place; a torn last record
//! is cut off; a damaged record elsewhere stops the start with its file
//! and offset, and the documented repair keeps what comes before it;
//! segments every group has passed are deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dchan::broker::durable::{DurableBroker, OpenError, Options, SyncMode};
use dchan::broker::{Broker, Delivery, Error, Setting, TopicConfig, Wait};

const LIMIT: Duration = Duration::from_secs(10);

fn open(dir: &Path) -> DurableBroker {
    open_with(dir, Options::default())
}

fn open_with(dir: &Path, options: Options) -> DurableBroker {
    DurableBroker::open(dir, options).expect("open the data directory")
}

fn cap(capacity: u64) -> TopicConfig {
    TopicConfig {
        capacity,
        ..TopicConfig::default()
    }
}

async fn push(b: &DurableBroker, topic: &str, data: &str) -> u64 {
    let data = Bytes::copy_from_slice(data.as_bytes());
    tokio::time::timeout(LIMIT, b.push(topic, data, Wait::Block))
        .await
        .expect("hung")
        .expect("push")
}

/// Pull one message of `group` without waiting, acked.
async fn take(b: &DurableBroker, topic: &str, group: &str) -> Option<String> {
    let d = b.pull(topic, group, Wait::NonBlock).await;
    match d {
        Ok(Some(d)) => {
            let text = String::from_utf8(d.data().to_vec()).unwrap();
            d.ack();
            Some(text)
        }
        Ok(None) | Err(Error::WouldBlock) => None,
        Err(e) => panic!("pull: {e}"),
    }
}

async fn drain(b: &DurableBroker, topic: &str, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = take(b, topic, group).await {
        out.push(m);
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for topic in std::fs::read_dir(dir.join("topics")).unwrap() {
        let topic = topic.unwrap().path();
        if !topic.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(topic).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "log") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn restart_keeps_topics_messages_and_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let b = open(dir);
        b.create("jobs", cap(100)).unwrap();
        b.create("a/b", cap(5)).unwrap();
        b.create("gone", cap(5)).unwrap();
        b.create("wiped", cap(5)).unwrap();
        b.set("a/b".into(), Setting::Capacity(7)).await.unwrap();
        for i in 0..10 {
            push(&b, "jobs", &format!("m{i}")).await;
        }
        push(&b, "wiped", "old").await;
        b.reset("wiped".into()).await.unwrap();
        push(&b, "wiped", "new").await;
        b.remove("gone").unwrap();
        // Group "slow" exists and has read nothing; "fast" has acked 3 and
        // holds the 4th unacked at the "crash".
        assert_eq!(b.offset("jobs".into(), "slow").await.unwrap(), 0);
        for _ in 0..3 {
            take(&b, "jobs", "fast").await.unwrap();
        }
        let out = b
            .pull("jobs", "fast", Wait::NonBlock)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.data(), "m3");
        std::mem::forget(out);
        push(&b, "a/b", "x").await;
        b.close("a/b".into()).await.unwrap();
    }
    let b = open(dir);
    assert_eq!(b.topics(), ["a/b", "jobs", "wiped"]);
    assert_eq!(b.status("a/b".into()).await.unwrap().config.capacity, 7);
    assert!(b.status("a/b".into()).await.unwrap().closed);
    assert_eq!(drain(&b, "a/b", "").await, ["x"]);
    assert_eq!(drain(&b, "wiped", "").await, ["new"]);
    // The unacked delivery comes again; nothing acked does.
    let fast = drain(&b, "jobs", "fast").await;
    assert_eq!(fast, ["m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
    assert_eq!(drain(&b, "jobs", "slow").await.len(), 10);
    // Sequence numbers go on.
    assert_eq!(push(&b, "jobs", "m10").await, 10);
    drop(b);
    let b = open(dir);
    assert_eq!(drain(&b, "jobs", "fast").await, ["m10"]);
    assert_eq!(drain(&b, "jobs", "slow").await, ["m10"]);
}

#[tokio::test]
async fn out_of_order_acks_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        for i in 0..5 {
            push(&b, "t", &format!("m{i}")).await;
        }
        let d0 = b.pull("t", "g", Wait::NonBlock).await.unwrap().unwrap();
        let d1 = b.pull("t", "g", Wait::NonBlock).await.unwrap().unwrap();
        let d2 = b.pull("t", "g", Wait::NonBlock).await.unwrap().unwrap();
        d1.ack();
        std::mem::forget((d0, d2));
    }
    let b = open(tmp.path());
    assert_eq!(drain(&b, "t", "g").await, ["m0", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_second_server_on_the_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _b = open(tmp.path());
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Locked(_)), "{err}");
}

#[tokio::test]
async fn a_torn_last_record_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        for i in 0..5 {
            push(&b, "t", &format!("m{i}")).await;
        }
    }
    let seg = segments(tmp.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 3).unwrap();
    let b = open(tmp.path());
    assert_eq!(drain(&b, "t", "").await, ["m0", "m1", "m2", "m3"]);
    // The log goes on after the cut.
    assert_eq!(push(&b, "t", "m4 again").await, 4);
    drop(b);
    let b = open(tmp.path());
    assert_eq!(drain(&b, "t", "").await, ["m4 again"]);
}

/// Once a segment holds 64 KiB of records, zeros are written ahead of
/// them (so a sync need not write the file's size): a start cuts them off
/// and every message is there; a last record torn by a power loss (its
/// end still zeros) is cut off with them; `disk_bytes` counts them.
#[tokio::test]
async fn zeros_written_ahead_are_cut_off_at_start_with_a_torn_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let topics = tmp.path().join("topics");
    let disk = |b: &DurableBroker| b.totals().disk.expect("a durable engine").bytes;
    let msg = |i: usize| format!("{i:05}{}", "x".repeat(95));
    {
        let b = open(tmp.path());
        b.create("t", cap(10_000)).unwrap();
        for i in 0..2000 {
            push(&b, "t", &msg(i)).await;
        }
        assert_eq!(disk(&b), bytes_under(&topics));
    }
    let seg = segments(tmp.path()).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let records = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(
        bytes.len() > records + 4096,
        "zeros ahead: {} of {}",
        bytes.len() - records,
        bytes.len()
    );
    // The last record loses its last 40 bytes (they are zeros again).
    let mut torn = bytes.clone();
    torn[records - 40..records].fill(0);
    std::fs::write(&seg, &torn).unwrap();
    let b = open(tmp.path());
    assert!(
        std::fs::metadata(&seg).unwrap().len() < records as u64,
        "cut at the torn record"
    );
    assert_eq!(disk(&b), bytes_under(&topics));
    let got = drain(&b, "t", "").await;
    assert_eq!(got.len(), 1999);
    assert!(got.iter().enumerate().all(|(i, m)| *m == msg(i)));
    // The log goes on, over new zeros, and a start finds it all.
    for i in 0..2000 {
        push(&b, "t", &msg(i)).await;
    }
    assert_eq!(disk(&b), bytes_under(&topics));
    drop(b);
    let b = open(tmp.path());
    let got = drain(&b, "t", "").await;
    assert_eq!(got.len(), 2000);
    assert!(got.iter().enumerate().all(|(i, m)| *m == msg(i)));
    assert_eq!(disk(&b), bytes_under(&topics));
}

/// A flipped bit in the length of a record in the middle of the last
/// segment makes it look cut short, but valid records follow: damage, not
/// a torn write, so the start stops and nothing is cut off.
#[tokio::test]
async fn a_damaged_length_mid_segment_is_no_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(1000)).unwrap();
        for i in 0..100 {
            push(&b, "t", &format!("m{i:04}")).await;
        }
    }
    let seg = segments(tmp.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut at = 0;
    while at < bytes.len() / 2 {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    bytes[at + 2] ^= 1; // length +65536: past the end of the file
    std::fs::write(&seg, &bytes).unwrap();
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .expect("the start stops");
    let text = err.to_string();
    assert!(text.contains(&format!("offset {at}")), "{text}");
    assert!(text.contains("valid record follows"), "{text}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing cut off");
}

/// A topic directory that lost its settings file but holds records stops
/// the start (nothing is deleted); one with no record (a create cut short)
/// and one being removed are removed.
/// A kill between a create's first checkpoint and its settings file (the
/// settings still in `meta.json.tmp`) leaves a topic created halfway: the
/// next start removes it, as it would a create cut earlier.
/// A segment holding only the first checkpoint of an empty topic: what a
/// topic's first write leaves if it is cut short before its settings file.
async fn first_checkpoint() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let b = open(tmp.path());
    b.create("x", cap(1)).unwrap();
    // A setting makes the topic's directory, and writes no record.
    b.set("x".into(), Setting::Capacity(2)).await.unwrap();
    std::fs::read(tmp.path().join("topics/1/00000000000000000000.log")).unwrap()
}

#[tokio::test]
async fn a_topic_made_and_never_written_is_one_catalog_line_and_survives() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("idle", cap(3)).unwrap();
        b.create("gone", cap(3)).unwrap();
        b.create("used", cap(3)).unwrap();
        push(&b, "used", "m").await;
        b.remove("gone").unwrap();
    }
    let topics = tmp.path().join("topics");
    assert!(!topics.join("1").exists(), "an idle topic has no directory");
    assert!(
        topics.join("3").exists(),
        "a written topic has its directory"
    );
    let b = open(tmp.path());
    assert_eq!(b.names(std::ops::Bound::Unbounded, 10), ["idle", "used"]);
    let s = b.status("idle".into()).await.unwrap();
    assert_eq!((s.config.capacity, s.pending), (3, 0));
    // The catalog was written again with the idle topic alone.
    let catalog = std::fs::read_to_string(topics.join("catalog")).unwrap();
    assert_eq!(catalog.lines().count(), 1, "{catalog}");
    assert!(catalog.contains("\"idle\""), "{catalog}");
    push(&b, "idle", "first").await;
    drop(b);
    let b = open(tmp.path());
    assert_eq!(drain(&b, "idle", "g").await, ["first"]);
    assert_eq!(drain(&b, "used", "g").await, ["m"]);
    let catalog = std::fs::read_to_string(topics.join("catalog")).unwrap();
    assert_eq!(catalog, "", "every topic has its directory now");
}

#[tokio::test]
async fn a_catalog_line_cut_by_a_crash_is_dropped_and_a_damaged_one_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("a", cap(1)).unwrap();
        b.create("b", cap(1)).unwrap();
    }
    let path = tmp.path().join("topics/catalog");
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 3]).unwrap();
    {
        let b = open(tmp.path());
        assert_eq!(b.names(std::ops::Bound::Unbounded, 10), ["a"]);
        b.create("c", cap(1)).unwrap();
    }
    let mut text = std::fs::read(&path).unwrap();
    text[12] ^= 1;
    std::fs::write(&path, &text).unwrap();
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .expect("the start stops")
        .to_string();
    assert!(
        err.contains("catalog: damaged line 1: checksum does not match"),
        "{err}"
    );
}

#[tokio::test]
async fn a_removal_cut_short_after_its_catalog_line_is_finished_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        push(&b, "t", "m").await;
        b.remove("t").unwrap();
    }
    // The catalog says removed; the directory is back, as if the crash
    // came before it was deleted.
    let dir = tmp.path().join("topics/1");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("00000000000000000000.log"),
        first_checkpoint().await,
    )
    .unwrap();
    let b = open(tmp.path());
    assert!(b.names(std::ops::Bound::Unbounded, 10).is_empty());
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_first_write_cut_short_before_its_settings_file_leaves_the_topic_empty() {
    // The topic's first write makes its directory: the first checkpoint,
    // then the settings file. Cut between the two (or with the settings
    // file empty or torn, as a power loss before its sync can leave it),
    // the directory is dropped and the topic is as its catalog line says.
    let checkpoint = first_checkpoint().await;
    for torn in [None, Some(&b""[..]), Some(&b"{\n  \"name\": \"ha"[..])] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let b = open_with(
                tmp.path(),
                Options {
                    sync: SyncMode::Always,
                    ..Options::default()
                },
            );
            b.create("kept", cap(10)).unwrap();
            b.create("half", cap(10)).unwrap();
            b.settle_topics().await.unwrap();
            push(&b, "kept", "m").await;
        }
        let half = tmp.path().join("topics/2");
        std::fs::create_dir(&half).unwrap();
        std::fs::write(half.join("00000000000000000000.log"), &checkpoint).unwrap();
        if let Some(torn) = torn {
            std::fs::write(half.join("meta.json"), torn).unwrap();
        }
        let b = open(tmp.path());
        assert_eq!(b.names(std::ops::Bound::Unbounded, 10), ["half", "kept"]);
        assert!(!half.exists());
        assert_eq!(drain(&b, "kept", "g").await, ["m"]);
        assert_eq!(drain(&b, "half", "g").await, Vec::<String>::new());
        push(&b, "half", "x").await;
        assert_eq!(drain(&b, "half", "g").await, ["x"]);
    }
    // A directory with no catalog line (made by an older dchan) cut short
    // the same way is a create cut short: dropped, with its topic.
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let old = tmp.path().join("topics/9");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("00000000000000000000.log"), &checkpoint).unwrap();
    let b = open(tmp.path());
    assert!(b.names(std::ops::Bound::Unbounded, 10).is_empty());
    assert!(!old.exists());
    // A torn settings file over records is damage: the start stops.
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        push(&b, "t", "kept").await;
    }
    std::fs::write(tmp.path().join("topics/1/meta.json"), b"{").unwrap();
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .expect("the start stops");
    assert!(err.to_string().contains("meta.json"), "{err}");
}

#[tokio::test]
async fn a_topic_without_its_settings_file_stops_the_start_unless_empty() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        push(&b, "t", "kept").await;
    }
    let topic = tmp.path().join("topics/1");
    std::fs::remove_file(topic.join("meta.json")).unwrap();
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .expect("the start stops");
    let text = err.to_string();
    assert!(
        text.contains("meta.json") && text.contains("missing"),
        "{text}"
    );
    assert!(segments(tmp.path()).len() == 1, "nothing deleted");
    // A create cut short (no record yet), and a removal cut short.
    std::fs::remove_dir_all(&topic).unwrap();
    std::fs::create_dir(&topic).unwrap();
    std::fs::File::create(topic.join("00000000000000000000.log")).unwrap();
    let removing = tmp.path().join("topics/2.removed");
    std::fs::create_dir(&removing).unwrap();
    std::fs::write(removing.join("00000000000000000000.log"), "x").unwrap();
    let b = open(tmp.path());
    // The topic itself is in the catalog: it is there, empty.
    assert_eq!(b.names(std::ops::Bound::Unbounded, 10), ["t"]);
    assert_eq!(b.status("t".into()).await.unwrap().pending, 0);
    assert!(!topic.exists() && !removing.exists());
}

#[tokio::test]
async fn a_damaged_record_stops_the_start_and_the_repair_keeps_what_precedes() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        for i in 0..5 {
            push(&b, "t", &format!("message {i}")).await;
        }
    }
    let seg = segments(tmp.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte of the third message's payload.
    let at = bytes.windows(9).position(|w| w == b"message 2").unwrap();
    bytes[at + 3] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let err = DurableBroker::open(tmp.path(), Options::default())
        .err()
        .unwrap();
    let text = err.to_string();
    println!("{text}");
    let OpenError::Recover(dchan::broker::durable::RecoverError::Damaged { path, offset, .. }) =
        err
    else {
        panic!("{text}");
    };
    assert_eq!(path, seg);
    assert!(text.contains("checksum") && text.contains(&format!("truncate -s {offset}")));
    // The documented repair: cut the file there.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(offset as u64).unwrap();
    let b = open(tmp.path());
    assert_eq!(drain(&b, "t", "").await, ["message 0", "message 1"]);
}

#[tokio::test]
async fn segments_every_group_passed_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 1024,
        ..Options::default()
    };
    let b = open_with(tmp.path(), options);
    b.create("t", cap(1000)).unwrap();
    let msg = "x".repeat(100);
    assert_eq!(b.offset("t".into(), "g").await.unwrap(), 0);
    for _ in 0..100 {
        push(&b, "t", &msg).await;
    }
    let before = segments(tmp.path()).len();
    assert!(before >= 9, "{before} segments");
    assert_eq!(drain(&b, "t", "g").await.len(), 100);
    let after = segments(tmp.path()).len();
    assert!(after <= 2, "{after} segments left of {before}");
    drop(b);
    // The group's place is in the segments left.
    let b = open_with(tmp.path(), options);
    assert_eq!(b.offset("t".into(), "g").await.unwrap(), 100);
    assert_eq!(drain(&b, "t", "g").await.len(), 0);
    push(&b, "t", "after").await;
    assert_eq!(drain(&b, "t", "g").await, ["after"]);
}

/// Segments gone from under the log (the oldest, one in the middle, or a
/// sole segment emptied) stop the start with the file and what is missing,
/// instead of a topic that silently starts over or skips its groups ahead.
#[tokio::test]
async fn missing_or_emptied_segments_stop_the_start() {
    let options = Options {
        segment_bytes: 1024,
        ..Options::default()
    };
    let missing = |dir: &Path| {
        let err = DurableBroker::open(dir, options)
            .err()
            .expect("the start stops");
        let text = err.to_string();
        assert!(text.contains("messages are missing"), "{text}");
        text
    };
    let msg = "x".repeat(100);
    for gone in [0, 3] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let b = open_with(tmp.path(), options);
            b.create("t", cap(1000)).unwrap();
            assert_eq!(b.offset("t".into(), "g").await.unwrap(), 0);
            for _ in 0..100 {
                push(&b, "t", &msg).await;
            }
            assert_eq!(take(&b, "t", "g").await.unwrap(), msg);
        }
        let segs = segments(tmp.path());
        std::fs::remove_file(&segs[gone]).unwrap();
        let text = missing(tmp.path());
        assert!(text.contains(segs[gone + 1].to_str().unwrap()), "{text}");
    }
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("t", cap(10)).unwrap();
        push(&b, "t", "gone").await;
    }
    let segs = segments(tmp.path());
    assert_eq!(segs.len(), 1);
    std::fs::File::create(&segs[0]).unwrap();
    missing(tmp.path());
}

/// Settings files that name no topic, or one topic twice, and a
/// `topics` that is no directory stop the start with the path and why.
#[tokio::test]
async fn bad_names_and_a_bad_topics_path_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let b = open(tmp.path());
        b.create("a", cap(10)).unwrap();
        b.create("b", cap(10)).unwrap();
        // Written to, so each has its directory and settings file.
        push(&b, "a", "m").await;
        push(&b, "b", "m").await;
    }
    let meta = |id: u32| tmp.path().join(format!("topics/{id}/meta.json"));
    let text = std::fs::read_to_string(meta(2)).unwrap();
    let fails = |why: &str| {
        let err = DurableBroker::open(tmp.path(), Options::default())
            .err()
            .expect("the start stops")
            .to_string();
        assert!(err.contains(why), "{err}");
    };
    std::fs::write(meta(2), text.replace("\"b\"", "\"a\"")).unwrap();
    fails("is also in");
    std::fs::write(meta(2), text.replace("\"b\"", "\"../evil\"")).unwrap();
    fails("is no topic name");
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("topics"), "").unwrap();
    let err = DurableBroker::open(other.path(), Options::default())
        .err()
        .expect("the start stops")
        .to_string();
    assert!(err.contains("not a directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_always_answers_every_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        sync: SyncMode::Always,
        ..Options::default()
    };
    let b = std::sync::Arc::new(open_with(tmp.path(), options));
    b.create("t", cap(10_000)).unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                push(&b, "t", &format!("{w}:{i}")).await;
                b.settle("t".into()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(b);
    let b = open_with(tmp.path(), options);
    assert_eq!(drain(&b, "t", "").await.len(), 400);
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop; `None`
/// where this process may not mount (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    /// Make room: remount it `size` large.
    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_pushes_with_enospc_and_keeps_what_was_answered() {
    full_disk("256k", "1m").await;
}

/// The same on a disk large enough that a segment's records go into zeros
/// written ahead (and mapped) before the disk fills.
#[tokio::test]
async fn a_full_disk_past_zeros_written_ahead_fails_pushes_with_enospc() {
    full_disk("3m", "8m").await;
}

async fn full_disk(size: &str, grown: &str) {
    let Some(disk) = SmallDisk::mount(size) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = disk.dir.path();
    let mut answered = Vec::new();
    {
        let b = open(dir);
        b.create("t", cap(1_000_000)).unwrap();
        let msg = "y".repeat(1000);
        let err = loop {
            let i = answered.len();
            let data = Bytes::from(format!("{i}:{msg}"));
            match b.push("t", data.clone(), Wait::NonBlock).await {
                Ok(seq) => {
                    assert_eq!(seq, i as u64);
                    answered.push(data);
                }
                Err(e) => break e,
            }
        };
        println!("after {} pushes: {err}", answered.len());
        let Error::Storage { kind, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*kind, std::io::ErrorKind::StorageFull);
        // A smaller message may still fit the last free bytes.
        if b.push("t", Bytes::from("small"), Wait::NonBlock)
            .await
            .is_ok()
        {
            answered.push(Bytes::from("small"));
        }
        assert_eq!(
            b.status("t".into()).await.unwrap().next,
            answered.len() as u64
        );
    }
    // Reading needs room too: a group's place and its acks are logged
    // before a message is handed out, so on the full disk the read fails
    // (nothing is taken), and goes on once there is room.
    let b = open(dir);
    // What the start wrote again (the catalog) may have freed a block:
    // fill the disk again.
    {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        while filler.write_all(&[0u8; 512]).is_ok() {}
        let _ = filler.sync_all();
    }
    match b.pull("t", "", Wait::NonBlock).await {
        Err(Error::Storage { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::StorageFull),
        other => panic!("a read on the full disk: {:?}", other.map(|d| d.is_some())),
    }
    disk.grow(grown);
    let got = drain(&b, "t", "").await;
    assert_eq!(got.len(), answered.len());
    assert!(
        got.iter()
            .zip(&answered)
            .all(|(g, a)| g.as_bytes() == &a[..])
    );
}

/// Retained messages survive a restart (with the setting), their segments
/// stay until retention lets them go, and a group made after the restart
/// starts from the oldest retained.
#[tokio::test]
async fn retained_messages_survive_a_restart_and_keep_their_segments() {
    use dchan::broker::Retention;
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 1024,
        ..Options::default()
    };
    let b = open_with(tmp.path(), options);
    let config = TopicConfig {
        retain: Retention::Count(30),
        ..cap(1000)
    };
    b.create("t", config).unwrap();
    assert_eq!(b.offset("t".into(), "g").await.unwrap(), 0);
    for i in 0..100 {
        push(&b, "t", &format!("{i:03}{}", "x".repeat(97))).await;
    }
    let before = segments(tmp.path()).len();
    assert_eq!(drain(&b, "t", "g").await.len(), 100);
    let kept = segments(tmp.path()).len();
    // 30 messages of ~110 bytes span at least 3 segments of 1 KiB.
    assert!(kept >= 3 && kept < before, "{kept} segments of {before}");
    drop(b);

    let b = open_with(tmp.path(), options);
    let s = b.status("t".into()).await.unwrap();
    assert_eq!(s.config.retain, Retention::Count(30));
    assert_eq!((s.first, s.retained, s.next), (70, 30, 100), "{s:?}");
    assert_eq!(b.offset("t".into(), "g").await.unwrap(), 100);
    assert_eq!(b.offset("t".into(), "h").await.unwrap(), 70);
    let h = drain(&b, "t", "h").await;
    assert_eq!(h.len(), 30);
    assert!(h[0].starts_with("070") && h[29].starts_with("099"));
    // Retention off: the retained messages and their segments go.
    b.set("t".into(), Setting::Retain(Retention::None))
        .await
        .unwrap();
    assert_eq!(b.status("t".into()).await.unwrap().pending, 0);
    assert!(segments(tmp.path()).len() <= 2);
    drop(b);
    let b = open_with(tmp.path(), options);
    let s = b.status("t".into()).await.unwrap();
    assert_eq!(
        (s.first, s.pending, s.config.retain),
        (100, 0, Retention::None)
    );
}

/// Take `n` messages of `group`, acked, and check they are `from`, `from
/// + 1`, ... as `msg` writes them.
async fn take_run(b: &DurableBroker, group: &str, from: usize, n: usize) {
    for i in from..from + n {
        let got = take(b, "t", group).await;
        assert_eq!(got.as_deref(), Some(&*msg(i)), "group {group}");
    }
}

fn msg(i: usize) -> String {
    format!("message {i:05} {}", "x".repeat(i % 40))
}

/// With a tiny memory budget, nearly every message is read back from the
/// segments: in order, by two groups at different places, across segment
/// boundaries, after an offset moved backwards (replay), and after a
/// restart (which holds none of them in memory); the counters go on.
#[tokio::test]
async fn messages_beyond_memory_are_read_back_from_disk() {
    use dchan::broker::Retention;
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        memory: 4 << 10,
        segment_bytes: 16 << 10,
        ..Options::default()
    };
    let b = open_with(tmp.path(), options);
    let config = TopicConfig {
        retain: Retention::Count(100_000),
        ..cap(100_000)
    };
    b.create("t", config).unwrap();
    assert_eq!(b.offset("t".into(), "a").await.unwrap(), 0);
    assert_eq!(b.offset("t".into(), "b").await.unwrap(), 0);
    for i in 0..3000 {
        push(&b, "t", &msg(i)).await;
    }
    // ~200 KiB of records: a dozen segments, 4 KiB of them in memory.
    assert!(segments(tmp.path()).len() >= 10);
    take_run(&b, "a", 0, 1000).await;
    take_run(&b, "b", 0, 2500).await;
    take_run(&b, "a", 1000, 10).await;
    // Replay: b goes back over what it read, a keeps its place.
    b.seek("t".into(), "b", 37).await.unwrap();
    take_run(&b, "b", 37, 500).await;
    take_run(&b, "a", 1010, 990).await;
    let s = b.status("t".into()).await.unwrap();
    assert_eq!((s.first, s.next, s.pushed), (0, 3000, 3000), "{s:?}");
    let expect: usize = (0..3000).map(|i| msg(i).len()).sum();
    assert_eq!(s.bytes, expect as u64);
    drop(b);

    let b = open_with(tmp.path(), options);
    // The bytes held, counted from the index (none of them in memory).
    let again = b.status("t".into()).await.unwrap();
    assert_eq!((again.pending, again.bytes), (s.pending, s.bytes));
    assert_eq!(b.offset("t".into(), "a").await.unwrap(), 2000);
    assert_eq!(b.offset("t".into(), "b").await.unwrap(), 537);
    take_run(&b, "a", 2000, 1000).await;
    take_run(&b, "b", 537, 100).await;
    for i in 3000..3500 {
        push(&b, "t", &msg(i)).await;
    }
    let s = b.status("t".into()).await.unwrap();
    assert_eq!((s.first, s.next, s.pushed), (0, 3500, 3500), "{s:?}");
    b.seek("t".into(), "a", 1).await.unwrap();
    take_run(&b, "a", 1, 3499).await;
    take_run(&b, "b", 637, 2863).await;
    assert_eq!(take(&b, "t", "a").await, None);
    assert_eq!(take(&b, "t", "b").await, None);
    // A new group starts at the oldest retained, read back from disk.
    take_run(&b, "c", 0, 3500).await;
    // A reset lets every segment but the newest go.
    b.reset("t".into()).await.unwrap();
    assert_eq!(segments(tmp.path()).len(), 1);
    push(&b, "t", "after").await;
    assert_eq!(take(&b, "t", "a").await.as_deref(), Some("after"));
}

/// `max_bytes` and `rate` are settings like the others: kept across a
/// restart, and `max_bytes` counts the messages read back (issue 11).
#[tokio::test]
async fn restart_keeps_max_bytes_and_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rate = dchan::broker::Rate::parse("500/s").unwrap();
    {
        let b = open(dir);
        b.create("t", cap(100)).unwrap();
        b.set("t".into(), Setting::MaxBytes(Some(10)))
            .await
            .unwrap();
        b.set("t".into(), Setting::Rate(rate)).await.unwrap();
        assert_eq!(b.offset("t".into(), "a").await.unwrap(), 0);
        push(&b, "t", "12345678").await;
    }
    let b = open(dir);
    let s = b.status("t".into()).await.unwrap();
    assert_eq!((s.config.max_bytes, s.config.rate), (Some(10), rate));
    assert_eq!(s.bytes, 8);
    // 8 held + 3 would pass 10: the push waits until "a" takes.
    let data = Bytes::from_static(b"abc");
    assert_eq!(
        b.push("t", data.clone(), Wait::NonBlock).await,
        Err(Error::WouldBlock)
    );
    assert_eq!(take(&b, "t", "a").await.as_deref(), Some("12345678"));
    push(&b, "t", "abc").await;
}

/// The bytes under `dir`, files only, as `du --apparent-size` counts them.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => bytes_under(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

/// The ctl's `disk_bytes` is a running count (reading it walks no
/// directory), and it stays what the files take across creates, pushes,
/// acks, settings, segments rolled and deleted, resets, removes and a
/// restart.
#[tokio::test]
async fn disk_bytes_follow_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let topics = tmp.path().join("topics");
    let options = Options {
        segment_bytes: 1024,
        ..Options::default()
    };
    let disk = |b: &DurableBroker| b.totals().disk.expect("a durable engine").bytes;
    let b = open_with(tmp.path(), options);
    assert_eq!(disk(&b), 0);
    for name in ["a", "b", "c/d"] {
        b.create(name, cap(1000)).unwrap();
    }
    assert_eq!(disk(&b), bytes_under(&topics));
    let msg = "x".repeat(100);
    assert_eq!(b.offset("a".into(), "g").await.unwrap(), 0);
    for _ in 0..50 {
        push(&b, "a", &msg).await;
        push(&b, "b", &msg).await;
    }
    assert_eq!(disk(&b), bytes_under(&topics));
    assert_eq!(drain(&b, "a", "g").await.len(), 50);
    Broker::set(&b, "b".into(), Setting::Capacity(7))
        .await
        .unwrap();
    assert_eq!(disk(&b), bytes_under(&topics));
    Broker::reset(&b, "b".into()).await.unwrap();
    assert_eq!(disk(&b), bytes_under(&topics));
    Broker::remove(&b, "c/d").await.unwrap();
    assert_eq!(disk(&b), bytes_under(&topics));
    drop(b);
    let b = open_with(tmp.path(), options);
    assert_eq!(disk(&b), bytes_under(&topics));
    push(&b, "a", "after").await;
    Broker::remove(&b, "a").await.unwrap();
    Broker::remove(&b, "b").await.unwrap();
    assert_eq!(disk(&b), bytes_under(&topics));
    // What is left is the catalog's lines of this run.
    let catalog = std::fs::metadata(topics.join("catalog")).unwrap().len();
    assert_eq!(disk(&b), catalog);
}
