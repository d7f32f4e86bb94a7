//! The `dchan` binary's client subcommands, run as a user would, against a
//! server this test starts on a free port.

mod support;

use std::process::{Output, Stdio};

use support::{Server, patiently};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// `dchan ARGS...` against `addr` (through $DCHAN_ADDR), not yet waited for.
fn spawn(addr: &str, args: &[&str], stdin: bool) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dchan"))
        .args(args)
        .env("DCHAN_ADDR", addr)
        .env_remove("RUST_LOG")
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run dchan")
}

/// Run `dchan ARGS...` to completion, feeding it `input` on stdin.
async fn dchan_in(addr: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut child = spawn(addr, args, input.is_some());
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    patiently(child.wait_with_output()).await.unwrap()
}

async fn dchan(addr: &str, args: &[&str]) -> Output {
    dchan_in(addr, args, None).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The command succeeded; its stdout.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    stdout(&o)
}

/// The command failed with `code` and said exactly one line starting with `start`.
fn fails(o: Output, code: i32, start: &str) {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line, not {err:?}");
    assert!(
        err.starts_with(start),
        "{err:?} should start with {start:?}"
    );
    assert!(!err.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "jobs", "--capacity", "10"]).await);
    ok(dchan(a, &["push", "jobs", "one", "two words", "three\n"]).await);
    assert_eq!(ok(dchan(a, &["pull", "jobs"]).await), "one\n");
    assert_eq!(
        ok(dchan(a, &["pull", "jobs", "-n", "2"]).await),
        "two words\nthree\n"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reads_lines_from_stdin() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "lines", "--capacity", "100"]).await);
    let input: String = (0..50).map(|i| format!("line {i}\n")).collect();
    ok(dchan_in(a, &["push", "lines"], Some(&input)).await);
    // A last line without a newline is a message too.
    ok(dchan_in(a, &["push", "lines"], Some("tail")).await);
    let out = ok(dchan(a, &["pull", "lines", "-n", "51"]).await);
    assert_eq!(out, format!("{input}tail\n"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_too_large_for_one_write_is_refused_on_a_write_framed_topic() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(
        a,
        &["create", "bigw", "--capacity", "5", "--framing", "write"],
    )
    .await);
    let big = format!("{}\n", "b".repeat(2_000_000));
    let out = dchan_in(a, &["push", "bigw"], Some(&big)).await;
    fails(
        out,
        1,
        "dchan: push bigw: message too large for one write: 2000001 bytes, at most ",
    );
    let stat = ok(dchan(a, &["stat", "bigw"]).await);
    assert!(stat.contains("pushed 0\n"), "{stat}");
    // On a line-framed topic the same line goes out in parts, as one message.
    ok(dchan(a, &["create", "bigl", "--capacity", "5"]).await);
    ok(dchan_in(a, &["push", "bigl"], Some(&big)).await);
    assert_eq!(ok(dchan(a, &["pull", "bigl"]).await), big);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_push_waits_for_a_pull() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "meet"]).await);
    let push = spawn(a, &["push", "meet", "hello"], false);
    assert_eq!(ok(dchan(a, &["pull", "meet"]).await), "hello\n");
    ok(patiently(push.wait_with_output()).await.unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ends_when_the_topic_is_closed() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "stream"]).await);
    // Its output is read as it comes: a pull into a pipe takes the next
    // message only once the pipe's reader has read the last.
    let follow = tokio::spawn(spawn(a, &["pull", "stream", "--follow"], false).wait_with_output());
    ok(dchan(a, &["push", "stream", "a", "b", "c"]).await);
    ok(dchan(a, &["close", "stream"]).await);
    let out = patiently(follow).await.unwrap().unwrap();
    assert_eq!(ok(out), "a\nb\nc\n");
    // Closed and drained: a plain pull fails, push too; reset reopens.
    fails(
        dchan(a, &["pull", "stream"]).await,
        1,
        "dchan: pull stream: topic closed",
    );
    fails(
        dchan(a, &["push", "stream", "x"]).await,
        1,
        "dchan: push stream: ",
    );
    ok(dchan(a, &["reset", "stream"]).await);
    let push = spawn(a, &["push", "stream", "again"], false);
    assert_eq!(ok(dchan(a, &["pull", "stream"]).await), "again\n");
    ok(patiently(push.wait_with_output()).await.unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fails_a_blocked_push_with_the_servers_words() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "z"]).await);
    let push = spawn(a, &["push", "z", "lost"], false);
    // Wait until the push is blocked, then reset.
    patiently(async {
        while !ok(dchan(a, &["stat", "z"]).await).contains("blocked_writers 1") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    ok(dchan(a, &["reset", "z"]).await);
    let out = patiently(push.wait_with_output()).await.unwrap();
    fails(out, 1, "dchan: push z: topic reset");
    s.stop().await;
}

/// Send `signal` (e.g. "INT") to `child`, by its PID.
fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Ctrl-C of a push waiting at a rendezvous: the Twrite is flushed and
/// the server's verdict awaited, so the count it prints is what readers
/// get. (It used to die at once, saying nothing: a push a reader had
/// taken in that moment was reported failed, 2 of 5 in a review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_says_how_many_went_and_they_are_what_readers_get() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "r"]).await);
    // Three MSGs; a reader takes the first; Ctrl-C while the second waits.
    let push = spawn(a, &["push", "r", "one", "two", "three"], false);
    assert_eq!(ok(dchan(a, &["pull", "r"]).await), "one\n");
    until_stat(a, "r", "blocked_writers 1").await;
    signal(&push, "INT");
    let out = patiently(push.wait_with_output()).await.unwrap();
    fails(out, 130, "dchan: push r: interrupted (1 pushed)");
    fails(
        dchan(a, &["pull", "r", "--timeout", "300ms"]).await,
        1,
        "dchan: pull r: timed out",
    );
    // Lines of standard input, SIGTERM while the first line waits.
    let mut push = spawn(a, &["push", "r"], true);
    let mut stdin = push.stdin.take().unwrap();
    stdin.write_all(b"a\nb\n").await.unwrap();
    until_stat(a, "r", "blocked_writers 1").await;
    signal(&push, "TERM");
    let out = patiently(push.wait_with_output()).await.unwrap();
    fails(out, 143, "dchan: push r: interrupted (0 pushed)");
    drop(stdin);
    // A write of many lines of which the topic took some (capacity 5):
    // the flush's answer counts them, and no more go out.
    ok(dchan(a, &["create", "five", "--capacity", "5"]).await);
    let lines: String = (1..=100).map(|i| format!("{i}\n")).collect();
    let mut push = spawn(a, &["push", "five"], true);
    let mut stdin = push.stdin.take().unwrap();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    until_stat(a, "five", "blocked_writers 1").await;
    signal(&push, "INT");
    let out = patiently(push.wait_with_output()).await.unwrap();
    fails(out, 130, "dchan: push five: interrupted (5 pushed)");
    drop(stdin);
    assert!(ok(dchan(a, &["stat", "five"]).await).contains("pending 5\n"));
    // Waiting for input (a read on the runtime's blocking pool), Ctrl-C
    // ends it at once, standard input still open. (Signalled before it
    // connected, it dies of the signal: nothing pushed either.)
    let mut push = spawn(a, &["push", "r", "--timeout", "5s"], true);
    let stdin = push.stdin.take().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    signal(&push, "INT");
    let out = patiently(push.wait_with_output()).await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    if out.status.signal() != Some(2) {
        fails(out, 130, "dchan: push r: interrupted (0 pushed)");
    }
    drop(stdin);
    s.stop().await;
}

