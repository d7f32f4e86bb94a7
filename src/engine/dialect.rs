//! Translation between each 9P dialect's messages and the file tree's
//! dialect-neutral types: open modes, stat and getattr, wstat and setattr,
//! errors.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::fs::{self, Access, Changes, FileInfo, OpenMode};
use crate::proto::{Attr, DMDIR, Dialect, Fcall, NONUNAME, OTRUNC, SetAttr, Stat, StatFs};

/// Unix file-type bits of a getattr mode.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
/// Tlopen/Tlcreate flags (Linux's values, which 9P2000.L carries as is).
const L_ACCMODE: u32 = 0o3;
const L_TRUNC: u32 = 0o1000;
const L_APPEND: u32 = 0o2000;
const L_NONBLOCK: u32 = 0o4000;
/// Rgetattr fields we fill: P9_STATS_BASIC.
const STATS_BASIC: u64 = 0x7ff;
/// Tsetattr valid bits (P9_ATTR_*).
const ATTR_MODE: u32 = 1 << 0;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
const ATTR_ATIME_SET: u32 = 1 << 7;
const ATTR_MTIME_SET: u32 = 1 << 8;
/// Directory-entry types of Rreaddir (DT_DIR, DT_REG).
pub const DT_DIR: u8 = 4;
pub const DT_REG: u8 = 8;
/// Rstatfs type: V9FS_MAGIC.
const V9FS_MAGIC: u32 = 0x0102_1997;

/// A 9P2000 Topen/Tcreate mode (ORCLOSE is the engine's business).
pub fn open_mode(mode: u8) -> OpenMode {
    let access = match mode & 3 {
        0 => Access::Read,
        1 => Access::Write,
        2 => Access::ReadWrite,
        _ => Access::Exec,
    };
    OpenMode {
        access,
        truncate: mode & OTRUNC != 0,
        append: false,
        nonblock: false,
    }
}

/// 9P2000.L Tlopen/Tlcreate flags.
pub fn lopen_mode(flags: u32) -> OpenMode {
    let access = match flags & L_ACCMODE {
        0 => Access::Read,
        1 => Access::Write,
        _ => Access::ReadWrite,
    };
    OpenMode {
        access,
        truncate: flags & L_TRUNC != 0,
        append: flags & L_APPEND != 0,
        nonblock: flags & L_NONBLOCK != 0,
    }
}

/// The numeric id shown as owner: the attaching user's, else root.
fn owner(n_uname: u32) -> u32 {
    if n_uname == NONUNAME { 0 } else { n_uname }
}

/// A 9P2000 or 9P2000.u stat of `info`; `n_uname` is the attaching user.
pub fn stat(info: &FileInfo, n_uname: u32) -> Stat {
    let id = owner(n_uname);
    Stat {
        ty: 0,
        dev: 0,
        qid: info.qid,
        mode: info.mode,
        atime: info.atime,
        mtime: info.mtime,
        length: info.length,
        name: info.name.clone(),
        uid: info.uid.clone(),
        gid: info.gid.clone(),
        muid: info.muid.clone(),
        extension: String::new(),
        n_uid: id,
        n_gid: id,
        n_muid: id,
    }
}

/// The Unix mode of a 9P2000 mode: file type and permissions.
pub fn unix_mode(mode: u32) -> u32 {
    let ty = if mode & DMDIR != 0 { S_IFDIR } else { S_IFREG };
    ty | (mode & 0o777)
}

/// An Rgetattr of `info`; `n_uname` is the attaching user.
pub fn attr(info: &FileInfo, n_uname: u32) -> Attr {
    let id = owner(n_uname);
    let dir = info.mode & DMDIR != 0;
    Attr {
        valid: STATS_BASIC,
        qid: info.qid,
        mode: unix_mode(info.mode),
        uid: id,
        gid: id,
        nlink: if dir { 2 } else { 1 },
        rdev: 0,
        size: info.length,
        blksize: 4096,
        blocks: info.length.div_ceil(512),
        atime_sec: info.atime.into(),
        mtime_sec: info.mtime.into(),
        ctime_sec: info.mtime.into(),
        ..Attr::default()
    }
}

