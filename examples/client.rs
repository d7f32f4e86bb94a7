//! A request/reply service over two dchan topics, with `dchan::client`.
//!
//! Two tasks share one connection: a service that pulls requests from one
//! topic and pushes each answer (the request in upper case) to another, and
//! a requester that asks and waits for each answer. Both topics have
//! capacity 0, so every push is a rendezvous: it returns once the other side
//! has taken the message, like a send on an unbuffered Go channel. Closing
//! the request topic ends the service, which closes the reply topic.
//!
//! Run it against a server:
//! ```text
//! dchan serve &
//! cargo run --example client                         # tcp!127.0.0.1!5640
//! cargo run --example client -- 'tcp!host!5640'      # or $DCHAN_ADDR
//! ```
//! It exits 0 when every answer came back right, 1 otherwise.

use std::process::ExitCode;

use dchan::client::{Client, Options, TopicSettings};

/// What the requester asks.
const WORDS: [&str; 4] = ["hello", "rendezvous", "over", "9p"];

/// A failure of this example: the client's errors, or a wrong answer.
type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DCHAN_ADDR").ok())
        .unwrap_or_else(|| "tcp!127.0.0.1!5640".to_string());
    match run(&addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: &str) -> Result<(), Failure> {
    let client = Client::connect(addr, &Options::default())
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    println!("connected to {addr}");
    let requests = format!("client-example-{}-requests", std::process::id());
    let replies = format!("client-example-{}-replies", std::process::id());
    for topic in [&requests, &replies] {
        client.create(topic, &TopicSettings::default()).await?;
    }
    println!("created {requests} and {replies} (capacity 0: a rendezvous)");

    // Both tasks borrow the one client: their requests share the connection.
    let outcome = tokio::try_join!(
        service(&client, &requests, &replies),
        requester(&client, &requests, &replies),
    );

    for topic in [&requests, &replies] {
        client.remove(topic).await?;
    }
    let (served, ()) = outcome?;
    println!("ok: {served} requests answered, topics removed");
    Ok(())
}

/// Answer each request with its upper case, until the request topic is
/// closed; then close the reply topic. Returns how many it answered.
async fn service(client: &Client, requests: &str, replies: &str) -> Result<usize, Failure> {
    let mut pull = client.open_data(requests).await?;
    let push = client.open_push(replies).await?;
    let mut served = 0;
    while let Some(request) = pull.next().await? {
        let text = String::from_utf8_lossy(&request);
        println!("service: got {:?}", text.trim_end());
        push.push(text.to_uppercase()).await?;
        served += 1;
    }
    println!("service: {requests} closed; close {replies}");
    pull.close().await?;
    push.close().await?;
    client.close(replies).await?;
    Ok(served)
}

/// Ask each of [`WORDS`], check each answer, then close the request topic
/// and check that the reply topic ends too.
async fn requester(client: &Client, requests: &str, replies: &str) -> Result<(), Failure> {
    let push = client.open_push(requests).await?;
    let mut pull = client.open_data(replies).await?;
    for word in WORDS {
        // Returns once the service has taken the request.
        push.push(format!("{word}\n")).await?;
        let answer = pull.next().await?.ok_or("the reply topic ended early")?;
        let answer = String::from_utf8_lossy(&answer);
        println!("requester: asked {word:?}, got {:?}", answer.trim_end());
        if answer != format!("{}\n", word.to_uppercase()) {
            return Err(format!("wrong answer {answer:?} to {word:?}").into());
        }
    }
    push.close().await?;
    client.close(requests).await?;
    if pull.next().await?.is_some() {
        return Err("a reply after the last request".into());
    }
    pull.close().await?;
    println!("requester: {replies} ended after the last answer");
    Ok(())
}
