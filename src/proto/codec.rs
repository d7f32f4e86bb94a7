//! The byte encoding of 9P messages: [`encode`], [`encode_head`] and
//! [`decode`] for 9P2000, 9P2000.u and 9P2000.L, plus the stat and dirent
//! records the engine puts in directory reads.
//!
//! Written by hand because no crate speaks all three dialects (rs9p knows
//! 9P2000.L only); rs9p serves as the tests' oracle for the .L layouts.
//!
//! Every message is `size[4] type[1] tag[2] fields...`, little-endian;
//! strings are `len[2] utf8[len]`, qids `type[1] version[4] path[8]`.
//! Dialects differ only in a few fields:
//!
//! | field                          | 9P2000 | .u  | .L                   |
//! |--------------------------------|--------|-----|----------------------|
//! | Tauth/Tattach `n_uname[4]`     | no     | yes | yes                  |
//! | Rerror `errno[4]`              | no     | yes | optional (use Rlerror)|
//! | Tcreate `extension[s]`         | no     | yes | no                   |
//! | stat `extension n_uid n_gid n_muid` | no | yes | no                  |
//!
//! Fields absent on the wire decode as "none": `n_uname`, `n_uid`... =
//! [`NONUNAME`], `errno` = 0, `extension` = "". The 9P2000.L message types
//! (Tlopen, Rlerror...) decode only on a 9P2000.L connection; the 9P2000
//! types decode on every dialect.
//!
//! Decoding is total: any bytes give a [`Msg`] or a [`DecodeError`]. Counts
//! are checked against the bytes present before anything is allocated,
//! strings must be UTF-8, and bytes left after the last field are an error.
//! Payloads (Rread, Twrite, Rreaddir data) are slices of the frame, not copies.

use bytes::{BufMut, Bytes, BytesMut};

use super::msg::*;

// ---------------------------------------------------------------------------
// Message types and sizes

/// The numeric type of every message, as on the wire.
pub mod types {
    pub const TLERROR: u8 = 6;
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const RSTATFS: u8 = 9;
    pub const TLOPEN: u8 = 12;
    pub const RLOPEN: u8 = 13;
    pub const TLCREATE: u8 = 14;
    pub const RLCREATE: u8 = 15;
    pub const TSYMLINK: u8 = 16;
    pub const RSYMLINK: u8 = 17;
    pub const TMKNOD: u8 = 18;
    pub const RMKNOD: u8 = 19;
    pub const TRENAME: u8 = 20;
    pub const RRENAME: u8 = 21;
    pub const TREADLINK: u8 = 22;
    pub const RREADLINK: u8 = 23;
    pub const TGETATTR: u8 = 24;
    pub const RGETATTR: u8 = 25;
    pub const TSETATTR: u8 = 26;
    pub const RSETATTR: u8 = 27;
    pub const TXATTRWALK: u8 = 30;
    pub const RXATTRWALK: u8 = 31;
    pub const TXATTRCREATE: u8 = 32;
    pub const RXATTRCREATE: u8 = 33;
    pub const TREADDIR: u8 = 40;
    pub const RREADDIR: u8 = 41;
    pub const TFSYNC: u8 = 50;
    pub const RFSYNC: u8 = 51;
    pub const TLOCK: u8 = 52;
    pub const RLOCK: u8 = 53;
    pub const TGETLOCK: u8 = 54;
    pub const RGETLOCK: u8 = 55;
    pub const TLINK: u8 = 70;
    pub const RLINK: u8 = 71;
    pub const TMKDIR: u8 = 72;
    pub const RMKDIR: u8 = 73;
    pub const TRENAMEAT: u8 = 74;
    pub const RRENAMEAT: u8 = 75;
    pub const TUNLINKAT: u8 = 76;
    pub const RUNLINKAT: u8 = 77;

    pub const TVERSION: u8 = 100;
    pub const RVERSION: u8 = 101;
    pub const TAUTH: u8 = 102;
    pub const RAUTH: u8 = 103;
    pub const TATTACH: u8 = 104;
    pub const RATTACH: u8 = 105;
    pub const TERROR: u8 = 106;
    pub const RERROR: u8 = 107;
    pub const TFLUSH: u8 = 108;
    pub const RFLUSH: u8 = 109;
    pub const TWALK: u8 = 110;
    pub const RWALK: u8 = 111;
    pub const TOPEN: u8 = 112;
    pub const ROPEN: u8 = 113;
    pub const TCREATE: u8 = 114;
    pub const RCREATE: u8 = 115;
    pub const TREAD: u8 = 116;
    pub const RREAD: u8 = 117;
    pub const TWRITE: u8 = 118;
    pub const RWRITE: u8 = 119;
    pub const TCLUNK: u8 = 120;
    pub const RCLUNK: u8 = 121;
    pub const TREMOVE: u8 = 122;
    pub const RREMOVE: u8 = 123;
    pub const TSTAT: u8 = 124;
    pub const RSTAT: u8 = 125;
    pub const TWSTAT: u8 = 126;
    pub const RWSTAT: u8 = 127;
}

use types::*;

