//! Publishes to JetStream and their acknowledgements (PubAcks).
//!
//! async-nats's `jetstream::Context::send_publish` makes each publish a
//! request of its own: a new inbox name, a semaphore permit, a oneshot, a
//! boxed future with a timer, and a PubAck parsed through an untagged
//! enum that builds a `serde_json` error for every acknowledgement (it
//! tries the error's shape first). Measured with a malloc probe on a
//! dchan server at pipe depth 64, the server made 35 allocations a
//! message with it and 30 without (book, chapter 7). Here a publish is a
//! plain NATS publish whose reply subject is `INBOX.N`; one subscription,
//! `INBOX.*`, takes every acknowledgement, and one task hands each to the
//! publish waiting under its `N`, parsed into the two fields dchan reads.
//! What async-nats still does: the protocol, reconnecting, and subscribing
//! again after a reconnection.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::oneshot;

/// What a publish's acknowledgement said: its stream sequence, or why not.
pub(super) type Acked = Result<u64, String>;

/// Publishes of this server whose acknowledgement has not come yet, by
/// the number their reply subject ends with.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Acked>>>;

/// This server's publishes to JetStream.
pub(super) struct Publisher {
    client: Client,
    /// `INBOX.`: a publish's reply subject is this and its number.
    inbox: String,
    next: AtomicU64,
    waiting: Arc<Waiting>,
    /// The task that hands acknowledgements out.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Subscribe to this server's acknowledgements.
    pub(super) async fn new(client: Client) -> Result<Publisher, async_nats::SubscribeError> {
        let inbox = format!("{}.", client.new_inbox());
        let acks = client.subscribe(format!("{inbox}*")).await?;
        let waiting = Arc::new(Waiting::default());
        let task = tokio::spawn(hand_out(acks, inbox.len(), waiting.clone()));
        Ok(Publisher {
            client,
            inbox,
            next: AtomicU64::new(0),
            waiting,
            task,
        })
    }

    /// Publish `payload` to `subject`, stored once by JetStream however
    /// often it is published with the same `id`. Resolves once the publish
    /// is handed to the connection (its order among this server's
    /// publishes is then fixed), with its acknowledgement to wait for.
    pub(super) async fn send(
        &self,
        subject: Subject,
        id: &str,
        payload: Bytes,
    ) -> Result<Ack, async_nats::PublishError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut reply = String::with_capacity(self.inbox.len() + 20);
        reply.push_str(&self.inbox);
        let _ = write!(reply, "{n}");
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(n, tx);
        let ack = Ack {
            rx,
            n,
            waiting: self.waiting.clone(),
            answered: false,
        };
        self.client
            .publish_with_reply_and_headers(subject, Subject::from(reply), headers, payload)
            .await?;
        Ok(ack)
    }
}

/// A publish's acknowledgement to come. Dropped before it came, it is no
/// longer waited for: one that comes later is ignored.
pub(super) struct Ack {
    rx: oneshot::Receiver<Acked>,
    n: u64,
    waiting: Arc<Waiting>,
    /// Its sender is out of `waiting`: `hand_out` took it out to answer.
    answered: bool,
}

impl Ack {
    /// The acknowledgement.
    pub(super) async fn recv(mut self) -> Acked {
        let acked = (&mut self.rx).await;
        self.answered = true;
        acked.unwrap_or_else(|_| Err("no acknowledgement".to_string()))
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        // No longer waited for: an acknowledgement that comes is ignored.
        if !self.answered {
            self.waiting.lock().remove(&self.n);
        }
    }
}

/// Hand each acknowledgement to the publish waiting for it.
async fn hand_out(mut acks: async_nats::Subscriber, prefix: usize, waiting: Arc<Waiting>) {
    while let Some(m) = acks.next().await {
        let Some(n) = m.subject.get(prefix..).and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(tx) = waiting.lock().remove(&n) else {
            continue;
        };
        let _ = tx.send(parse(&m));
    }
}

/// A PubAck: `{"stream":S,"seq":N}` (and `"duplicate":true` for a
/// publish stored before under its id), or `{"error":{...}}`; a status
/// (503: no stream takes the subject) with no body.
fn parse(m: &async_nats::Message) -> Acked {
    #[derive(Deserialize)]
    struct PubAck {
        seq: Option<u64>,
        error: Option<AckError>,
    }
    #[derive(Deserialize)]
    struct AckError {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        description: String,
    }
    if let Some(status) = m.status
        && !status.is_success()
    {
        return Err(match &m.description {
            Some(d) => format!("{status}: {d}"),
            None => format!("status {status}"),
        });
    }
    match serde_json::from_slice::<PubAck>(&m.payload) {
        Ok(PubAck { error: Some(e), .. }) => Err(format!("{} ({})", e.description, e.code)),
        Ok(PubAck { seq: Some(seq), .. }) => Ok(seq),
        Ok(_) => Err("acknowledgement without a sequence".to_string()),
        Err(e) => Err(format!("acknowledgement unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &'static [u8]) -> async_nats::Message {
        async_nats::Message {
            subject: "x.1".into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn an_acknowledgement_gives_its_sequence_or_its_error() {
        let ok = message(br#"{"stream":"dchan_1","seq":42}"#);
        assert_eq!(parse(&ok), Ok(42));
        let dup = message(br#"{"stream":"dchan_1","seq":7,"duplicate":true}"#);
        assert_eq!(parse(&dup), Ok(7));
        let err = message(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        );
        assert_eq!(
            parse(&err),
            Err("maximum messages exceeded (503)".to_string())
        );
        assert!(parse(&message(b"")).is_err());
        assert!(parse(&message(br#"{"stream":"s"}"#)).is_err());
        let mut none = message(b"");
        none.status = Some(async_nats::StatusCode::NO_RESPONDERS);
        assert!(parse(&none).unwrap_err().contains("503"));
    }
}
