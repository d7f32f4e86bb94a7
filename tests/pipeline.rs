//! `dchan run` and `dchan worker` as a user runs them: the real binary
//! against a real `dchan serve` on a free port. No test asserts on time;
//! a hang is caught by a generous limit.

mod server;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use server::{PATIENCE, Server, repo};

/// Long, so only a hang trips it on a loaded machine (debug builds).
const LIMIT: Duration = Duration::from_secs(10 * PATIENCE.as_secs());

fn dchan(addr: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dchan"));
    c.args(args)
        .env("DCHAN_ADDR", addr)
        .env_remove("RUST_LOG")
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Start `dchan ARGS` with `input` on its stdin (written from a thread,
/// so a big input cannot block the test).
fn start(addr: &str, args: &[&str], input: Vec<u8>) -> Child {
    let mut child = dchan(addr, args).spawn().expect("run dchan");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    child
}

/// Wait for `child`, at most [`LIMIT`], collecting its output.
fn finish(child: Child, what: &str) -> Output {
    let (tx, rx) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            panic!("{what} did not end within {LIMIT:?}");
        }
    }
}

fn run(addr: &str, args: &[&str], input: &str) -> Output {
    finish(
        start(addr, args, input.as_bytes().to_vec()),
        &format!("{args:?}"),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn lines(b: &[u8]) -> Vec<String> {
    let mut l: Vec<String> = text(b).lines().map(str::to_string).collect();
    l.sort();
    l
}

/// Wait until `cond` holds (polling), at most [`LIMIT`].
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The topics the server holds, from `dchan ls`.
fn topics(addr: &str) -> String {
    let mut c = dchan(addr, &["ls"]);
    c.stdin(Stdio::null());
    text(&c.output().unwrap().stdout)
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn three_filters_equal_sh_for_100k_lines() {
    let server = Server::start(&[]);
    let input: String = (1..=100_000).map(|i| format!("{i} x{}\n", i % 7)).collect();
    let line = "grep -v 3 | tr 0-4 a-e | cut -c 1-6";
    let out = run(&server.addr(), &["run", "--name", "big", line], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut sh = Command::new("sh")
        .args(["-c", line])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    let feed = input.clone();
    std::thread::spawn(move || stdin.write_all(feed.as_bytes()));
    let want = sh.wait_with_output().unwrap().stdout;
    assert_eq!(text(&out.stdout), text(&want));
    assert!(
        out.stderr.is_empty(),
        "off a terminal, nothing but data: {}",
        text(&out.stderr)
    );
    assert!(
        !topics(&server.addr()).contains("big/"),
        "its topics are removed"
    );
}

#[test]
fn replicas_of_a_slow_each_stage_share_the_work() {
    let server = Server::start(&[]);
    let input = numbered(30);
    let stage = r#"sh -c 'sleep 0.1; echo "$DCHAN_COPY $(cat)"'"#;
    let out = run(
        &server.addr(),
        &["run", "--each", "1", "--replicas", "3", stage],
        &input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut by_copy: BTreeMap<String, usize> = BTreeMap::new();
    let mut got = Vec::new();
    for l in text(&out.stdout).lines() {
        let (copy, msg) = l.split_once(' ').unwrap();
        *by_copy.entry(copy.to_string()).or_default() += 1;
        got.push(msg.to_string());
    }
    got.sort();
    assert_eq!(got, lines(input.as_bytes()), "every message once");
    assert!(by_copy.len() >= 2, "copies took part: {by_copy:?}");
}

/// Start `dchan run --keep --name NAME ARGS` whose input waits for
/// `gate` to be written, and wait for its topics.
fn started_run(addr: &str, name: &str, args: &[&str]) -> Child {
    let mut all = vec!["run", "--name", name];
    all.extend_from_slice(args);
    let child = dchan(addr, &all).spawn().unwrap();
    until("the run's topics exist", || {
        topics(addr).contains(&format!("{name}/pipeline"))
    });
    child
}

fn feed(child: &mut Child, input: String) {
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
}

#[test]
fn a_worker_from_another_process_takes_part() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let stage = r#"sh -c 'sleep 0.2; echo "$DCHAN_COPY $(cat)"'"#;
    let mut run = started_run(&addr, "joined", &["--each", "1", stage]);
    let worker = dchan(
        &addr,
        &[
            "worker",
            "--pipeline",
            "joined",
            "--stage",
            "1",
            "--replicas",
            "2",
        ],
    )
    .spawn()
    .unwrap();
    let worker_pid = worker.id().to_string();
    let input = numbered(20);
    feed(&mut run, input.clone());
    let out = finish(run, "run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let w = finish(worker, "worker");
    assert!(w.status.success(), "worker: {}", text(&w.stderr));
    let mut got = Vec::new();
    let mut by_worker = 0;
    for l in text(&out.stdout).lines() {
        let (copy, msg) = l.split_once(' ').unwrap();
        by_worker += (copy.split('.').next() == Some(&worker_pid)) as usize;
        got.push(msg.to_string());
    }
    got.sort();
    assert_eq!(got, lines(input.as_bytes()), "every message once");
    assert!(by_worker > 0, "the worker took part");
}

#[test]
fn a_copy_killed_mid_message_loses_nothing() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let marks = tempfile::tempdir().unwrap();
    // Each message leaves a mark named after its copy, then takes a while.
    let stage = format!(
        r#"sh -c 'touch {}/$DCHAN_COPY; sleep 0.3; echo "$(cat)"'"#,
        marks.path().display()
    );
    let mut run = started_run(&addr, "killed", &["--each", "1", &stage]);
    let mut worker = dchan(&addr, &["worker", "--pipeline", "killed", "--stage", "1"])
        .spawn()
        .unwrap();
    let mark = marks.path().join(format!("{}.1", worker.id()));
    let input = numbered(15);
    feed(&mut run, input.clone());
    until("the worker has a message in hand", || mark.exists());
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let out = finish(run, "run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut got = lines(&out.stdout);
    got.dedup(); // at least once: the killed copy's message may come twice
    assert_eq!(got, lines(input.as_bytes()), "nothing lost");
}

#[test]
fn a_failing_message_goes_to_the_dead_letters_and_the_status_counts_it() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let out = run(
        &addr,
        &[
            "run",
            "--name",
            "dl",
            "--each",
            "1",
            "--attempts",
            "2",
            "grep -v bad",
        ],
        "ok 1\nbad\nok 2\nbad too\n",
    );
    // 1: something failed (2 is for bad usage only; this changed from
    // "the number of failures", which made two failures look like usage).
    assert_eq!(
        out.status.code(),
        Some(1),
        "two failed: {}",
        text(&out.stderr)
    );
    assert_eq!(lines(&out.stdout), ["ok 1", "ok 2"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("a message failed (2 attempts, the last: exit status: 1)"),
        "the reason is logged: {err}"
    );
    assert!(
        err.contains("stage 1 (grep -v bad): 2 messages failed (tried up to 2 times"),
        "{err}"
    );
    assert!(err.contains("put in dl/1.failed"), "{err}");
    assert_eq!(
        err.matches("dchan: run: ").count(),
        1,
        "counted once: {err}"
    );
    // No count: the dead letters are closed with their stage, so a
    // reader of them ends.
    let mut pull = dchan(&addr, &["pull", "--follow", "dl/1.failed"]);
    pull.stdin(Stdio::null());
    let dead = finish(pull.spawn().unwrap(), "pull of the dead letters");
    assert_eq!(lines(&dead.stdout), ["bad", "bad too"], "untouched");
    assert!(!topics(&addr).contains("dl/2"), "the others are removed");
}

#[test]
fn a_filters_exit_status_is_its_answer_as_sh_with_pipefail() {
    let server = Server::start(&[]);
    let input: String = (1..=10).map(|i| format!("{i}\n")).collect();
    // A filter that exits non-zero once its input ended (grep that matched
    // nothing) has not failed: its status is the run's, as in sh with
    // pipefail (the last stage's non-zero status), and nothing is said.
    for line in [
        "grep x",
        "grep x | cat",
        "grep 1 | cat",
        "cat | sh -c 'cat; exit 3' | cat",
        "sh -c 'cat; exit 3' | sh -c 'cat; exit 4' | cat",
    ] {
        let out = run(&server.addr(), &["run", line], &input);
        let mut sh = Command::new("bash")
            .args(["-o", "pipefail", "-c", line])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let want = sh.wait_with_output().unwrap();
        assert_eq!(out.status.code(), want.status.code(), "{line}");
        assert_eq!(text(&out.stdout), text(&want.stdout), "{line}");
        assert!(out.stderr.is_empty(), "{line}: {}", text(&out.stderr));
    }
    // An empty input ends the run too, and a head ends it early.
    let out = run(&server.addr(), &["run", "cat | cat"], "");
    assert!(out.status.success() && out.stdout.is_empty());
    let out = run(
        &server.addr(),
        &["run", "cat | head -n 2 | cat"],
        &numbered(5000),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line 1\nline 2\n");
}

#[test]
fn a_stage_that_ends_early_ends_the_run_as_in_sh() {
    let server = Server::start(&[]);
    let dchan_bin = env!("CARGO_BIN_EXE_dchan");
    // `yes` never ends: only the run stopping its reading can stop it
    // (by SIGPIPE, as in sh), whichever stage ended early.
    for args in [
        "'head -n 3'",
        "'cat | head -n 3 | cat'",
        "--each 1 'cat | head -n 3'",
    ] {
        let script = format!(
            "yes | {dchan_bin} run --name early {args}; echo \"status ${{PIPESTATUS[*]}}\""
        );
        let mut sh = Command::new("bash");
        sh.args(["-c", &script])
            .env("DCHAN_ADDR", server.addr())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = finish(sh.spawn().unwrap(), &script);
        assert_eq!(
            text(&out.stdout),
            "y\ny\ny\nstatus 141 0\n",
            "{args}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args}: {}", text(&out.stderr));
        assert!(!topics(&server.addr()).contains("early/"), "removed");
    }
}

#[test]
fn a_stage_stopped_by_a_later_head_is_no_failure_every_time() {
    // A stage whose process wrote everything and exited before the next
    // stage ended: its last, unterminated piece of a line is pushed at the
    // close, into a topic `head` closed. That is SIGPIPE, not a failure
    // (it was, at random: about one run in two).
    let server = Server::start(&[]);
    let input: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    for (line, want) in [
        ("sort -rn | head -5", "100000\n99999\n99998\n99997\n99996\n"),
        ("tac | cat | head -1", "100000\n"),
    ] {
        for i in 0..20 {
            let out = run(&server.addr(), &["run", "-q", "--name", "h", line], &input);
            assert!(
                out.status.success(),
                "{line}, run {i}: {:?} {}",
                out.status,
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout), want, "{line}, run {i}");
            assert!(out.stderr.is_empty(), "{line}: {}", text(&out.stderr));
        }
    }
}

#[test]
fn a_worker_killed_holding_the_last_message_leaves_it_to_another_copy() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let (wpid, held) = (dir.path().join("wpid"), dir.path().join("held"));
    // The worker's copy holds its message; the run's own copy answers at once.
    let stage = format!(
        r#"sh -c 'if [ "${{DCHAN_COPY%%.*}}" = "$(cat {})" ]; then echo $$ > {}; sleep 60; fi; cat'"#,
        wpid.display(),
        held.display()
    );
    let mut run = started_run(&addr, "held", &["--each", "1", &stage]);
    let mut worker = dchan(&addr, &["worker", "--pipeline", "held", "--stage", "1"])
        .spawn()
        .unwrap();
    std::fs::write(&wpid, worker.id().to_string()).unwrap();
    until("the worker's copy joined", || {
        stat(&addr, "held/1.copies").contains("readers 2\n")
    });
    let input = numbered(10);
    feed(&mut run, input.clone());
    until("the worker holds a message", || {
        std::fs::read_to_string(&held).is_ok_and(|s| s.ends_with('\n'))
    });
    // The run's copy took the rest, and reads the end of its input, with
    // the worker's message out: it must not leave (nor end the stage).
    until("the run's copy did the rest", || {
        stat(&addr, "held/2").contains("pushed 9\n")
    });
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();
    let sh: i32 = std::fs::read_to_string(&held)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(-sh, libc::SIGKILL) }; // its orphaned process group
    let out = finish(run, "run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        lines(&out.stdout),
        lines(input.as_bytes()),
        "the held message went to the run's copy"
    );
}

#[test]
fn a_filter_dying_inside_a_worker_is_restarted_and_the_run_is_told() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let stage = format!("echo $$ >> {}; exec cat", pids.display());
    let line = format!("{stage} | cat");
    let mut run = started_run(&addr, "told", &["--replicas", "1=0", &line]);
    let worker = dchan(&addr, &["worker", "--pipeline", "told", "--stage", "1"])
        .spawn()
        .unwrap();
    kill_the_filter_once(&pids);
    let input = numbered(1000);
    feed(&mut run, input.clone());
    let out = finish(run, "run");
    assert_eq!(text(&out.stdout), input, "the pipeline still finishes");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = format!("stage 1 ({stage}): its process died 1 time (last: signal: 9 (SIGKILL))");
    assert!(text(&out.stderr).contains(&said), "{}", text(&out.stderr));
    let w = finish(worker, "worker");
    assert_eq!(w.status.code(), Some(1), "{}", text(&w.stderr));
    assert!(text(&w.stderr).contains(&said), "{}", text(&w.stderr));
}

#[test]
fn an_each_output_too_large_for_one_message_is_dead_lettered_with_why() {
    let server = Server::start(&[]);
    let addr = server.addr();
    // Over 1 MiB of output for the message "a": more than one message of
    // the next topic can be (one Twrite).
    let stage = "sh -c 'if grep -q a; then yes | head -c 2000000; else echo small; fi'";
    let out = run(
        &addr,
        &["run", "--name", "huge", "--each", "1", stage],
        "a\nb\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "small\n", "the other message went on");
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "its output, 2000000 bytes, is larger than one message of the next topic can be"
        ),
        "{err}"
    );
    assert!(err.contains("1 message failed"), "{err}");
    let mut pull = dchan(&addr, &["pull", "--follow", "huge/1.failed"]);
    pull.stdin(Stdio::null());
    let dead = finish(pull.spawn().unwrap(), "pull of the dead letters");
    assert_eq!(text(&dead.stdout), "a\n", "untouched");
}

#[test]
fn a_failing_line_longer_than_one_write_is_dead_lettered_whole() {
    let server = Server::start(&[]);
    let addr = server.addr();
    // A 100 000-byte line is many Twrites: the first topic (line-framed)
    // joins them into one message, and so must the dead letters.
    let long = "x".repeat(100_000);
    let input = format!("ok 1\n{long}\nok 2\n");
    let out = run(
        &addr,
        &[
            "run",
            "--name",
            "longdl",
            "--each",
            "1",
            "--attempts",
            "1",
            "grep -v x",
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(lines(&out.stdout), ["ok 1", "ok 2"], "the copy went on");
    let mut pull = dchan(&addr, &["pull", "--follow", "longdl/1.failed"]);
    pull.stdin(Stdio::null());
    let dead = finish(pull.spawn().unwrap(), "pull of the dead letters");
    assert_eq!(text(&dead.stdout), format!("{long}\n"), "untouched, whole");
}

#[test]
fn the_example_pipeline_file_runs_with_a_worker() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let file = "examples/pipeline.toml";
    let mut run = dchan(&addr, &["run", "--file", file]).spawn().unwrap();
    until("the run's topics exist", || {
        topics(&addr).contains("words/pipeline")
    });
    let worker = dchan(&addr, &["worker", "--file", file, "--stage", "measure"])
        .spawn()
        .unwrap();
    feed(
        &mut run,
        "the quick brown fox\njumps over the lazy dog\n".into(),
    );
    let out = finish(run, "run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = "3 dog\n3 fox\n3 the\n3 the\n4 lazy\n4 over\n5 brown\n5 jumps\n5 quick\n";
    assert_eq!(text(&out.stdout), want);
    let w = finish(worker, "worker");
    assert!(w.status.success(), "worker: {}", text(&w.stderr));
}

#[test]
fn bad_pipelines_are_usage_errors_with_file_and_line() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A bad file: its name, the line, the reason; rules found after
    // parsing name the line of the stage's table.
    for (file, text_of, said) in [
        (
            "bad.toml",
            "[[stage]]\ncommand = \"cat\"\nreplicas = \"many\"\n",
            ":3: ",
        ),
        (
            "late.toml",
            "[[stage]]\ncommand = \"cat\"\n\n[[stage]]\ncommand = \"cat\"\nattempts = 0\n",
            ":4: stage 2: attempts must be at least 1",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text_of).unwrap();
        let out = run(
            &server.addr(),
            &["run", "--file", path.to_str().unwrap()],
            "",
        );
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        let want = format!("dchan: {}{said}", path.display());
        assert!(err.starts_with(&want), "{err}");
    }
    // Names the server would refuse are refused here, before anything.
    let long = "a".repeat(300);
    for name in ["ctl", "topics", long.as_str()] {
        let out = run(&server.addr(), &["run", "--name", name, "cat"], "x\n");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("--name"), "{err}");
    }
    let out = run(&server.addr(), &["run", "cat | 'unterminated"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&server.addr(), &["run", "cat | | cat"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("stage 2 is empty"));
    for (arg, why) in [("3=2", "no such stage"), ("x=2", "want N or K=N")] {
        let out = run(&server.addr(), &["run", "--replicas", arg, "cat | cat"], "");
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
    // A worker of no copies would do nothing: refused, not a silent 0.
    let args = [
        "worker",
        "--pipeline",
        "p",
        "--stage",
        "1",
        "--replicas",
        "0",
    ];
    let out = run(&server.addr(), &args, "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "dchan: worker: --replicas 0: a worker runs at least one copy\n"
    );
}

#[test]
fn pool_and_replicas_are_bounded_and_a_run_filling_its_pools_stops_on_sigterm() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let path = file.to_str().unwrap();
    for (field, why) in [
        ("pool = 100000", "pool must be at most 64"),
        ("replicas = 100000", "replicas must be at most 256"),
    ] {
        let text_of = format!("[[stage]]\ncommand = \"cat\"\nkind = \"each\"\n{field}\n");
        std::fs::write(&file, text_of).unwrap();
        let out = run(&addr, &["run", "-q", "--file", path], "a\n");
        assert_eq!(out.status.code(), Some(2), "{field}");
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
    let out = run(&addr, &["run", "--replicas", "1000", "cat"], "a\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("at most 256"));
    let args = [
        "worker",
        "--pipeline",
        "p",
        "--stage",
        "1",
        "--replicas",
        "1000",
    ];
    let out = run(&addr, &args, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("at most 256"));
    // Filling 4 × 64 warm processes, the run still hears SIGTERM.
    let pools = "[[stage]]\ncommand = \"cat\"\nkind = \"each\"\nreplicas = 4\npool = 64\n";
    std::fs::write(&file, pools).unwrap();
    let mut child = started_run(&addr, "pools", &["-q", "--file", path]);
    feed(&mut child, numbered(1000));
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = finish(child, "run filling its pools");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(!topics(&addr).contains("pools/"), "removed");
}

#[test]
fn sigterm_makes_a_worker_finish_its_message_and_leave() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let marks = tempfile::tempdir().unwrap();
    let stage = format!(
        r#"sh -c 'touch {}/$DCHAN_COPY; sleep 0.3; echo "$DCHAN_COPY $(cat)"'"#,
        marks.path().display()
    );
    let mut run = started_run(&addr, "termed", &["--each", "1", &stage]);
    let worker = dchan(&addr, &["worker", "--pipeline", "termed", "--stage", "1"])
        .spawn()
        .unwrap();
    let pid = worker.id();
    let mark = marks.path().join(format!("{pid}.1"));
    let input = numbered(12);
    feed(&mut run, input.clone());
    until("the worker has a message in hand", || mark.exists());
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let w = finish(worker, "worker");
    assert_eq!(
        w.status.code(),
        Some(143),
        "a worker stopped by SIGTERM says so, having finished its message: {}",
        text(&w.stderr)
    );
    let out = finish(run, "run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut got = Vec::new();
    let mut by_worker = 0;
    for l in text(&out.stdout).lines() {
        let (copy, msg) = l.split_once(' ').unwrap();
        by_worker += (copy.split('.').next() == Some(&pid.to_string())) as usize;
        got.push(msg.to_string());
    }
    got.sort();
    assert_eq!(
        got,
        lines(input.as_bytes()),
        "every message once: none lost, none twice"
    );
    assert!(by_worker >= 1, "the worker finished the message it had");
}

#[test]
fn filter_copies_read_ahead_and_lose_nothing() {
    let server = Server::start(&[]);
    let input = numbered(20_000);
    let out = run(
        &server.addr(),
        &["run", "--replicas", "3", "cat | cat"],
        &input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        lines(&out.stdout),
        lines(input.as_bytes()),
        "every line once"
    );
}

#[test]
fn a_reader_that_goes_away_stops_the_run_as_sigpipe_would() {
    let server = Server::start(&[]);
    let dchan_bin = env!("CARGO_BIN_EXE_dchan");
    let script = format!(
        "seq 200000 | {dchan_bin} run --name gone 'cat | cat' | head -n 2; echo \"status ${{PIPESTATUS[1]}}\""
    );
    let mut sh = Command::new("bash");
    sh.args(["-c", &script])
        .env("DCHAN_ADDR", server.addr())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finish(sh.spawn().unwrap(), "bash");
    assert_eq!(
        text(&out.stdout),
        "1\n2\nstatus 141\n",
        "{}",
        text(&out.stderr)
    );
    assert!(
        !topics(&server.addr()).contains("gone/"),
        "its topics are removed"
    );
}

#[test]
fn a_stage_that_cannot_start_ends_the_run_and_is_named() {
    let server = Server::start(&[]);
    let addr = server.addr();
    // The first of two: the close travels down to `cat`, the run ends.
    let out = run(&addr, &["run", "nonexistent-cmd | cat"], "hi\n");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("stage 1 (nonexistent-cmd): cannot start"),
        "{err}"
    );
    // In the middle, with more input than the topics hold: the stage
    // before it stops too (its pushes fail), as in a pipe.
    let out = run(
        &addr,
        &["run", "cat | nonexistent-cmd | cat"],
        &numbered(50_000),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("stage 2 (nonexistent-cmd): cannot start"),
        "{}",
        text(&out.stderr)
    );
    // A stage that gives up (dies more than its attempts) ends it too.
    let out = run(
        &addr,
        &[
            "run",
            "--attempts",
            "1",
            "cat | sh -c 'head -n 1; exit 4' | cat",
        ],
        &numbered(50_000),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("gave up"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stages_are_cut_at_top_level_pipes_only_as_sh_reads_them() {
    let server = Server::start(&[]);
    let addr = server.addr();
    for (line, input, want) in [
        ("echo $(echo a | tr a b) | tr b c", "", "c\n"),
        ("echo `echo a | tr a b` | tr b c", "", "c\n"),
        ("cat | case 1 in 1|2) tr a b;; esac | cat", "a\n", "b\n"),
        ("(tr a b | tr b c) | cat", "a\n", "c\n"),
        ("{ tr a b | tr b c; } | cat", "a\n", "c\n"),
        ("cat # not | a stage\n | tr a b", "a\n", "b\n"),
        ("false || tr a b | cat", "a\n", "b\n"),
        // A here-document's body is its command's, `|` and all.
        ("cat <<EOF | cat\nx|y\nEOF", "a\n", "x|y\n"),
        ("cat <<-'EOF' | tr x z\n\tx|$y\n\tEOF\n", "a\n", "z|$y\n"),
    ] {
        let out = run(&addr, &["run", line], input);
        assert!(out.status.success(), "{line:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "{line:?}");
    }
}

#[test]
fn assignments_and_builtins_run_under_sh() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let out = run(&addr, &["run", "x=1 env | grep ^x="], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "x=1\n");
    // A builtin: sh runs it (an exit status, not "cannot start").
    let out = run(
        &addr,
        &[
            "run",
            "--name",
            "sh",
            "--each",
            "1",
            "--attempts",
            "1",
            "exit 3",
        ],
        "a\n",
    );
    let err = text(&out.stderr);
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(!err.contains("cannot start"), "{err}");
    let out = run(
        &addr,
        &["run", "--each", "1", "read l; echo \"got $l\""],
        "a\n",
    );
    assert_eq!(text(&out.stdout), "got a\n", "{}", text(&out.stderr));
    let out = run(&addr, &["run", "--each", "1", "read l"], "a\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_filter_killed_mid_run_is_restarted_and_makes_the_run_fail() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // Run under sh -c (it has shell syntax): $$ is the process itself.
    let stage = format!("echo $$ >> {}; exec cat", pids.display());
    let line = format!("{stage} | cat");
    let mut run = started_run(&addr, "restart", &[&line]);
    kill_the_filter_once(&pids);
    let input = numbered(1000);
    feed(&mut run, input.clone());
    let out = finish(run, "run");
    assert_eq!(text(&out.stdout), input, "the pipeline still finishes");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "stage 1 ({stage}): its process died 1 time (last: signal: 9 (SIGKILL))"
        )),
        "{err}"
    );
}

#[test]
fn sigint_or_sigterm_stop_a_run_and_remove_its_topics() {
    let server = Server::start(&[]);
    let addr = server.addr();
    for (signal, status) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut run = started_run(&addr, "stopped", &["cat | sleep 1000"]);
        feed(&mut run, numbered(100));
        unsafe { libc::kill(run.id() as i32, signal) };
        let out = finish(run, "run");
        assert_eq!(out.status.code(), Some(status), "{}", text(&out.stderr));
        assert!(
            !topics(&addr).contains("stopped/"),
            "its topics are removed: {}",
            topics(&addr)
        );
    }
    // So the name can be used again.
    let out = run(&addr, &["run", "--name", "stopped", "cat"], "a\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\n");
}

#[test]
fn a_name_in_use_is_refused_once_with_what_to_do() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let mut create = dchan(&addr, &["create", "taken/1"]);
    create.stdin(Stdio::null());
    assert!(create.output().unwrap().status.success());
    let out = run(&addr, &["run", "--name", "taken", "cat"], "a\n");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("taken/1").count(), 1, "said once: {err}");
    assert!(err.contains("dchan rm") && err.contains("--name"), "{err}");
}

#[test]
fn a_refused_run_removes_the_topics_it_made_and_only_those() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let mut create = dchan(&addr, &["create", "p/2"]);
    create.stdin(Stdio::null());
    assert!(create.output().unwrap().status.success());
    let out = run(&addr, &["run", "-q", "--name", "p", "cat | cat"], "a\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("topic p/2 exists"));
    let left: Vec<String> = topics(&addr)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| t.starts_with("p/"))
        .map(str::to_string)
        .collect();
    assert_eq!(left, ["p/2"], "what was there stays, nothing else");
}

#[test]
fn an_each_output_is_one_message_ending_in_a_newline() {
    let server = Server::start(&[]);
    let addr = server.addr();
    // No trailing newline: one is added, so outputs do not run together.
    let out = run(&addr, &["run", "--each", "1", "printf x"], "a\nb\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "x\nx\n");
    // Several lines stay one message for the next each stage.
    let two = r#"printf '%s\nsecond' "$(cat)" | wc -l"#;
    let out = run(&addr, &["run", "--each", "1", "--each", "2", two], "a\nb\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2\n2\n", "two lines each, counted whole");
    // Nothing written: no message.
    let out = run(
        &addr,
        &["run", "--each", "1", "grep a || true | cat"],
        "a\nb\nc\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\n");
}

#[test]
fn a_run_ends_when_its_server_dies_or_a_stage_fails_while_input_is_open() {
    let server = Server::start(&[]);
    // Standard input stays open (held here) all along.
    let mut child = dchan(&server.addr(), &["run", "--name", "lost", "cat | cat"])
        .spawn()
        .unwrap();
    let _input = child.stdin.take();
    until("the run's topics exist", || {
        topics(&server.addr()).contains("lost/pipeline")
    });
    server.signal("KILL");
    let out = finish(child, "run whose server died");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("connection lost"), "{err}");

    let server = Server::start(&[]);
    let mut child = dchan(&server.addr(), &["run", "nonexistent-cmd | cat"])
        .spawn()
        .unwrap();
    let _input = child.stdin.take();
    let out = finish(child, "run with a stage that cannot start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn a_warm_process_never_given_a_message_never_runs() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    // A side effect before reading stdin: it shows every run of the command.
    let stage = format!("echo ran >> {}; cat", ran.display());
    let out = run(
        &server.addr(),
        &["run", "--each", "1", "--replicas", "2", &stage],
        "a\nb\nc\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&out.stdout), ["a", "b", "c"]);
    let runs = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(
        runs.lines().count(),
        3,
        "once per message, not for the pool"
    );
}

#[test]
fn on_a_terminal_the_run_shows_a_live_line_per_stage() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    // The second stage waits for the gate, so the run lasts until the
    // test has seen the progress lines.
    let line = format!(
        "cat | while [ ! -e {} ]; do sleep 0.1; done; cat",
        gate.display()
    );
    let cmd = format!(
        "seq 5 | {} run --name shown '{line}'",
        env!("CARGO_BIN_EXE_dchan")
    );
    // script(1) runs it with stdout and stderr on a pseudo-terminal.
    let mut script = Command::new("script")
        .args(["-q", "-c", &cmd, "/dev/null"])
        .env("DCHAN_ADDR", server.addr())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1), from util-linux");
    let mut stdout = script.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let shown = || text(&seen.lock().unwrap());
    until("a progress line", || {
        shown().contains("copies") && shown().contains("2 while")
    });
    std::fs::write(&gate, "").unwrap();
    let status = finish(script, "script");
    reader.join().unwrap();
    assert!(status.status.success(), "{}", shown());
    let all = shown().replace('\r', "");
    assert!(all.contains("1 cat") && all.contains(" lag "), "{all}");
    assert!(all.contains(" died 0 "), "filter deaths are shown: {all}");
    assert!(all.contains("1\n2\n3\n4\n5\n"), "the data: {all}");
}

/// The topic's status, from `dchan stat`.
fn stat(addr: &str, topic: &str) -> String {
    let mut c = dchan(addr, &["stat", topic]);
    c.stdin(Stdio::null());
    text(&c.output().unwrap().stdout)
}

/// Whether process `pid` is gone (or only a zombie, waiting for its reaper).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn ctrl_c_on_a_worker_lets_its_processes_finish_and_loses_nothing() {
    let server = Server::start(&[]);
    let addr = server.addr();
    // `tac` answers only at the end of its input: every line the worker
    // gave it is in flight until the worker closes its stdin.
    let mut run = started_run(&addr, "intr", &["--replicas", "1=0", "tac | cat"]);
    let mut stdin = run.stdin.take().unwrap();
    let out = std::thread::spawn(move || finish(run, "run"));
    // As a terminal's Ctrl-C does: SIGINT to the worker's process group.
    let mut first = dchan(
        &addr,
        &[
            "worker",
            "--pipeline",
            "intr",
            "--stage",
            "1",
            "--replicas",
            "1",
        ],
    );
    std::os::unix::process::CommandExt::process_group(&mut first, 0);
    let first = first.spawn().unwrap();
    stdin.write_all(numbered(2000).as_bytes()).unwrap();
    until("the worker took every line in", || {
        stat(&addr, "intr/1").contains("\"pipeline\" offset 2000 lag 0")
    });
    unsafe { libc::kill(-(first.id() as i32), libc::SIGINT) };
    let w = finish(first, "worker");
    assert_eq!(w.status.code(), Some(130), "worker: {}", text(&w.stderr));
    // Another worker takes the rest.
    let second = dchan(
        &addr,
        &[
            "worker",
            "--pipeline",
            "intr",
            "--stage",
            "1",
            "--replicas",
            "1",
        ],
    )
    .spawn()
    .unwrap();
    let rest: String = (2001..=3000).map(|i| format!("line {i}\n")).collect();
    stdin.write_all(rest.as_bytes()).unwrap();
    drop(stdin);
    let out = out.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "dchan: run: stage 1 has no copies here; waiting for `dchan worker`\n",
        "a run that waits for workers says so"
    );
    assert_eq!(
        lines(&out.stdout),
        lines(numbered(3000).as_bytes()),
        "nothing lost"
    );
    let w = finish(second, "second worker");
    assert!(w.status.success(), "worker: {}", text(&w.stderr));
}