/// size[4] type[1] tag[2]: the bytes every message starts with.
pub const HEADER_SIZE: usize = 7;
/// Bytes of an Rread before its data: header, count[4].
pub const RREAD_HDRSZ: u32 = 11;
/// Bytes of an Rreaddir before its entries: header, count[4].
pub const RREADDIR_HDRSZ: u32 = 11;
/// Bytes of a Twrite before its data: header, fid[4] offset[8] count[4].
pub const TWRITE_HDRSZ: u32 = 23;
/// A whole Rlerror: header, ecode[4].
pub const RLERROR_SIZE: u32 = 11;
/// Bytes of a qid on the wire.
pub const QID_SIZE: usize = 13;

/// Bytes an Rerror adds to its text: header, the string's len[2], and on
/// 9P2000.u (and .L, should one be sent) errno[4].
pub const fn rerror_overhead(dialect: Dialect) -> u32 {
    match dialect {
        Dialect::P2000 => 9,
        Dialect::P2000u | Dialect::P2000L => 13,
    }
}

/// Bytes of one Rreaddir entry: qid[13] offset[8] type[1] name[s].
pub const fn dirent_size(name_len: usize) -> usize {
    QID_SIZE + 8 + 1 + 2 + name_len
}

/// Bytes of `stat` as [`encode_stat`] writes it, its size[2] field included.
pub fn stat_size(stat: &Stat, dialect: Dialect) -> usize {
    let strings = |v: &[&str]| v.iter().map(|s| 2 + wire_len(s)).sum::<usize>();
    let base = 2 + 2 + 4 + QID_SIZE + 4 + 4 + 4 + 8;
    let mut n = base + strings(&[&stat.name, &stat.uid, &stat.gid, &stat.muid]);
    if dialect == Dialect::P2000u {
        n += strings(&[&stat.extension]) + 12;
    }
    n
}

/// Whether messages of type `ty` exist in `dialect`.
pub fn type_in_dialect(ty: u8, dialect: Dialect) -> bool {
    ty >= TVERSION || dialect == Dialect::P2000L
}

/// The name of message type `ty` ("Twalk"), if it is one.
pub fn type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        TLERROR => "Tlerror",
        RLERROR => "Rlerror",
        TSTATFS => "Tstatfs",
        RSTATFS => "Rstatfs",
        TLOPEN => "Tlopen",
        RLOPEN => "Rlopen",
        TLCREATE => "Tlcreate",
        RLCREATE => "Rlcreate",
        TSYMLINK => "Tsymlink",
        RSYMLINK => "Rsymlink",
        TMKNOD => "Tmknod",
        RMKNOD => "Rmknod",
        TRENAME => "Trename",
        RRENAME => "Rrename",
        TREADLINK => "Treadlink",
        RREADLINK => "Rreadlink",
        TGETATTR => "Tgetattr",
        RGETATTR => "Rgetattr",
        TSETATTR => "Tsetattr",
        RSETATTR => "Rsetattr",
        TXATTRWALK => "Txattrwalk",
        RXATTRWALK => "Rxattrwalk",
        TXATTRCREATE => "Txattrcreate",
        RXATTRCREATE => "Rxattrcreate",
        TREADDIR => "Treaddir",
        RREADDIR => "Rreaddir",
        TFSYNC => "Tfsync",
        RFSYNC => "Rfsync",
        TLOCK => "Tlock",
        RLOCK => "Rlock",
        TGETLOCK => "Tgetlock",
        RGETLOCK => "Rgetlock",
        TLINK => "Tlink",
        RLINK => "Rlink",
        TMKDIR => "Tmkdir",
        RMKDIR => "Rmkdir",
        TRENAMEAT => "Trenameat",
        RRENAMEAT => "Rrenameat",
        TUNLINKAT => "Tunlinkat",
        RUNLINKAT => "Runlinkat",
        TVERSION => "Tversion",
        RVERSION => "Rversion",
        TAUTH => "Tauth",
        RAUTH => "Rauth",
        TATTACH => "Tattach",
        RATTACH => "Rattach",
        TERROR => "Terror",
        RERROR => "Rerror",
        TFLUSH => "Tflush",
        RFLUSH => "Rflush",
        TWALK => "Twalk",
        RWALK => "Rwalk",
        TOPEN => "Topen",
        ROPEN => "Ropen",
        TCREATE => "Tcreate",
        RCREATE => "Rcreate",
        TREAD => "Tread",
        RREAD => "Rread",
        TWRITE => "Twrite",
        RWRITE => "Rwrite",
        TCLUNK => "Tclunk",
        RCLUNK => "Rclunk",
        TREMOVE => "Tremove",
        RREMOVE => "Rremove",
        TSTAT => "Tstat",
        RSTAT => "Rstat",
        TWSTAT => "Twstat",
        RWSTAT => "Rwstat",
        _ => return None,
    })
}

