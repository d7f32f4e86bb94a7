//! The 9P messages as Rust values: every T- and R-message of 9P2000, its
//! 9P2000.u additions and the 9P2000.L messages the Linux client sends.
//!
//! This module only names things; `codec` turns them into bytes and back.
//! Payloads (`Tread`/`Rread` data, `Rreaddir` entries) are `Bytes`, so a
//! message passes through the server without its payload being copied.

use bytes::Bytes;

/// The tag of a request; `NOTAG` is reserved for Tversion.
pub type Tag = u16;
/// A client's name for a file on one connection.
pub type Fid = u32;

pub const NOTAG: Tag = 0xFFFF;
pub const NOFID: Fid = 0xFFFF_FFFF;
/// "No such numeric user" in 9P2000.u/.L attach and auth.
pub const NONUNAME: u32 = 0xFFFF_FFFF;
/// At most this many names in one Twalk (intro(5)).
pub const MAXWELEM: usize = 16;
/// Bytes of a Tread/Twrite/Rread header before the data: size[4] type[1]
/// tag[2] fid[4] offset[8] count[4]. A read's count is at most msize − IOHDRSZ.
pub const IOHDRSZ: u32 = 24;

/// The dialect a connection agreed on in Tversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Plain "9P2000": Plan 9, plan9port (9p, 9pfuse), Linux with version=9p2000.
    P2000,
    /// "9P2000.u": Unix extensions (numeric ids, errno in Rerror, extension strings).
    P2000u,
    /// "9P2000.L": Linux's dialect, the kernel's default.
    P2000L,
}

impl Dialect {
    /// The version string as it appears in Tversion/Rversion.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::P2000 => "9P2000",
            Dialect::P2000u => "9P2000.u",
            Dialect::P2000L => "9P2000.L",
        }
    }

    /// The dialect a Tversion string asks for: the longest one known that
    /// the string starts with, followed by nothing or by a period-separated
    /// extension (version(5)): "9P2000.L.Z" is 9P2000.L, "9P2000.u.x"
    /// 9P2000.u, and "9P2000" followed by anything else plain 9P2000
    /// ("9P2000.Lx" too); other strings are not 9P at all.
    pub fn from_version(v: &str) -> Option<Dialect> {
        let extends = |d: &str| {
            v.strip_prefix(d)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        match v {
            _ if extends("9P2000.L") => Some(Dialect::P2000L),
            _ if extends("9P2000.u") => Some(Dialect::P2000u),
            _ if v.starts_with("9P2000") => Some(Dialect::P2000),
            _ => None,
        }
    }
}

/// A file's identity on the server: type bits, version, and a path unique
/// in the file tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

/// Qid type bits.
pub const QTDIR: u8 = 0x80;
pub const QTAPPEND: u8 = 0x40;
pub const QTEXCL: u8 = 0x20;
pub const QTAUTH: u8 = 0x08;
pub const QTFILE: u8 = 0x00;

/// Mode bits of a 9P2000 stat (the high bits; the low nine are permissions).
pub const DMDIR: u32 = 0x8000_0000;
pub const DMAPPEND: u32 = 0x4000_0000;
pub const DMEXCL: u32 = 0x2000_0000;

/// Topen/Tcreate modes of 9P2000.
pub const OREAD: u8 = 0;
pub const OWRITE: u8 = 1;
pub const ORDWR: u8 = 2;
pub const OEXEC: u8 = 3;
pub const OTRUNC: u8 = 0x10;
pub const ORCLOSE: u8 = 0x40;

/// The machine-independent directory entry of 9P2000 (stat(5)), with the
/// 9P2000.u fields that follow it on a .u connection (ignored, and not sent,
/// on a plain one). In Twstat, "don't touch" is all ones / the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub ty: u16,
    pub dev: u32,
    pub qid: Qid,
    pub mode: u32,
    pub atime: u32,
    pub mtime: u32,
    pub length: u64,
    pub name: String,
    pub uid: String,
    pub gid: String,
    pub muid: String,
    /// 9P2000.u only.
    pub extension: String,
    /// 9P2000.u only.
    pub n_uid: u32,
    /// 9P2000.u only.
    pub n_gid: u32,
    /// 9P2000.u only.
    pub n_muid: u32,
}

/// Rstatfs of 9P2000.L.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    pub ty: u32,
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
    pub namelen: u32,
}

/// Rgetattr of 9P2000.L.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub valid: u64,
    pub qid: Qid,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
    pub ctime_sec: u64,
    pub ctime_nsec: u64,
    pub btime_sec: u64,
    pub btime_nsec: u64,
    pub generation: u64,
    pub data_version: u64,
}

/// Tsetattr of 9P2000.L; `valid` says which fields count (P9_SETATTR_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
}

