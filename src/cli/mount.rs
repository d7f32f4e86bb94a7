//! `dchan mount` and `dchan umount`: the right mount for the user. As
//! root, the kernel's 9P client with the README's options (9P2000.L, no
//! cache; `aname=` the group), and a second, writers' mount when asked;
//! otherwise, or when the kernel has no 9P, plan9port's `9pfuse` from PATH.
//! `umount` undoes either (`fusermount -u` for 9pfuse, `umount` for 9p),
//! and refuses any other mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use dchan::engine::Addr;

use super::{ConnArgs, Failure};

const MOUNT_HELP: &str = "\
As root, mounts with the kernel's 9P client (`mount -t 9p -o
trans=tcp,port=PORT[,aname=GROUP] HOST DIR`, or trans=unix); otherwise, or
when that fails, with plan9port's 9pfuse (`9pfuse [-a GROUP] ADDR DIR`)
when it is on PATH. Makes DIR (and --writers DIR) if missing, and removes
what it made if the mount fails. Refuses a DIR something is already
mounted on, and a --writers DIR that is DIR. A read through 9pfuse cannot
be interrupted: give its topics a timeout (README).

Examples:
  dchan mount /n/dchan                          readers' mount
  dchan mount /n/dchan --writers /n/dchan-w     and a writers' mount beside it
  dchan mount --group audit /n/audit
  dchan umount /n/dchan";

#[derive(Args)]
#[command(after_help = MOUNT_HELP)]
pub struct MountArgs {
    /// The directory to mount on.
    pub dir: PathBuf,
    /// A second mount, for writers (kernel mounts: see the README's tour).
    #[arg(long, value_name = "DIR")]
    pub writers: Option<PathBuf>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct UmountArgs {
    /// The mounted directory.
    pub dir: PathBuf,
}

/// Run `cmd`; its stderr, on one line, as the failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(format!(
        "{:?} {}: {}",
        cmd.get_program(),
        out.status,
        err.join(" ")
    ))
}

/// Run 9pfuse, which goes into the background once mounted, keeping the
/// stdout and stderr it was given: its stderr goes to a file read after.
fn run_fuse(mut cmd: Command) -> Result<(), String> {
    let log = std::env::temp_dir().join(format!("dchan-9pfuse-{}.err", std::process::id()));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .status();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{s}: {}", err.trim())),
        Err(e) => Err(e.to_string()),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when this process runs as root (it owns /proc/self).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The kernel's mount command for `addr`, as the README writes it.
pub fn kernel_mount(addr: &Addr, group: &str, dir: &Path) -> Result<Command, String> {
    // The kernel takes an address, not a name.
    let (mut opts, source) = match addr {
        Addr::Tcp { host, port } => {
            use std::net::ToSocketAddrs;
            let ip = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("{host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host}: no address"))?
                .ip();
            (format!("trans=tcp,port={port}"), ip.to_string())
        }
        Addr::Unix(path) => ("trans=unix".to_string(), path.display().to_string()),
        Addr::Tls { .. } => {
            return Err(format!(
                "{addr}: the kernel cannot speak TLS; run `dchan tunnel --listen tcp!127.0.0.1!PORT --to {addr} ...` and mount tcp!127.0.0.1!PORT"
            ));
        }
    };
    if !group.is_empty() {
        opts.push_str(&format!(",aname={group}"));
    }
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "9p", "-o", &opts, &source]).arg(dir);
    Ok(cmd)
}

/// 9pfuse's command for `addr`.
fn fuse_mount(nine_p_fuse: &Path, addr: &str, group: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(nine_p_fuse);
    if !group.is_empty() {
        cmd.args(["-a", group]);
    }
    // 9pfuse reads plan9port's dial strings: tcp!HOST!PORT, unix!PATH.
    let dial = match addr.parse::<Addr>() {
        Ok(Addr::Tcp { host, port }) => format!("tcp!{host}!{port}"),
        _ => addr.to_string(),
    };
    cmd.arg(dial).arg(dir);
    cmd
}

/// Mount `dir`, made if missing and removed again (with any parents made
/// for it) if the mount fails. A directory something is already mounted
/// on is refused: a second mount would hide the first.
fn mount_one(a: &MountArgs, dir: &Path) -> Result<(), String> {
    if let Some(m) = mounted(dir) {
        return Err(format!(
            "already a mount point ({} {}); dchan umount it first",
            m.ty, m.source
        ));
    }
    let made = make_dir(dir)?;
    let mounted = try_mounts(a, dir);
    if mounted.is_err() {
        for d in made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
    mounted
}

/// Make `dir` and its missing parents; the ones made, outermost first.
fn make_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut made = Vec::new();
    for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => made.push(d.to_path_buf()),
            _ => break,
        }
    }
    made.reverse();
    if made.is_empty() {
        return match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(made),
            Ok(_) => Err("not a directory".into()),
            Err(e) => Err(dchan::client::io_reason(&e)),
        };
    }
    for (i, d) in made.iter().enumerate() {
        if let Err(e) = std::fs::create_dir(d) {
            for d in made[..i].iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(format!("mkdir {}: {e}", d.display()));
        }
    }
    Ok(made)
}

/// The kernel's client as root, else (or if that fails) 9pfuse.
fn try_mounts(a: &MountArgs, dir: &Path) -> Result<(), String> {
    let addr: Addr = a.conn.addr.parse()?;
    let mut tried = Vec::new();
    if is_root() {
        match run(&mut kernel_mount(&addr, &a.conn.group, dir)?) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("the kernel's 9P client: {e}")),
        }
    } else {
        tried.push("the kernel's 9P client: needs root".to_string());
    }
    match on_path("9pfuse") {
        Some(fuse) => match run_fuse(fuse_mount(&fuse, &a.conn.addr, &a.conn.group, dir)) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("9pfuse: {e}")),
        },
        None => tried.push("9pfuse (plan9port): not on PATH".to_string()),
    }
    Err(format!("no way to mount: {}", tried.join("; ")))
}

/// `a` and `b` name the same directory (made or not).
fn same_dir(a: &Path, b: &Path) -> bool {
    let full = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    full(a) == full(b)
}

pub async fn mount(a: MountArgs) -> Result<(), Failure> {
    if let Some(w) = a.writers.as_deref().filter(|w| same_dir(w, &a.dir)) {
        return Err(Failure::new(
            format!("mount {}", a.dir.display()),
            format!(
                "--writers {} is the same directory; give it another",
                w.display()
            ),
        ));
    }
    mount_one(&a, &a.dir).map_err(|e| Failure::new(format!("mount {}", a.dir.display()), e))?;
    if let Some(w) = &a.writers {
        mount_one(&a, w).map_err(|e| Failure::new(format!("mount {}", w.display()), e))?;
    }
    Ok(())
}

/// What /proc/mounts says is mounted on a directory (the last mount there).
#[derive(Debug, PartialEq)]
struct Mounted {
    source: String,
    ty: String,
}

/// What is mounted on `dir`, from /proc/mounts.
fn mounted(dir: &Path) -> Option<Mounted> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounted_in(&mounts, &dir)
}

/// [`mounted`] from the text of /proc/mounts.
fn mounted_in(mounts: &str, dir: &Path) -> Option<Mounted> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, at, ty) = (f.next()?, f.next()?, f.next()?);
            (Path::new(&unescape(at)) == dir).then(|| Mounted {
                source: unescape(source),
                ty: ty.to_string(),
            })
        })
        .next_back()
}

/// A /proc/mounts field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to unmount `m` on `dir`: kernel 9P with umount, a 9pfuse mount
/// with fusermount -u; anything else is not ours to unmount.
enum Kind {
    Kernel,
    Fuse,
}

fn kind(m: &Mounted, dir: &Path) -> Result<Kind, String> {
    if m.ty == "9p" {
        return Ok(Kind::Kernel);
    }
    // 9pfuse names itself nowhere in /proc/mounts (source /dev/fuse, type
    // fuse): it is a FUSE mount whose server is a 9pfuse process given DIR.
    let named = m.source.contains("9pfuse") || m.ty.contains("9pfuse");
    if m.ty.starts_with("fuse") && (named || served_by_9pfuse(dir)) {
        return Ok(Kind::Fuse);
    }
    Err(format!(
        "not a 9P mount ({} {}): dchan umount only undoes a 9p or 9pfuse mount",
        m.ty, m.source
    ))
}

/// A running 9pfuse process has `dir` as its mount point (its last argument,
/// taken from its working directory if relative).
fn served_by_9pfuse(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let p = p.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim_end() != "9pfuse" {
            return false;
        }
        let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let Some(last) = cmdline.split(|&c| c == 0).rfind(|a| !a.is_empty()) else {
            return false;
        };
        use std::os::unix::ffi::OsStrExt;
        let at = p.join("cwd").join(std::ffi::OsStr::from_bytes(last));
        std::fs::canonicalize(at).is_ok_and(|at| at == dir)
    })
}

pub async fn umount(a: UmountArgs) -> Result<(), Failure> {
    let fail = |e: String| Failure::new(format!("umount {}", a.dir.display()), e);
    let m = mounted(&a.dir).ok_or_else(|| fail("not mounted".into()))?;
    let mut cmd = match kind(&m, &a.dir).map_err(fail)? {
        Kind::Fuse => {
            let fm = on_path("fusermount3")
                .or_else(|| on_path("fusermount"))
                .ok_or_else(|| fail("fusermount (FUSE) not on PATH".into()))?;
            let mut c = Command::new(fm);
            c.arg("-u");
            c
        }
        Kind::Kernel => Command::new("umount"),
    };
    run(cmd.arg(&a.dir)).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(c: &Command) -> Vec<String> {
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn kernel_mounts_as_the_readme_does() {
        let addr: Addr = "tcp!127.0.0.1!5640".parse().unwrap();
        let c = kernel_mount(&addr, "", Path::new("/n/dchan")).unwrap();
        assert_eq!(
            words(&c),
            [
                "mount",
                "-t",
                "9p",
                "-o",
                "trans=tcp,port=5640",
                "127.0.0.1",
                "/n/dchan"
            ]
        );
        let c = kernel_mount(&addr, "audit", Path::new("/n/a")).unwrap();
        assert_eq!(words(&c)[4], "trans=tcp,port=5640,aname=audit");
        let unix: Addr = "unix!/run/dchan.sock".parse().unwrap();
        let c = kernel_mount(&unix, "", Path::new("/n/d")).unwrap();
        assert_eq!(words(&c)[4..6], ["trans=unix", "/run/dchan.sock"]);
    }

    #[test]
    fn umount_undoes_only_9p_mounts() {
        let mounts = "proc /proc proc rw 0 0\n\
                      tmpfs /tmp/a\\040b tmpfs rw 0 0\n\
                      127.0.0.1 /n/d 9p rw,trans=tcp 0 0\n\
                      9pfuse /n/f fuse.9pfuse rw 0 0\n";
        let at = |d: &str| mounted_in(mounts, Path::new(d)).unwrap();
        assert_eq!(at("/tmp/a b").ty, "tmpfs");
        assert!(mounted_in(mounts, Path::new("/n")).is_none());
        assert!(matches!(
            kind(&at("/n/d"), Path::new("/n/d")),
            Ok(Kind::Kernel)
        ));
        assert!(matches!(
            kind(&at("/n/f"), Path::new("/n/f")),
            Ok(Kind::Fuse)
        ));
        for d in ["/proc", "/tmp/a b"] {
            let e = kind(&at(d), Path::new(d)).err().unwrap();
            assert!(e.starts_with("not a 9P mount"), "{e}");
        }
        // A FUSE mount no 9pfuse serves is not ours either.
        let other = Mounted {
            source: "/dev/fuse".into(),
            ty: "fuse".into(),
        };
        assert!(kind(&other, Path::new("/nowhere/at/all")).is_err());
    }

    #[test]
    fn ninepfuse_gets_a_dial_string() {
        let c = fuse_mount(
            Path::new("9pfuse"),
            "127.0.0.1:5640",
            "g",
            Path::new("/n/d"),
        );
        assert_eq!(
            words(&c),
            ["9pfuse", "-a", "g", "tcp!127.0.0.1!5640", "/n/d"]
        );
    }
}
