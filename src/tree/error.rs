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
        E::TooLong { .. } => errno::EMSGSIZE,
        E::OverMaxBytes { .. } => errno::EFBIG,
        E::Unsupported(_) => errno::EOPNOTSUPP,
        E::Unavailable(_) => errno::EIO,
        E::Storage { kind, .. } if *kind == std::io::ErrorKind::StorageFull => errno::ENOSPC,
        E::Storage { kind, .. } if *kind == std::io::ErrorKind::QuotaExceeded => errno::EMFILE,
        E::Storage { .. } => errno::EIO,
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
        errno::EIO => "Input/output error",
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
        errno::EMSGSIZE => "Message too long",
        errno::EFBIG => "File too large",
        errno::ENOBUFS => "No buffer space available",
        // Linux's table has no ECANCELED: a reset reads as one.
        errno::ECANCELED => "Connection reset by peer",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dialect::{plain_text, plan9port_errno, plan9port_phrase, reads_right};
    use crate::tree::ctl;

    /// The errno constants by name, for the source scan below.
    fn errno_named(name: &str) -> u32 {
        use errno::*;
        match name {
            "EPERM" => EPERM,
            "ENOENT" => ENOENT,
            "EINTR" => EINTR,
            "EIO" => EIO,
            "EBADF" => EBADF,
            "EAGAIN" => EAGAIN,
            "ENOMEM" => ENOMEM,
            "EACCES" => EACCES,
            "EBUSY" => EBUSY,
            "EEXIST" => EEXIST,
            "EXDEV" => EXDEV,
            "ENOTDIR" => ENOTDIR,
            "EISDIR" => EISDIR,
            "EINVAL" => EINVAL,
            "EMFILE" => EMFILE,
            "EFBIG" => EFBIG,
            "ENOSPC" => ENOSPC,
            "ESPIPE" => ESPIPE,
            "EROFS" => EROFS,
            "EPIPE" => EPIPE,
            "ERANGE" => ERANGE,
            "ENAMETOOLONG" => ENAMETOOLONG,
            "ENOSYS" => ENOSYS,
            "ENOTEMPTY" => ENOTEMPTY,
            "ENODATA" => ENODATA,
            "EPROTO" => EPROTO,
            "EMSGSIZE" => EMSGSIZE,
            "EOPNOTSUPP" => EOPNOTSUPP,
            "ECONNRESET" => ECONNRESET,
            "ENOBUFS" => ENOBUFS,
            "ESHUTDOWN" => ESHUTDOWN,
            "ETIMEDOUT" => ETIMEDOUT,
            "ECANCELED" => ECANCELED,
            _ => panic!("errno {name} unknown to this test: add it"),
        }
    }

    /// Every `Error::new(errno::X, "text")` and `err(errno::X, "text")` in
    /// the server's source, with its errno.
    fn literal_errors() -> Vec<(u32, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut found = Vec::new();
        for f in files {
            let src = std::fs::read_to_string(&f).unwrap();
            for (i, _) in src.match_indices("errno::E") {
                let before = src[..i].trim_end_matches("fs::");
                let before = before.trim_end();
                if !(before.ends_with("Error::new(") || before.ends_with("err(")) {
                    continue;
                }
                let rest = &src[i + "errno::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                let rest = rest[name.len()..].trim_start();
                let Some(rest) = rest.strip_prefix(',') else {
                    continue;
                };
                let Some(rest) = rest.trim_start().strip_prefix('"') else {
                    continue;
                };
                let text = &rest[..rest.find('"').unwrap()];
                found.push((errno_named(&name), text.to_string()));
            }
        }
        found
    }

    #[test]
    fn the_scan_finds_the_errors() {
        let found = literal_errors();
        assert!(found.len() > 30, "{found:?}");
        assert!(found.contains(&(errno::EISDIR, "is a directory".into())));
    }

    /// 9pfuse (and any plan9port program) reads every error text dchan can
    /// send a plain 9P2000 client as the errno dchan meant, or as none.
    #[test]
    fn plan9port_reads_no_error_as_another_errno() {
        // The server's fixed texts.
        let mut texts = literal_errors();
        // The broker's, as the tree maps them.
        use broker::Error as E;
        for e in [
            E::NoTopic("jobs".into()),
            E::Exists("jobs".into()),
            E::BadName("jobs!".into()),
            E::Closed,
            E::Reset,
            E::Removed,
            E::TimedOut,
            E::WouldBlock,
            E::NoGroup("audit".into()),
            E::OffsetOutOfRange {
                asked: 9,
                first: 1,
                next: 3,
            },
            E::Shutdown,
            E::TooLong { size: 9, max: 8 },
            E::OverMaxBytes { size: 9, max: 8 },
            E::Unsupported("max_bytes on the JetStream engine".into()),
        ] {
            let e = broker_error(e);
            texts.push((e.errno, e.message.to_string()));
        }
        // Every kind of bad ctl and offset write (EINVAL).
        let root = [
            "frob",
            "create",
            "create a/ctl",
            "create a/../b",
            "create a capacity=x",
            "create a framing=byte",
            "create a timeout=soon",
            "create a timeout=",
            "create a colour=red",
            "create a max_message=lots",
            "create a max_bytes=lots",
            "create a rate=fast",
            "remove",
            "remove a b",
            "create ctl",
            "create a/b/offset",
            "create a\u{e9}",
        ];
        let topic = [
            "frob",
            "timeout soon",
            "timeout",
            "capacity",
            "capacity x",
            "max_message 0",
            "max_message 1 2",
            "max_bytes 0",
            "max_bytes",
            "rate 0/s",
            "rate fast",
            "capacity 1 2",
            "framing x",
            "reset now",
            "close now",
            "forget",
        ];
        let mut invalid = Vec::new();
        for line in root {
            invalid.push(ctl::parse_root(line.as_bytes()).unwrap_err());
        }
        for line in topic {
            invalid.push(ctl::parse_topic(line.as_bytes()).unwrap_err());
        }
        invalid.push(ctl::parse_root(b"\xff").unwrap_err());
        invalid.push(ctl::parse_offset(b"x").unwrap_err());
        invalid.push(ctl::check_name(&"a".repeat(300)).unwrap_err());
        invalid.push(ctl::check_name("").unwrap_err());
        texts.extend(invalid.into_iter().map(|t| (errno::EINVAL, t)));

        let wrong: Vec<_> = texts
            .iter()
            .filter(|(e, t)| !reads_right(*e, t))
            .map(|(e, t)| format!("{t:?} (errno {e}) reads as {}", plan9port_errno(t)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // As sent to a plain 9P2000 client, each reads as its own errno,
        // save those plan9port has no words for (they read as ERANGE).
        let wrong: Vec<_> = texts
            .iter()
            .map(|(e, t)| (*e, plain_text(&Error::new(*e, t.clone()))))
            .filter(|(e, t)| {
                let read = plan9port_errno(t);
                read != *e && (plan9port_phrase(*e).is_some() || read != errno::ERANGE)
            })
            .map(|(e, t)| format!("{t:?} (errno {e}) reads as {}", plan9port_errno(&t)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Linux's own texts (a `:linux` session) go out exactly as they are:
        // its client matches them whole.
        for n in 1..200 {
            if let Some(t) = linux_text(n) {
                assert_eq!(plain_text(&Error::new(n, t)), t);
            }
        }
        // The report of issue 15: a mistyped command read as a timeout.
        assert_eq!(
            plan9port_errno(&ctl::parse_topic(b"frob").unwrap_err()),
            errno::ERANGE
        );
        assert_eq!(plan9port_errno("timed out"), 110);
    }
}