/// Tlock / Tgetlock / Rgetlock of 9P2000.L.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Flock {
    pub ty: u8,
    pub flags: u32,
    pub start: u64,
    pub length: u64,
    pub proc_id: u32,
    pub client_id: String,
}

/// One message body. The tag travels beside it in [`Msg`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcall {
    // 9P2000 (with the 9P2000.u fields, absent on a plain connection)
    Tversion {
        msize: u32,
        version: String,
    },
    Rversion {
        msize: u32,
        version: String,
    },
    Tauth {
        afid: Fid,
        uname: String,
        aname: String,
        n_uname: u32,
    },
    Rauth {
        aqid: Qid,
    },
    Tattach {
        fid: Fid,
        afid: Fid,
        uname: String,
        aname: String,
        n_uname: u32,
    },
    Rattach {
        qid: Qid,
    },
    /// `errno` is sent on 9P2000.u only.
    Rerror {
        ename: String,
        errno: u32,
    },
    Tflush {
        oldtag: Tag,
    },
    Rflush,
    Twalk {
        fid: Fid,
        newfid: Fid,
        wnames: Vec<String>,
    },
    Rwalk {
        wqids: Vec<Qid>,
    },
    Topen {
        fid: Fid,
        mode: u8,
    },
    Ropen {
        qid: Qid,
        iounit: u32,
    },
    /// `extension` is sent on 9P2000.u only.
    Tcreate {
        fid: Fid,
        name: String,
        perm: u32,
        mode: u8,
        extension: String,
    },
    Rcreate {
        qid: Qid,
        iounit: u32,
    },
    Tread {
        fid: Fid,
        offset: u64,
        count: u32,
    },
    Rread {
        data: Bytes,
    },
    Twrite {
        fid: Fid,
        offset: u64,
        data: Bytes,
    },
    Rwrite {
        count: u32,
    },
    Tclunk {
        fid: Fid,
    },
    Rclunk,
    Tremove {
        fid: Fid,
    },
    Rremove,
    Tstat {
        fid: Fid,
    },
    Rstat {
        stat: Stat,
    },
    Twstat {
        fid: Fid,
        stat: Stat,
    },
    Rwstat,

    // 9P2000.L
    Rlerror {
        ecode: u32,
    },
    Tstatfs {
        fid: Fid,
    },
    Rstatfs {
        statfs: StatFs,
    },
    Tlopen {
        fid: Fid,
        flags: u32,
    },
    Rlopen {
        qid: Qid,
        iounit: u32,
    },
    Tlcreate {
        fid: Fid,
        name: String,
        flags: u32,
        mode: u32,
        gid: u32,
    },
    Rlcreate {
        qid: Qid,
        iounit: u32,
    },
    Tsymlink {
        fid: Fid,
        name: String,
        symtgt: String,
        gid: u32,
    },
    Rsymlink {
        qid: Qid,
    },
    Tmknod {
        dfid: Fid,
        name: String,
        mode: u32,
        major: u32,
        minor: u32,
        gid: u32,
    },
    Rmknod {
        qid: Qid,
    },
    Trename {
        fid: Fid,
        dfid: Fid,
        name: String,
    },
    Rrename,
    Treadlink {
        fid: Fid,
    },
    Rreadlink {
        target: String,
    },
    Tgetattr {
        fid: Fid,
        request_mask: u64,
    },
    Rgetattr {
        attr: Attr,
    },
    Tsetattr {
        fid: Fid,
        attr: SetAttr,
    },
    Rsetattr,
    Txattrwalk {
        fid: Fid,
        newfid: Fid,
        name: String,
    },
    Rxattrwalk {
        size: u64,
    },
    Txattrcreate {
        fid: Fid,
        name: String,
        attr_size: u64,
        flags: u32,
    },
    Rxattrcreate,
    Treaddir {
        fid: Fid,
        offset: u64,
        count: u32,
    },
    /// The encoded dirents (qid[13] offset[8] type[1] name[s] each).
    Rreaddir {
        data: Bytes,
    },
    Tfsync {
        fid: Fid,
        datasync: u32,
    },
    Rfsync,
    Tlock {
        fid: Fid,
        flock: Flock,
    },
    Rlock {
        status: u8,
    },
    Tgetlock {
        fid: Fid,
        flock: Flock,
    },
    Rgetlock {
        flock: Flock,
    },
    Tlink {
        dfid: Fid,
        fid: Fid,
        name: String,
    },
    Rlink,
    Tmkdir {
        dfid: Fid,
        name: String,
        mode: u32,
        gid: u32,
    },
    Rmkdir {
        qid: Qid,
    },
    Trenameat {
        olddirfid: Fid,
        oldname: String,
        newdirfid: Fid,
        newname: String,
    },
    Rrenameat,
    Tunlinkat {
        dirfid: Fid,
        name: String,
        flags: u32,
    },
    Runlinkat,
}

/// A whole 9P message: tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: Tag,
    pub body: Fcall,
}