impl Fcall {
    /// The message's type number on the wire.
    pub fn msg_type(&self) -> u8 {
        use Fcall::*;
        match self {
            Tversion { .. } => TVERSION,
            Rversion { .. } => RVERSION,
            Tauth { .. } => TAUTH,
            Rauth { .. } => RAUTH,
            Tattach { .. } => TATTACH,
            Rattach { .. } => RATTACH,
            Rerror { .. } => RERROR,
            Tflush { .. } => TFLUSH,
            Rflush => RFLUSH,
            Twalk { .. } => TWALK,
            Rwalk { .. } => RWALK,
            Topen { .. } => TOPEN,
            Ropen { .. } => ROPEN,
            Tcreate { .. } => TCREATE,
            Rcreate { .. } => RCREATE,
            Tread { .. } => TREAD,
            Rread { .. } => RREAD,
            Twrite { .. } => TWRITE,
            Rwrite { .. } => RWRITE,
            Tclunk { .. } => TCLUNK,
            Rclunk => RCLUNK,
            Tremove { .. } => TREMOVE,
            Rremove => RREMOVE,
            Tstat { .. } => TSTAT,
            Rstat { .. } => RSTAT,
            Twstat { .. } => TWSTAT,
            Rwstat => RWSTAT,
            Rlerror { .. } => RLERROR,
            Tstatfs { .. } => TSTATFS,
            Rstatfs { .. } => RSTATFS,
            Tlopen { .. } => TLOPEN,
            Rlopen { .. } => RLOPEN,
            Tlcreate { .. } => TLCREATE,
            Rlcreate { .. } => RLCREATE,
            Tsymlink { .. } => TSYMLINK,
            Rsymlink { .. } => RSYMLINK,
            Tmknod { .. } => TMKNOD,
            Rmknod { .. } => RMKNOD,
            Trename { .. } => TRENAME,
            Rrename => RRENAME,
            Treadlink { .. } => TREADLINK,
            Rreadlink { .. } => RREADLINK,
            Tgetattr { .. } => TGETATTR,
            Rgetattr { .. } => RGETATTR,
            Tsetattr { .. } => TSETATTR,
            Rsetattr => RSETATTR,
            Txattrwalk { .. } => TXATTRWALK,
            Rxattrwalk { .. } => RXATTRWALK,
            Txattrcreate { .. } => TXATTRCREATE,
            Rxattrcreate => RXATTRCREATE,
            Treaddir { .. } => TREADDIR,
            Rreaddir { .. } => RREADDIR,
            Tfsync { .. } => TFSYNC,
            Rfsync => RFSYNC,
            Tlock { .. } => TLOCK,
            Rlock { .. } => RLOCK,
            Tgetlock { .. } => TGETLOCK,
            Rgetlock { .. } => RGETLOCK,
            Tlink { .. } => TLINK,
            Rlink => RLINK,
            Tmkdir { .. } => TMKDIR,
            Rmkdir { .. } => RMKDIR,
            Trenameat { .. } => TRENAMEAT,
            Rrenameat => RRENAMEAT,
            Tunlinkat { .. } => TUNLINKAT,
            Runlinkat => RUNLINKAT,
        }
    }

