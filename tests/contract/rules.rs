// The contract tests, included by tests/broker_rules.rs once per engine
// (see tests/contract/mod.rs).

const LIMIT: Duration = Duration::from_secs(10);

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

async fn broker(capacity: u64) -> B {
    let b = new_engine().await;
    b.create(
        "t",
        TopicConfig {
            capacity,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    b
}

fn push<'a>(b: &'a B, data: &str) -> Boxed<'a, Result<Seq, Error>> {
    Box::pin(b.push("t", Bytes::copy_from_slice(data.as_bytes()), Wait::Block))
}

fn pull<'a>(
    b: &'a B,
    group: &'a str,
) -> Boxed<'a, Result<Option<<Engine as Broker>::Delivery>, Error>> {
    Box::pin(b.pull("t", group, Wait::Block))
}

/// Whether the engine under test is the JetStream engine, for the few
/// rules it keeps differently: each such test says how, and chapter 7
/// ("What differs") says why.
fn on_jetstream() -> bool {
    std::any::type_name::<Engine>().ends_with("JetStreamBroker")
}

/// Poll once: the future must be blocked.
async fn blocked<T>(f: &mut Boxed<'_, T>) {
    assert!(poll!(f.as_mut()).is_pending(), "expected to block");
}

/// Await with a limit that only catches a hang.
async fn done<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.expect("hung")
}

/// Pull one message of `group` and ack it, returning its text.
async fn take(b: &B, group: &str) -> String {
    let d = done(b.pull("t", group, Wait::Block))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(d.data().to_vec()).unwrap();
    d.ack();
    text
}

async fn push_now(b: &B, data: &str) -> Seq {
    done(push(b, data)).await.unwrap()
}

#[tokio::test]
async fn rendezvous_push_waits_for_a_reader() {
    let b = broker(0).await;
    let mut p = push(&b, "hello");
    blocked(&mut p).await;
    assert_eq!(b.status("t").await.unwrap().blocked_writers, 1);
    assert_eq!(take(&b, "").await, "hello");
    assert_eq!(done(p).await, Ok(0));
    let s = b.status("t").await.unwrap();
    assert_eq!(
        (s.pending, s.blocked_writers, s.pushed, s.pulled),
        (0, 0, 1, 1)
    );
}

#[tokio::test]
async fn rendezvous_push_returns_when_a_reader_is_blocked() {
    let b = broker(0).await;
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    assert_eq!(push_now(&b, "x").await, 0);
    let d = done(r).await.unwrap().unwrap();
    assert_eq!(d.data().as_ref(), b"x");
}

#[tokio::test]
async fn rendezvous_waits_for_every_group() {
    let b = broker(0).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "b").await.unwrap();
    let mut p = push(&b, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "a").await, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "b").await, "m");
    assert_eq!(done(p).await, Ok(0));
}

#[tokio::test]
async fn capacity_two_blocks_the_third_push_until_a_pull() {
    let b = broker(2).await;
    b.offset("t", "").await.unwrap();
    assert_eq!(push_now(&b, "0").await, 0);
    assert_eq!(push_now(&b, "1").await, 1);
    let mut p = push(&b, "2");
    blocked(&mut p).await;
    assert_eq!(take(&b, "").await, "0");
    assert_eq!(done(p).await, Ok(2));
    assert_eq!(take(&b, "").await, "1");
    assert_eq!(take(&b, "").await, "2");
}

#[tokio::test]
async fn capacity_without_a_group_holds_for_the_first() {
    let b = broker(2).await;
    push_now(&b, "0").await;
    push_now(&b, "1").await;
    let mut p = push(&b, "2");
    blocked(&mut p).await;
    assert_eq!(take(&b, "late").await, "0");
    assert_eq!(done(p).await, Ok(2));
    assert_eq!(take(&b, "late").await, "1");
    assert_eq!(take(&b, "late").await, "2");
}

#[tokio::test]
async fn readers_of_a_group_share_the_work() {
    let b = broker(100).await;
    b.offset("t", "").await.unwrap();
    for i in 0..10 {
        push_now(&b, &i.to_string()).await;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        // Two readers of the default group, each taking its own message.
        let (x, y) = tokio::join!(take(&b, ""), take(&b, ""));
        seen.push(x);
        seen.push(y);
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(seen, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    let r = b.pull("t", "", Wait::NonBlock).await;
    assert_eq!(r.err(), Some(Error::WouldBlock));
}

#[tokio::test]
async fn every_group_gets_every_message() {
    let b = broker(10).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "b").await.unwrap();
    for i in 0..5 {
        push_now(&b, &i.to_string()).await;
    }
    for g in ["a", "b"] {
        for i in 0..5 {
            assert_eq!(take(&b, g).await, i.to_string());
        }
    }
    assert_eq!(b.status("t").await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_slow_group_does_not_hold_back_another() {
    let b = broker(0).await;
    b.offset("t", "slow").await.unwrap();
    let mut p = push(&b, "m");
    blocked(&mut p).await;
    // The fast group takes it while the slow one has not.
    assert_eq!(take(&b, "fast").await, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "slow").await, "m");
    assert_eq!(done(p).await, Ok(0));
}

#[tokio::test]
async fn a_new_group_starts_at_the_oldest_held() {
    let b = broker(10).await;
    b.offset("t", "a").await.unwrap();
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    assert_eq!(take(&b, "a").await, "0");
    assert_eq!(b.offset("t", "b").await.unwrap(), 1);
    assert_eq!(take(&b, "b").await, "1");
}

#[tokio::test]
async fn offset_replays_and_skips() {
    let b = broker(10).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "hold").await.unwrap();
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    for i in 0..3 {
        assert_eq!(take(&b, "a").await, i.to_string());
    }
    assert_eq!(b.offset("t", "a").await.unwrap(), 3);
    b.seek("t", "a", 1).await.unwrap();
    assert_eq!(take(&b, "a").await, "1");
    b.seek("t", "a", 3).await.unwrap();
    let r = b.pull("t", "a", Wait::NonBlock).await;
    assert_eq!(r.err(), Some(Error::WouldBlock));
    assert_eq!(
        b.seek("t", "a", 4).await,
        Err(Error::OffsetOutOfRange {
            asked: 4,
            first: 0,
            next: 3
        })
    );
    // The holding group lets go: the held messages go, and so does the range.
    b.seek("t", "hold", 3).await.unwrap();
    assert_eq!(b.status("t").await.unwrap().pending, 0);
    assert!(matches!(
        b.seek("t", "a", 0).await,
        Err(Error::OffsetOutOfRange { first: 3, .. })
    ));
}

#[tokio::test]
async fn reset_fails_blocked_pushes_and_empties() {
    let b = broker(1).await;
    b.offset("t", "").await.unwrap();
    assert_eq!(push_now(&b, "0").await, 0);
    let mut p = push(&b, "1");
    blocked(&mut p).await;
    b.reset("t").await.unwrap();
    assert_eq!(done(p).await, Err(Error::Reset));
    let s = b.status("t").await.unwrap();
    assert_eq!(
        (s.pending, s.first, s.next, s.blocked_writers),
        (0, 1, 1, 0)
    );
    assert_eq!(s.groups.len(), 1);
    assert_eq!((s.groups[0].offset, s.groups[0].lag), (1, 0));
    // Sequence numbers are not reused.
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    assert_eq!(push_now(&b, "2").await, 1);
    assert_eq!(done(r).await.unwrap().unwrap().seq(), 1);
}

#[tokio::test]
async fn reset_after_one_group_took_a_push_reports_it_pushed() {
    // Issue 14.5: once any group has taken a message, its writer is not
    // told it failed (a retry would duplicate it); the reset drops it for
    // the other groups, as it drops every held message.
    let b = broker(0).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "b").await.unwrap();
    let mut p = push(&b, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "a").await, "m");
    b.reset("t").await.unwrap();
    assert_eq!(done(p).await, Ok(0));
    assert_eq!(
        b.pull("t", "b", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
}

#[tokio::test]
async fn reset_keeps_blocked_readers_waiting() {
    let b = broker(0).await;
    let mut r = pull(&b, "g");
    blocked(&mut r).await;
    b.reset("t").await.unwrap();
    blocked(&mut r).await;
    push_now(&b, "after").await;
    assert_eq!(done(r).await.unwrap().unwrap().data().as_ref(), b"after");
}

#[tokio::test]
async fn reset_reopens_a_closed_topic() {
    let b = broker(0).await;
    b.close("t").await.unwrap();
    assert_eq!(done(push(&b, "x")).await, Err(Error::Closed));
    b.reset("t").await.unwrap();
    let mut p = push(&b, "x");
    blocked(&mut p).await;
    assert_eq!(take(&b, "").await, "x");
    assert_eq!(done(p).await, Ok(0));
}

#[tokio::test]
async fn close_drains_then_ends() {
    let b = broker(5).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "0").await;
    push_now(&b, "1").await;
    b.close("t").await.unwrap();
    assert_eq!(done(push(&b, "2")).await, Err(Error::Closed));
    assert_eq!(take(&b, "").await, "0");
    assert_eq!(take(&b, "").await, "1");
    assert!(done(pull(&b, "")).await.unwrap().is_none());
    assert!(done(pull(&b, "")).await.unwrap().is_none());
    assert!(b.status("t").await.unwrap().closed);
}

