//! `dchan tunnel`: carry a local plaintext port to a remote TLS listener,
//! as stunnel and `ssh -L` do, for the clients that cannot speak TLS (the
//! kernel's 9P client, 9pfuse, plan9port).
//!
//! ```text
//! dchan tunnel --listen tcp!127.0.0.1!5641 --to tls!server!5643 --cert C --key K --ca CA
//! mount -t 9p -o trans=tcp,port=5641 127.0.0.1 /n/dchan
//! ```
//! Each local connection gets a TLS connection of its own to the server
//! (made with the tunnel's certificate, whose name the server takes as the
//! user), and bytes are copied both ways until either side closes. A
//! client of the tunnel is whoever the tunnel's certificate says: so the
//! local end must be loopback or a Unix socket (whose file permissions
//! guard it) unless `--open` says otherwise. It is a client of dchan's
//! server like any other: it uses the client's TLS dialing and knows
//! nothing of 9P.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::client::tls_connect;
use crate::engine::Addr;
use crate::tls::TlsFiles;

/// What a tunnel joins: a local address, and the remote TLS listener.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// Where local clients connect (`tcp!127.0.0.1!PORT` or `unix!PATH`).
    pub listen: Addr,
    /// The server's TLS listener: its host and port.
    pub host: String,
    pub port: u16,
    /// The tunnel's certificate and key, and the server's CA.
    pub tls: TlsFiles,
}

/// A bound local end.
enum Local {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Tunnel {
    /// Check the TLS files and bind the local end; print `listening on
    /// ADDR` (the real port when asked for port 0). Refuses a local end
    /// beyond loopback unless `open`.
    pub async fn bind(self, open: bool) -> Result<Bound, String> {
        self.tls.client_config()?;
        if !self.listen.is_loopback() && !open {
            return Err(format!(
                "{}: a tunnel's plaintext end acts with the tunnel's certificate for whoever reaches it; listen on loopback or a Unix socket, or give --open",
                self.listen
            ));
        }
        let (local, at) = match &self.listen {
            Addr::Tcp { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("listen on {}: {e}", self.listen))?;
                let a = l.local_addr().map_err(|e| e.to_string())?;
                (Local::Tcp(l), format!("tcp!{}!{}", a.ip(), a.port()))
            }
            Addr::Unix(path) => {
                let l = UnixListener::bind(path)
                    .map_err(|e| format!("listen on {}: {e}", self.listen))?;
                (Local::Unix(l), self.listen.to_string())
            }
            Addr::Tls { .. } => {
                return Err(format!(
                    "{}: the tunnel's local end is plaintext (tcp! or unix!)",
                    self.listen
                ));
            }
        };
        println!("listening on {at}");
        Ok(Bound {
            local,
            tunnel: Arc::new(self),
        })
    }
}

/// A tunnel whose local end is bound.
pub struct Bound {
    local: Local,
    tunnel: Arc<Tunnel>,
}

impl Bound {
    /// Carry connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let accept = async {
            loop {
                let stream: Box<dyn Duplex> = match &self.local {
                    Local::Tcp(l) => match l.accept().await {
                        Ok((s, _)) => {
                            let _ = s.set_nodelay(true);
                            Box::new(s)
                        }
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    Local::Unix(l) => match l.accept().await {
                        Ok((s, _)) => Box::new(s),
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                tokio::spawn(carry(stream, self.tunnel.clone()));
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => info!("tunnel stopping"),
        }
        if let (Local::Unix(_), Addr::Unix(path)) = (&self.local, &self.tunnel.listen) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How long the tunnel waits for the server's side of the TLS handshake.
const HANDSHAKE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A byte stream both ways.
trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// One local connection: dial the server, copy both ways until either
/// side closes. A refused TLS connection closes the local one, logged.
async fn carry(mut local: Box<dyn Duplex>, t: Arc<Tunnel>) {
    // A peer that is no TLS listener (a plaintext 9P port) may never
    // answer the ClientHello: the handshake is bounded, and every failure
    // (another CA, no certificate, a plaintext peer) is logged with a hint.
    let to = format!("tls!{}!{}", t.host, t.port);
    let dialed = tokio::time::timeout(HANDSHAKE_WITHIN, tls_connect(&t.host, t.port, &t.tls));
    let mut remote = match dialed.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(%to, error = %e, "tunnel: TLS handshake with the server failed (another CA, no client certificate it accepts, or not a TLS listener?)");
            return;
        }
        Err(_) => {
            warn!(%to, "tunnel: no TLS handshake within {}s (is it a plaintext port? the tunnel needs a tls! listener)", HANDSHAKE_WITHIN.as_secs());
            return;
        }
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
        tracing::debug!(error = %e, "tunnel connection ended");
    }
}
