//! Errors as the tree's clients see them: broker errors mapped to errnos
//! and messages, and Linux's texts for the Linux client on plain 9P2000.

use crate::broker;
use crate::fs::{Error, errno};

/// A broker error as the client sees it.
pub(super) fn broker_error(e: broker::Error) -> Error {
    use broker::Error as E;
    let n = match &e {
        E::NoTopic(_) | E::Removed | E::NoGroup(_) => errno::ENOENT,
        E::Exists(_) => errno::EEXIST,
        E::BadName(_) => errno::EINVAL,
        E::Closed => errno::EPIPE,
        E::Reset => errno::ECANCELED,
        E::TimedOut => errno::ETIMEDOUT,
        E::WouldBlock => errno::EAGAIN,
        E::Interrupted => errno::EINTR,
        E::OffsetOutOfRange { .. } => errno::ERANGE,
        E::Shutdown => errno::ESHUTDOWN,
        E::TooManyGroups(_) => errno::EUSERS,
    };
    Error::new(n, e.to_string())
}

pub(super) fn not_found() -> Error {
    Error::new(errno::ENOENT, "file does not exist")
}

pub(super) fn invalid(message: String) -> Error {
    Error::new(errno::EINVAL, message)
}

/// Linux's strerror text for an errno dchan reports, as its 9P2000 client's
/// table (net/9p/error.c) spells it; that table has no ECANCELED, so a
/// reset reads as a connection reset.
pub(super) fn linux_text(errno: u32) -> Option<&'static str> {
    Some(match errno {
        errno::EPERM => "Operation not permitted",
        errno::ENOENT => "No such file or directory",
        errno::EBADF => "Bad file descriptor",
        errno::EAGAIN => "Resource temporarily unavailable",
        errno::EEXIST => "File exists",
        errno::ENOTDIR => "Not a directory",
        errno::EISDIR => "Is a directory",
        errno::EINVAL => "Invalid argument",
        errno::EPIPE => "Broken pipe",
        errno::EINTR => "Interrupted system call",
        errno::ERANGE => "Numerical result out of range",
        errno::ENOTEMPTY => "Directory not empty",
        errno::ESHUTDOWN => "Cannot send after transport endpoint shutdown",
        errno::EUSERS => "Too many users",
        errno::ETIMEDOUT => "Connection timed out",
        // Linux's table has no ECANCELED: a reset reads as one.
        errno::ECANCELED => "Connection reset by peer",
        _ => return None,
    })
}
