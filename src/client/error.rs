//! What can go wrong talking to a 9P server: the server's refusal (with its
//! message, or its errno named), the transport, or the protocol itself.

use std::io;

use crate::fs::errno::*;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed client operation. `Display` gives the reason alone, in lower
/// case, so a caller can say what failed first: `push jobs: topic reset`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered Rerror or Rlerror.
    #[error("{message}")]
    Server {
        /// The Rerror text; for Rlerror (errno only) the errno's usual message.
        message: String,
        /// The Linux errno (Rlerror, or the 9P2000.u Rerror), if the server sent one.
        errno: Option<u32>,
    },
    /// A walk found no such file (a partial Rwalk, or ENOENT).
    #[error("no such file: {0}")]
    NotFound(String),
    /// The topic (or its data, ctl or offset file) does not exist.
    #[error("no such topic")]
    NoTopic(String),
    /// A topic name that the tree cannot hold.
    #[error("bad topic name {0:?}: {rule}", rule = crate::broker::NAME_RULE)]
    BadTopic(String),
    /// The address did not parse (the reason names the forms it takes).
    #[error("{0}")]
    Address(String),
    /// TLS could not be set up: its files, or the handshake (a server
    /// certificate from another CA, a client certificate refused).
    #[error("TLS: {0}")]
    Tls(String),
    /// Connecting, reading or writing the socket failed.
    #[error("{}", io_reason(.0))]
    Io(#[from] io::Error),
    /// The connection is gone (the server hung up, or a write failed).
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// A client-side deadline ([`Puller::next_timeout`],
    /// [`Pusher::push_timeout`]) passed and the server flushed the request:
    /// nothing was pulled, or nothing pushed.
    ///
    /// [`Puller::next_timeout`]: super::Puller::next_timeout
    /// [`Pusher::push_timeout`]: super::Pusher::push_timeout
    #[error("timed out")]
    TimedOut,
    /// The caller stopped the request ([`Pusher::push_lines_unless`]) and
    /// the server flushed it: it did not happen.
    ///
    /// [`Pusher::push_lines_unless`]: super::Pusher::push_lines_unless
    #[error("interrupted")]
    Interrupted,
    /// A message for a `write`-framed topic (or one whose framing could not
    /// be read) larger than one Twrite carries on this connection: it would
    /// arrive as several messages, so nothing was pushed.
    #[error("message too large for one write: {len} bytes, at most {max} on this connection")]
    TooLarge { len: usize, max: u32 },
    /// The server sent something 9P does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The server's errno, if it sent one (Rlerror, 9P2000.u Rerror).
    pub fn errno(&self) -> Option<u32> {
        match self {
            Error::Server { errno, .. } => *errno,
            Error::NotFound(_) | Error::NoTopic(_) => Some(ENOENT),
            _ => None,
        }
    }

    /// A wait ran out: the server said "timed out" (a topic's `timeout`
    /// elapsed), or a client-side deadline passed ([`Error::TimedOut`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut)
            || matches!(
                self,
                Error::Server {
                    errno: Some(ETIMEDOUT),
                    ..
                }
            )
            || matches!(self, Error::Server { message, .. } if message.contains("timed out"))
    }

    /// An Rlerror: only a number, named here.
    pub(crate) fn from_errno(errno: u32) -> Error {
        Error::Server {
            message: errno_message(errno),
            errno: Some(errno),
        }
    }

    /// An Rerror: the server's text, and the 9P2000.u errno when not 0.
    pub(crate) fn from_rerror(ename: String, errno: u32) -> Error {
        Error::Server {
            message: ename,
            errno: (errno != 0).then_some(errno),
        }
    }
}

/// The usual message for a Linux errno ("no such file or directory"), or
/// "error N" for one not in the table.
pub fn errno_message(errno: u32) -> String {
    let text = match errno {
        EPERM => "operation not permitted",
        ENOENT => "no such file or directory",
        EINTR => "interrupted",
        EIO => "input/output error",
        EBADF => "bad file descriptor",
        EAGAIN => "resource temporarily unavailable",
        ENOMEM => "out of memory",
        EACCES => "permission denied",
        EBUSY => "device or resource busy",
        EEXIST => "file exists",
        EXDEV => "invalid cross-device link",
        ENOTDIR => "not a directory",
        EISDIR => "is a directory",
        EINVAL => "invalid argument",
        EMFILE => "too many open files",
        EFBIG => "file too large",
        ENOSPC => "no space left on device",
        ESPIPE => "illegal seek",
        EROFS => "read-only file system",
        EPIPE => "broken pipe",
        ERANGE => "result out of range",
        ENAMETOOLONG => "file name too long",
        ENOSYS => "function not implemented",
        ENOTEMPTY => "directory not empty",
        ENODATA => "no data available",
        EPROTO => "protocol error",
        EMSGSIZE => "message too long",
        EOPNOTSUPP => "operation not supported",
        ECONNRESET => "connection reset by peer",
        ESHUTDOWN => "server shutting down",
        ETIMEDOUT => "timed out",
        ECANCELED => "operation canceled",
        _ => return format!("error {errno}"),
    };
    text.to_string()
}

/// An I/O error's reason without Rust's " (os error N)" and in lower case:
/// "connection refused".
pub fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_short() {
        let e = Error::Io(io::Error::from_raw_os_error(111));
        assert_eq!(e.to_string(), "connection refused");
        assert_eq!(
            Error::from_errno(ENOENT).to_string(),
            "no such file or directory"
        );
        assert_eq!(Error::from_errno(4242).to_string(), "error 4242");
        let e = Error::from_rerror("topic reset".into(), 0);
        assert_eq!((e.to_string().as_str(), e.errno()), ("topic reset", None));
        assert!(Error::from_errno(ETIMEDOUT).is_timeout());
        assert!(Error::TimedOut.is_timeout());
    }
}
