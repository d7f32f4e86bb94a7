//! A fid: one file on the server, walked to, opened, read, written and
//! clunked, with each call spoken in the connection's dialect.

use bytes::{Buf, Bytes};

use super::conn::{Connection, unexpected};
use super::error::{Error, Result};
use super::mux::Reply;
use crate::proto::codec;
use crate::proto::{
    Attr, DMDIR, Dialect, Fcall, Fid, IOHDRSZ, MAXWELEM, NONUNAME, ORDWR, OREAD, OWRITE, QTDIR,
    Qid, Stat,
};

/// Linux open(2) flags, for Tlopen and Tlcreate.
const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_TRUNC: u32 = 0o1000;

/// Tgetattr's "everything" mask (P9_GETATTR_ALL).
const GETATTR_ALL: u64 = 0x3fff;

/// The most [`File::read_to_end`] reads (a ctl, offset or status file is a
/// few hundred bytes; a server that never ends one is refused beyond this).
pub const MAX_TEXT: usize = 1 << 20;

/// The most entries [`File::readdir`] takes from one directory: more than
/// the root of a server of 1 000 000 topics lists.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// The most bytes [`File::readdir`] reads from one directory: 1 048 576
/// entries of about 120 bytes (a stat with a 40-byte name).
pub const MAX_DIR_BYTES: u64 = 128 << 20;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
    ReadWrite,
    /// Write, truncating first (what a shell's `>` asks).
    WriteTruncate,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub qid: Qid,
}

impl DirEntry {
    pub fn is_dir(&self) -> bool {
        self.qid.ty & QTDIR != 0
    }
}

/// A fid on a connection. Dropped, it is clunked in the background;
/// [`File::clunk`] clunks it and waits for the server's answer.
pub struct File {
    /// The connection the fid belongs to (it keeps the connection open).
    conn: Connection,
    /// The fid's number on that connection.
    fid: Fid,
    /// What the server said the file is, at walk, attach, open or create.
    qid: Qid,
    /// The iounit from open/create; 0 until then, or when the server set none.
    iounit: u32,
    /// Whether the fid is still the client's to clunk (false once clunked or removed).
    live: bool,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("fid", &self.fid)
            .field("qid", &self.qid)
            .field("iounit", &self.iounit)
            .finish()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if self.live {
            self.conn.send_and_forget(Fcall::Tclunk { fid: self.fid });
        }
    }
}

impl File {
    pub(crate) fn new(conn: Connection, fid: Fid, qid: Qid) -> File {
        File {
            conn,
            fid,
            qid,
            iounit: 0,
            live: true,
        }
    }

    /// The qid the server gave at attach.
    pub(crate) fn set_qid(&mut self, qid: Qid) {
        self.qid = qid;
    }

    /// The server surely holds no such fid: do not clunk it.
    pub(crate) fn forget(&mut self) {
        self.live = false;
    }

    pub fn qid(&self) -> Qid {
        self.qid
    }