/// The entry type of an Rreaddir dirent.
pub fn dirent_type(info: &FileInfo) -> u8 {
    if info.mode & DMDIR != 0 {
        DT_DIR
    } else {
        DT_REG
    }
}

/// The changes a Twstat asks for; "don't touch" (all ones, "") is `None`.
pub fn wstat_changes(s: &Stat) -> fs::Result<Changes> {
    if s.name.contains('/') || s.name == "." || s.name == ".." {
        return Err(fs::Error::new(fs::errno::EINVAL, "invalid file name"));
    }
    let some_str = |v: &str| (!v.is_empty()).then(|| v.to_string());
    Ok(Changes {
        mode: (s.mode != u32::MAX).then_some(s.mode),
        length: (s.length != u64::MAX).then_some(s.length),
        name: some_str(&s.name),
        mtime: (s.mtime != u32::MAX).then_some(s.mtime),
        atime: (s.atime != u32::MAX).then_some(s.atime),
        uid: some_str(&s.uid),
        gid: some_str(&s.gid),
    })
}

/// The changes a Tsetattr asks for. Owner changes are ignored: the tree
/// knows users by name, and 9P2000.L sends numbers.
pub fn setattr_changes(a: &SetAttr) -> Changes {
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0)
    };
    let time = |set, given: u64| {
        if a.valid & set != 0 {
            Some(given as u32)
        } else {
            Some(now())
        }
    };
    Changes {
        mode: (a.valid & ATTR_MODE != 0).then_some(a.mode & 0o777),
        length: (a.valid & ATTR_SIZE != 0).then_some(a.size),
        name: None,
        mtime: if a.valid & ATTR_MTIME != 0 {
            time(ATTR_MTIME_SET, a.mtime_sec)
        } else {
            None
        },
        atime: if a.valid & ATTR_ATIME != 0 {
            time(ATTR_ATIME_SET, a.atime_sec)
        } else {
            None
        },
        uid: None,
        gid: None,
    }
}

/// True when a change asks for nothing (a Twstat of all "don't touch" is a
/// request to sync, which needs nothing here).
pub fn is_empty(c: &Changes) -> bool {
    *c == Changes::default()
}

/// The Rstatfs the engine answers for any tree.
pub fn statfs() -> StatFs {
    StatFs {
        ty: V9FS_MAGIC,
        bsize: 4096,
        namelen: 255,
        ..StatFs::default()
    }
}

/// An error reply in `dialect`: 9P2000 the text alone (see [`plain_text`]),
/// 9P2000.u the text and errno, 9P2000.L the errno.
pub fn error(dialect: Dialect, e: &fs::Error) -> Fcall {
    match dialect {
        Dialect::P2000L => Fcall::Rlerror { ecode: e.errno },
        Dialect::P2000 => Fcall::Rerror {
            ename: plain_text(e),
            errno: e.errno,
        },
        Dialect::P2000u => Fcall::Rerror {
            ename: e.message.to_string(),
            errno: e.errno,
        },
    }
}

/// The text of `e` for a plain 9P2000 client, which may only guess the
/// errno from the words ([`plan9port_errno`]). dchan's own words never
/// mislead (a unit test of the tree checks them all), but what the user
/// typed and the text quotes may (`unknown command "timeout=5s"` would
/// read "Connection timed out"): then the quoted parts are elided. A text
/// that then reads as no errno in particular (plan9port's ERANGE,
/// "Numerical result out of range") gets the errno's phrase (see
/// [`plan9port_phrase`]) in parentheses, inside the same 9P string, at the
/// end of its first clause (before the first ';'), so that it stays within
/// the 127 bytes plan9port keeps: `unknown command "…" (invalid argument);
/// want reset, ...`; a first clause too long for that gets it in front.
pub fn plain_text(e: &fs::Error) -> String {
    let mut text = e.message.to_string();
    if !reads_right(e.errno, &text) {
        let elided = elide_quotes(&text);
        if reads_right(e.errno, &elided) {
            text = elided;
        }
    }
    if plan9port_errno(&text) == e.errno {
        return text;
    }
    let Some(phrase) = plan9port_phrase(e.errno) else {
        return text;
    };
    let clause = text.find(';').unwrap_or(text.len());
    let (first, rest) = text.split_at(clause);
    [
        format!("{first} ({phrase}){rest}"),
        format!("({phrase}) {text}"),
    ]
    .into_iter()
    .find(|named| plan9port_errno(named) == e.errno)
    .unwrap_or(text)
}

