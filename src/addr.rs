//! Network addresses as dchan writes them — `tcp!HOST!PORT`, `HOST:PORT`,
//! `unix!PATH` — parsed once, for the server's listeners and the client's dials.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The address the server listens on and the client dials when told nothing.
pub const DEFAULT_ADDR: &str = "tcp!127.0.0.1!5640";

/// The port of `tcp!HOST` when the port is left out.
pub const DEFAULT_PORT: u16 = 5640;

/// Where a 9P server is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// A TCP address: a host name or IP literal (without brackets) and a port.
    Tcp { host: String, port: u16 },
    /// A Unix-domain socket's path.
    Unix(PathBuf),
}

/// Why an address string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {addr:?}: {reason} (want tcp!HOST!PORT, HOST:PORT or unix!PATH)")]
pub struct AddrError {
    /// The string as given.
    pub addr: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Addr {
    /// The `host:port` string `tokio::net` resolves (IPv6 literals bracketed).
    pub fn host_port(&self) -> Option<String> {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => Some(format!("[{host}]:{port}")),
            Addr::Tcp { host, port } => Some(format!("{host}:{port}")),
            Addr::Unix(_) => None,
        }
    }
}

impl FromStr for Addr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let bad = |reason| AddrError {
            addr: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix!") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix("tcp!") {
            match rest.split_once('!') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        } else if s.contains('!') {
            return Err(bad("unknown network"));
        } else if let Some(rest) = s.strip_prefix('[') {
            // [v6]:port
            let (host, tail) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = tail.strip_prefix(':').ok_or_else(|| bad("missing port"))?;
            (host, Some(port))
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
            if host.contains(':') {
                return Err(bad("IPv6 address needs brackets"));
            }
            (host, Some(port))
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(Addr::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Addr {
    /// The canonical form: `tcp!HOST!PORT` or `unix!PATH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } => write!(f, "tcp!{host}!{port}"),
            Addr::Unix(path) => write!(f, "unix!{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Addr {
        Addr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!("tcp!127.0.0.1!5640".parse(), Ok(tcp("127.0.0.1", 5640)));
        assert_eq!("tcp!example.org".parse(), Ok(tcp("example.org", 5640)));
        assert_eq!("localhost:99".parse(), Ok(tcp("localhost", 99)));
        assert_eq!("[::1]:7".parse(), Ok(tcp("::1", 7)));
        assert_eq!("tcp!::1!7".parse(), Ok(tcp("::1", 7)));
        assert_eq!(
            "unix!/tmp/d.sock".parse(),
            Ok(Addr::Unix("/tmp/d.sock".into()))
        );
        assert_eq!(tcp("::1", 7).host_port().unwrap(), "[::1]:7");
        assert_eq!(tcp("h", 7).to_string(), "tcp!h!7");
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "nohost",
            "tcp!h!port",
            "h:99999",
            "udp!h!1",
            "unix!",
            ":5",
            "::1:5",
            "tcp!!5",
        ] {
            assert!(s.parse::<Addr>().is_err(), "{s:?} parsed");
        }
    }
}
