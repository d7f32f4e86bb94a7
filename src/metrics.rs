//! `dchan serve --metrics ADDR`: Prometheus metrics (`GET /metrics`) and
//! a health check (`GET /healthz`) over HTTP, with `prometheus-client`
//! for the text and `hyper` for HTTP.
//!
//! Two kinds of figures, so that nothing is added to a message's path:
//! - **Read at scrape**: per topic and group, from what the broker already
//!   keeps for its ctl files (`Broker::status`: pushed, pulled, held
//!   messages and bytes, blocked readers and writers, each group's lag
//!   and unacked); the open connections; the access rules' denied counts.
//!   A scrape costs one status per topic, like `dchan ls`: each under its
//!   own topic's lock only (no lock is held while the text is made), and
//!   the scrape yields its thread every 256 topics.
//! - **Counted as they happen**, in the engine, through its
//!   [`Observer`]: requests by type with a latency histogram, errors by
//!   errno, connections refused by reason. Only when metrics are on.
//!
//! The metrics listener takes the server's `metrics_allow` address rules,
//! or with none the 9P listeners' (`Config::metrics_rules`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::access::Rules;
use crate::broker::{Broker, Target};
use crate::engine::{Connections, Entrance, Observer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabel {
    errno: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    topic: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

/// What the engine counts as it goes: the [`Observer`] the metrics give it.
pub struct Requests {
    registry: Registry,
    answered: Family<TypeLabel, Counter>,
    latency: HistogramFamily,
    errors: Family<ErrnoLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s, ×4 a bucket.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

impl Requests {
    pub fn new() -> Requests {
        let mut registry = Registry::with_prefix("dchan");
        let answered = Family::<TypeLabel, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        let errors = Family::<ErrnoLabel, Counter>::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "requests",
            "9P requests answered, by type",
            answered.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a 9P request to its reply, by type (a blocked pull counts its wait)",
            latency.clone(),
        );
        registry.register(
            "errors",
            "9P requests answered with an error, by Linux errno (13 EACCES, 11 EAGAIN, 110 ETIMEDOUT...)",
            errors.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections turned away, by reason: address (not allowed), tls (handshake failed), full (max_connections)",
            refused.clone(),
        );
        Requests {
            registry,
            answered,
            latency,
            errors,
            refused,
        }
    }
}

impl Default for Requests {
    fn default() -> Self {
        Requests::new()
    }
}

impl Observer for Requests {
    fn answered(&self, kind: &'static str, elapsed: Duration, errno: Option<u32>) {
        let label = TypeLabel { r#type: kind };
        self.answered.get_or_create(&label).inc();
        self.latency
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if let Some(errno) = errno {
            self.errors.get_or_create(&ErrnoLabel { errno }).inc();
        }
    }

    fn refused(&self, why: &'static str) {
        self.refused
            .get_or_create(&ReasonLabel { reason: why })
            .inc();
    }
}

/// Everything a scrape reads.
pub struct Metrics<B: Broker> {
    broker: Arc<B>,
    access: Arc<Rules>,
    connections: Connections,
    requests: Arc<Requests>,
}

impl<B: Broker> Metrics<B> {
    pub fn new(
        broker: Arc<B>,
        access: Arc<Rules>,
        connections: Connections,
        requests: Arc<Requests>,
    ) -> Metrics<B> {
        Metrics {
            broker,
            access,
            connections,
            requests,
        }
    }

    /// The text of `GET /metrics`: the figures now.
    pub async fn render(&self) -> String {
        let mut now = Registry::with_prefix("dchan");
        let gauge = |reg: &mut Registry, name: &str, help: &str, v: u64| {
            let g = Gauge::<i64>::default();
            g.set(v as i64);
            reg.register(name, help, g);
        };
        gauge(
            &mut now,
            "connections",
            "Clients connected now",
            self.connections.count(),
        );
        let topics = self.broker.topics();
        gauge(&mut now, "topics", "Topics now", topics.len() as u64);

        let pushed = Family::<TopicLabel, Counter>::default();
        let pulled = Family::<TopicLabel, Counter>::default();
        let held = Family::<TopicLabel, Gauge>::default();
        let held_bytes = Family::<TopicLabel, Gauge>::default();
        let blocked_readers = Family::<TopicLabel, Gauge>::default();
        let blocked_writers = Family::<TopicLabel, Gauge>::default();
        let capacity = Family::<TopicLabel, Gauge>::default();
        let lag = Family::<GroupLabel, Gauge>::default();
        let unacked = Family::<GroupLabel, Gauge>::default();
        for (i, name) in topics.iter().enumerate() {
            // A long listing gives the worker back now and then, so a
            // scrape of many topics delays no request on the same thread
            // for long (the memory engine's statuses never wait).
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            let target = Target { name, id: None };
            // A topic removed since the list was taken is left out.
            let Ok(s) = self.broker.status(target).await else {
                continue;
            };
            let t = TopicLabel {
                topic: name.clone(),
            };
            pushed.get_or_create(&t).inc_by(s.pushed);
            pulled.get_or_create(&t).inc_by(s.pulled);
            held.get_or_create(&t).set(s.pending as i64);
            held_bytes.get_or_create(&t).set(s.bytes as i64);
            blocked_readers
                .get_or_create(&t)
                .set(s.blocked_readers as i64);
            blocked_writers
                .get_or_create(&t)
                .set(s.blocked_writers as i64);
            capacity.get_or_create(&t).set(s.config.capacity as i64);
            for g in &s.groups {
                let l = GroupLabel {
                    topic: name.clone(),
                    group: g.name.clone(),
                };
                lag.get_or_create(&l).set(g.lag as i64);
                unacked.get_or_create(&l).set(g.unacked as i64);
            }
        }
        now.register("topic_pushed", "Messages pushed to the topic", pushed);
        now.register(
            "topic_pulled",
            "Messages pulled from the topic (by any group)",
            pulled,
        );
        now.register(
            "topic_held_messages",
            "Messages the topic holds (not yet taken by every group): its depth",
            held,
        );
        now.register(
            "topic_held_bytes",
            "Bytes of the messages the topic holds (max_bytes bounds those not yet taken by every group)",
            held_bytes,
        );
        now.register(
            "topic_blocked_readers",
            "Pulls waiting for a message",
            blocked_readers,
        );
        now.register(
            "topic_blocked_writers",
            "Pushes waiting for room",
            blocked_writers,
        );
        now.register(
            "topic_capacity",
            "How far the slowest group may lag (0: rendezvous)",
            capacity,
        );
        now.register(
            "group_lag",
            "Messages pushed that the group has not yet read",
            lag,
        );
        now.register(
            "group_unacked",
            "Messages delivered to the group's readers and not yet acknowledged",
            unacked,
        );
        let denied = Family::<OpLabel, Counter>::default();
        for (op, n) in self.access.denied() {
            denied.get_or_create(&OpLabel { op: op.as_str() }).inc_by(n);
        }
        now.register(
            "denied",
            "Operations the access rules refused, by operation",
            denied,
        );

        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &now);
        let _ = encode_registry(&mut text, &self.requests.registry);
        let _ = encode_eof(&mut text);
        text
    }
}

/// Serve `/metrics` and `/healthz` on `entrance` until `stop` is cancelled.
pub async fn serve<B: Broker>(
    entrance: Entrance,
    metrics: Arc<Metrics<B>>,
    stop: CancellationToken,
) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let arriving = tokio::select! {
            _ = stop.cancelled() => return,
            a = entrance.listener.accept() => a,
        };
        let arriving = match arriving {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !entrance.guard.admits(&arriving) {
            warn!(peer = %arriving.peer(), "metrics: address not allowed: closed");
            continue;
        }
        let (metrics, guard, stop) = (metrics.clone(), entrance.guard.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok((r, w, _)) = guard.enter(arriving).await else {
                return;
            };
            let io = TokioIo::new(tokio::io::join(r, w));
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&metrics, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "metrics connection") },
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer<B: Broker>(
    metrics: &Metrics<B>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        r
    };
    let openmetrics = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        });
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") if openmetrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render().await,
        ),
        (&hyper::Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            to_prometheus_text(&metrics.render().await),
        ),
        (&hyper::Method::GET, "/healthz") => {
            reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        (&hyper::Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: GET /metrics or /healthz\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
    }
}

