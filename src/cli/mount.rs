//! `dchan mount` and `dchan umount`: the right mount for the user. As
//! root, the kernel's 9P client with the README's options (9P2000.L, no
//! cache; `aname=` the group), and a second, writers' mount when asked;
//! otherwise, or when the kernel has no 9P, plan9port's `9pfuse` from PATH.
//! `umount` undoes either (`fusermount -u` for 9pfuse, `umount` for 9p).

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use dchan::engine::Addr;

use super::{ConnArgs, Failure};

const MOUNT_HELP: &str = "\
As root, mounts with the kernel's 9P client (`mount -t 9p -o
trans=tcp,port=PORT[,aname=GROUP] HOST DIR`, or trans=unix); otherwise, or
when that fails, with plan9port's 9pfuse (`9pfuse [-a GROUP] ADDR DIR`)
when it is on PATH. Makes DIR (and --writers DIR) if missing. A read
through 9pfuse cannot be interrupted: give its topics a timeout (README).

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
    let mut opts = match addr {
        Addr::Tcp { port, .. } => format!("trans=tcp,port={port}"),
        Addr::Unix(_) => "trans=unix".to_string(),
    };
    if !group.is_empty() {
        opts.push_str(&format!(",aname={group}"));
    }
    // The kernel takes an address, not a name.
    let source = match addr {
        Addr::Tcp { host, port } => {
            use std::net::ToSocketAddrs;
            (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("{host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host}: no address"))?
                .ip()
                .to_string()
        }
        Addr::Unix(path) => path.display().to_string(),
    };
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

/// Mount `dir`: the kernel's client as root, else (or if that fails) 9pfuse.
fn mount_one(a: &MountArgs, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir: {e}"))?;
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

pub async fn mount(a: MountArgs) -> Result<(), Failure> {
    mount_one(&a, &a.dir).map_err(|e| Failure::new(format!("mount {}", a.dir.display()), e))?;
    if let Some(w) = &a.writers {
        mount_one(&a, w).map_err(|e| Failure::new(format!("mount {}", w.display()), e))?;
    }
    Ok(())
}

/// The file system type `dir` is mounted with, from /proc/mounts.
fn mounted_type(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
            (Path::new(at) == dir).then(|| ty.to_string())
        })
        .next_back()
}

pub async fn umount(a: UmountArgs) -> Result<(), Failure> {
    let fail = |e: String| Failure::new(format!("umount {}", a.dir.display()), e);
    let ty = mounted_type(&a.dir).ok_or_else(|| fail("not mounted".into()))?;
    let mut cmd = if ty.starts_with("fuse") {
        let fm = on_path("fusermount3")
            .or_else(|| on_path("fusermount"))
            .ok_or_else(|| fail("fusermount (FUSE) not on PATH".into()))?;
        let mut c = Command::new(fm);
        c.arg("-u");
        c
    } else {
        Command::new("umount")
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
