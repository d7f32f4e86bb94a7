//! Client-side timeouts that race with the other side never lose or
//! duplicate a message: a pull that times out as a push lands, and a push
//! that times out as a reader comes, against a real dchan server.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use dchan::client::{Client, Error, Options, TopicSettings};
use dchan::proto::Dialect;
use support::{Server, patiently};

const ROUNDS: usize = 200;

/// How long each side waits: short, so that many rounds race near it.
const LIMIT: Duration = Duration::from_millis(4);

async fn client(server: &Server, dialect: Dialect) -> Client {
    let opts = Options::group("").dialect(dialect);
    Client::connect(&server.addr, &opts).await.expect("connect")
}

/// A delay that sweeps around `LIMIT` as the rounds go.
fn jitter(round: usize) -> Duration {
    Duration::from_micros((round as u64 * 397) % 9000)
}

fn msg(round: usize) -> Bytes {
    Bytes::from(format!("m{round}\n"))
}

#[tokio::test]
async fn a_pull_timing_out_as_a_push_lands_loses_nothing() {
    let server = Server::start().await;
    for d in [Dialect::P2000, Dialect::P2000L] {
        let puller_client = client(&server, d).await;
        let pusher_client = client(&server, d).await;
        let topic = format!("pt{}", d.as_str().replace('.', "_"));
        let settings = TopicSettings {
            capacity: Some(ROUNDS as u64),
            ..TopicSettings::default()
        };
        puller_client.create(&topic, &settings).await.unwrap();
        let mut puller = puller_client.open_data(&topic).await.unwrap();
        let pusher = pusher_client.open_push(&topic).await.unwrap();
        let mut pulled = Vec::new();
        let mut timeouts = 0;
        for round in 0..ROUNDS {
            let push = async {
                tokio::time::sleep(jitter(round)).await;
                pusher.push(msg(round)).await
            };
            let (got, pushed) =
                patiently(async { tokio::join!(puller.next_timeout(LIMIT), push) }).await;
            pushed.unwrap();
            match got {
                Ok(Some(m)) => pulled.push(m),
                Err(Error::TimedOut) => {
                    // The push is done, so its message waits in the topic;
                    // had the timeout lost it, this would wait in vain (and
                    // `patiently` fail). Taking it also leaves the topic
                    // empty, so the next round races again.
                    timeouts += 1;
                    pulled.push(patiently(puller.next()).await.unwrap().unwrap());
                }
                other => panic!("{d:?} round {round}: {other:?}"),
            }
        }
        let distinct: HashSet<&Bytes> = pulled.iter().collect();
        let want: HashSet<Bytes> = (0..ROUNDS).map(msg).collect();
        assert_eq!(distinct.len(), ROUNDS, "{d:?}: a message came twice");
        assert!(want.iter().all(|m| distinct.contains(m)), "{d:?}");
        // And nothing more is there.
        let extra = puller.next_timeout(Duration::from_millis(50)).await;
        assert!(matches!(extra, Err(Error::TimedOut)), "{d:?}: {extra:?}");
        eprintln!("{d:?}: {timeouts} of {ROUNDS} pulls timed out");
        puller.close().await.unwrap();
        pusher.close().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_push_timing_out_as_a_reader_comes_is_reported_truly() {
    let server = Server::start().await;
    for d in [Dialect::P2000u, Dialect::P2000L] {
        let puller_client = client(&server, d).await;
        let pusher_client = client(&server, d).await;
        let topic = format!("ps{}", d.as_str().replace('.', "_"));
        // Capacity 0: a push is taken only when a reader takes it.
        puller_client
            .create(&topic, &TopicSettings::default())
            .await
            .unwrap();
        let mut puller = puller_client.open_data(&topic).await.unwrap();
        let pusher = pusher_client.open_push(&topic).await.unwrap();
        let mut pushed = HashSet::new();
        let mut pulled = Vec::new();
        for round in 0..ROUNDS {
            let pull = async {
                tokio::time::sleep(jitter(round)).await;
                puller.next_timeout(LIMIT * 2).await
            };
            let (push, got) =
                patiently(async { tokio::join!(pusher.push_timeout(msg(round), LIMIT), pull) })
                    .await;
            match push {
                Ok(()) => assert!(pushed.insert(msg(round))),
                Err(Error::TimedOut) => {}
                Err(e) => panic!("{d:?} round {round}: push: {e}"),
            }
            match got {
                Ok(Some(m)) => pulled.push(m),
                Err(Error::TimedOut) => {}
                other => panic!("{d:?} round {round}: pull: {other:?}"),
            }
        }
        let distinct: HashSet<Bytes> = pulled.iter().cloned().collect();
        assert_eq!(distinct.len(), pulled.len(), "{d:?}: a message came twice");
        assert_eq!(
            distinct, pushed,
            "{d:?}: the pushes reported done are exactly the messages pulled"
        );
        eprintln!("{d:?}: {} of {ROUNDS} pushes went through", pushed.len());
        puller.close().await.unwrap();
        pusher.close().await.unwrap();
    }
    server.stop().await;
}