    pub fn fid(&self) -> Fid {
        self.fid
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The largest count one Tread or Twrite may carry: the iounit, or
    /// msize − 24. A Tread of this count is "as big as the connection
    /// allows", which dchan's Linux read rule looks for.
    pub fn max_io(&self) -> u32 {
        match self.iounit {
            0 => self.conn.msize() - IOHDRSZ,
            n => n,
        }
    }

    /// A new fid for the file at `path` (names separated by '/') under this
    /// one; the empty path clones this fid. However the walk ends (an error,
    /// a reply of the wrong type, the future dropped), a new fid the server
    /// may hold is clunked.
    pub async fn walk(&self, path: &str) -> Result<File> {
        let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
        // Walks of more than MAXWELEM names go in steps from the new fid.
        let chunks: Vec<&[&str]> = if names.is_empty() {
            vec![&[]]
        } else {
            names.chunks(MAXWELEM).collect()
        };
        // Live from before the Twalk goes out, so that a drop at any point
        // clunks it (a clunk of a fid the server never made gets an error
        // nobody reads); `made` says whether the server surely holds it.
        let mut new = File::new(self.conn.clone(), self.conn.new_fid(), self.qid);
        let mut made = false;
        let mut walked = 0;
        for chunk in chunks {
            let wnames: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
            let reply = self
                .conn
                .rpc(Fcall::Twalk {
                    fid: if made { new.fid } else { self.fid },
                    newfid: new.fid,
                    wnames,
                })
                .await;
            let wqids = match reply {
                Ok(Fcall::Rwalk { wqids }) if wqids.len() <= chunk.len() => wqids,
                Ok(Fcall::Rwalk { wqids }) => {
                    return Err(Error::Protocol(format!(
                        "Rwalk of {} qids for a Twalk of {} names",
                        wqids.len(),
                        chunk.len()
                    )));
                }
                Ok(other) => return Err(unexpected("Rwalk", &other)),
                Err(e) => {
                    // A failed walk makes no fid and leaves one made before as it was.
                    new.live = made;
                    return Err(match e.errno() {
                        Some(crate::fs::errno::ENOENT) => Error::NotFound(path.to_string()),
                        _ => e,
                    });
                }
            };
            if wqids.len() < chunk.len() {
                // A partial walk: the new fid was not made, or not moved (walk(5)).
                new.live = made;
                let missing = names[..walked + wqids.len() + 1].join("/");
                return Err(Error::NotFound(missing));
            }
            walked += chunk.len();
            if let Some(q) = wqids.last() {
                new.qid = *q;
            }
            made = true;
        }
        Ok(new)
    }

    /// An iounit from Ropen or Rcreate, refused if a read or write of that
    /// count would not fit in msize (the client would send, or ask for,
    /// frames larger than the connection carries).
    fn check_iounit(&self, iounit: u32) -> Result<u32> {
        let most = self.conn.msize() - IOHDRSZ;
        match iounit <= most {
            true => Ok(iounit),
            false => Err(Error::Protocol(format!(
                "iounit {iounit} above msize {} - {IOHDRSZ}",
                self.conn.msize()
            ))),
        }
    }

    /// Open the file.
    pub async fn open(&mut self, mode: Mode) -> Result<()> {
        let fid = self.fid;
        let reply = match self.conn.dialect() {
            Dialect::P2000L => {
                let flags = match mode {
                    Mode::Read => O_RDONLY,
                    Mode::Write => O_WRONLY,
                    Mode::ReadWrite => O_RDWR,
                    Mode::WriteTruncate => O_WRONLY | O_TRUNC,
                };
                self.conn.rpc(Fcall::Tlopen { fid, flags }).await?
            }
            _ => {
                let mode = match mode {
                    Mode::Read => OREAD,
                    Mode::Write => OWRITE,
                    Mode::ReadWrite => ORDWR,
                    Mode::WriteTruncate => OWRITE | crate::proto::OTRUNC,
                };
                self.conn.rpc(Fcall::Topen { fid, mode }).await?
            }
        };
        match reply {
            Fcall::Ropen { qid, iounit } | Fcall::Rlopen { qid, iounit } => {
                self.qid = qid;
                self.iounit = self.check_iounit(iounit)?;
                Ok(())
            }
            other => Err(unexpected("Ropen", &other)),
        }
    }

    /// Create `name` in this directory and open it for writing; this fid
    /// then stands for the new file (as in 9P). `perm` holds permission bits.
    pub async fn create(&mut self, name: &str, perm: u32) -> Result<()> {
        let fid = self.fid;
        let reply = match self.conn.dialect() {
            Dialect::P2000L => {
                self.conn
                    .rpc(Fcall::Tlcreate {
                        fid,
                        name: name.to_string(),
                        flags: O_WRONLY,
                        mode: perm & 0o777,
                        gid: NONUNAME,
                    })
                    .await?
            }
            _ => {
                self.conn
                    .rpc(Fcall::Tcreate {
                        fid,
                        name: name.to_string(),
                        perm: perm & 0o777,
                        mode: OWRITE,
                        extension: String::new(),
                    })
                    .await?
            }
        };
        match reply {
            Fcall::Rcreate { qid, iounit } | Fcall::Rlcreate { qid, iounit } => {
                self.qid = qid;
                self.iounit = self.check_iounit(iounit)?;
                Ok(())
            }
            other => Err(unexpected("Rcreate", &other)),
        }
    }

    /// Make the directory `name` in this directory.
    pub async fn mkdir(&self, name: &str) -> Result<Qid> {
        match self.conn.dialect() {
            Dialect::P2000L => {
                let reply = self
                    .conn
                    .rpc(Fcall::Tmkdir {
                        dfid: self.fid,
                        name: name.to_string(),
                        mode: 0o755,
                        gid: NONUNAME,
                    })
                    .await?;
                match reply {
                    Fcall::Rmkdir { qid } => Ok(qid),
                    other => Err(unexpected("Rmkdir", &other)),
                }
            }
            _ => {
                let mut dir = self.walk("").await?;
                let fid = dir.fid;
                let reply = self
                    .conn
                    .rpc(Fcall::Tcreate {
                        fid,
                        name: name.to_string(),
                        perm: DMDIR | 0o755,
                        mode: OREAD,
                        extension: String::new(),
                    })
                    .await?;
                let Fcall::Rcreate { qid, .. } = reply else {
                    return Err(unexpected("Rcreate", &reply));
                };
                dir.qid = qid;
                dir.clunk().await?;
                Ok(qid)
            }
        }
    }

    /// One Tread: at most `count` bytes at `offset`; empty means end of file.
    pub async fn read(&self, offset: u64, count: u32) -> Result<Bytes> {
        let reply = self.conn.rpc(self.tread(offset, count)).await?;
        read_reply(reply, count)
    }

    /// [`File::read`], unless `cancel` completes first: then the Tread is
    /// flushed, and `Ok(None)` means it never happened, while data the
    /// server sent before the Rflush is returned (it was read).
    pub async fn read_unless(
        &self,
        offset: u64,
        count: u32,
        cancel: impl Future<Output = ()>,
    ) -> Result<Option<Bytes>> {
        let reply = self
            .conn
            .rpc_unless(self.tread(offset, count), cancel)
            .await?;
        reply.map(|r| read_reply(r, count)).transpose()
    }

    /// Send a Tread that is not flushed if its waiter goes; collect it with
    /// [`File::read_reply`], even from a later call.
    pub(crate) async fn read_detached(&self, offset: u64, count: u32) -> Result<Reply> {
        self.conn.send_detached(self.tread(offset, count)).await
    }

    /// The data of a Tread from [`File::read_detached`] of `count` bytes.
    pub(crate) async fn read_reply(&self, reply: &mut Reply, count: u32) -> Result<Bytes> {
        read_reply(self.conn.wait(reply).await?, count)
    }

    fn tread(&self, offset: u64, count: u32) -> Fcall {
        Fcall::Tread {
            fid: self.fid,
            offset,
            count,
        }
    }

    /// One Twrite of `data` (at most [`File::max_io`] bytes) at `offset`;
    /// returns the count the server took.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<u32> {
        let len = data.len();
        let reply = self.conn.rpc(self.twrite(offset, data)).await?;
        write_reply(reply, len)
    }