/// `text` with each quoted part (Rust's {:?}) cut to "…".
fn elide_quotes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            // Skip to the closing quote (Rust's {:?} escapes inner ones).
            while let Some(q) = chars.next() {
                match q {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push('"');
        }
    }
    out
}

/// The phrase (Linux's strerror, in lower case) that plan9port reads as
/// `errno`, if its table has words for it: the first of [`PHRASES`] its
/// table reads so, which keeps the choice in step with the table. Its
/// table has none for ENOTEMPTY ("directory" reads ENOTDIR), EMSGSIZE ("too
/// long" reads E2BIG), ECANCELED, ESHUTDOWN or EUSERS: those texts stay
/// as they are, and read as ERANGE.
pub fn plan9port_phrase(errno: u32) -> Option<&'static str> {
    PHRASES
        .iter()
        .copied()
        .find(|p| plan9port_errno(p) == errno)
}

/// Candidate phrases for [`plan9port_phrase`].
const PHRASES: &[&str] = &[
    "operation not permitted",
    "permission denied",
    "file exists",
    "no such file or directory",
    "function not implemented",
    "input/output error",
    "timed out",
    "interrupted",
    "bad file descriptor",
    "resource temporarily unavailable",
    "out of memory",
    "is a directory",
    "not a directory",
    "invalid argument",
    "broken pipe",
    "device or resource busy",
    "read-only file system",
    "protocol error",
];

/// How much of an error's text plan9port keeps: ERRMAX (128) less its NUL.
pub const PLAN9PORT_ERRMAX: usize = 127;

/// True when plan9port reads `text` as `errno`, or as nothing in
/// particular (ERANGE, its "who knows"): never as another errno.
pub fn reads_right(errno: u32, text: &str) -> bool {
    let read = plan9port_errno(text);
    read == errno || read == fs::errno::ERANGE
}

