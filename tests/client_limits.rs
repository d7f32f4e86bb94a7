//! The client within a real server's limits (the engine over the memory
//! broker, in this process): more pulls in flight on one connection than
//! the server takes at once wait in the client, and listing more topics
//! than a connection may hold fids works.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use dchan::client::{Client, Options, TOPICS_AT_ONCE, TopicSettings};
use dchan::engine::Limits;
use dchan::proto::Dialect;
use futures_util::future::join_all;
use support::{Server, patiently};

#[tokio::test]
async fn two_thousand_pulls_in_flight_on_one_client_all_get_a_message() {
    const PULLS: usize = 2000;
    let server = Server::start().await;
    assert!(PULLS > Limits::default().max_in_flight);
    let opts = Options::default();
    let pushing = Client::connect(&server.addr, &opts).await.unwrap();
    let settings = TopicSettings {
        capacity: Some(PULLS as u64),
        ..TopicSettings::default()
    };
    pushing.create("jobs", &settings).await.unwrap();
    let pulling = Arc::new(Client::connect(&server.addr, &opts).await.unwrap());
    let pulls: Vec<_> = (0..PULLS)
        .map(|_| {
            let c = pulling.clone();
            tokio::spawn(async move { c.pull("jobs").await })
        })
        .collect();
    for i in 0..PULLS {
        pushing.push("jobs", format!("{i}\n")).await.unwrap();
    }
    let mut got = HashSet::new();
    for pull in pulls {
        let msg = patiently(pull).await.unwrap().expect("pull fails");
        let msg = String::from_utf8(msg.unwrap().to_vec()).unwrap();
        assert!(got.insert(msg), "a message came twice");
    }
    let want: HashSet<String> = (0..PULLS).map(|i| format!("{i}\n")).collect();
    assert_eq!(got, want);
    server.stop().await;
}

#[tokio::test]
async fn the_status_of_more_topics_than_a_connection_has_fids() {
    // Four times as many topics as fids, and room for the reads at once.
    let max_fids = TOPICS_AT_ONCE + 16;
    let limits = Limits {
        max_fids,
        ..Limits::default()
    };
    let server = Server::start_with(limits).await;
    let c = Client::connect(&server.addr, &Options::default())
        .await
        .unwrap();
    let topics: Vec<String> = (0..4 * max_fids).map(|i| format!("t{i:03}")).collect();
    for t in &topics {
        c.create(t, &TopicSettings::default()).await.unwrap();
    }
    let listed = patiently(c.topics()).await.unwrap();
    assert_eq!(listed, topics);
    // All at once, each read holding a fid from its walk, they pass the limit.
    let at_once = patiently(join_all(topics.iter().map(|t| c.ctl(t)))).await;
    assert!(at_once.iter().any(|r| r.is_err()), "the limit did not bite");
    let ctls = patiently(c.ctl_each(&topics)).await;
    assert_eq!(ctls.len(), topics.len());
    for ctl in ctls {
        assert!(ctl.unwrap().contains("pending 0"));
    }
    server.stop().await;
}

#[tokio::test]
async fn listing_adapts_to_a_server_with_fewer_fids_than_it_reads_at_once() {
    // 16 fids (as `[limits] max_fids = 16`), 100 topics: the names and
    // the status of each come, read fewer at once.
    for dialect in [Dialect::P2000, Dialect::P2000u, Dialect::P2000L] {
        let limits = Limits {
            max_fids: 16,
            ..Limits::default()
        };
        let server = Server::start_with(limits).await;
        let c = Client::connect(&server.addr, &Options::default().dialect(dialect))
            .await
            .unwrap();
        let topics: Vec<String> = (0..100).map(|i| format!("t{i:03}")).collect();
        for t in &topics {
            c.create(t, &TopicSettings::default()).await.unwrap();
        }
        let listed = patiently(c.topics()).await.unwrap();
        assert_eq!(listed, topics, "{dialect:?}");
        let ctls = patiently(c.ctl_each(&topics)).await;
        assert_eq!(ctls.len(), topics.len());
        for ctl in ctls {
            assert!(ctl.unwrap().contains("pending 0"), "{dialect:?}");
        }
        server.stop().await;
    }
}
