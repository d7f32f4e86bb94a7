//! Listening addresses (`tcp!HOST!PORT`, `HOST:PORT`, `unix!PATH`) and the
//! TCP and Unix-domain listeners behind them.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Where to listen, as the command line and config file spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `tcp!HOST!PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6).
    Tcp { host: String, port: u16 },
    /// `unix!PATH`.
    Unix(PathBuf),
}

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Addr, String> {
        let bad = || format!("bad address {s:?}: want tcp!HOST!PORT, HOST:PORT or unix!PATH");
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
        if let Some(path) = s.strip_prefix("unix!") {
            return match path {
                "" => Err(bad()),
                _ => Ok(Addr::Unix(path.into())),
            };
        }
        let (host, p) = match s.strip_prefix("tcp!") {
            Some(rest) => rest.rsplit_once('!').ok_or_else(bad)?,
            None => s.rsplit_once(':').ok_or_else(bad)?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host {
            "" | "*" => "0.0.0.0",
            h => h,
        };
        Ok(Addr::Tcp {
            host: host.to_string(),
            port: port(p)?,
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } => write!(f, "tcp!{host}!{port}"),
            Addr::Unix(path) => write!(f, "unix!{}", path.display()),
        }
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// The reading half of an accepted connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of an accepted connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl Listener {
    /// Binds `addr`. At a Unix path, a socket that no server answers on
    /// (left by one that died) is replaced; a live socket, or a file of any
    /// other kind, is refused and left as it is.
    pub async fn bind(addr: &Addr) -> io::Result<Listener> {
        match addr {
            Addr::Tcp { host, port } => Ok(Listener::Tcp(
                TcpListener::bind((host.as_str(), *port)).await?,
            )),
            Addr::Unix(path) => {
                clear_stale_socket(path).await?;
                Ok(Listener::Unix(UnixListener::bind(path)?))
            }
        }
    }

    /// The address actually bound (with the real port when asked for port 0).
    pub fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(Addr::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
            Listener::Unix(l) => {
                let a = l.local_addr()?;
                let path = a.as_pathname().unwrap_or_else(|| "".as_ref());
                Ok(Addr::Unix(path.to_path_buf()))
            }
        }
    }

    /// The next connection, split into halves, with the peer's name for logs.
    pub async fn accept(&self) -> io::Result<(ReadHalf, WriteHalf, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), "unix".to_string()))
            }
        }
    }
}

/// Remove the socket at `path` if no server answers on it; fail if a
/// server does, or if something other than a socket is there.
async fn clear_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        m => m?,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is there (remove it, or choose another path)",
        ));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is already listening there",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_spellings() {
        let tcp = |h: &str, p| Addr::Tcp {
            host: h.into(),
            port: p,
        };
        assert_eq!("tcp!127.0.0.1!564".parse(), Ok(tcp("127.0.0.1", 564)));
        assert_eq!("localhost:0".parse(), Ok(tcp("localhost", 0)));
        assert_eq!("[::1]:5640".parse(), Ok(tcp("::1", 5640)));
        assert_eq!("tcp!*!1".parse(), Ok(tcp("0.0.0.0", 1)));
        assert_eq!("unix!/tmp/s".parse(), Ok(Addr::Unix("/tmp/s".into())));
        for bad in ["", "tcp!x", "host", "a:b", "unix!", "tcp!h!70000"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
        assert_eq!(tcp("::1", 7).to_string(), "tcp!::1!7");
    }
}
