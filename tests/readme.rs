//! The README's tour, run as a new user would: every ```sh block of
//! README.md (not the `sh setup`, `sh mount` or `sh plan9port` ones, which
//! need a root shell, a 9P kernel or plan9port; tests/linux_client.rs and
//! tests/plan9port.rs run those), in order, in one shell, with
//! the built `dchan` first on PATH and `DCHAN_ADDR` pointing at a server this
//! test started. The mount commands are what tests/linux_client.rs runs in a
//! Linux guest.

mod server;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::{Server, readme_blocks};

#[test]
fn the_readme_tour_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = readme_blocks(&readme, "sh");
    assert!(blocks.len() >= 4, "the README lost its tour: {blocks:?}");
    let script = format!("set -eu\n{}", blocks.concat());

    let server = Server::start(&[]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_dchan"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("DCHAN_ADDR", format!("tcp!127.0.0.1!{}", server.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the README tour hung:\n{script}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    eprintln!("{out}");
    assert!(
        status.success(),
        "the README tour failed ({status}):\n{script}\n{out}"
    );

    // What the README says each block prints.
    assert!(out.lines().any(|l| l == "resize a.png"), "{out}");
    for job in 1..=9 {
        let done = out
            .lines()
            .filter(|l| l.ends_with(&format!(": job {job}")))
            .count();
        assert_eq!(done, 1, "job {job} done {done} times:\n{out}");
    }
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with(": resize b.png"))
            .count(),
        1,
        "{out}"
    );
    assert!(out.lines().any(|l| l == "billing: order 1 paid"), "{out}");
    assert!(out.lines().any(|l| l == "audit: order 1 paid"), "{out}");
    assert!(out.lines().any(|l| l == "ring"), "{out}");
}
