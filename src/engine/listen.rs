//! Listening addresses (`tcp!HOST!PORT`, `HOST:PORT`, `tls!HOST!PORT`,
//! `unix!PATH`), the TCP and Unix-domain listeners behind them, and the
//! door each has ([`Guard`]): which addresses may come in, TLS, and who a
//! client is (a TLS client certificate's name, a Unix peer's user), which
//! the session hands to the tree with each attach. The tree knows users,
//! never sockets.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;

/// Where to listen, as the command line and config file spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `tcp!HOST!PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6).
    Tcp { host: String, port: u16 },
    /// `tls!HOST!PORT`: TCP, then TLS (see [`Guard`]).
    Tls { host: String, port: u16 },
    /// `unix!PATH`.
    Unix(PathBuf),
}

impl Addr {
    /// Whether only this machine can reach it: a Unix socket, or TCP on
    /// a loopback address (127.0.0.0/8, ::1, `localhost`).
    pub fn is_loopback(&self) -> bool {
        match self {
            Addr::Unix(_) => true,
            Addr::Tcp { host, .. } | Addr::Tls { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Addr, String> {
        let bad = || {
            format!("bad address {s:?}: want tcp!HOST!PORT, HOST:PORT, tls!HOST!PORT or unix!PATH")
        };
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
        if let Some(path) = s.strip_prefix("unix!") {
            return match path {
                "" => Err(bad()),
                _ => Ok(Addr::Unix(path.into())),
            };
        }
        let tls = s.starts_with("tls!");
        let (host, p) = match s.strip_prefix("tcp!").or_else(|| s.strip_prefix("tls!")) {
            Some(rest) => rest.rsplit_once('!').ok_or_else(bad)?,
            None => s.rsplit_once(':').ok_or_else(bad)?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host {
            "" | "*" => "0.0.0.0",
            h => h,
        };
        let (host, port) = (host.to_string(), port(p)?);
        Ok(if tls {
            Addr::Tls { host, port }
        } else {
            Addr::Tcp { host, port }
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } => write!(f, "tcp!{host}!{port}"),
            Addr::Tls { host, port } => write!(f, "tls!{host}!{port}"),
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
    /// Binds `addr` (a `tls!` address binds its TCP port; TLS is the
    /// [`Guard`]'s). At a Unix path, a socket that no server answers on
    /// (left by one that died) is replaced; a live socket, or a file of any
    /// other kind, is refused and left as it is.
    pub async fn bind(addr: &Addr) -> io::Result<Listener> {
        match addr {
            Addr::Tcp { host, port } | Addr::Tls { host, port } => Ok(Listener::Tcp(
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

    /// The next connection, not yet let in (see [`Guard`]).
    pub async fn accept(&self) -> io::Result<Arriving> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Arriving {
                    stream: Stream::Tcp(s),
                    peer: Some(peer),
                })
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok(Arriving {
                    stream: Stream::Unix(s),
                    peer: None,
                })
            }
        }
    }
}

/// A connection accepted and not yet let in.
#[derive(Debug)]
pub struct Arriving {
    stream: Stream,
    /// The TCP peer's address; `None` on a Unix socket.
    peer: Option<SocketAddr>,
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Arriving {
    /// The TCP peer's IP address; `None` on a Unix socket.
    pub fn ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip())
    }

    /// The peer's name for logs: `IP:PORT`, or `unix`.
    pub fn peer(&self) -> String {
        self.peer
            .map_or_else(|| "unix".to_string(), |p| p.to_string())
    }
}

/// Who a connection's client is, as its listener knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// The peer's address, for logs (`IP:PORT`, or `unix`).
    pub addr: String,
    /// The user the listener proved (a TLS client certificate's name, a
    /// Unix peer's user name); `None` where only the attach's uname says.
    pub user: Option<String>,
}

/// A listener's door: the addresses it lets in, and TLS.
#[derive(Clone, Default)]
pub struct Guard {
    /// The networks a TCP client may come from; empty lets in every one.
    pub allow: Vec<IpNet>,
    /// TLS on every connection, with client certificates if its
    /// configuration asks for them (their name is then the user).
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("allow", &self.allow)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

impl Guard {
    /// Whether the address rules let this connection in (a Unix socket's
    /// peer has no address: the socket file's permissions guard it).
    pub fn admits(&self, a: &Arriving) -> bool {
        match a.peer {
            None => true,
            Some(_) if self.allow.is_empty() => true,
            Some(peer) => {
                let ip = match peer.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    ip => ip,
                };
                self.allow.iter().any(|net| net.contains(&ip))
            }
        }
    }

    /// Let the connection in: the TLS handshake (within
    /// [`HANDSHAKE_WAIT`]) if this listener has TLS, and who the client is.
    pub async fn enter(&self, a: Arriving) -> io::Result<(ReadHalf, WriteHalf, Who)> {
        let addr = a.peer();
        match (a.stream, &self.tls) {
            (Stream::Tcp(s), Some(tls)) => {
                let accept = tls.accept(s);
                let s = tokio::time::timeout(HANDSHAKE_WAIT, accept)
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                let user = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(crate::tls::cert_name);
                let (r, w) = tokio::io::split(s);
                Ok((Box::new(r), Box::new(w), Who { addr, user }))
            }
            (Stream::Tcp(s), None) => {
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), Who { addr, user: None }))
            }
            (Stream::Unix(s), _) => {
                let user = s.peer_cred().ok().map(|c| user_name(c.uid()));
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), Who { addr, user }))
            }
        }
    }
}

/// The name of the user with this uid, or the number if it has none.
fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, both ours and
    // as long as it is told; `out` is null or points at `pwd`.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_string_lossy().into_owned()
}

/// A bound listener with its door: what the engine serves on.
#[derive(Debug)]
pub struct Entrance {
    pub listener: Listener,
    pub guard: Guard,
}

impl From<Listener> for Entrance {
    /// A listener that lets everyone in, without TLS.
    fn from(listener: Listener) -> Entrance {
        Entrance {
            listener,
            guard: Guard::default(),
        }
    }
}

impl Entrance {
    /// The address bound, as clients should dial it (`tls!` with TLS).
    pub fn local_addr(&self) -> io::Result<Addr> {
        Ok(match self.listener.local_addr()? {
            Addr::Tcp { host, port } if self.guard.tls.is_some() => Addr::Tls { host, port },
            a => a,
        })
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
        assert_eq!(
            "tls!example.org!5643".parse(),
            Ok(Addr::Tls {
                host: "example.org".into(),
                port: 5643
            })
        );
        for bad in ["", "tcp!x", "host", "a:b", "unix!", "tcp!h!70000", "tls!h"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
        assert_eq!(tcp("::1", 7).to_string(), "tcp!::1!7");
    }

    #[test]
    fn loopback_or_not() {
        for a in [
            "tcp!127.0.0.1!1",
            "tcp!localhost!1",
            "[::1]:1",
            "unix!/s",
            "tls!127.0.0.2!1",
        ] {
            assert!(a.parse::<Addr>().unwrap().is_loopback(), "{a}");
        }
        for a in [
            "tcp!0.0.0.0!1",
            "tcp!*!1",
            "tcp!10.0.0.1!1",
            "tls!example.org!1",
        ] {
            assert!(!a.parse::<Addr>().unwrap().is_loopback(), "{a}");
        }
    }
}
