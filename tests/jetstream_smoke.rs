mod nats;
use bytes::Bytes;
use dchan::broker::{Delivery, JetStreamBroker, JetStreamConfig, TopicConfig, Wait};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let c = nats::Cluster::start(1).await;
    let cfg = JetStreamConfig {
        servers: c.url_list(),
        ..Default::default()
    };
    let a = JetStreamBroker::connect(cfg.clone()).await.unwrap();
    let b = JetStreamBroker::connect(cfg).await.unwrap();
    a.t_create(
        "t",
        TopicConfig {
            capacity: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.t_topics(), vec!["t".to_string()]);
    a.t_offset("t", "").await.unwrap();
    for i in 0..5 {
        let s = a
            .t_push("t", Bytes::from(format!("m{i}")), Wait::Block)
            .await
            .unwrap();
        assert_eq!(s, i);
    }
    for i in 0..5 {
        let d = b.t_pull("t", "", Wait::Block).await.unwrap().unwrap();
        assert_eq!(d.data().as_ref(), format!("m{i}").as_bytes());
        d.ack();
    }
    println!("{:?}", a.t_status("t").await.unwrap());
    // speed
    let n = 2000;
    let t0 = Instant::now();
    let bb = std::sync::Arc::new(b);
    let rb = bb.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let d = rb.t_pull("t", "", Wait::Block).await.unwrap().unwrap();
            d.ack();
        }
    });
    for _ in 0..n {
        a.t_push("t", Bytes::from_static(b"x"), Wait::Block)
            .await
            .unwrap();
    }
    reader.await.unwrap();
    println!(
        "{} msgs/s capacity 10 depth 1",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    a.t_set("t", dchan::broker::Setting::Capacity(0))
        .await
        .unwrap();
    let t0 = Instant::now();
    let rb = bb.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..200 {
            let d = rb.t_pull("t", "", Wait::Block).await.unwrap().unwrap();
            d.ack();
        }
    });
    for _ in 0..200 {
        a.t_push("t", Bytes::from_static(b"x"), Wait::Block)
            .await
            .unwrap();
    }
    reader.await.unwrap();
    println!("{} msgs/s rendezvous", 200.0 / t0.elapsed().as_secs_f64());
    a.t_remove("t").await.unwrap();
}
