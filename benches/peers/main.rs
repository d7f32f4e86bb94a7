//! The peers' side of the benchmark: the workloads of `dchan bench`, run by
//! the same driver (`dchan::bench`) against Redis lists, NATS core, NATS
//! JetStream and a raw TCP echo; also the echo server itself.
//!
//! A bench target (`harness = false`) so the server binary never depends on
//! the peers' clients. Run as
//! `cargo bench --bench peers -- SYSTEM WORKLOAD --addr HOST:PORT [options]`,
//! or `cargo bench --bench peers -- echo-server --addr HOST:PORT`.

mod nats;
mod redis;

use clap::Parser;
use dchan::bench::{self, Options, System, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// Redis lists: RPUSH and BLPOP.
    Redis,
    /// NATS core: publish and queue-group subscriptions.
    Nats,
    /// NATS JetStream: acked publishes and durable pull consumers.
    Jetstream,
    /// The same on file storage (the durable rows).
    JetstreamFile,
    /// A raw TCP echo (the floor).
    Tcp,
    /// Serve the raw TCP echo on --addr until killed.
    EchoServer,
}

#[derive(Debug, Parser)]
#[command(about = "Run a dchan benchmark workload against a peer system")]
struct Args {
    peer: Peer,
    /// The workload (not for echo-server).
    workload: Option<Workload>,
    /// The peer's address, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// JetStream: each stream's replicas (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[command(flatten)]
    opts: Options,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.peer == Peer::EchoServer {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .unwrap_or_else(|e| fail(&format!("echo-server: bind {}: {e}", args.addr)));
        if let Err(e) = bench::tcp::serve_echo(listener).await {
            fail(&format!("echo-server: {e}"));
        }
        return;
    }
    let Some(workload) = args.workload else {
        fail("a workload is required")
    };
    let report = match args.peer {
        Peer::Redis => go(redis::Redis::new(&args.addr), workload, &args.opts).await,
        Peer::Nats => {
            let core = nats::Core::new(&args.addr, args.opts.depth);
            go(core, workload, &args.opts).await
        }
        Peer::Jetstream | Peer::JetstreamFile => {
            let k = args.opts.batch;
            let in_flight = args.opts.group_in_flight(workload) * k;
            let depth = args.opts.reader_depth(workload) * k;
            let file = args.peer == Peer::JetstreamFile;
            let js = nats::JetStream::new(&args.addr, depth, in_flight, file)
                .await
                .map(|js| js.with_replicas(args.replicas));
            go(js, workload, &args.opts).await
        }
        Peer::Tcp => go(Ok(bench::tcp::Tcp::new(&args.addr)), workload, &args.opts).await,
        Peer::EchoServer => unreachable!("served above"),
    };
    report.print();
    if let Some(e) = report.error.as_ref().filter(|e| !e.starts_with("n/a")) {
        eprintln!("peers: {:?} {workload:?} FAILED: {e}", args.peer);
        std::process::exit(1);
    }
}

async fn go<S: System>(
    system: bench::Result<S>,
    workload: Workload,
    opts: &Options,
) -> bench::Report {
    match system {
        Ok(s) => bench::run(&s, workload, opts).await,
        Err(e) => fail(&format!("cannot reach the system: {e}")),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("peers: {why}");
    std::process::exit(2)
}