/// Ctrl-C or SIGTERM of `pull --follow` waiting for its next message:
/// what it printed is acknowledged and nothing more taken, so the next
/// reader gets the next message. (Killed by the signal, its last message,
/// printed but not yet acknowledged, came back and was printed twice: 6
/// of 6 in a review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_keeps_what_it_printed_and_takes_nothing_more() {
    use tokio::io::AsyncReadExt;
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "r", "--capacity", "5"]).await);
    for (msgs, sig, code) in [
        (&["one", "two"][..], "INT", 130),
        (&["three"][..], "TERM", 143),
        (&[][..], "INT", 130),
    ] {
        if !msgs.is_empty() {
            let mut args = vec!["push", "r"];
            args.extend_from_slice(msgs);
            ok(dchan(a, &args).await);
        }
        let mut pull = spawn(a, &["pull", "r", "--follow"], false);
        let mut stdout = pull.stdout.take().unwrap();
        let want: String = msgs.iter().map(|m| format!("{m}\n")).collect();
        let mut got = Vec::new();
        patiently(async {
            while got.len() < want.len() {
                let mut buf = [0u8; 64];
                let n = stdout.read(&mut buf).await.unwrap();
                assert!(n > 0, "pull ended early");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert_eq!(String::from_utf8(got).unwrap(), want);
        until_stat(a, "r", "blocked_readers 1").await;
        signal(&pull, sig);
        let out = patiently(pull.wait_with_output()).await.unwrap();
        let said = format!("dchan: pull r: interrupted ({} printed)", msgs.len());
        fails(out, code, &said);
    }
    // Nothing came back, and the flushed waits took nothing.
    ok(dchan(a, &["push", "r", "four"]).await);
    assert_eq!(ok(dchan(a, &["pull", "r"]).await), "four\n");
    fails(
        dchan(a, &["pull", "r", "--timeout", "300ms"]).await,
        1,
        "dchan: pull r: timed out",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_times_out_takes_nothing() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "slow", "--capacity", "1"]).await);
    fails(
        dchan(a, &["pull", "slow", "--timeout", "200ms"]).await,
        1,
        "dchan: pull slow: timed out",
    );
    ok(dchan(a, &["push", "slow", "late"]).await);
    assert_eq!(ok(dchan(a, &["pull", "slow"]).await), "late\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_stat_offset_create_rm() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "jobs", "--capacity", "5"]).await);
    ok(dchan(a, &["create", "metrics/eu", "--framing", "write"]).await);
    ok(dchan(a, &["push", "jobs", "1", "2", "3"]).await);
    let ls = ok(dchan(a, &["ls"]).await);
    let lines: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines,
        [
            vec![
                "TOPIC", "PENDING", "PUSHED", "PULLED", "READERS", "GROUPS", "CAPACITY", "FRAMING",
                "STATE"
            ],
            vec!["jobs", "3", "3", "0", "0", "0", "5", "line", "open"],
            vec!["metrics/eu", "0", "0", "0", "0", "0", "0", "write", "open"],
        ]
    );
    // Columns line up: every row's STATE starts where the header's does.
    let col = ls.lines().next().unwrap().find("STATE").unwrap();
    assert!(
        ls.lines()
            .all(|l| l.len() > col && &l[col - 2..col] == "  ")
    );
    assert_eq!(ok(dchan(a, &["ls", "-q"]).await), "jobs\nmetrics/eu\n");
    assert_eq!(ok(dchan(a, &["ls", "metrics", "-q"]).await), "metrics/eu\n");
    assert!(ok(dchan(a, &["stat", "jobs"]).await).contains("capacity 5\n"));
    // With no topic: the server, its engine among the rest.
    let server = ok(dchan(a, &["stat"]).await);
    assert!(
        server.contains("topics 2\n") && server.contains("engine memory\n"),
        "{server}"
    );

    let first = ok(dchan(a, &["offset", "jobs"]).await);
    let first: u64 = first.trim().parse().unwrap();
    // A second group, made by reading its offset, holds the messages...
    assert_eq!(
        ok(dchan(a, &["offset", "jobs", "--group", "audit"]).await),
        format!("{first}\n")
    );
    assert_eq!(
        ok(dchan(a, &["pull", "jobs", "-n", "3"]).await),
        "1\n2\n3\n"
    );
    assert_eq!(
        ok(dchan(a, &["offset", "jobs"]).await),
        format!("{}\n", first + 3)
    );
    // ...so the default group can replay them.
    ok(dchan(a, &["offset", "jobs", &(first + 1).to_string()]).await);
    assert_eq!(ok(dchan(a, &["pull", "jobs"]).await), "2\n");
    fails(
        dchan(a, &["offset", "jobs", "999"]).await,
        1,
        "dchan: offset jobs: ",
    );

    ok(dchan(a, &["rm", "metrics/eu"]).await);
    assert_eq!(ok(dchan(a, &["ls", "-q"]).await), "jobs\n");
    fails(
        dchan(a, &["rm", "metrics/eu"]).await,
        1,
        "dchan: rm metrics/eu: no such topic",
    );
    // A directory that only holds topics is no topic either, said once.
    ok(dchan(a, &["create", "deep/b/c"]).await);
    let o = dchan(a, &["rm", "deep"]).await;
    assert_eq!(stderr(&o), "dchan: rm deep: no such topic\n");
    fails(o, 1, "dchan: rm deep: no such topic");
    ok(dchan(a, &["rm", "deep/b/c"]).await);
    fails(
        dchan(a, &["create", "jobs"]).await,
        1,
        "dchan: create jobs: ",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_one_line_and_the_right_status() {
    let s = Server::start().await;
    let a = &s.addr;
    fails(
        dchan(a, &["pull", "nosuch"]).await,
        1,
        "dchan: pull nosuch: no such topic",
    );
    fails(
        dchan(a, &["push", "nosuch", "x"]).await,
        1,
        "dchan: push nosuch: no such topic (0 pushed)",
    );
    fails(
        dchan(a, &["stat", "nosuch"]).await,
        1,
        "dchan: stat nosuch: no such topic",
    );
    fails(
        dchan(a, &["ls", "nosuch"]).await,
        1,
        "dchan: ls nosuch: no such topic",
    );
    fails(
        dchan(a, &["close", "nosuch"]).await,
        1,
        "dchan: close nosuch: no such topic",
    );
    fails(
        dchan(a, &["pull", "../etc"]).await,
        1,
        "dchan: pull ../etc: bad topic name",
    );
    ok(dchan(a, &["create", "t"]).await);
    // Usage errors: status 2.
    fails(
        dchan(a, &["pull", "t", "-n", "many"]).await,
        2,
        "dchan: invalid value 'many'",
    );
    fails(dchan(a, &["offset", "t", "-3"]).await, 2, "dchan: ");
    fails(
        dchan(a, &["create", "t2", "--capacity", "x"]).await,
        2,
        "dchan: invalid value 'x'",
    );
    fails(
        dchan(a, &["create", "t2", "--framing", "words"]).await,
        2,
        "dchan: invalid value",
    );
    fails(
        dchan(a, &["pull"]).await,
        2,
        "dchan: the following required arguments",
    );
    fails(
        dchan(a, &["frobnicate"]).await,
        2,
        "dchan: unrecognized subcommand",
    );
    fails(
        dchan("nonsense", &["ls"]).await,
        2,
        "dchan: invalid value 'nonsense' for '--addr",
    );
    fails(
        dchan(a, &["ls", "--addr", "tcp!h!port"]).await,
        2,
        "dchan: invalid value",
    );
    s.stop().await;

    // The server is down.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("tcp!127.0.0.1!{}", l.local_addr().unwrap().port());
    drop(l);
    let want = format!("dchan: connect {down}: connection refused");
    fails(dchan(&down, &["pull", "t"]).await, 1, &want);
    fails(dchan(&down, &["ls"]).await, 1, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_examples_and_the_output_formats() {
    let help = ok(dchan("tcp!127.0.0.1!1", &["--help"]).await);
    assert!(help.contains("Examples:") && help.contains("dchan push jobs"));
    for (sub, want) in [
        ("push", "Examples:"),
        ("pull", "Exit status"),
        ("ls", "Output:"),
        ("offset", "Output"),
        ("create", "Examples:"),
    ] {
        let h = ok(dchan("tcp!127.0.0.1!1", &[sub, "--help"]).await);
        assert!(h.contains(want), "dchan {sub} --help lacks {want:?}");
        assert!(h.contains("--addr") && h.contains("DCHAN_ADDR"), "{sub}");
    }
}

/// `dchan ARGS...` (any bytes) against `addr`, with `env` set, to completion.
async fn dchan_os(addr: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dchan"));
    cmd.args(args)
        .env("DCHAN_ADDR", addr)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    patiently(cmd.output()).await.unwrap()
}

/// Wait until `dchan stat TOPIC` shows `line`.
async fn until_stat(a: &str, topic: &str, line: &str) {
    patiently(async {
        while !ok(dchan(a, &["stat", topic]).await).contains(line) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_into_head_ends_with_head_and_what_it_could_not_print_goes_back() {
    let s = Server::start().await;
    let a = &s.addr;
    // Capacity 0: each push returns once the follower has taken its
    // message, so the test knows where the pipeline is.
    ok(dchan(a, &["create", "t"]).await);
    let mut pull = spawn(a, &["pull", "t", "--follow"], false);
    let pipe: std::process::Stdio = pull.stdout.take().unwrap().try_into().unwrap();
    let head = Command::new("head")
        .args(["-n", "3"])
        .stdin(pipe)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    ok(dchan(a, &["push", "t", "1", "2", "3"]).await);
    let head = patiently(head.wait_with_output()).await.unwrap();
    assert_eq!(stdout(&head), "1\n2\n3\n");
    // head is gone: the follower, waiting for a 4th, ends too.
    let out = patiently(pull.wait_with_output()).await.unwrap();
    fails(
        out,
        1,
        "dchan: pull t: standard output: its reader went away (3 printed)",
    );
    // A message that cannot be printed goes back to the topic.
    ok(dchan(a, &["create", "u", "--capacity", "5"]).await);
    ok(dchan(a, &["push", "u", "4"]).await);
    fails(
        sh_output(a, r#""$DCHAN" pull u >/dev/full"#).await,
        1,
        "dchan: pull u: standard output: no space left on device; the message not printed goes back",
    );
    assert_eq!(ok(dchan(a, &["pull", "u"]).await), "4\n");
    s.stop().await;
}

/// `sh -c SCRIPT` with $DCHAN and $DCHAN_ADDR set; its stdout.
async fn sh(addr: &str, script: &str) -> String {
    stdout(&sh_output(addr, script).await)
}

/// `sh -c SCRIPT` with $DCHAN and $DCHAN_ADDR set.
async fn sh_output(addr: &str, script: &str) -> Output {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("DCHAN", env!("CARGO_BIN_EXE_dchan"))
        .env("DCHAN_ADDR", addr)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    patiently(out).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_into_a_pipe_takes_only_what_its_reader_read() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t", "--capacity", "100"]).await);
    let lines: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    ok(dchan_in(a, &["push", "t"], Some(&(lines.join("\n") + "\n"))).await);
    // Messages 1..10 would all fit in the pipe before head starts: pull
    // waits for each to be read, so only 1, 2, 3 are taken.
    let head = sh(a, r#""$DCHAN" pull t -n 10 | (sleep 1; head -n 3)"#).await;
    assert_eq!(head, "1\n2\n3\n");
    assert_eq!(ok(dchan(a, &["pull", "t"]).await), "4\n");
    // A reader that stays a while after its last line: the message left
    // in the pipe goes back too.
    let head = sh(a, r#""$DCHAN" pull t -n 10 | (head -n 1; sleep 1)"#).await;
    assert_eq!(head, "5\n");
    assert_eq!(ok(dchan(a, &["pull", "t"]).await), "6\n");
    let mut next = 7;
    for _ in 0..4 {
        let head = sh(a, r#""$DCHAN" pull t --follow | head -n 3"#).await;
        let want: String = (next..next + 3).map(|i| format!("{i}\n")).collect();
        assert_eq!(head, want);
        assert_eq!(
            ok(dchan(a, &["pull", "t"]).await),
            format!("{}\n", next + 3)
        );
        next += 4;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_pull_ends_when_its_pipe_reader_goes() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t", "--capacity", "10"]).await);
    // head has its 3 and goes while pull waits for more on an idle topic:
    // pull ends (as tail -f does), having taken what head read, no more.
    for pull in ["pull t --follow", "pull t --follow --batch", "pull t -n 5"] {
        ok(dchan(a, &["push", "t", "1", "2", "3"]).await);
        let script = format!(r#"e=$(mktemp); "$DCHAN" {pull} 2>$e | head -n 3; cat $e; rm $e"#);
        assert_eq!(
            sh(a, &script).await,
            "1\n2\n3\ndchan: pull t: standard output: its reader went away (3 printed)\n",
            "{pull}"
        );
        fails(
            dchan(a, &["pull", "t", "--timeout", "100ms"]).await,
            1,
            "dchan: pull t: timed out",
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_standard_output_closed_takes_nothing_and_push_with_input_closed_fails() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t", "--capacity", "10"]).await);
    ok(dchan(a, &["push", "t", "1", "2"]).await);
    // Rust's runtime opens /dev/null on a closed fd 1 before main: without
    // the check, the message would be taken and printed nowhere.
    for pull in ["pull t", "pull t --follow", "pull t --follow --batch"] {
        fails(
            sh_output(a, &format!(r#""$DCHAN" {pull} >&-"#)).await,
            1,
            "dchan: pull t: standard output is closed; nothing taken",
        );
    }
    assert_eq!(ok(dchan(a, &["pull", "t", "-n", "2"]).await), "1\n2\n");
    // Nor is a closed standard input an empty one; messages given as
    // arguments need none.
    fails(
        sh_output(a, r#""$DCHAN" push t <&-"#).await,
        1,
        "dchan: push t: standard input is closed (0 pushed)",
    );
    assert_eq!(
        sh(a, r#""$DCHAN" push t 3 <&- && "$DCHAN" pull t"#).await,
        "3\n"
    );
    // Open the other way only: Rust's streams would take EBADF as done.
    ok(dchan(a, &["push", "t", "4"]).await);
    fails(
        sh_output(a, r#""$DCHAN" pull t 1</dev/null"#).await,
        1,
        "dchan: pull t: standard output is not open for writing; nothing taken",
    );
    fails(
        sh_output(a, r#""$DCHAN" push t 0>/dev/null"#).await,
        1,
        "dchan: push t: standard input is not open for reading (0 pushed)",
    );
    assert_eq!(ok(dchan(a, &["pull", "t"]).await), "4\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_says_how_many_went_out() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t"]).await);
    // One reader, for one message: m1 goes out, m2 finds nobody.
    let pull = spawn(a, &["pull", "t"], false);
    until_stat(a, "t", "blocked_readers 1\n").await;
    let push = dchan(a, &["push", "--timeout", "300ms", "t", "m1", "m2", "m3"]).await;
    fails(push, 1, "dchan: push t: timed out (1 pushed)");
    assert_eq!(
        ok(patiently(pull.wait_with_output()).await.unwrap()),
        "m1\n"
    );
    // From standard input, a reset mid-stream: the count is of lines.
    ok(dchan(a, &["create", "u", "--capacity", "2"]).await);
    let mut push = spawn(a, &["push", "u"], true);
    let mut stdin = push.stdin.take().unwrap();
    stdin.write_all(b"a\nb\nc\n").await.unwrap();
    until_stat(a, "u", "blocked_writers 1\n").await;
    ok(dchan(a, &["reset", "u"]).await);
    drop(stdin);
    let out = patiently(push.wait_with_output()).await.unwrap();
    fails(out, 1, "dchan: push u: topic reset (2 pushed)");
    let help = ok(dchan(a, &["push", "--help"]).await);
    assert!(help.contains("(N pushed)"), "{help}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_timeout_is_refused_everywhere() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t", "--capacity", "1"]).await);
    for args in [
        &["create", "z", "--timeout", "0s"][..],
        &["pull", "t", "--timeout", "0s"],
        &["push", "t", "x", "--timeout", "0ms"],
    ] {
        fails(dchan(a, args).await, 2, "dchan: invalid value '0");
        let err = stderr(&dchan(a, args).await);
        assert!(err.contains("a zero timeout is refused"), "{err}");
    }
    // Under a millisecond (it would be stored as none) and too long for
    // the server: refused with the user's own words.
    for (t, why) in [
        ("1ns", "under 1ms is refused"),
        ("500us", "under 1ms is refused"),
        ("1000000000h", "over 500 years is refused"),
    ] {
        for args in [
            &["create", "z", "--timeout", t][..],
            &["pull", "t", "--timeout", t],
            &["push", "t", "x", "--timeout", t],
        ] {
            let o = dchan(a, args).await;
            let err = stderr(&o);
            fails(o, 2, &format!("dchan: invalid value '{t}' for '--timeout"));
            assert!(err.contains(why) && !err.contains("ms\""), "{err}");
        }
    }
    ok(dchan(a, &["create", "edge", "--timeout", "1ms"]).await);
    assert!(ok(dchan(a, &["stat", "edge"]).await).contains("timeout 1ms\n"));
    ok(dchan(a, &["rm", "edge"]).await);
    assert_eq!(ok(dchan(a, &["ls", "-q"]).await), "t\n", "nothing created");
    for sub in ["create", "pull", "push"] {
        let help = ok(dchan(a, &[sub, "--help"]).await);
        assert!(help.contains("not 0"), "{sub} --help: {help}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_usage_items() {
    let s = Server::start().await;
    let a = &s.addr;
    // No arguments: a usage error naming the subcommands.
    fails(
        dchan(a, &[]).await,
        2,
        "dchan: no subcommand given; want one of serve",
    );
    // A typo in RUST_LOG is refused, with the levels listed.
    let o = dchan_os(a, &["ls".as_ref()], &[("RUST_LOG", "wran")]).await;
    fails(
        o,
        2,
        "dchan: RUST_LOG \"wran\": \"wran\" is no level; want off, error, warn",
    );
    ok(dchan_os(a, &["ls".as_ref()], &[("RUST_LOG", "dchan=debug,warn")]).await);
    // The context is said once.
    ok(dchan(a, &["create", "u"]).await);
    let o = dchan(a, &["create", "u"]).await;
    assert_eq!(stderr(&o), "dchan: create u: topic exists\n");
    // A bad name says what is allowed; a leading '-' is refused.
    fails(
        dchan(a, &["pull", "../etc"]).await,
        1,
        "dchan: pull ../etc: bad topic name \"../etc\": want parts of A-Z a-z 0-9 . _ - separated by /",
    );
    fails(
        dchan(a, &["create", "--", "-dash"]).await,
        1,
        "dchan: create -dash: bad topic name \"-dash\"",
    );
    // A message argument is bytes, UTF-8 or not.
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
    ok(dchan(a, &["create", "b", "--capacity", "1"]).await);
    ok(dchan_os(a, &["push".as_ref(), "b".as_ref(), odd], &[]).await);
    let o = dchan(a, &["pull", "b"]).await;
    assert!(o.status.success());
    assert_eq!(o.stdout, b"caf\xe9\n");
    // bench's --size below its minimum is a usage error.
    fails(
        dchan(a, &["bench", "pipe", "--size", "10"]).await,
        2,
        "dchan: invalid value '10' for '--size <SIZE>': at least 48",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_first_and_next_survive_a_moved_log() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "jobs", "--capacity", "5"]).await);
    ok(dchan(a, &["push", "jobs", "1", "2", "3"]).await);
    ok(dchan(a, &["pull", "jobs", "-n", "3"]).await);
    ok(dchan(a, &["push", "jobs", "4", "5"]).await);
    // The oldest message held is 4 now; "first" finds it.
    ok(dchan(a, &["offset", "jobs", "first", "--group", "audit"]).await);
    assert_eq!(
        ok(dchan(a, &["pull", "jobs", "-n", "2", "--group", "audit"]).await),
        "4\n5\n"
    );
    ok(dchan(a, &["offset", "jobs", "first", "--group", "audit"]).await);
    ok(dchan(a, &["offset", "jobs", "next", "--group", "audit"]).await);
    let stat = ok(dchan(a, &["stat", "jobs"]).await);
    let next = stat.lines().find_map(|l| l.strip_prefix("next ")).unwrap();
    assert_eq!(
        ok(dchan(a, &["offset", "jobs", "--group", "audit"]).await),
        format!("{next}\n"),
    );
    fails(
        dchan(a, &["offset", "jobs", "oldest"]).await,
        2,
        "dchan: invalid value 'oldest'",
    );
    let help = ok(dchan(a, &["offset", "--help"]).await);
    assert!(
        help.contains("dchan offset jobs first --group audit"),
        "{help}"
    );
    s.stop().await;
}

/// Issue 14.5 through the CLI: capacity 0, groups g1 and g2, only g1 reads:
/// `push --timeout` succeeds (g1 got the message) and g2 still gets it,
/// so a script that retries on failure sends no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_one_group_took_before_its_timeout_succeeds() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "t"]).await);
    ok(dchan(a, &["offset", "t", "--group", "g2"]).await);
    let pull = spawn(a, &["pull", "t", "--group", "g1"], false);
    until_stat(a, "t", "blocked_readers 1").await;
    ok(dchan(a, &["push", "--timeout", "1s", "t", "urgent"]).await);
    let got = patiently(pull.wait_with_output()).await.unwrap();
    assert_eq!(ok(got), "urgent\n");
    assert_eq!(
        ok(dchan(a, &["pull", "t", "--group", "g2"]).await),
        "urgent\n"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umount_refuses_what_is_not_a_9p_mount() {
    // /proc is always mounted, and never by 9P (it was unmounted as root).
    let o = dchan("tcp!127.0.0.1!1", &["umount", "/proc"]).await;
    fails(o, 1, "dchan: umount /proc: not a 9P mount (proc ");
    assert!(std::path::Path::new("/proc/self").exists(), "still mounted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_refuses_a_mount_point_a_file_and_twice_the_same_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |p: &str| tmp.path().join(p).to_str().unwrap().to_string();
    let a = "tcp!127.0.0.1!1";
    // Something is mounted there already: no second mount on top.
    fails(
        dchan(a, &["mount", "/proc"]).await,
        1,
        "dchan: mount /proc: already a mount point (proc ",
    );
    std::fs::write(at("file"), "x").unwrap();
    fails(
        dchan(a, &["mount", &at("file")]).await,
        1,
        &format!("dchan: mount {}: not a directory", at("file")),
    );
    fails(
        dchan(a, &["mount", &at("d"), "--writers", &at("d/")]).await,
        1,
        &format!(
            "dchan: mount {}: --writers {}/ is the same directory",
            at("d"),
            at("d")
        ),
    );
    // A mount that fails (no server, no mount program, no 9pfuse) leaves
    // no directory behind, parents made for it included.
    let path = std::ffi::OsStr::new;
    let o = dchan_os(
        a,
        &[path("mount"), path(&at("new/a/b"))],
        &[("PATH", "/nonexistent")],
    )
    .await;
    fails(
        o,
        1,
        &format!("dchan: mount {}: no way to mount", at("new/a/b")),
    );
    assert!(!tmp.path().join("new").exists());
    assert!(!tmp.path().join("d").exists());
}

/// A 9P2000 server on a free port that answers Tversion, Tattach, Twalk
/// and Topen as a server would, except that it never answers a message
/// named in `silent` (`"Tversion"`, ...), and answers one named in
/// `wrong_tag` under another tag. Its address.
async fn hostile(silent: &'static str, wrong_tag: &'static str) -> String {
    use bytes::BytesMut;
    use dchan::proto::codec::{decode, encode};
    use dchan::proto::frame::FrameDecoder;
    use dchan::proto::{Dialect, Fcall, Msg, QTDIR, Qid};
    use futures_util::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("tcp!127.0.0.1!{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut rx = tokio_util::codec::FramedRead::new(r, FrameDecoder::new(1 << 16));
                let qid = |ty| Qid {
                    ty,
                    version: 0,
                    path: 1,
                };
                while let Some(Ok(frame)) = rx.next().await {
                    let Ok(m) = decode(frame, Dialect::P2000) else {
                        return;
                    };
                    let name = m.body.name();
                    let body = match m.body {
                        _ if name == silent => continue,
                        Fcall::Tversion { .. } => Fcall::Rversion {
                            msize: 8192,
                            version: "9P2000".into(),
                        },
                        Fcall::Tattach { .. } => Fcall::Rattach { qid: qid(QTDIR) },
                        Fcall::Twalk { wnames, .. } => Fcall::Rwalk {
                            wqids: wnames.iter().map(|_| qid(0)).collect(),
                        },
                        Fcall::Topen { .. } => Fcall::Ropen {
                            qid: qid(0),
                            iounit: 0,
                        },
                        Fcall::Tclunk { .. } => Fcall::Rclunk,
                        _ => continue,
                    };
                    let tag = match name == wrong_tag {
                        true => m.tag ^ 0x5555,
                        false => m.tag,
                    };
                    let mut buf = BytesMut::new();
                    encode(&Msg { tag, body }, Dialect::P2000, &mut buf);
                    if w.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_server_times_out_every_command_and_setup_counts_against_timeout() {
    let t = ["--connect-timeout", "300ms"];
    for silent in ["Tversion", "Tattach", "Twalk", "Topen"] {
        let a = hostile(silent, "").await;
        for cmd in [
            vec!["ls"],
            vec!["ls", "-q"],
            vec!["stat", "t1"],
            vec!["offset", "t1"],
            vec!["rm", "t1"],
        ] {
            let args: Vec<&str> = cmd.iter().copied().chain(t).collect();
            let o = dchan(&a, &args).await;
            fails(o, 1, "dchan: ");
        }
        // --timeout alone bounds pull and push, setup included.
        let o = dchan(&a, &["pull", "t1", "--timeout", "300ms"]).await;
        let err = stderr(&o);
        assert!(err.contains("timed out after 300ms"), "{silent}: {err}");
        fails(o, 1, "dchan: ");
        let o = dchan(&a, &["push", "t1", "hi", "--timeout", "300ms"]).await;
        let err = stderr(&o);
        assert!(
            err.contains("timed out after 300ms (0 pushed)"),
            "{silent}: {err}"
        );
        fails(o, 1, "dchan: push t1: ");
    }
}

#[tokio::test]
async fn a_reply_to_an_unknown_tag_times_out_in_one_plain_line() {
    let a = hostile("", "Twalk").await;
    let o = dchan(&a, &["stat", "t1", "--connect-timeout", "300ms"]).await;
    assert!(!o.stderr.contains(&0x1b), "no ANSI codes: {:?}", stderr(&o));
    fails(o, 1, "dchan: stat t1: timed out after 300ms");
}

/// Issue 12: standard input goes out many lines to a Twrite, each line one
/// message, in order; `pull --follow` into a file, and with --batch into a
/// pipe, reads in batches and prints exactly what was pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_follow_move_lines_in_batches_losing_and_doubling_none() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "big", "--capacity", "1000000"]).await);
    let script = r#"seq 1 100000 | "$DCHAN" push big && "$DCHAN" stat big"#;
    let stat = sh(a, script).await;
    assert!(stat.contains("pending 100000\n"), "{stat}");
    // Into a file (not a pipe): batches. Into a pipe: with --batch.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out");
    let follow = format!(
        r#""$DCHAN" pull big --follow > {0} & sleep 0.5; "$DCHAN" close big; wait; md5sum < {0}"#,
        file.display()
    );
    let want = sh(a, "seq 1 100000 | md5sum").await;
    assert_eq!(sh(a, &follow).await, want);
    ok(dchan(a, &["create", "p", "--capacity", "1000000"]).await);
    let script = r#"seq 1 50000 | "$DCHAN" push p; ("$DCHAN" pull p --follow --batch | md5sum) & sleep 0.5; "$DCHAN" close p; wait"#;
    let want = sh(a, "seq 1 50000 | md5sum").await;
    assert_eq!(sh(a, script).await, want);
    s.stop().await;
}

/// A write of many lines to a capacity-0 topic returns once readers took
/// every line; each line is one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_lines_to_a_rendezvous_topic_returns_once_all_were_taken() {
    let s = Server::start().await;
    let a = &s.addr;
    ok(dchan(a, &["create", "meet"]).await);
    let mut push = spawn(a, &["push", "meet"], true);
    let mut stdin = push.stdin.take().unwrap();
    stdin.write_all(b"a\nb\nc\nd\n").await.unwrap();
    drop(stdin);
    until_stat(a, "meet", "blocked_writers 1\n").await;
    assert_eq!(
        ok(dchan(a, &["pull", "meet", "-n", "3"]).await),
        "a\nb\nc\n"
    );
    // One line is still to be taken: the push has not returned.
    until_stat(a, "meet", "blocked_writers 1\n").await;
    assert_eq!(ok(dchan(a, &["pull", "meet"]).await), "d\n");
    ok(patiently(push.wait_with_output()).await.unwrap());
    s.stop().await;
}

/// Issue 16: many topics in one command, many to a write of the root ctl;
/// `ls` reads the server's `topics` file (one line per topic, a header
/// naming the columns) and keeps its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_rm_take_many_topics_and_ls_reads_the_listing() {
    let s = Server::start().await;
    let a = &s.addr;
    let names: Vec<String> = (0..3000).map(|i| format!("u{i:04}/inbox")).collect();
    let mut args: Vec<&str> = vec!["create", "--capacity", "2"];
    args.extend(names.iter().map(String::as_str));
    ok(dchan(a, &args).await);
    let quiet = ok(dchan(a, &["ls", "-q"]).await);
    assert_eq!(quiet.lines().collect::<Vec<_>>(), names);
    let table = ok(dchan(a, &["ls", "u0042"]).await);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows[0][0], "TOPIC");
    assert_eq!(
        rows[1],
        ["u0042/inbox", "0", "0", "0", "0", "0", "2", "line", "open"]
    );
    // The listing as a file, read like any other.
    let c = dchan::client::Client::connect(a, &Default::default())
        .await
        .unwrap();
    let text = c.topics_file().await.unwrap();
    assert_eq!(text.lines().count(), 3001);
    assert!(
        text.starts_with("TOPIC PENDING PUSHED PULLED READERS GROUPS CAPACITY FRAMING STATE\n")
    );
    // The root's 3 000 directories, read a page at a time by the server,
    // as 9P2000.L dirents and as 9P2000 stat records: each once, in order.
    for dialect in [dchan::proto::Dialect::P2000L, dchan::proto::Dialect::P2000] {
        let opts = dchan::client::Options::default().dialect(dialect);
        let c = dchan::client::Client::connect(a, &opts).await.unwrap();
        assert_eq!(c.topics().await.unwrap(), names, "{dialect:?}");
    }
    // One that exists fails its write whole: nothing of it is made.
    fails(
        dchan(a, &["create", "new1", "u0001/inbox", "new2"]).await,
        1,
        "dchan: create new1 and 2 more: create u0001/inbox: topic exists (0 created)",
    );
    assert!(!ok(dchan(a, &["ls", "-q"]).await).contains("new"));
    let mut args = vec!["rm"];
    args.extend(names.iter().map(String::as_str));
    ok(dchan(a, &args).await);
    assert_eq!(ok(dchan(a, &["ls", "-q"]).await), "");
    fails(
        dchan(a, &["rm", "u0001/inbox", "u0002/inbox"]).await,
        1,
        "dchan: rm u0001/inbox and 1 more: remove u0001/inbox: no such topic (0 removed)",
    );
    // A name given twice is refused before anything is done.
    fails(
        dchan(a, &["create", "n2", "n2"]).await,
        1,
        "dchan: create n2 and 1 more: n2 is named twice (0 created)",
    );
    assert!(!ok(dchan(a, &["ls", "-q"]).await).contains("n2"));
    ok(dchan(a, &["create", "m1"]).await);
    fails(
        dchan(a, &["rm", "m1", "m1"]).await,
        1,
        "dchan: rm m1 and 1 more: m1 is named twice (0 removed)",
    );
    ok(dchan(a, &["rm", "m1"]).await);
    // No topic may take the listing's name.
    fails(
        dchan(a, &["create", "topics"]).await,
        1,
        "dchan: create topics:",
    );
    s.stop().await;
}