/// The errno plan9port makes of an error's text (9pfuse's table,
/// src/cmd/9pfuse/errstr.c at 59ab62e5; lib9's errstr.c is alike): the
/// first entry whose words the text contains, case-insensitively, wins, and
/// a text matching none reads as ERANGE. Only the text's first
/// [`PLAN9PORT_ERRMAX`] bytes count: plan9port keeps no more of an error.
/// 9pfuse reports every Rerror of a plain 9P2000 server this way, so no
/// text dchan sends may contain the words of another errno.
pub fn plan9port_errno(text: &str) -> u32 {
    use fs::errno::*;
    const E2BIG: u32 = 7;
    const ENODEV: u32 = 19;
    const ESTALE: u32 = 116;
    const TABLE: &[(&str, u32)] = &[
        ("permitted", EPERM),
        ("permission", EACCES),
        ("access", EACCES),
        ("exists", EEXIST),
        ("exist", ENOENT),
        ("no such", ENOENT),
        ("not found", ENOENT),
        ("not implemented", ENOSYS),
        ("input/output", EIO),
        ("timeout", ETIMEDOUT),
        ("timed out", ETIMEDOUT),
        ("i/o", EIO),
        ("too long", E2BIG),
        ("interrupt", EINTR),
        ("no such", ENODEV),
        ("bad file", EBADF),
        (" fid ", EBADF),
        ("temporar", EAGAIN),
        ("memory", ENOMEM),
        ("is a directory", EISDIR),
        ("directory", ENOTDIR),
        ("argument", EINVAL),
        ("pipe", EPIPE),
        ("in use", EBUSY),
        ("busy", EBUSY),
        ("illegal", EINVAL),
        ("invalid", EINVAL),
        ("read-only", EROFS),
        ("read only", EROFS),
        ("stale ", ESTALE),
        ("proto", EPROTO),
        ("entry", ENOENT),
    ];
    let mut end = text.len().min(PLAN9PORT_ERRMAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text[..end].to_lowercase();
    TABLE
        .iter()
        .find(|(words, _)| text.contains(words))
        .map_or(ERANGE, |&(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_modes() {
        let m = open_mode(OTRUNC | 1);
        assert!(m.writes() && !m.reads() && m.truncate);
        let m = lopen_mode(0o2002 | 0o4000);
        assert!(m.writes() && m.reads() && m.append && m.nonblock && !m.truncate);
        assert_eq!(open_mode(3).access, Access::Exec);
    }

    #[test]
    fn plain_9p2000_errors_never_read_as_another_errno() {
        use fs::errno::{EEXIST, EINVAL, ETIMEDOUT};
        let e = fs::Error::new(EINVAL, "unknown command \"timeout=5s\"; want reset");
        let Fcall::Rerror { ename, .. } = error(Dialect::P2000, &e) else {
            panic!()
        };
        assert_eq!(
            ename,
            "unknown command \"…\" (invalid argument); want reset"
        );
        assert_eq!(plan9port_errno(&ename), EINVAL);
        assert_eq!(plan9port_errno(&e.message), ETIMEDOUT);
        // 9P2000.u carries the errno: its text is left whole.
        let Fcall::Rerror { ename, .. } = error(Dialect::P2000u, &e) else {
            panic!()
        };
        assert_eq!(ename, &*e.message);
        // Inner quotes, escaped by {:?}, stay inside the elision.
        let e = fs::Error::new(EINVAL, r#"bad "a\"exists" and "b""#);
        assert_eq!(plain_text(&e), r#"bad "…" and "…" (invalid argument)"#);
        // A long first clause: the phrase goes first, within what
        // plan9port keeps.
        let e = fs::Error::new(EINVAL, "x".repeat(200));
        assert_eq!(
            plain_text(&e),
            format!("(invalid argument) {}", "x".repeat(200))
        );
        // A text that reads right is sent as it is.
        let e = fs::Error::new(EEXIST, "topic exists: \"timeout\"");
        assert_eq!(plain_text(&e), &*e.message);
    }

    #[test]
    fn plan9port_phrases_name_each_errno_its_table_knows() {
        use fs::errno::*;
        for (errno, phrase) in [
            (EPERM, "operation not permitted"),
            (EACCES, "permission denied"),
            (EEXIST, "file exists"),
            (ENOENT, "no such file or directory"),
            (ETIMEDOUT, "timed out"),
            (EAGAIN, "resource temporarily unavailable"),
            (EINVAL, "invalid argument"),
            (EPIPE, "broken pipe"),
            (EBUSY, "device or resource busy"),
            (EISDIR, "is a directory"),
            (ENOTDIR, "not a directory"),
            (EINTR, "interrupted"),
        ] {
            assert_eq!(plan9port_phrase(errno), Some(phrase));
        }
        // Words plan9port has no entry for: left to read as ERANGE.
        for errno in [ENOTEMPTY, EMSGSIZE, ECANCELED, ESHUTDOWN, ERANGE] {
            assert_eq!(plan9port_phrase(errno), None, "{errno}");
        }
        let e = fs::Error::new(EPIPE, "topic closed");
        assert_eq!(plain_text(&e), "topic closed (broken pipe)");
        let e = fs::Error::new(ENOTEMPTY, "topic has subtopics");
        assert_eq!(plain_text(&e), "topic has subtopics");
    }

    #[test]
    fn wstat_dont_touch_is_empty() {
        let s = Stat {
            mode: u32::MAX,
            atime: u32::MAX,
            mtime: u32::MAX,
            length: u64::MAX,
            ..Stat::default()
        };
        assert!(is_empty(&wstat_changes(&s).unwrap()));
        let s = Stat { length: 0, ..s };
        assert_eq!(wstat_changes(&s).unwrap().length, Some(0));
    }
}
