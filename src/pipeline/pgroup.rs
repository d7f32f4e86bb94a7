//! A stage's process in a process group of its own, killed as a whole.
//!
//! Each process a copy starts (a filter, an each command, a warm one) is
//! the leader of a new process group. Two reasons. A terminal's Ctrl-C (and
//! `timeout`, `kill -- -PGID`) signal the whole foreground group: a stage
//! process left in `dchan worker`'s group would die of it, losing the
//! lines it had taken in, where the worker means to finish its messages
//! and leave. And where a copy stops a process (a run stopped, an each
//! command's timeout), the command's own children (`sh -c 'a; b'`, a
//! pipe inside a stage) must stop too, or they run on as orphans and
//! their side effects land after the stage gave the message up. So
//! [`Proc`] kills the group, not only its leader.
//!
//! The group is killed only while its leader has not been reaped: the
//! leader's process id (the group's id) cannot be reused until then, so
//! the signal cannot reach anyone else's processes. A command that exited
//! by itself and left children behind is left alone, as sh leaves them.

use std::ops::{Deref, DerefMut};

use tokio::process::{Child, Command};

/// Make the process `cmd` starts the leader of a new process group, and
/// kill it if its [`Child`] is dropped unreaped.
pub(super) fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).kill_on_drop(true)
}

/// A child started by [`own_group`]: dropped before it was reaped, its
/// whole process group is killed.
#[derive(Debug)]
pub(super) struct Proc(pub Child);

impl Proc {
    /// SIGKILL to the process and everything in its group (nothing once
    /// it was reaped, see the module).
    pub(super) fn kill(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: a plain system call; the group is ours (see above).
            unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