#[tokio::test]
async fn close_ends_blocked_pulls() {
    let b = broker(0).await;
    let mut r1 = pull(&b, "");
    let mut r2 = pull(&b, "other");
    blocked(&mut r1).await;
    blocked(&mut r2).await;
    b.close("t").await.unwrap();
    assert!(done(r1).await.unwrap().is_none());
    assert!(done(r2).await.unwrap().is_none());
}

#[tokio::test]
async fn remove_wakes_everything_with_errors() {
    if on_jetstream() {
        // JetStream: the push needs round trips to JetStream to be taken,
        // so a removal right after its first poll may come first. Either
        // way its outcome is the truth: Ok only if the reader got it.
        let b = broker(0).await;
        let mut r = pull(&b, "");
        let mut p = push(&b, "x");
        blocked(&mut r).await;
        blocked(&mut p).await;
        b.remove("t").await.unwrap();
        let (p, r) = (done(p).await, done(r).await);
        match p {
            Ok(0) => assert!(r.unwrap().is_some(), "pushed, so delivered"),
            other => assert_eq!(
                (other, r.err()),
                (Err(Error::Removed), Some(Error::Removed))
            ),
        }
        assert!(b.topics().is_empty());
        return;
    }
    let b = broker(0).await;
    let mut r = pull(&b, "");
    let mut p = push(&b, "x");
    b.offset("t", "idle").await.unwrap();
    blocked(&mut r).await;
    // p: the reader of "" takes it; "idle" never does.
    blocked(&mut p).await;
    let mut r2 = pull(&b, "");
    blocked(&mut r2).await;
    b.remove("t").await.unwrap();
    // A group took it: delivered, so its push is not told it failed
    // (issue 14.5).
    assert_eq!(done(p).await, Ok(0));
    assert!(done(r).await.unwrap().is_some(), "taken before the removal");
    assert_eq!(done(r2).await.err(), Some(Error::Removed));
    assert_eq!(
        done(pull(&b, "")).await.err(),
        Some(Error::NoTopic("t".into()))
    );
    assert!(b.topics().is_empty());
}

#[tokio::test]
async fn timeout_fails_a_waiting_push_or_pull() {
    let b = broker(0).await;
    b.set("t", Setting::Timeout(Some(Duration::from_millis(20))))
        .await
        .unwrap();
    assert_eq!(done(pull(&b, "")).await.err(), Some(Error::TimedOut));
    let pushed = done(push(&b, "x")).await;
    if on_jetstream() && pushed == Ok(0) {
        // JetStream: the timed-out pull's request, still at its server
        // until it expires, counted as a reader wanting a message; the
        // message it brought went back to the group, held.
        b.set("t", Setting::Timeout(None)).await.unwrap();
        assert_eq!(take(&b, "").await, "x");
        return;
    }
    assert_eq!(pushed, Err(Error::TimedOut));
    // The timed-out push was withdrawn. (JetStream counts the timed-out
    // pull's request at its server as a blocked reader until the request
    // expires: wait that out.)
    let mut s = b.status("t").await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_jetstream() && s.blocked_readers > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = b.status("t").await.unwrap();
    }
    assert_eq!((s.pending, s.blocked_writers, s.blocked_readers), (0, 0, 0));
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
}

#[tokio::test]
async fn nonblock_never_waits() {
    let b = broker(0).await;
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
    assert_eq!(
        b.push("t", Bytes::from_static(b"x"), Wait::NonBlock).await,
        Err(Error::WouldBlock)
    );
    assert_eq!(b.status("t").await.unwrap().pending, 0);
    // With a blocked reader a rendezvous push goes through.
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    assert_eq!(
        b.push("t", Bytes::from_static(b"y"), Wait::NonBlock).await,
        Ok(0)
    );
    assert_eq!(done(r).await.unwrap().unwrap().data().as_ref(), b"y");
}

#[tokio::test]
async fn a_cancelled_pull_takes_nothing() {
    let b = broker(1).await;
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    drop(r);
    push_now(&b, "kept").await;
    assert_eq!(take(&b, "").await, "kept");
}

