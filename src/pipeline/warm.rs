//! A warm process of an *each* stage: forked ahead of its message, but
//! held before it executes the command until the message comes, so a
//! process that is never given one never runs the command (no output, no
//! side effect, nothing counted): dropped, it ends without a trace.
//!
//! How: between fork and exec (`pre_exec`), the child waits on a pipe of
//! its own (the gate). One byte through it: go on to exec the command. The
//! gate's end (EOF: we dropped it): `_exit(0)` without executing anything.
//! Before waiting, the child closes every descriptor above the gate: the
//! gates of other warm processes it inherited (so each gate's end is seen
//! by its own child alone), and the standard library's pipe that reports
//! exec to the parent (so `spawn` returns now, not once the gate opens).
//! With that pipe gone, an exec that fails cannot be reported, so the
//! program is looked up in `PATH` here first ("cannot start" is said by
//! [`start`], as before); an exec failing anyway (not executable after
//! all) ends the child by SIGABRT, a failed attempt.
//!
//! What it saves: the fork of dchan (and the child's set-up) is done ahead;
//! the exec and the program's own start-up are not. No crate offers this
//! (a process held between fork and exec); it is a few system calls.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::pgroup::{Proc, own_group};
use super::spec::Stage;

/// The descriptor the gate has in the child while it waits.
const GATE: i32 = 3;

/// A process forked ahead, waiting at its gate.
pub(super) struct Warm {
    child: Proc,
    /// Our end of the gate: a byte lets the child exec; dropped, the
    /// child ends without executing anything (and is killed, see `pgroup`).
    gate: std::fs::File,
}

impl Warm {
    /// Let the command run: the process, ready for its message.
    pub(super) fn go(mut self) -> io::Result<Proc> {
        self.gate.write_all(&[1])?;
        Ok(self.child)
    }
}

/// Start the stage's command held at its gate (stdin, stdout piped, in a
/// process group of its own; `$DCHAN_STAGE` and `$DCHAN_COPY` set as for
/// a filter).
pub(super) fn start(stage: &Stage, copy: &str) -> io::Result<Warm> {
    let argv = stage.argv();
    let program = find(&argv[0])?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let from = read.as_raw_fd();
    let mut cmd = Command::new(program);
    own_group(&mut cmd)
        .args(&argv[1..])
        .env("DCHAN_STAGE", &stage.name)
        .env("DCHAN_COPY", copy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and
    // makes only async-signal-safe system calls (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if from != GATE && libc::dup2(from, GATE) < 0 {
                return Err(io::Error::last_os_error());
            }
            close_from(GATE + 1);
            let mut byte = 0u8;
            loop {
                let n = libc::read(GATE, (&raw mut byte).cast(), 1);
                match n {
                    1 => break,
                    -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                    // Not needed (the gate's end): leave without a trace.
                    _ => libc::_exit(0),
                }
            }
            libc::close(GATE);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(read);
    Ok(Warm {
        child: Proc(child),
        gate: std::fs::File::from(write),
    })
}

/// Close every descriptor from `first` up (in the child; see the module).
///
/// # Safety
/// Only between fork and exec: it closes descriptors it does not own.
unsafe fn close_from(first: i32) {
    // SAFETY: a plain system call; on kernels without close_range, a loop.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) != 0 {
            for fd in first..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Where `name` runs from, as execvp would find it: itself if it holds a
/// `/`, else the first executable file of that name in `PATH`.
fn find(name: &str) -> io::Result<PathBuf> {
    let runnable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return match runnable(Path::new(name)) {
            true => Ok(name.into()),
            false => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| runnable(p))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}