    /// The message's name ("Twalk"), for logs and errors.
    pub fn name(&self) -> &'static str {
        type_name(self.msg_type()).unwrap_or("?")
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a frame is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", prefix(.msg_type))]
pub struct DecodeError {
    /// The frame's tag, when the header was readable: the engine answers
    /// the bad request on it.
    pub tag: Option<Tag>,
    /// The frame's type byte, when the header was readable.
    pub msg_type: Option<u8>,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

fn prefix(ty: &Option<u8>) -> String {
    match ty.map(|t| (t, type_name(t))) {
        Some((_, Some(name))) => format!("{name}: "),
        _ => String::new(),
    }
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("frame of {0} bytes is shorter than the 7-byte header")]
    Short(usize),
    #[error("size field says {size} bytes but the frame has {len}")]
    SizeMismatch { size: u32, len: usize },
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {ty} is not part of {dialect}")]
    WrongDialect { ty: u8, dialect: &'static str },
    #[error("truncated at {field}: needs {need} bytes, {left} left")]
    Truncated {
        field: &'static str,
        need: usize,
        left: usize,
    },
    #[error("{field} is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("{field} {n} over {max}")]
    TooMany {
        field: &'static str,
        n: usize,
        max: usize,
    },
    #[error("{0} bytes after the last field")]
    Trailing(usize),
    #[error("stat size field says {size} bytes but its fields take {actual}")]
    StatSize { size: usize, actual: usize },
}

// ---------------------------------------------------------------------------
// Decoding

/// A cursor over a frame (or a stat record) that never reads past its end.
struct Reader<'a> {
    /// The bytes being read; payloads are sliced out of it.
    buf: &'a Bytes,
    /// Offset of the next unread byte.
    pos: usize,
}

type Res<T> = Result<T, DecodeErrorKind>;

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Res<&'a [u8]> {
        if n > self.left() {
            return Err(DecodeErrorKind::Truncated {
                field,
                need: n,
                left: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Res<u8> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Res<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Res<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, field: &'static str) -> Res<u64> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self, field: &'static str) -> Res<String> {
        let n = self.u16(field)? as usize;
        let b = self.take(n, field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeErrorKind::BadUtf8 { field })
    }
    fn qid(&mut self, field: &'static str) -> Res<Qid> {
        Ok(Qid {
            ty: self.u8(field)?,
            version: self.u32(field)?,
            path: self.u64(field)?,
        })
    }
    /// count[4] followed by that many bytes, sliced from the frame.
    fn data(&mut self, field: &'static str) -> Res<Bytes> {
        let n = self.u32(field)? as usize;
        if n > self.left() {
            return Err(DecodeErrorKind::Truncated {
                field,
                need: n,
                left: self.left(),
            });
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn flock(&mut self, with_flags: bool) -> Res<Flock> {
        Ok(Flock {
            ty: self.u8("type")?,
            flags: if with_flags { self.u32("flags")? } else { 0 },
            start: self.u64("start")?,
            length: self.u64("length")?,
            proc_id: self.u32("proc_id")?,
            client_id: self.string("client_id")?,
        })
    }
    fn n_uname(&mut self, dialect: Dialect) -> Res<u32> {
        match dialect {
            Dialect::P2000 => Ok(NONUNAME),
            _ => self.u32("n_uname"),
        }
    }
    fn stat_body(&mut self, dialect: Dialect) -> Res<Stat> {
        let mut st = Stat {
            ty: self.u16("stat type")?,
            dev: self.u32("stat dev")?,
            qid: self.qid("stat qid")?,
            mode: self.u32("stat mode")?,
            atime: self.u32("stat atime")?,
            mtime: self.u32("stat mtime")?,
            length: self.u64("stat length")?,
            name: self.string("stat name")?,
            uid: self.string("stat uid")?,
            gid: self.string("stat gid")?,
            muid: self.string("stat muid")?,
            extension: String::new(),
            n_uid: NONUNAME,
            n_gid: NONUNAME,
            n_muid: NONUNAME,
        };
        if dialect == Dialect::P2000u {
            st.extension = self.string("stat extension")?;
            st.n_uid = self.u32("stat n_uid")?;
            st.n_gid = self.u32("stat n_gid")?;
            st.n_muid = self.u32("stat n_muid")?;
        }
        Ok(st)
    }
    /// size[2] and a stat that must fill exactly that many bytes.
    fn stat(&mut self, dialect: Dialect) -> Res<Stat> {
        let size = self.u16("stat size")? as usize;
        let start = self.pos;
        let st = self.stat_body(dialect)?;
        let actual = self.pos - start;
        if actual != size {
            return Err(DecodeErrorKind::StatSize { size, actual });
        }
        Ok(st)
    }
    /// n[2] followed by a stat of exactly n bytes (Rstat, Twstat).
    fn wrapped_stat(&mut self, dialect: Dialect) -> Res<Stat> {
        let n = self.u16("nstat")? as usize;
        let start = self.pos;
        let st = self.stat(dialect)?;
        let actual = self.pos - start;
        if actual != n {
            return Err(DecodeErrorKind::StatSize { size: n, actual });
        }
        Ok(st)
    }
}

/// Decodes one whole message, size field included, as read on a connection
/// that agreed on `dialect`.
pub fn decode(frame: Bytes, dialect: Dialect) -> Result<Msg, DecodeError> {
    let err = |tag, msg_type, kind| DecodeError {
        tag,
        msg_type,
        kind,
    };
    if frame.len() < HEADER_SIZE {
        return Err(err(None, None, DecodeErrorKind::Short(frame.len())));
    }
    let size = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
    let ty = frame[4];
    let tag = u16::from_le_bytes([frame[5], frame[6]]);
    if size as usize != frame.len() {
        return Err(err(
            Some(tag),
            Some(ty),
            DecodeErrorKind::SizeMismatch {
                size,
                len: frame.len(),
            },
        ));
    }
    if type_name(ty).is_none() || ty == TLERROR || ty == TERROR {
        return Err(err(Some(tag), None, DecodeErrorKind::UnknownType(ty)));
    }
    if !type_in_dialect(ty, dialect) {
        return Err(err(
            Some(tag),
            Some(ty),
            DecodeErrorKind::WrongDialect {
                ty,
                dialect: dialect.as_str(),
            },
        ));
    }
    let mut r = Reader {
        buf: &frame,
        pos: HEADER_SIZE,
    };
    let body = decode_body(&mut r, ty, dialect).and_then(|body| match r.left() {
        0 => Ok(body),
        n => Err(DecodeErrorKind::Trailing(n)),
    });
    body.map(|body| Msg { tag, body })
        .map_err(|kind| err(Some(tag), Some(ty), kind))
}

fn decode_body(r: &mut Reader<'_>, ty: u8, dialect: Dialect) -> Res<Fcall> {
    use Fcall::*;
    Ok(match ty {
        TVERSION => Tversion {
            msize: r.u32("msize")?,
            version: r.string("version")?,
        },
        RVERSION => Rversion {
            msize: r.u32("msize")?,
            version: r.string("version")?,
        },
        TAUTH => Tauth {
            afid: r.u32("afid")?,
            uname: r.string("uname")?,
            aname: r.string("aname")?,
            n_uname: r.n_uname(dialect)?,
        },
        RAUTH => Rauth {
            aqid: r.qid("aqid")?,
        },
        TATTACH => Tattach {
            fid: r.u32("fid")?,
            afid: r.u32("afid")?,
            uname: r.string("uname")?,
            aname: r.string("aname")?,
            n_uname: r.n_uname(dialect)?,
        },
        RATTACH => Rattach { qid: r.qid("qid")? },
        RERROR => {
            let ename = r.string("ename")?;
            let errno = match dialect {
                Dialect::P2000 => 0,
                Dialect::P2000u => r.u32("errno")?,
                // 9P2000.L answers with Rlerror; an Rerror may come with or
                // without the errno Linux's "s?d" would put there.
                Dialect::P2000L if r.left() == 4 => r.u32("errno")?,
                Dialect::P2000L => 0,
            };
            Rerror { ename, errno }
        }
        TFLUSH => Tflush {
            oldtag: r.u16("oldtag")?,
        },
        RFLUSH => Rflush,
        TWALK => {
            let fid = r.u32("fid")?;
            let newfid = r.u32("newfid")?;
            let n = r.u16("nwname")? as usize;
            if n > MAXWELEM {
                return Err(DecodeErrorKind::TooMany {
                    field: "nwname",
                    n,
                    max: MAXWELEM,
                });
            }
            let mut wnames = Vec::with_capacity(n);
            for _ in 0..n {
                wnames.push(r.string("wname")?);
            }
            Twalk {
                fid,
                newfid,
                wnames,
            }
        }
        RWALK => {
            let n = r.u16("nwqid")? as usize;
            if n > MAXWELEM {
                return Err(DecodeErrorKind::TooMany {
                    field: "nwqid",
                    n,
                    max: MAXWELEM,
                });
            }
            let mut wqids = Vec::with_capacity(n);
            for _ in 0..n {
                wqids.push(r.qid("wqid")?);
            }
            Rwalk { wqids }
        }
        TOPEN => Topen {
            fid: r.u32("fid")?,
            mode: r.u8("mode")?,
        },
        ROPEN => Ropen {
            qid: r.qid("qid")?,
            iounit: r.u32("iounit")?,
        },
        TCREATE => Tcreate {
            fid: r.u32("fid")?,
            name: r.string("name")?,
            perm: r.u32("perm")?,
            mode: r.u8("mode")?,
            extension: match dialect {
                Dialect::P2000u => r.string("extension")?,
                _ => String::new(),
            },
        },
        RCREATE => Rcreate {
            qid: r.qid("qid")?,
            iounit: r.u32("iounit")?,
        },
        TREAD => Tread {
            fid: r.u32("fid")?,
            offset: r.u64("offset")?,
            count: r.u32("count")?,
        },
        RREAD => Rread {
            data: r.data("count")?,
        },
        TWRITE => Twrite {
            fid: r.u32("fid")?,
            offset: r.u64("offset")?,
            data: r.data("count")?,
        },
        RWRITE => Rwrite {
            count: r.u32("count")?,
        },
        TCLUNK => Tclunk { fid: r.u32("fid")? },
        RCLUNK => Rclunk,
        TREMOVE => Tremove { fid: r.u32("fid")? },
        RREMOVE => Rremove,
        TSTAT => Tstat { fid: r.u32("fid")? },
        RSTAT => Rstat {
            stat: r.wrapped_stat(dialect)?,
        },
        TWSTAT => Twstat {
            fid: r.u32("fid")?,
            stat: r.wrapped_stat(dialect)?,
        },
        RWSTAT => Rwstat,

        RLERROR => Rlerror {
            ecode: r.u32("ecode")?,
        },
        TSTATFS => Tstatfs { fid: r.u32("fid")? },
        RSTATFS => Rstatfs {
            statfs: StatFs {
                ty: r.u32("type")?,
                bsize: r.u32("bsize")?,
                blocks: r.u64("blocks")?,
                bfree: r.u64("bfree")?,
                bavail: r.u64("bavail")?,
                files: r.u64("files")?,
                ffree: r.u64("ffree")?,
                fsid: r.u64("fsid")?,
                namelen: r.u32("namelen")?,
            },
        },
        TLOPEN => Tlopen {
            fid: r.u32("fid")?,
            flags: r.u32("flags")?,
        },
        RLOPEN => Rlopen {
            qid: r.qid("qid")?,
            iounit: r.u32("iounit")?,
        },
        TLCREATE => Tlcreate {
            fid: r.u32("fid")?,
            name: r.string("name")?,
            flags: r.u32("flags")?,
            mode: r.u32("mode")?,
            gid: r.u32("gid")?,
        },
        RLCREATE => Rlcreate {
            qid: r.qid("qid")?,
            iounit: r.u32("iounit")?,
        },
        TSYMLINK => Tsymlink {
            fid: r.u32("fid")?,
            name: r.string("name")?,
            symtgt: r.string("symtgt")?,
            gid: r.u32("gid")?,
        },
        RSYMLINK => Rsymlink { qid: r.qid("qid")? },
        TMKNOD => Tmknod {
            dfid: r.u32("dfid")?,
            name: r.string("name")?,
            mode: r.u32("mode")?,
            major: r.u32("major")?,
            minor: r.u32("minor")?,
            gid: r.u32("gid")?,
        },
        RMKNOD => Rmknod { qid: r.qid("qid")? },
        TRENAME => Trename {
            fid: r.u32("fid")?,
            dfid: r.u32("dfid")?,
            name: r.string("name")?,
        },
        RRENAME => Rrename,
        TREADLINK => Treadlink { fid: r.u32("fid")? },
        RREADLINK => Rreadlink {
            target: r.string("target")?,
        },
        TGETATTR => Tgetattr {
            fid: r.u32("fid")?,
            request_mask: r.u64("request_mask")?,
        },
        RGETATTR => Rgetattr {
            attr: Attr {
                valid: r.u64("valid")?,
                qid: r.qid("qid")?,
                mode: r.u32("mode")?,
                uid: r.u32("uid")?,
                gid: r.u32("gid")?,
                nlink: r.u64("nlink")?,
                rdev: r.u64("rdev")?,
                size: r.u64("size")?,
                blksize: r.u64("blksize")?,
                blocks: r.u64("blocks")?,
                atime_sec: r.u64("atime_sec")?,
                atime_nsec: r.u64("atime_nsec")?,
                mtime_sec: r.u64("mtime_sec")?,
                mtime_nsec: r.u64("mtime_nsec")?,
                ctime_sec: r.u64("ctime_sec")?,
                ctime_nsec: r.u64("ctime_nsec")?,
                btime_sec: r.u64("btime_sec")?,
                btime_nsec: r.u64("btime_nsec")?,
                generation: r.u64("gen")?,
                data_version: r.u64("data_version")?,
            },
        },
        TSETATTR => Tsetattr {
            fid: r.u32("fid")?,
            attr: SetAttr {
                valid: r.u32("valid")?,
                mode: r.u32("mode")?,
                uid: r.u32("uid")?,
                gid: r.u32("gid")?,
                size: r.u64("size")?,
                atime_sec: r.u64("atime_sec")?,
                atime_nsec: r.u64("atime_nsec")?,
                mtime_sec: r.u64("mtime_sec")?,
                mtime_nsec: r.u64("mtime_nsec")?,
            },
        },
        RSETATTR => Rsetattr,
        TXATTRWALK => Txattrwalk {
            fid: r.u32("fid")?,
            newfid: r.u32("newfid")?,
            name: r.string("name")?,
        },
        RXATTRWALK => Rxattrwalk {
            size: r.u64("size")?,
        },
        TXATTRCREATE => Txattrcreate {
            fid: r.u32("fid")?,
            name: r.string("name")?,
            attr_size: r.u64("attr_size")?,
            flags: r.u32("flags")?,
        },
        RXATTRCREATE => Rxattrcreate,
        TREADDIR => Treaddir {
            fid: r.u32("fid")?,
            offset: r.u64("offset")?,
            count: r.u32("count")?,
        },
        RREADDIR => Rreaddir {
            data: r.data("count")?,
        },
        TFSYNC => Tfsync {
            fid: r.u32("fid")?,
            datasync: r.u32("datasync")?,
        },
        RFSYNC => Rfsync,
        TLOCK => Tlock {
            fid: r.u32("fid")?,
            flock: r.flock(true)?,
        },
        RLOCK => Rlock {
            status: r.u8("status")?,
        },
        TGETLOCK => Tgetlock {
            fid: r.u32("fid")?,
            flock: r.flock(false)?,
        },
        RGETLOCK => Rgetlock {
            flock: r.flock(false)?,
        },
        TLINK => Tlink {
            dfid: r.u32("dfid")?,
            fid: r.u32("fid")?,
            name: r.string("name")?,
        },
        RLINK => Rlink,
        TMKDIR => Tmkdir {
            dfid: r.u32("dfid")?,
            name: r.string("name")?,
            mode: r.u32("mode")?,
            gid: r.u32("gid")?,
        },
        RMKDIR => Rmkdir { qid: r.qid("qid")? },
        TRENAMEAT => Trenameat {
            olddirfid: r.u32("olddirfid")?,
            oldname: r.string("oldname")?,
            newdirfid: r.u32("newdirfid")?,
            newname: r.string("newname")?,
        },
        RRENAMEAT => Rrenameat,
        TUNLINKAT => Tunlinkat {
            dirfid: r.u32("dirfid")?,
            name: r.string("name")?,
            flags: r.u32("flags")?,
        },
        RUNLINKAT => Runlinkat,
        _ => return Err(DecodeErrorKind::UnknownType(ty)),
    })
}

/// Decodes one stat record (size[2] and its fields) from the front of
/// `buf`, as found in a 9P2000 directory read; returns it and the bytes it
/// took.
pub fn decode_stat(buf: &Bytes, dialect: Dialect) -> Result<(Stat, usize), DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    r.stat(dialect)
        .map(|st| (st, r.pos))
        .map_err(|kind| DecodeError {
            tag: None,
            msg_type: None,
            kind,
        })
}

// ---------------------------------------------------------------------------
// Encoding

/// The bytes of `s` that go on the wire: all of it, or the longest prefix
/// (at a character boundary) that fits a 16-bit length.
fn wire_str(s: &str) -> &str {
    if s.len() <= u16::MAX as usize {
        return s;
    }
    let mut end = u16::MAX as usize;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn wire_len(s: &str) -> usize {
    wire_str(s).len()
}

fn put_str(out: &mut BytesMut, s: &str) {
    let s = wire_str(s);
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_qid(out: &mut BytesMut, q: &Qid) {
    out.put_u8(q.ty);
    out.put_u32_le(q.version);
    out.put_u64_le(q.path);
}

fn put_flock(out: &mut BytesMut, f: &Flock, with_flags: bool) {
    out.put_u8(f.ty);
    if with_flags {
        out.put_u32_le(f.flags);
    }
    out.put_u64_le(f.start);
    out.put_u64_le(f.length);
    out.put_u32_le(f.proc_id);
    put_str(out, &f.client_id);
}

/// Writes one stat record, its size[2] field included (the .u fields only on
/// 9P2000.u). Strings longer than 65535 bytes are cut to fit.
pub fn encode_stat(stat: &Stat, dialect: Dialect, out: &mut BytesMut) {
    let size = stat_size(stat, dialect) - 2;
    out.reserve(size + 2);
    out.put_u16_le(size.min(u16::MAX as usize) as u16);
    out.put_u16_le(stat.ty);
    out.put_u32_le(stat.dev);
    put_qid(out, &stat.qid);
    out.put_u32_le(stat.mode);
    out.put_u32_le(stat.atime);
    out.put_u32_le(stat.mtime);
    out.put_u64_le(stat.length);
    put_str(out, &stat.name);
    put_str(out, &stat.uid);
    put_str(out, &stat.gid);
    put_str(out, &stat.muid);
    if dialect == Dialect::P2000u {
        put_str(out, &stat.extension);
        out.put_u32_le(stat.n_uid);
        out.put_u32_le(stat.n_gid);
        out.put_u32_le(stat.n_muid);
    }
}

/// Writes one Rreaddir entry: qid[13] offset[8] type[1] name[s].
pub fn encode_dirent(qid: &Qid, offset: u64, ty: u8, name: &str, out: &mut BytesMut) {
    out.reserve(dirent_size(wire_len(name)));
    put_qid(out, qid);
    out.put_u64_le(offset);
    out.put_u8(ty);
    put_str(out, name);
}

/// Writes the whole message, size field included.
pub fn encode(msg: &Msg, dialect: Dialect, out: &mut BytesMut) {
    if let Some(payload) = encode_head(msg, dialect, out) {
        out.extend_from_slice(&payload);
    }
}

/// Writes everything but a trailing payload (Rread, Twrite and Rreaddir
/// data), with the size field counting the payload, and returns that
/// payload (a reference-counted clone, not a copy) for a vectored write.
/// Other messages are written whole and give `None`.
pub fn encode_head(msg: &Msg, dialect: Dialect, out: &mut BytesMut) -> Option<Bytes> {
    use Fcall::*;
    let start = out.len();
    out.put_u32_le(0); // patched below
    out.put_u8(msg.body.msg_type());
    out.put_u16_le(msg.tag);
    let mut payload = None;
    let mut data = |out: &mut BytesMut, d: &Bytes| {
        out.put_u32_le(d.len() as u32);
        payload = Some(d.clone());
    };
    match &msg.body {
        Tversion { msize, version } | Rversion { msize, version } => {
            out.put_u32_le(*msize);
            put_str(out, version);
        }
        Tauth {
            afid,
            uname,
            aname,
            n_uname,
        } => {
            out.put_u32_le(*afid);
            put_str(out, uname);
            put_str(out, aname);
            if dialect != Dialect::P2000 {
                out.put_u32_le(*n_uname);
            }
        }
        Rauth { aqid } => put_qid(out, aqid),
        Tattach {
            fid,
            afid,
            uname,
            aname,
            n_uname,
        } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*afid);
            put_str(out, uname);
            put_str(out, aname);
            if dialect != Dialect::P2000 {
                out.put_u32_le(*n_uname);
            }
        }
        Rattach { qid } => put_qid(out, qid),
        Rerror { ename, errno } => {
            put_str(out, ename);
            if dialect != Dialect::P2000 {
                out.put_u32_le(*errno);
            }
        }
        Tflush { oldtag } => out.put_u16_le(*oldtag),
        Twalk {
            fid,
            newfid,
            wnames,
        } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*newfid);
            out.put_u16_le(wnames.len() as u16);
            for w in wnames {
                put_str(out, w);
            }
        }
        Rwalk { wqids } => {
            out.put_u16_le(wqids.len() as u16);
            for q in wqids {
                put_qid(out, q);
            }
        }
        Topen { fid, mode } => {
            out.put_u32_le(*fid);
            out.put_u8(*mode);
        }
        Ropen { qid, iounit } | Rcreate { qid, iounit } => {
            put_qid(out, qid);
            out.put_u32_le(*iounit);
        }
        Tcreate {
            fid,
            name,
            perm,
            mode,
            extension,
        } => {
            out.put_u32_le(*fid);
            put_str(out, name);
            out.put_u32_le(*perm);
            out.put_u8(*mode);
            if dialect == Dialect::P2000u {
                put_str(out, extension);
            }
        }
        Tread { fid, offset, count } | Treaddir { fid, offset, count } => {
            out.put_u32_le(*fid);
            out.put_u64_le(*offset);
            out.put_u32_le(*count);
        }
        Rread { data: d } | Rreaddir { data: d } => data(out, d),
        Twrite {
            fid,
            offset,
            data: d,
        } => {
            out.put_u32_le(*fid);
            out.put_u64_le(*offset);
            data(out, d);
        }
        Rwrite { count } => out.put_u32_le(*count),
        Tclunk { fid } | Tremove { fid } | Tstat { fid } | Tstatfs { fid } | Treadlink { fid } => {
            out.put_u32_le(*fid)
        }
        Rstat { stat } => {
            out.put_u16_le(stat_size(stat, dialect).min(u16::MAX as usize) as u16);
            encode_stat(stat, dialect, out);
        }
        Twstat { fid, stat } => {
            out.put_u32_le(*fid);
            out.put_u16_le(stat_size(stat, dialect).min(u16::MAX as usize) as u16);
            encode_stat(stat, dialect, out);
        }
        Rflush | Rclunk | Rremove | Rwstat | Rrename | Rsetattr | Rxattrcreate | Rfsync | Rlink
        | Rrenameat | Runlinkat => {}
        Rlerror { ecode } => out.put_u32_le(*ecode),
        Rstatfs { statfs: s } => {
            out.put_u32_le(s.ty);
            out.put_u32_le(s.bsize);
            out.put_u64_le(s.blocks);
            out.put_u64_le(s.bfree);
            out.put_u64_le(s.bavail);
            out.put_u64_le(s.files);
            out.put_u64_le(s.ffree);
            out.put_u64_le(s.fsid);
            out.put_u32_le(s.namelen);
        }
        Tlopen { fid, flags } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*flags);
        }
        Rlopen { qid, iounit } | Rlcreate { qid, iounit } => {
            put_qid(out, qid);
            out.put_u32_le(*iounit);
        }
        Tlcreate {
            fid,
            name,
            flags,
            mode,
            gid,
        } => {
            out.put_u32_le(*fid);
            put_str(out, name);
            out.put_u32_le(*flags);
            out.put_u32_le(*mode);
            out.put_u32_le(*gid);
        }
        Tsymlink {
            fid,
            name,
            symtgt,
            gid,
        } => {
            out.put_u32_le(*fid);
            put_str(out, name);
            put_str(out, symtgt);
            out.put_u32_le(*gid);
        }
        Rsymlink { qid } | Rmknod { qid } | Rmkdir { qid } => put_qid(out, qid),
        Tmknod {
            dfid,
            name,
            mode,
            major,
            minor,
            gid,
        } => {
            out.put_u32_le(*dfid);
            put_str(out, name);
            out.put_u32_le(*mode);
            out.put_u32_le(*major);
            out.put_u32_le(*minor);
            out.put_u32_le(*gid);
        }
        Trename { fid, dfid, name } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*dfid);
            put_str(out, name);
        }
        Rreadlink { target } => put_str(out, target),
        Tgetattr { fid, request_mask } => {
            out.put_u32_le(*fid);
            out.put_u64_le(*request_mask);
        }
        Rgetattr { attr: a } => {
            out.put_u64_le(a.valid);
            put_qid(out, &a.qid);
            out.put_u32_le(a.mode);
            out.put_u32_le(a.uid);
            out.put_u32_le(a.gid);
            for v in [
                a.nlink,
                a.rdev,
                a.size,
                a.blksize,
                a.blocks,
                a.atime_sec,
                a.atime_nsec,
                a.mtime_sec,
                a.mtime_nsec,
                a.ctime_sec,
                a.ctime_nsec,
                a.btime_sec,
                a.btime_nsec,
                a.generation,
                a.data_version,
            ] {
                out.put_u64_le(v);
            }
        }
        Tsetattr { fid, attr: a } => {
            out.put_u32_le(*fid);
            out.put_u32_le(a.valid);
            out.put_u32_le(a.mode);
            out.put_u32_le(a.uid);
            out.put_u32_le(a.gid);
            for v in [a.size, a.atime_sec, a.atime_nsec, a.mtime_sec, a.mtime_nsec] {
                out.put_u64_le(v);
            }
        }
        Txattrwalk { fid, newfid, name } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*newfid);
            put_str(out, name);
        }
        Rxattrwalk { size } => out.put_u64_le(*size),
        Txattrcreate {
            fid,
            name,
            attr_size,
            flags,
        } => {
            out.put_u32_le(*fid);
            put_str(out, name);
            out.put_u64_le(*attr_size);
            out.put_u32_le(*flags);
        }
        Tfsync { fid, datasync } => {
            out.put_u32_le(*fid);
            out.put_u32_le(*datasync);
        }
        Tlock { fid, flock } => {
            out.put_u32_le(*fid);
            put_flock(out, flock, true);
        }
        Rlock { status } => out.put_u8(*status),
        Tgetlock { fid, flock } => {
            out.put_u32_le(*fid);
            put_flock(out, flock, false);
        }
        Rgetlock { flock } => put_flock(out, flock, false),
        Tlink { dfid, fid, name } => {
            out.put_u32_le(*dfid);
            out.put_u32_le(*fid);
            put_str(out, name);
        }
        Tmkdir {
            dfid,
            name,
            mode,
            gid,
        } => {
            out.put_u32_le(*dfid);
            put_str(out, name);
            out.put_u32_le(*mode);
            out.put_u32_le(*gid);
        }
        Trenameat {
            olddirfid,
            oldname,
            newdirfid,
            newname,
        } => {
            out.put_u32_le(*olddirfid);
            put_str(out, oldname);
            out.put_u32_le(*newdirfid);
            put_str(out, newname);
        }
        Tunlinkat {
            dirfid,
            name,
            flags,
        } => {
            out.put_u32_le(*dirfid);
            put_str(out, name);
            out.put_u32_le(*flags);
        }
    }
    let size = out.len() - start + payload.as_ref().map_or(0, Bytes::len);
    out[start..start + 4].copy_from_slice(&(size as u32).to_le_bytes());
    payload
}