#[tokio::test]
async fn a_message_reserved_for_a_dropped_pull_goes_to_the_next_reader() {
    let b = broker(0).await;
    let mut r1 = pull(&b, "");
    let mut r2 = pull(&b, "");
    blocked(&mut r1).await;
    blocked(&mut r2).await;
    // Reserved for r1, which is dropped before it ran again.
    assert_eq!(push_now(&b, "m").await, 0);
    drop(r1);
    let d = done(r2).await.unwrap().unwrap();
    assert_eq!((d.seq(), d.data().as_ref()), (0, &b"m"[..]));
    d.ack();
    let s = b.status("t").await.unwrap();
    assert_eq!((s.pulled, s.groups[0].unacked), (1, 0));
}

#[tokio::test]
async fn a_cancelled_rendezvous_push_is_withdrawn() {
    let b = broker(0).await;
    let mut p = push(&b, "gone");
    blocked(&mut p).await;
    drop(p);
    let s = b.status("t").await.unwrap();
    assert_eq!((s.pending, s.blocked_writers, s.pushed), (0, 0, 0));
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
    // The next push gets the next number there is.
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    assert_eq!(push_now(&b, "next").await, 0);
}

#[tokio::test]
async fn a_cancelled_push_a_reader_took_stays() {
    let b = broker(0).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "b").await.unwrap();
    let mut p = push(&b, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "a").await, "m");
    drop(p);
    assert_eq!(take(&b, "b").await, "m");
}

#[tokio::test]
async fn a_dropped_delivery_goes_back_to_the_front() {
    if on_jetstream() {
        // JetStream: a nak'd delivery counts as unacked until it is
        // delivered again; the order holds.
        let b = broker(10).await;
        b.offset("t", "").await.unwrap();
        for i in 0..3 {
            push_now(&b, &i.to_string()).await;
        }
        let d0 = done(pull(&b, "")).await.unwrap().unwrap();
        let d1 = done(pull(&b, "")).await.unwrap().unwrap();
        drop(d1);
        drop(d0);
        b.status("t").await.unwrap(); // waits for the naks
        let mut got = vec![take(&b, "").await, take(&b, "").await];
        got.sort();
        assert_eq!(got, ["0", "1"], "the dropped ones come back first");
        assert_eq!(take(&b, "").await, "2");
        return;
    }
    let b = broker(10).await;
    b.offset("t", "").await.unwrap();
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    let d0 = done(pull(&b, "")).await.unwrap().unwrap();
    let d1 = done(pull(&b, "")).await.unwrap().unwrap();
    assert_eq!(b.status("t").await.unwrap().groups[0].unacked, 2);
    drop(d1);
    drop(d0);
    assert_eq!(b.status("t").await.unwrap().groups[0].unacked, 0);
    assert_eq!(take(&b, "").await, "0");
    assert_eq!(take(&b, "").await, "1");
    assert_eq!(take(&b, "").await, "2");
}

#[tokio::test]
async fn a_dropped_delivery_wakes_a_blocked_reader() {
    let b = broker(0).await;
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    push_now(&b, "m").await;
    let d = done(r).await.unwrap().unwrap();
    let mut r2 = pull(&b, "");
    blocked(&mut r2).await;
    drop(d);
    assert_eq!(done(r2).await.unwrap().unwrap().data().as_ref(), b"m");
}

#[tokio::test]
async fn blocked_readers_are_served_in_arrival_order() {
    if on_jetstream() {
        // JetStream: this server sends the requests in arrival order, but
        // the later ones may reach JetStream after the pushes, which then
        // go to the earlier readers' requests in turn: each reader gets one
        // message, each message one reader.
        let b = broker(10).await;
        let mut rs: Vec<_> = (0..4).map(|_| pull(&b, "")).collect();
        for r in &mut rs {
            blocked(r).await;
        }
        for i in 0..4 {
            push_now(&b, &i.to_string()).await;
        }
        let mut got = Vec::new();
        for r in rs {
            let d = done(r).await.unwrap().unwrap();
            got.push(String::from_utf8(d.data().to_vec()).unwrap());
            d.ack();
        }
        got.sort();
        assert_eq!(got, ["0", "1", "2", "3"]);
        return;
    }
    let b = broker(10).await;
    let mut rs: Vec<_> = (0..4).map(|_| pull(&b, "")).collect();
    for r in &mut rs {
        blocked(r).await;
    }
    for i in 0..4 {
        push_now(&b, &i.to_string()).await;
    }
    for (i, r) in rs.into_iter().enumerate() {
        let d = done(r).await.unwrap().unwrap();
        assert_eq!(d.data().as_ref(), i.to_string().as_bytes());
    }
}

#[tokio::test]
async fn capacity_grows_on_a_live_topic() {
    let b = broker(0).await;
    b.offset("t", "").await.unwrap();
    let mut p = push(&b, "x");
    blocked(&mut p).await;
    b.set("t", Setting::Capacity(1)).await.unwrap();
    assert_eq!(done(p).await, Ok(0));
    assert_eq!(b.status("t").await.unwrap().config.capacity, 1);
}

#[tokio::test]
async fn forget_drops_a_group_and_what_it_held() {
    let b = broker(0).await;
    b.offset("t", "a").await.unwrap();
    b.offset("t", "b").await.unwrap();
    let mut p = push(&b, "m");
    blocked(&mut p).await;
    assert_eq!(take(&b, "a").await, "m");
    blocked(&mut p).await;
    b.forget("t", "b").await.unwrap();
    assert_eq!(done(p).await, Ok(0));
    assert_eq!(b.status("t").await.unwrap().pending, 0);
    assert_eq!(b.forget("t", "b").await, Err(Error::NoGroup("b".into())));
}

#[tokio::test]
async fn names_are_checked() {
    let b = new_engine().await;
    for good in ["a", "metrics/eu", "A-b_c.d", "x/y/z", "..."] {
        b.create(good, TopicConfig::default()).await.unwrap();
    }
    for bad in [
        "", "/a", "a/", "a//b", ".", "..", "a/../b", "a b", "é", "a\n", "-dash",
    ] {
        assert_eq!(
            b.create(bad, TopicConfig::default()).await,
            Err(Error::BadName(bad.into())),
            "{bad:?}"
        );
    }
    assert_eq!(
        b.create("a", TopicConfig::default()).await,
        Err(Error::Exists("a".into()))
    );
    assert_eq!(b.topics(), ["...", "A-b_c.d", "a", "metrics/eu", "x/y/z"]);
    b.remove("a").await.unwrap();
    assert_eq!(b.remove("a").await, Err(Error::NoTopic("a".into())));
    assert_eq!(b.totals().topics, 4);
}

