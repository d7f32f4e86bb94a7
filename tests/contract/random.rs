// The randomized contract test, included by tests/broker_random.rs once
// per engine (see tests/contract/mod.rs).

/// How one push ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pushed {
    Ok(Seq),
    /// Failed or cancelled: delivered at most once per group.
    Unsure,
    /// A non-blocking push that would have blocked: never delivered.
    Never,
}

/// What the run saw, filled by its tasks.
#[derive(Default)]
struct Record {
    /// Per producer, per message number, how its push ended.
    pushes: Vec<Vec<Pushed>>,
    /// Per group, per reader, the acked deliveries in order: (seq, payload).
    acked: Vec<Vec<Vec<(Seq, String)>>>,
    /// Sequence numbers below this may have been removed by a reset.
    reset_below: Seq,
}

struct Plan {
    capacity: u64,
    producers: usize,
    per_producer: usize,
    /// Readers per group.
    groups: Vec<usize>,
    resets: usize,
    /// The topic's timeout, in some runs: pushes and pulls then also end
    /// at their deadline, at any point.
    timeout: Option<Duration>,
}

fn plan(rng: &mut StdRng) -> Plan {
    Plan {
        capacity: [0, 0, 1, 2, 5, 64][rng.random_range(0..6)],
        producers: rng.random_range(1..5),
        per_producer: rng.random_range(20..200),
        groups: (0..rng.random_range(1..4))
            .map(|_| rng.random_range(1..4))
            .collect(),
        resets: rng.random_range(0..3),
        timeout: rng
            .random_bool(0.25)
            .then(|| Duration::from_micros(rng.random_range(50..2000))),
    }
}

/// A short random wait, or none: where futures get cut short.
fn short(rng: &mut StdRng) -> Duration {
    Duration::from_micros(rng.random_range(0..300))
}

/// Await `fut`, or, at random, cut it short: after a short time, or after
/// a few polls with other tasks running in between and no last poll (so
/// what the broker decided for it meanwhile must be undone by its drop),
/// or with a last poll inside `resolve_now` (as a deadline or a flush
/// does), whose answer must agree with what the broker decided. `None`:
/// dropped unanswered.
async fn maybe_cut<F: Future>(fut: F, rng: &mut StdRng) -> Option<F::Output> {
    match rng.random_range(0..12) {
        0 | 1 => tokio::time::timeout(short(rng), fut).await.ok(),
        choice @ 2..=5 => {
            let mut fut = std::pin::pin!(fut);
            for _ in 0..rng.random_range(1..6) {
                if let Poll::Ready(out) = futures_util::poll!(fut.as_mut()) {
                    return Some(out);
                }
                tokio::task::yield_now().await;
            }
            if choice < 4 {
                return None;
            }
            let cut = if choice == 4 {
                Cut::Cancel
            } else {
                Cut::Deadline
            };
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match resolve_now(cut, || fut.as_mut().poll(&mut cx)) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => panic!("a broker future did not decide when cut"),
            }
        }
        _ => Some(fut.await),
    }
}

/// The status agrees with itself (issue 14.6), checked after every step:
/// what is held is `[first, next)`, every group's offset is in it (so it
/// can be written back), and what a group has not read or not acked is
/// held.
///
/// On JetStream the held range may have holes (a push withdrawn after it
/// was stored is deleted, its number not reused), and a delivery dropped
/// unacked counts as unacked until it is delivered again.
async fn invariants(broker: &B) {
    let s = broker.status("t").await.unwrap();
    let holes = on_jetstream();
    match holes {
        false => assert_eq!(s.pending, s.next - s.first, "{s:?}"),
        true => assert!(s.pending <= s.next - s.first, "{s:?}"),
    }
    for g in &s.groups {
        assert!(s.first <= g.offset && g.offset <= s.next, "{s:?}");
        assert!(g.lag <= s.next - g.offset, "{s:?}");
        if !holes {
            assert!(g.lag + g.unacked <= s.pending, "{s:?}");
        }
    }
}