#[test]
fn a_stopped_run_or_a_timed_out_message_stops_every_process_the_stage_started() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let read_pids = || -> Vec<i32> {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        text.lines().filter_map(|l| l.parse().ok()).collect()
    };
    // A stage whose command starts a process of its own (a grandchild of
    // dchan), as `sh -c 'a; b'` or a pipe inside a stage does.
    let stage = format!("sleep 1000 & echo $! >> {}; cat", pids.display());
    let mut stopped = started_run(&addr, "orphans", &[&format!("cat | {stage}")]);
    let _input = stopped.stdin.take();
    until("the stage started its process", || read_pids().len() == 1);
    unsafe { libc::kill(stopped.id() as i32, libc::SIGTERM) };
    let out = finish(stopped, "run");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    let sleeper = read_pids()[0];
    until("the stage's own process is stopped with it", || {
        gone(sleeper)
    });

    // An each command that times out: what it started stops too, so its
    // side effects cannot land after the message was given up.
    let late = dir.path().join("late");
    let stage = format!(
        "(sleep 3; echo late >> {}) & echo $! >> {}; wait",
        late.display(),
        pids.display()
    );
    let out = run(
        &addr,
        &[
            "run",
            "--each",
            "1",
            "--timeout",
            "1s",
            "--attempts",
            "1",
            &stage,
        ],
        "a\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    let pid = read_pids()[1];
    until("the timed-out command's process is stopped", || gone(pid));
    assert!(!late.exists(), "no side effect after the timeout");
}

/// SIGKILL the filter whose process writes its pid to `pids` once it
/// starts, and wait until it was started again.
fn kill_the_filter_once(pids: &std::path::Path) {
    let read_pids = || std::fs::read_to_string(pids).unwrap_or_default();
    until("the filter started", || read_pids().lines().count() == 1);
    let pid: i32 = read_pids().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    until("the filter was restarted", || {
        read_pids().lines().count() == 2
    });
}