/// A name is at most 64 parts and 1024 bytes deep: a walk costs per level,
/// and a 30 000-part name was once taken.
#[tokio::test]
async fn names_are_bounded_in_depth_and_length() {
    let b = new_engine().await;
    let deepest = vec!["d"; 64].join("/");
    let longest = "l".repeat(1024);
    for good in [&deepest, &longest] {
        b.create(good, TopicConfig::default()).await.unwrap();
    }
    let too_deep = vec!["d"; 65].join("/");
    let too_long = "l".repeat(1025);
    let very_deep = vec!["x"; 30_000].join("/");
    for bad in [&too_deep, &too_long, &very_deep] {
        let e = b.create(bad, TopicConfig::default()).await.unwrap_err();
        assert_eq!(e, Error::BadName(bad.clone()));
        assert!(e.to_string().contains("at most 64 parts"), "{e}");
    }
    assert_eq!(b.topics(), [deepest, longest]);
}

#[tokio::test]
async fn totals_count_over_topics() {
    let b = broker(5).await;
    b.create(
        "u",
        TopicConfig {
            capacity: 5,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    push_now(&b, "x").await;
    done(b.push("u", Bytes::from_static(b"y"), Wait::Block))
        .await
        .unwrap();
    take(&b, "").await;
    let t = b.totals();
    assert_eq!((t.topics, t.pushed, t.pulled), (2, 2, 1));
    b.remove("t").await.unwrap();
    let t = b.totals();
    assert_eq!((t.topics, t.pushed, t.pulled), (1, 2, 1));
}

/// The server's totals follow every topic's life: kept as running counts
/// (never a walk over the topics), they stay right across creates,
/// pushes, pulls (one of them given back by a dropped reader), resets,
/// removes and a create again under a removed name.
#[tokio::test]
async fn totals_stay_right_across_create_push_pull_remove_reset() {
    let b = new_engine().await;
    let totals = |b: &B| {
        let t = b.totals();
        (t.topics, t.pushed, t.pulled)
    };
    assert_eq!(totals(&b), (0, 0, 0));
    let held = TopicConfig {
        capacity: 10,
        ..TopicConfig::default()
    };
    for name in ["a", "b", "c/d"] {
        b.create(name, held).await.unwrap();
    }
    b.create("t", TopicConfig::default()).await.unwrap();
    assert_eq!(totals(&b), (4, 0, 0));
    for name in ["a", "b", "c/d"] {
        for m in ["1", "2", "3"] {
            done(b.push(name, Bytes::from_static(m.as_bytes()), Wait::Block))
                .await
                .unwrap();
        }
    }
    for name in ["a", "a", "b"] {
        done(b.pull(name, "", Wait::Block))
            .await
            .unwrap()
            .unwrap()
            .ack();
    }
    assert_eq!(totals(&b), (4, 9, 3));
    // Reserved for r1, which is dropped: counted once, when r2 takes it.
    let mut r1 = pull(&b, "");
    let mut r2 = pull(&b, "");
    blocked(&mut r1).await;
    blocked(&mut r2).await;
    push_now(&b, "m").await;
    drop(r1);
    done(r2).await.unwrap().unwrap().ack();
    assert_eq!(totals(&b), (4, 10, 4));
    // A reset drops messages, not what was pushed and pulled.
    b.reset("a").await.unwrap();
    assert_eq!(totals(&b), (4, 10, 4));
    // A removed topic's counts stay in the totals.
    b.remove("b").await.unwrap();
    assert_eq!(totals(&b), (3, 10, 4));
    b.create("b", held).await.unwrap();
    done(b.push("b", Bytes::from_static(b"again"), Wait::Block))
        .await
        .unwrap();
    done(b.pull("b", "", Wait::Block))
        .await
        .unwrap()
        .unwrap()
        .ack();
    assert_eq!(totals(&b), (4, 11, 5));
    b.remove("c/d").await.unwrap();
    b.remove("a").await.unwrap();
    assert_eq!(totals(&b), (2, 11, 5));
}

#[tokio::test]
async fn forget_keeps_blocked_readers_waiting() {
    let b = broker(0).await;
    let mut r = pull(&b, "g");
    blocked(&mut r).await;
    b.forget("t", "g").await.unwrap();
    blocked(&mut r).await;
    push_now(&b, "m").await;
    assert_eq!(done(r).await.unwrap().unwrap().data().as_ref(), b"m");
}

#[tokio::test]
async fn seeking_back_feeds_a_blocked_reader() {
    let b = broker(10).await;
    b.offset("t", "hold").await.unwrap();
    push_now(&b, "0").await;
    push_now(&b, "1").await;
    assert_eq!(take(&b, "a").await, "0");
    assert_eq!(take(&b, "a").await, "1");
    let mut r = pull(&b, "a");
    blocked(&mut r).await;
    b.seek("t", "a", 1).await.unwrap();
    assert_eq!(done(r).await.unwrap().unwrap().data().as_ref(), b"1");
}

#[tokio::test]
async fn status_shows_groups_and_waiters() {
    if on_jetstream() {
        // JetStream: a group's offset is its consumer's delivered pointer,
        // which a nak does not move back, and a nak'd delivery counts as
        // unacked until delivered again; blocked readers are those whose
        // request reached JetStream. The rest of status is checked by the
        // other rules.
        return;
    }
    let b = broker(5).await;
    b.offset("t", "b").await.unwrap();
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    let d = done(pull(&b, "b")).await.unwrap().unwrap();
    let mut r = pull(&b, "a");
    // "a" is new: it starts at the oldest held, 0, which is held while
    // "b"'s delivery of it is unacked (it may come back: issue 14.6).
    assert_eq!(done(&mut r).await.unwrap().unwrap().seq(), 0);
    let s = b.status("t").await.unwrap();
    assert_eq!(
        (s.first, s.next, s.pending, s.pushed, s.pulled),
        (0, 3, 3, 3, 2)
    );
    let b_status = &s.groups[1];
    assert_eq!(b_status.name, "b");
    assert_eq!((b_status.offset, b_status.lag, b_status.unacked), (1, 2, 1));
    // "a"'s delivery was dropped unacked: it is back, at the front.
    assert_eq!(
        (s.groups[0].offset, s.groups[0].lag, s.groups[0].unacked),
        (0, 3, 0)
    );
    d.ack();
    let mut w = pull(&b, "c");
    assert!(done(&mut w).await.unwrap().is_some());
    let held = (take(&b, "b").await, take(&b, "b").await);
    assert_eq!(held, ("1".into(), "2".into()));
    let mut r = pull(&b, "b");
    blocked(&mut r).await;
    let s = b.status("t").await.unwrap();
    assert_eq!((s.blocked_readers, s.groups[1].blocked), (1, 1), "{s:?}");
}

#[tokio::test]
async fn large_and_empty_messages_come_out_whole() {
    let b = broker(10).await;
    b.offset("t", "").await.unwrap();
    let big = Bytes::from(vec![7u8; 100_000]);
    let sizes = [0, 1, 1023, 1024, 1025, 65_512];
    for &n in &sizes {
        done(b.push("t", Bytes::from(vec![n as u8; n]), Wait::Block))
            .await
            .unwrap();
    }
    done(b.push("t", big.clone(), Wait::Block)).await.unwrap();
    for &n in &sizes {
        let d = done(pull(&b, "")).await.unwrap().unwrap();
        assert_eq!(d.data().as_ref(), vec![n as u8; n].as_slice());
        d.ack();
    }
    assert_eq!(done(pull(&b, "")).await.unwrap().unwrap().data(), &big);
}

/// A reader that reads on and then stops leaves the rest, in order, to
/// the group's next read, at once, its offset and lag exact meanwhile.
/// (On JetStream, a puller that asked ahead for such a reader broke
/// this: chapter 7, "tried and withdrawn".)
#[tokio::test]
async fn a_reader_that_stops_leaves_the_rest_in_order() {
    let b = broker(100).await;
    b.offset("t", "").await.unwrap();
    for i in 0..10 {
        push_now(&b, &i.to_string()).await;
    }
    for round in 0..2 {
        for i in 0..5 {
            assert_eq!(take(&b, "").await, (round * 5 + i).to_string());
        }
        let group = &b.status("t").await.unwrap().groups[0];
        assert_eq!(
            (group.offset, group.lag),
            (5 * (round + 1), 5 * (1 - round))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
}

#[tokio::test]
async fn a_delivery_from_before_a_reset_does_not_come_back() {
    let b = broker(10).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "old").await;
    let d = done(pull(&b, "")).await.unwrap().unwrap();
    b.reset("t").await.unwrap();
    drop(d);
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
    assert_eq!(b.status("t").await.unwrap().groups[0].unacked, 0);
}

#[tokio::test]
async fn nonblock_push_goes_where_there_is_room() {
    let b = broker(1).await;
    b.offset("t", "").await.unwrap();
    assert_eq!(
        b.push("t", Bytes::from_static(b"a"), Wait::NonBlock).await,
        Ok(0)
    );
    assert_eq!(
        b.push("t", Bytes::from_static(b"b"), Wait::NonBlock).await,
        Err(Error::WouldBlock)
    );
    assert_eq!(b.status("t").await.unwrap().pending, 1);
}

/// The largest capacity a ctl write accepts ("capacity 18446744073709551615")
/// means "never block": no overflow, with or without groups.
#[tokio::test]
async fn the_largest_capacity_never_blocks() {
    let b = broker(u64::MAX).await;
    assert_eq!(push_now(&b, "before any group").await, 0);
    assert_eq!(take(&b, "").await, "before any group");
    assert_eq!(push_now(&b, "with a group").await, 1);
    assert_eq!(take(&b, "").await, "with a group");
}

/// A timeout of centuries (humantime takes "500000000000y") is no timeout
/// at all: no overflow when the deadline is computed, the push waits.
#[tokio::test]
async fn an_enormous_timeout_waits() {
    for secs in [u64::MAX / 4, 1 << 40, u64::MAX] {
        let b = broker(0).await;
        b.set("t", Setting::Timeout(Some(Duration::from_secs(secs))))
            .await
            .unwrap();
        let mut p = push(&b, "late");
        blocked(&mut p).await;
        assert_eq!(take(&b, "").await, "late");
        done(p).await.unwrap();
    }
}

/// Poll `f` one last time as a deadline or a flush does, before dropping it.
fn cut<T>(how: Cut, f: &mut Boxed<'_, T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match resolve_now(how, || f.as_mut().poll(&mut cx)) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("did not decide when cut"),
    }
}

#[tokio::test]
async fn a_push_dropped_after_room_came_is_withdrawn() {
    if on_jetstream() {
        // JetStream: a push runs as a task, which publishes as soon as
        // room comes, polled or not; dropped after that, it stays (it was
        // taken). Either way it is there once or not at all.
        let b = broker(1).await;
        b.offset("t", "").await.unwrap();
        push_now(&b, "a").await;
        let mut p = push(&b, "b");
        blocked(&mut p).await;
        assert_eq!(take(&b, "").await, "a");
        drop(p);
        // The task may publish at any moment, so the status is read after
        // the pull: a message pulled is counted; one not yet pulled but
        // counted comes next.
        let got = b.pull("t", "", Wait::NonBlock).await;
        let pushed = b.status("t").await.unwrap().pushed;
        match got {
            Ok(Some(d)) => assert_eq!((d.data().as_ref(), pushed), (&b"b"[..], 2)),
            other => {
                assert_eq!(other.err(), Some(Error::WouldBlock));
                if pushed == 2 {
                    assert_eq!(take(&b, "").await, "b");
                } else {
                    assert_eq!(pushed, 1);
                }
            }
        }
        return;
    }
    // Issue 15.1: room alone appends nothing; the dropped push is gone.
    let b = broker(1).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "a").await;
    let mut p = push(&b, "b");
    blocked(&mut p).await;
    assert_eq!(take(&b, "").await, "a"); // room for b
    drop(p);
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
    assert_eq!(b.status("t").await.unwrap().pushed, 1);
}

#[tokio::test]
async fn a_push_cut_after_room_came_is_pushed_and_says_so() {
    if on_jetstream() {
        // JetStream: a last poll cannot publish (that takes a round trip):
        // a push cut after room came is Ok if its task published already,
        // else withdrawn. (Cut while its publish is on the wire, it is
        // withdrawn and deleted once stored: a reader on another server
        // may take it in that round trip; chapter 7.)
        let b = broker(1).await;
        b.offset("t", "").await.unwrap();
        push_now(&b, "a").await;
        let mut p = push(&b, "b");
        blocked(&mut p).await;
        assert_eq!(take(&b, "").await, "a");
        match cut(Cut::Deadline, &mut p) {
            Ok(1) => assert_eq!(take(&b, "").await, "b"),
            other => {
                assert_eq!(other, Err(Error::TimedOut));
                drop(p);
                assert_eq!(
                    b.pull("t", "", Wait::NonBlock).await.err(),
                    Some(Error::WouldBlock)
                );
            }
        }
        return;
    }
    let b = broker(1).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "a").await;
    let mut p = push(&b, "b");
    blocked(&mut p).await;
    assert_eq!(take(&b, "").await, "a");
    // Cut at its deadline with room: it goes in, and returns Ok.
    assert_eq!(cut(Cut::Deadline, &mut p), Ok(1));
    assert_eq!(take(&b, "").await, "b");
}

