//! `dchan tunnel`: its arguments; the tunnel itself is `dchan::tunnel`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dchan::engine::Addr;
use dchan::tls::TlsFiles;
use dchan::tunnel::Tunnel;

/// The arguments of `dchan tunnel`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Example:
  dchan tunnel --listen 'tcp!127.0.0.1!5641' --to 'tls!queue.example!5643' \\
      --cert me.pem --key me.key --ca ca.pem &
  mount -t 9p -o trans=tcp,port=5641 127.0.0.1 /n/dchan

Prints \"listening on ADDR\" once the local end is bound.")]
pub struct TunnelArgs {
    /// The local plaintext end: tcp!127.0.0.1!PORT or unix!PATH
    #[arg(long, value_name = "ADDR")]
    pub listen: Addr,
    /// The server's TLS listener: tls!HOST!PORT
    #[arg(long, value_name = "ADDR")]
    pub to: Addr,
    /// The tunnel's certificate chain (PEM): its name is the user the server sees
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The tunnel's private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The CA (PEM) that signed the server's certificate
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Allow a local end beyond loopback (whoever reaches it acts as the
    /// tunnel's certificate)
    #[arg(long)]
    pub open: bool,
}

pub async fn main(args: TunnelArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let Addr::Tls { host, port } = args.to else {
        eprintln!("dchan: tunnel: --to {}: want tls!HOST!PORT", args.to);
        return ExitCode::from(2);
    };
    let tunnel = Tunnel {
        listen: args.listen,
        host,
        port,
        tls: TlsFiles {
            cert: args.cert,
            key: args.key,
            ca: Some(args.ca),
        },
    };
    match tunnel.bind(args.open).await {
        Ok(bound) => {
            bound.run(dchan::serve::stop_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dchan: tunnel: {e}");
            ExitCode::from(1)
        }
    }
}