/// Whether the engine under test is the JetStream engine.
fn on_jetstream() -> bool {
    std::any::type_name::<B>().contains("JetStreamBroker")
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = plan(&mut rng);
    let broker = Arc::new(new_engine().await);
    broker
        .create(
            "t",
            TopicConfig {
                capacity: plan.capacity,
                timeout: plan.timeout,
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    for g in 0..plan.groups.len() {
        broker.offset("t", &g.to_string()).await.unwrap();
    }
    let record = Arc::new(Mutex::new(Record {
        pushes: vec![Vec::new(); plan.producers],
        acked: plan.groups.iter().map(|&n| vec![Vec::new(); n]).collect(),
        reset_below: 0,
    }));

    let mut producers = Vec::new();
    for p in 0..plan.producers {
        let (broker, record) = (broker.clone(), record.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ (p as u64 + 1) << 32);
        let n = plan.per_producer;
        producers.push(tokio::spawn(async move {
            for i in 0..n {
                let data = Bytes::from(format!("{p}:{i}"));
                let wait = if rng.random_bool(0.1) {
                    Wait::NonBlock
                } else {
                    Wait::Block
                };
                let push = broker.push("t", data, wait);
                let pushed = match maybe_cut(push, &mut rng).await {
                    Some(Ok(seq)) => Pushed::Ok(seq),
                    None => Pushed::Unsure,
                    // Every error means withdrawn: never delivered.
                    Some(Err(Error::WouldBlock)) => {
                        tokio::task::yield_now().await;
                        Pushed::Never
                    }
                    // JetStream: a push cut while its publish is on the
                    // wire is deleted once stored, but a reader waiting at
                    // JetStream may take it first (chapter 7).
                    Some(Err(Error::Interrupted | Error::TimedOut)) if on_jetstream() => {
                        Pushed::Unsure
                    }
                    Some(Err(Error::Reset | Error::Interrupted | Error::TimedOut)) => Pushed::Never,
                    Some(Err(e)) => panic!("push: {e}"),
                };
                invariants(&broker).await;
                record.lock().pushes[p].push(pushed);
                if rng.random_bool(0.1) {
                    tokio::time::sleep(short(&mut rng)).await;
                }
            }
        }));
    }

    let mut readers = Vec::new();
    for (g, &count) in plan.groups.iter().enumerate() {
        for r in 0..count {
            let (broker, record) = (broker.clone(), record.clone());
            let mut rng = StdRng::seed_from_u64(seed ^ ((g * 8 + r) as u64 + 100) << 32);
            readers.push(tokio::spawn(async move {
                let group = g.to_string();
                loop {
                    let wait = if rng.random_bool(0.1) {
                        Wait::NonBlock
                    } else {
                        Wait::Block
                    };
                    let pull = broker.pull("t", &group, wait);
                    let got = maybe_cut(pull, &mut rng).await;
                    invariants(&broker).await;
                    let got = match got {
                        None => continue, // cut short: took nothing
                        Some(Err(Error::WouldBlock | Error::Interrupted | Error::TimedOut)) => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Some(got) => got,
                    };
                    let Some(d) = got.expect("pull") else {
                        break; // closed and drained
                    };
                    if rng.random_bool(0.1) {
                        drop(d); // connection lost: back to the front
                    } else {
                        let text = String::from_utf8(d.data().to_vec()).unwrap();
                        record.lock().acked[g][r].push((d.seq(), text));
                        d.ack();
                    }
                    invariants(&broker).await;
                    if rng.random_bool(0.1) {
                        tokio::time::sleep(short(&mut rng)).await;
                    }
                }
            }));
        }
    }

    let chaos = {
        let (broker, record) = (broker.clone(), record.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a05);
        let resets = plan.resets;
        tokio::spawn(async move {
            for _ in 0..resets {
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..20_000))).await;
                broker.reset("t").await.unwrap();
                invariants(&broker).await;
                // At or above the true boundary (pushes may land between).
                let below = broker.status("t").await.unwrap().first;
                record.lock().reset_below = below;
                if rng.random_bool(0.5) {
                    let c = [0, 1, 3, 64][rng.random_range(0..4)];
                    broker.set("t", Setting::Capacity(c)).await.unwrap();
                }
            }
        })
    };

    for p in producers {
        p.await.unwrap();
    }
    chaos.await.unwrap();
    broker.close("t").await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let record = std::mem::take(&mut *record.lock());
    check(&plan, &record, &broker).await;
}