    /// [`File::write`], unless `cancel` completes first: then the Twrite is
    /// flushed, and `Ok(None)` means it never happened, while a count the
    /// server sent before the Rflush is returned (it was written).
    pub async fn write_unless(
        &self,
        offset: u64,
        data: Bytes,
        cancel: impl Future<Output = ()>,
    ) -> Result<Option<u32>> {
        let len = data.len();
        let reply = self
            .conn
            .rpc_unless(self.twrite(offset, data), cancel)
            .await?;
        reply.map(|r| write_reply(r, len)).transpose()
    }

    fn twrite(&self, offset: u64, data: Bytes) -> Fcall {
        Fcall::Twrite {
            fid: self.fid,
            offset,
            data,
        }
    }

    /// Write all of `data` from `offset`, in Twrites of at most
    /// [`File::max_io`] bytes.
    pub async fn write_all(&self, mut offset: u64, mut data: Bytes) -> Result<()> {
        let max = self.max_io() as usize;
        loop {
            let chunk = data.slice(..data.len().min(max));
            let len = chunk.len();
            let n = self.write(offset, chunk).await? as usize;
            if n == 0 && len > 0 {
                return Err(Error::Protocol("the server took 0 bytes of a write".into()));
            }
            data.advance(n);
            offset += n as u64;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Read from offset 0 to end of file (a ctl or offset file): at most
    /// [`MAX_TEXT`] bytes, a longer file is a protocol error ("reply too
    /// large"), so a server that never ends one cannot exhaust memory.
    pub async fn read_to_end(&self) -> Result<Bytes> {
        let max = self.max_io();
        let mut parts = Vec::new();
        let mut offset = 0u64;
        loop {
            let data = self.read(offset, max).await?;
            if data.is_empty() {
                return Ok(concat(parts));
            }
            offset += data.len() as u64;
            if offset > MAX_TEXT as u64 {
                return Err(Error::Protocol(format!(
                    "reply too large: a text file of more than {MAX_TEXT} bytes"
                )));
            }
            parts.push(data);
        }
    }

    /// The entries of this directory, which must be open for reading.
    ///
    /// On 9P2000.L the server names the offset of each entry's successor;
    /// a reply that leads back to an offset already read from is refused
    /// (a protocol error), so a broken server cannot make this loop for
    /// ever. Otherwise the offset only grows, by what each read returned.
    ///
    /// Whatever the dialect, a name that comes twice, or more than
    /// [`MAX_DIR_ENTRIES`] entries or [`MAX_DIR_BYTES`] bytes, is refused
    /// as a protocol error: a server that repeats an entry or never ends a
    /// directory cannot make this loop or exhaust memory.
    pub async fn readdir(&self) -> Result<Vec<DirEntry>> {
        let mut entries = Entries::default();
        let max = self.max_io();
        let mut offset = 0u64;
        if self.conn.dialect() == Dialect::P2000L {
            let mut seen = std::collections::HashSet::new();
            loop {
                if !seen.insert(offset) {
                    return Err(Error::Protocol(format!(
                        "Rreaddir led back to offset {offset}"
                    )));
                }
                let reply = self
                    .conn
                    .rpc(Fcall::Treaddir {
                        fid: self.fid,
                        offset,
                        count: max,
                    })
                    .await?;
                let Fcall::Rreaddir { mut data } = reply else {
                    return Err(unexpected("Rreaddir", &reply));
                };
                if data.len() > max as usize {
                    return Err(Error::Protocol(format!(
                        "Rreaddir of {} bytes for a Treaddir of {max}",
                        data.len()
                    )));
                }
                if data.is_empty() {
                    return Ok(entries.list);
                }
                entries.count_bytes(data.len())?;
                while data.has_remaining() {
                    let (entry, next) = parse_dirent(&mut data)?;
                    offset = next;
                    if entry.name != "." && entry.name != ".." {
                        entries.push(entry)?;
                    }
                }
            }
        }
        let dialect = self.conn.dialect();
        loop {
            let mut data = self.read(offset, max).await?;
            if data.is_empty() {
                return Ok(entries.list);
            }
            entries.count_bytes(data.len())?;
            offset += data.len() as u64;
            while data.has_remaining() {
                let (stat, n) = codec::decode_stat(&data, dialect)
                    .map_err(|e| Error::Protocol(format!("bad directory entry: {e}")))?;
                data.advance(n);
                entries.push(DirEntry {
                    name: stat.name,
                    qid: stat.qid,
                })?;
            }
        }
    }

    /// Tstat (9P2000 and .u).
    pub async fn stat(&self) -> Result<Stat> {
        match self.conn.rpc(Fcall::Tstat { fid: self.fid }).await? {
            Fcall::Rstat { stat } => Ok(stat),
            other => Err(unexpected("Rstat", &other)),
        }
    }

    /// Tgetattr (9P2000.L).
    pub async fn getattr(&self) -> Result<Attr> {
        let body = Fcall::Tgetattr {
            fid: self.fid,
            request_mask: GETATTR_ALL,
        };
        match self.conn.rpc(body).await? {
            Fcall::Rgetattr { attr } => Ok(attr),
            other => Err(unexpected("Rgetattr", &other)),
        }
    }

    /// Clunk the fid and wait for the server's answer.
    pub async fn clunk(mut self) -> Result<()> {
        self.live = false;
        match self.conn.rpc(Fcall::Tclunk { fid: self.fid }).await? {
            Fcall::Rclunk => Ok(()),
            other => Err(unexpected("Rclunk", &other)),
        }
    }

    /// Remove the file; the fid is gone whatever the answer.
    pub async fn remove(mut self) -> Result<()> {
        self.live = false;
        match self.conn.rpc(Fcall::Tremove { fid: self.fid }).await? {
            Fcall::Rremove => Ok(()),
            other => Err(unexpected("Rremove", &other)),
        }
    }
}

/// A directory's entries as they are read, within [`File::readdir`]'s bounds.
#[derive(Default)]
struct Entries {
    list: Vec<DirEntry>,
    names: std::collections::HashSet<String>,
    bytes: u64,
}

impl Entries {
    fn count_bytes(&mut self, n: usize) -> Result<()> {
        self.bytes += n as u64;
        match self.bytes > MAX_DIR_BYTES {
            true => Err(Error::Protocol(format!(
                "directory too large: more than {MAX_DIR_BYTES} bytes"
            ))),
            false => Ok(()),
        }
    }

    fn push(&mut self, entry: DirEntry) -> Result<()> {
        if self.list.len() >= MAX_DIR_ENTRIES {
            return Err(Error::Protocol(format!(
                "directory too large: more than {MAX_DIR_ENTRIES} entries"
            )));
        }
        if !self.names.insert(entry.name.clone()) {
            return Err(Error::Protocol(format!(
                "directory lists {:?} twice",
                entry.name
            )));
        }
        self.list.push(entry);
        Ok(())
    }
}

/// An Rread's data, checked against the Tread's count.
fn read_reply(reply: Fcall, count: u32) -> Result<Bytes> {
    match reply {
        Fcall::Rread { data } if data.len() <= count as usize => Ok(data),
        Fcall::Rread { data } => Err(Error::Protocol(format!(
            "Rread of {} bytes for a Tread of {count}",
            data.len()
        ))),
        other => Err(unexpected("Rread", &other)),
    }
}

/// An Rwrite's count, checked against the Twrite's length.
fn write_reply(reply: Fcall, len: usize) -> Result<u32> {
    match reply {
        Fcall::Rwrite { count } if count as usize <= len => Ok(count),
        Fcall::Rwrite { count } => Err(Error::Protocol(format!(
            "Rwrite of {count} for a Twrite of {len}"
        ))),
        other => Err(unexpected("Rwrite", &other)),
    }
}

/// The pieces as one `Bytes`, copying only when there are several.
pub(crate) fn concat(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap(),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                all.extend_from_slice(&p);
            }
            all.freeze()
        }
    }
}

fn short(what: &str) -> Error {
    Error::Protocol(format!("short {what} in a directory read"))
}

fn get_qid(b: &mut Bytes) -> Qid {
    Qid {
        ty: b.get_u8(),
        version: b.get_u32_le(),
        path: b.get_u64_le(),
    }
}

fn get_string(b: &mut Bytes, what: &str) -> Result<String> {
    if b.remaining() < 2 {
        return Err(short(what));
    }
    let n = b.get_u16_le() as usize;
    if b.remaining() < n {
        return Err(short(what));
    }
    String::from_utf8(b.split_to(n).to_vec())
        .map_err(|_| Error::Protocol(format!("{what} not UTF-8")))
}

/// One 9P2000.L dirent: qid[13] offset[8] type[1] name[s]; returns the
/// entry and the offset of the next.
fn parse_dirent(b: &mut Bytes) -> Result<(DirEntry, u64)> {
    if b.remaining() < 13 + 8 + 1 {
        return Err(short("dirent"));
    }
    let qid = get_qid(b);
    let next = b.get_u64_le();
    let _ty = b.get_u8();
    let name = get_string(b, "dirent name")?;
    Ok((DirEntry { name, qid }, next))
}