#[tokio::test]
async fn a_push_cut_before_room_is_withdrawn() {
    let b = broker(1).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "a").await;
    let mut p = push(&b, "b");
    blocked(&mut p).await;
    assert_eq!(cut(Cut::Cancel, &mut p), Err(Error::Interrupted));
    drop(p);
    let mut q = push(&b, "c");
    blocked(&mut q).await;
    assert_eq!(cut(Cut::Deadline, &mut q), Err(Error::TimedOut));
    drop(q);
    assert_eq!(take(&b, "").await, "a");
    assert_eq!(
        b.pull("t", "", Wait::NonBlock).await.err(),
        Some(Error::WouldBlock)
    );
}

#[tokio::test]
async fn a_rendezvous_push_one_group_took_succeeds_at_its_deadline() {
    // Issue 14.5: capacity 0, groups g1 and g2, only g1 reads before the
    // push's deadline: the push returns Ok (it was delivered), and g2 still
    // gets it.
    let b = broker(0).await;
    b.set("t", Setting::Timeout(Some(Duration::from_millis(50))))
        .await
        .unwrap();
    b.offset("t", "g1").await.unwrap();
    b.offset("t", "g2").await.unwrap();
    let mut p = push(&b, "urgent");
    blocked(&mut p).await;
    assert_eq!(take(&b, "g1").await, "urgent");
    assert_eq!(done(p).await, Ok(0));
    assert_eq!(take(&b, "g2").await, "urgent");
    // Cut by a flush instead: the same.
    let mut p = push(&b, "again");
    blocked(&mut p).await;
    assert_eq!(take(&b, "g2").await, "again");
    assert_eq!(cut(Cut::Cancel, &mut p), Ok(1));
    assert_eq!(take(&b, "g1").await, "again");
}