async fn check(plan: &Plan, rec: &Record, broker: &B) {
    // Each producer's Ok pushes are in the log in push order.
    for (p, pushes) in rec.pushes.iter().enumerate() {
        let seqs: Vec<Seq> = pushes
            .iter()
            .filter_map(|x| match x {
                Pushed::Ok(s) => Some(*s),
                Pushed::Unsure | Pushed::Never => None,
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "producer {p}: {seqs:?}"
        );
    }
    for (g, readers) in rec.acked.iter().enumerate() {
        // Acked at most once, with the payload pushed under that number.
        let mut by_payload: HashMap<&str, Seq> = HashMap::new();
        let mut by_seq: HashMap<Seq, &str> = HashMap::new();
        for (seq, text) in readers.iter().flatten() {
            assert!(
                by_payload.insert(text, *seq).is_none(),
                "group {g}: {text} twice"
            );
            assert!(
                by_seq.insert(*seq, text).is_none(),
                "group {g}: seq {seq} twice"
            );
        }
        // Every Ok push acked once, but what a reset removed first.
        for (p, pushes) in rec.pushes.iter().enumerate() {
            for (i, pushed) in pushes.iter().enumerate() {
                let text = format!("{p}:{i}");
                match (pushed, by_payload.get(text.as_str())) {
                    (Pushed::Ok(seq), Some(got)) => {
                        assert_eq!(seq, got, "group {g}: {text} under another number")
                    }
                    (Pushed::Ok(seq), None) => assert!(
                        *seq < rec.reset_below,
                        "group {g}: {text} (seq {seq}) lost, resets below {}",
                        rec.reset_below
                    ),
                    (Pushed::Never, Some(seq)) => {
                        panic!("group {g}: {text} (seq {seq}) delivered, its push failed")
                    }
                    (Pushed::Unsure | Pushed::Never, _) => {}
                }
            }
        }
        // A lone reader sees its group's messages in order. (Not on
        // JetStream when pulls are cut: the message a cut pull's request
        // brings back is nak'd on its way, and may come after the next.)
        if readers.len() == 1 && !on_jetstream() {
            let seqs: Vec<Seq> = readers[0].iter().map(|(s, _)| *s).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "group {g}: out of order: {seqs:?}"
            );
        }
    }
    let mut s = broker.status("t").await.unwrap();
    // JetStream counts the pull requests its server holds, and a cut
    // pull's request stays there until it expires (at most 5 s): wait
    // that out (literate/07-scaling.md, "Local parts of status").
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while on_jetstream() && s.blocked_readers > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s = broker.status("t").await.unwrap();
    }
    assert_eq!((s.pending, s.blocked_readers, s.blocked_writers), (0, 0, 0));
    assert!(
        s.groups.iter().all(|g| g.unacked == 0 && g.lag == 0),
        "{s:?}"
    );
    let total: usize = rec.acked.iter().flatten().map(Vec::len).sum();
    assert!(total > 0 || plan.per_producer == 0);
}

/// Run `seed` on `rt`, naming the seed if it fails or hangs.
fn one(seed: u64, rt: tokio::runtime::Runtime) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), run(seed))
                .await
                .expect("hung")
        })
    }));
    if let Err(e) = outcome {
        eprintln!("broker_random: seed {seed} failed (rerun: DCHAN_SEED={seed})");
        std::panic::resume_unwind(e);
    }
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .map(|s: String| s.parse::<u64>().expect(name))
    };
    match (var("DCHAN_SEED"), var("DCHAN_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (default.start..default.start + count).collect(),
        (None, None) => default.collect(),
    }
}

#[test]
fn random_single_thread_paused_clock() {
    if !PAUSED_CLOCK {
        eprintln!("this engine cannot run on a paused clock: skipped");
        return;
    }
    for seed in seeds(0..200) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        one(seed, rt);
    }
}

#[test]
fn random_multi_thread() {
    // JetStream: each seed runs against a NATS server, at network speed.
    let default = if on_jetstream() {
        1000..1005
    } else {
        1000..1030
    };
    for seed in seeds(default) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        one(seed, rt);
    }
}