/// OpenMetrics text (what `prometheus-client` writes, and what Prometheus
/// asks for) as the older Prometheus text format 0.0.4, for clients that
/// do not ask for OpenMetrics (`curl`, `promtool check metrics`). The two
/// differ only here: a counter family is named with its `_total` suffix in
/// 0.0.4's HELP and TYPE lines, and 0.0.4 has no `# UNIT` or `# EOF`.
/// No crate converts between them, so these few lines do.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let counter = rest.strip_suffix(" counter");
            let rename = |l: &str, name: &str| l.replacen(name, &format!("{name}_total"), 1);
            if let Some(h) = help.take() {
                match counter {
                    Some(name) => out.push_str(&rename(h, name)),
                    None => out.push_str(h),
                }
                out.push('\n');
            }
            match counter {
                Some(name) => out.push_str(&rename(line, name)),
                None => out.push_str(line),
            }
            out.push('\n');
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_in_the_older_text_format() {
        let om = "# HELP dchan_requests 9P requests.\n# TYPE dchan_requests counter\n\
                  dchan_requests_total{type=\"Tread\"} 3\n# HELP dchan_topics Topics.\n\
                  # TYPE dchan_topics gauge\ndchan_topics 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP dchan_requests_total 9P requests.\n# TYPE dchan_requests_total counter\n\
             dchan_requests_total{type=\"Tread\"} 3\n# HELP dchan_topics Topics.\n\
             # TYPE dchan_topics gauge\ndchan_topics 1\n"
        );
    }
}