#[tokio::test]
async fn a_pull_cut_returns_what_was_reserved_for_it() {
    if on_jetstream() {
        // JetStream: the message a rendezvous push saw delivered may still
        // be on its way from JetStream to this server when the pull is cut
        // (a last poll cannot wait for it): then the pull is withdrawn and
        // the message goes to the group's next pull.
        let b = broker(0).await;
        let mut r = pull(&b, "");
        blocked(&mut r).await;
        push_now(&b, "m").await;
        let d = match cut(Cut::Deadline, &mut r) {
            Ok(Some(d)) => d,
            other => {
                assert_eq!(other.err(), Some(Error::TimedOut));
                drop(r);
                done(pull(&b, "")).await.unwrap().unwrap()
            }
        };
        assert_eq!(d.data().as_ref(), b"m");
        d.ack();
        return;
    }
    let b = broker(0).await;
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    assert_eq!(cut(Cut::Cancel, &mut r).err(), Some(Error::Interrupted));
    drop(r);
    let mut r = pull(&b, "");
    blocked(&mut r).await;
    push_now(&b, "m").await;
    let d = cut(Cut::Deadline, &mut r).unwrap().unwrap();
    assert_eq!(d.data().as_ref(), b"m");
    d.ack();
}

#[tokio::test]
async fn a_redelivery_keeps_offset_and_status_in_step() {
    if on_jetstream() {
        // JetStream: the nak does not move the consumer's delivered
        // pointer back (see status_shows_groups_and_waiters); the dropped
        // message comes back first, and seeking to it works.
        let b = broker(5).await;
        b.offset("t", "").await.unwrap();
        push_now(&b, "a").await;
        push_now(&b, "b").await;
        drop(done(pull(&b, "")).await.unwrap().unwrap());
        b.status("t").await.unwrap(); // waits for the nak
        assert_eq!(take(&b, "").await, "a");
        b.seek("t", "", 0).await.unwrap();
        assert_eq!(take(&b, "").await, "a");
        assert_eq!(take(&b, "").await, "b");
        return;
    }
    // Issue 14.6: capacity 5, push a and b; a reader takes a and its
    // connection drops. The group's offset (0) is held, within
    // [first, next], and can be written back.
    let b = broker(5).await;
    b.offset("t", "").await.unwrap();
    push_now(&b, "a").await;
    push_now(&b, "b").await;
    let d = done(pull(&b, "")).await.unwrap().unwrap();
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.pending, s.groups[0].unacked), (0, 2, 1));
    drop(d);
    let s = b.status("t").await.unwrap();
    let g = &s.groups[0];
    assert_eq!((s.first, s.next, s.pending), (0, 2, 2));
    assert_eq!((g.offset, g.lag, g.unacked), (0, 2, 0));
    assert_eq!(b.offset("t", "").await.unwrap(), 0);
    b.seek("t", "", 0).await.unwrap();
    assert_eq!(take(&b, "").await, "a");
    assert_eq!(take(&b, "").await, "b");
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.next, s.pending), (2, 2, 0));
}

#[tokio::test]
async fn a_removed_topic_stays_removed_for_its_old_handles() {
    // Issue 14.7: a topic created again under a removed one's name is
    // another topic; what was opened on the old one keeps failing.
    let b = broker(5).await;
    let old = Target {
        name: "t",
        id: Some(b.id("t").unwrap()),
    };
    assert_eq!(
        done(b.push_to(old, Bytes::from_static(b"x"), Wait::Block)).await,
        Ok(0)
    );
    b.remove("t").await.unwrap();
    async fn stale(b: &B, old: Target<'_>) {
        assert_eq!(b.status(old).await.err(), Some(Error::Removed));
        assert_eq!(b.offset(old, "").await.err(), Some(Error::Removed));
        assert_eq!(b.seek(old, "", 0).await.err(), Some(Error::Removed));
        assert_eq!(b.reset(old).await.err(), Some(Error::Removed));
    }
    stale(&b, old).await;
    b.create("t", TopicConfig::default()).await.unwrap();
    assert_ne!(Some(b.id("t").unwrap()), old.id);
    stale(&b, old).await;
    assert_eq!(
        done(b.push_to(old, Bytes::from_static(b"y"), Wait::NonBlock)).await,
        Err(Error::Removed)
    );
    assert_eq!(
        done(b.pull_from(old, "", Wait::NonBlock)).await.err(),
        Some(Error::Removed)
    );
    // By name, it is the new topic.
    assert_eq!(b.status("t").await.unwrap().pushed, 0);
}

/// Issue 16: the ordered range query every listing is built on, and the
/// listings provided on it (a directory's children, whether a directory
/// leads to topics), paged with stable positions.
#[tokio::test]
async fn names_range_and_children_page_in_order() {
    use std::ops::Bound;
    let b = new_engine().await;
    // Tree order: part by part, '/' before every name character.
    let all = [
        "a", "a/b", "a/c/d", "a-x", "a.y", "a0", "b/c", "m/eu", "m/us",
    ];
    for n in all {
        b.create(n, TopicConfig::default()).await.unwrap();
    }
    assert_eq!(b.names(Bound::Unbounded, 100), all);
    assert_eq!(b.names(Bound::Included("a/"), 2), ["a/b", "a/c/d"]);
    assert_eq!(b.names(Bound::Excluded("a/c/d"), 2), ["a-x", "a.y"]);
    assert_eq!(b.names(Bound::Excluded("a0"), 100), ["b/c", "m/eu", "m/us"]);
    assert!(b.names(Bound::Excluded("m/us"), 100).is_empty());
    assert_eq!(b.topics(), all);
    assert!(b.leads_to("a") && b.leads_to("a/c") && b.leads_to("m"));
    assert!(!b.leads_to("a/b") && !b.leads_to("x") && !b.leads_to("a-x"));
    // The root's children, in byte order of their own names.
    let (root, end) = b.children("", Bound::Unbounded, 100);
    assert_eq!(root, ["a", "a-x", "a.y", "a0", "b", "m"]);
    assert_eq!(end, None);
    assert_eq!(b.children("a", Bound::Unbounded, 100).0, ["b", "c"]);
    assert_eq!(b.children("a/c", Bound::Unbounded, 100).0, ["d"]);
    assert!(b.children("a/b", Bound::Unbounded, 100).0.is_empty());
    // Paged one at a time: the same, each once.
    let (mut paged, mut from) = (Vec::new(), Bound::Unbounded);
    loop {
        let (page, next) = b.children("", from, 1);
        paged.extend(page);
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(paged, root);
    // Whether `a` is a topic or only holds topics, it keeps its place.
    b.remove("a").await.unwrap();
    assert_eq!(b.children("", Bound::Unbounded, 100).0, root);
}

/// A child stays in its place while its topic-ness changes: a listing
/// paged across `a` being created and removed lists `a` exactly once
/// (byte order put `a` after `a-x…` while it only held `a/b`, and first
/// once it was a topic).
#[tokio::test]
async fn children_keep_their_place_when_a_child_becomes_a_topic() {
    use std::ops::Bound;
    let b = new_engine().await;
    for i in 0..300 {
        b.create(&format!("a-x{i:04}"), TopicConfig::default())
            .await
            .unwrap();
    }
    b.create("a/b", TopicConfig::default()).await.unwrap();
    for round in 0..6 {
        let (mut listed, mut from) = (Vec::new(), Bound::Unbounded);
        let mut page = 0;
        loop {
            let (names, next) = b.children("", from, 7);
            listed.extend(names);
            page += 1;
            // Toggle `a` between pages, at a different page each round.
            if page % 6 == round {
                if b.id("a").is_ok() {
                    b.remove("a").await.unwrap();
                } else {
                    b.create("a", TopicConfig::default()).await.unwrap();
                }
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(
            listed.iter().filter(|n| *n == "a").count(),
            1,
            "round {round}"
        );
        assert_eq!(listed.len(), 301, "round {round}");
    }
}

// ---- retention (`retain`): what every group has taken, kept ----

async fn retaining(capacity: u64, retain: dchan::broker::Retention) -> Option<B> {
    let b = new_engine().await;
    let made = b
        .create(
            "t",
            TopicConfig {
                capacity,
                retain,
                ..TopicConfig::default()
            },
        )
        .await;
    // An engine without retention (JetStream) refuses it, saying so: skipped.
    if let Err(Error::Unsupported(why)) = &made {
        assert!(why.contains("retain"), "{why}");
        eprintln!("this engine does not retain: skipped");
        return None;
    }
    made.unwrap();
    assert_eq!(b.status("t").await.unwrap().config.retain, retain);
    Some(b)
}

#[tokio::test]
async fn retention_keeps_the_last_taken_messages_for_a_new_group() {
    let Some(b) = retaining(10, dchan::broker::Retention::Count(3)).await else {
        return;
    };
    b.offset("t", "a").await.unwrap();
    for i in 0..5 {
        push_now(&b, &format!("m{i}")).await;
    }
    for i in 0..5 {
        assert_eq!(take(&b, "a").await, format!("m{i}"));
    }
    let s = b.status("t").await.unwrap();
    assert_eq!(
        (s.pending, s.retained, s.first, s.next),
        (3, 3, 2, 5),
        "{s:?}"
    );
    // A new group starts from the oldest retained message.
    assert_eq!(b.offset("t", "b").await.unwrap(), 2);
    for i in 2..5 {
        assert_eq!(take(&b, "b").await, format!("m{i}"));
    }
    // Retention is not consumed by reading.
    assert_eq!(b.status("t").await.unwrap().retained, 3);
}

#[tokio::test]
async fn a_group_seeks_back_over_retained_history() {
    let Some(b) = retaining(10, dchan::broker::Retention::Count(100)).await else {
        return;
    };
    b.offset("t", "a").await.unwrap();
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    for i in 0..3 {
        assert_eq!(take(&b, "a").await, i.to_string());
    }
    b.seek("t", "a", 0).await.unwrap();
    assert_eq!(take(&b, "a").await, "0");
    // Retention off: what every group is done with goes, as without it.
    b.set("t", Setting::Retain(dchan::broker::Retention::None))
        .await
        .unwrap();
    // Those the group reads again stay until it is done with them.
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.pending), (1, 2), "{s:?}");
    assert_eq!(take(&b, "a").await, "1");
    assert_eq!(take(&b, "a").await, "2");
    assert_eq!(b.status("t").await.unwrap().pending, 0);
    assert!(matches!(
        b.seek("t", "a", 0).await,
        Err(Error::OffsetOutOfRange { first: 3, .. })
    ));
}

#[tokio::test]
async fn retention_by_bytes_keeps_the_newest_that_fit() {
    let Some(b) = retaining(10, dchan::broker::Retention::Bytes(1024)).await else {
        return;
    };
    let big = "x".repeat(600);
    for _ in 0..3 {
        push_now(&b, &big).await;
    }
    // No group yet: every message waits for the first, whatever the limit.
    assert_eq!(b.status("t").await.unwrap().pending, 3);
    for _ in 0..3 {
        take(&b, "a").await;
    }
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.retained), (2, 1), "{s:?}");
}

#[tokio::test]
async fn retention_by_age_keeps_young_messages_and_drops_old_ones() {
    let Some(b) = retaining(10, dchan::broker::Retention::Age(Duration::from_secs(3600))).await
    else {
        return;
    };
    for i in 0..3 {
        push_now(&b, &i.to_string()).await;
    }
    for _ in 0..3 {
        take(&b, "a").await;
    }
    assert_eq!(b.status("t").await.unwrap().retained, 3);
    b.set(
        "t",
        Setting::Retain(dchan::broker::Retention::Age(Duration::from_millis(1))),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Old messages go at the topic's next push.
    push_now(&b, "3").await;
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.retained, s.pending), (3, 0, 1), "{s:?}");
}

#[tokio::test]
async fn a_group_reading_history_lags_by_capacity_beyond_it() {
    let Some(b) = retaining(2, dchan::broker::Retention::Count(100)).await else {
        return;
    };
    b.offset("t", "a").await.unwrap();
    for i in 0..2 {
        push_now(&b, &i.to_string()).await;
    }
    for i in 0..2 {
        assert_eq!(take(&b, "a").await, i.to_string());
    }
    // Retained messages do not take capacity: two more fit.
    push_now(&b, "2").await;
    push_now(&b, "3").await;
    // A new group replays history; it counts as at the first message not
    // every group has taken, so capacity bounds its lag beyond history.
    assert_eq!(b.offset("t", "b").await.unwrap(), 0);
    take(&b, "a").await;
    take(&b, "a").await;
    let mut p = push(&b, "4");
    blocked(&mut p).await;
    for i in 0..3 {
        assert_eq!(take(&b, "b").await, i.to_string());
    }
    assert_eq!(done(p).await, Ok(4));
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.next), (0, 5), "{s:?}");
}

#[tokio::test]
async fn reset_drops_retained_messages() {
    let Some(b) = retaining(10, dchan::broker::Retention::Count(100)).await else {
        return;
    };
    push_now(&b, "0").await;
    take(&b, "a").await;
    assert_eq!(b.status("t").await.unwrap().retained, 1);
    b.reset("t").await.unwrap();
    let s = b.status("t").await.unwrap();
    assert_eq!((s.first, s.retained, s.pending), (1, 0, 0), "{s:?}");
    assert_eq!(b.offset("t", "new").await.unwrap(), 1);
}

// ---- limits: `max_bytes` and `rate` (issue 11) ----

/// A topic `t` with `config`, or `None` on an engine that refuses these
/// settings (JetStream), after checking that it says so clearly.
async fn limited(config: TopicConfig) -> Option<B> {
    let b = new_engine().await;
    match b.create("t", config).await {
        Ok(()) => Some(b),
        Err(Error::Unsupported(why)) if on_jetstream() => {
            assert!(why.contains("JetStream"), "{why}");
            None
        }
        Err(e) => panic!("create: {e}"),
    }
}

fn max_bytes(capacity: u64, max: u64) -> TopicConfig {
    TopicConfig {
        capacity,
        max_bytes: Some(max),
        ..TopicConfig::default()
    }
}

#[tokio::test]
async fn max_bytes_makes_a_push_wait_until_readers_free_room() {
    let Some(b) = limited(max_bytes(100, 10)).await else {
        return;
    };
    b.offset("t", "a").await.unwrap();
    push_now(&b, "12345").await;
    push_now(&b, "678").await;
    let s = b.status("t").await.unwrap();
    assert_eq!((s.bytes, s.config.max_bytes), (8, Some(10)), "{s:?}");
    // 8 + 3 would pass 10: the push waits, as for capacity.
    let mut p = push(&b, "abc");
    blocked(&mut p).await;
    // Taken but not yet acknowledged, a message is still held.
    let d = done(pull(&b, "a")).await.unwrap().unwrap();
    blocked(&mut p).await;
    d.ack();
    assert_eq!(done(p).await, Ok(2));
    let s = b.status("t").await.unwrap();
    assert_eq!((s.pending, s.bytes), (2, 6), "{s:?}");
    assert_eq!(take(&b, "a").await, "678");
    assert_eq!(take(&b, "a").await, "abc");
}

#[tokio::test]
async fn a_message_longer_than_max_bytes_fails_at_once() {
    let Some(b) = limited(max_bytes(100, 4)).await else {
        return;
    };
    assert_eq!(
        done(push(&b, "12345")).await,
        Err(Error::OverMaxBytes { size: 5, max: 4 })
    );
    assert_eq!(b.status("t").await.unwrap().next, 0, "nothing pushed");
    // At the limit exactly, it goes.
    push_now(&b, "1234").await;
}

#[tokio::test]
async fn max_bytes_holds_at_a_rendezvous_too() {
    let Some(b) = limited(max_bytes(0, 4)).await else {
        return;
    };
    // Two groups: "a" takes at once, "b" is slow; "a"'s reader may not
    // take a second message while the first is held for "b".
    b.offset("t", "b").await.unwrap();
    let mut r = pull(&b, "a");
    blocked(&mut r).await;
    let mut p1 = push(&b, "123");
    blocked(&mut p1).await;
    let d = done(r).await.unwrap().unwrap();
    d.ack();
    let mut r = pull(&b, "a");
    blocked(&mut r).await;
    let mut p2 = push(&b, "45");
    blocked(&mut p2).await;
    blocked(&mut r).await;
    blocked(&mut p1).await;
    assert_eq!(take(&b, "b").await, "123");
    assert_eq!(done(p1).await, Ok(0));
    let d = done(r).await.unwrap().unwrap();
    assert_eq!(d.data().as_ref(), b"45");
    d.ack();
    assert_eq!(take(&b, "b").await, "45");
    assert_eq!(done(p2).await, Ok(1));
}

#[tokio::test]
async fn lowering_max_bytes_keeps_what_is_held_and_raising_it_lets_pushes_go() {
    let Some(b) = limited(max_bytes(100, 100)).await else {
        return;
    };
    b.offset("t", "a").await.unwrap();
    push_now(&b, "0123456789").await;
    b.set("t", Setting::MaxBytes(Some(5))).await.unwrap();
    assert_eq!(b.status("t").await.unwrap().pending, 1);
    let mut p = push(&b, "ab");
    blocked(&mut p).await;
    b.set("t", Setting::MaxBytes(None)).await.unwrap();
    assert_eq!(done(p).await, Ok(1));
}

#[tokio::test]
async fn rate_slows_writers_and_nothing_else() {
    let config = TopicConfig {
        capacity: 100,
        rate: dchan::broker::Rate::parse("1/s").unwrap(),
        ..TopicConfig::default()
    };
    let Some(b) = limited(config).await else {
        return;
    };
    b.create(
        "u",
        TopicConfig {
            capacity: 100,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    b.offset("t", "a").await.unwrap();
    // The bucket holds one second's worth: one message at 1/s.
    push_now(&b, "0").await;
    let mut p = push(&b, "1");
    blocked(&mut p).await;
    assert_eq!(
        b.push("t", Bytes::from_static(b"x"), Wait::NonBlock).await,
        Err(Error::WouldBlock)
    );
    // Another topic's writers and readers, and this topic's readers, go
    // on meanwhile.
    done(b.push("u", Bytes::from_static(b"u"), Wait::Block))
        .await
        .unwrap();
    let d = done(b.pull("u", "", Wait::Block)).await.unwrap().unwrap();
    d.ack();
    assert_eq!(take(&b, "a").await, "0");
    blocked(&mut p).await;
    // The next token comes: the push goes, never dropped.
    assert_eq!(done(p).await, Ok(1));
    assert_eq!(take(&b, "a").await, "1");
    assert_eq!(b.status("t").await.unwrap().config.rate, config.rate);
}
