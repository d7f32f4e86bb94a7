//! What the engine tells whoever watches it (the metrics): each request
//! answered, with its type, time and outcome; each connection refused.
//! The engine knows no metrics library; `metrics` implements [`Observer`].
//!
//! With no observer (the default) nothing is timed or recorded.

use std::time::Duration;

/// Told of the engine's events; called on the connection's task, so it
/// must be quick (counters, a histogram bucket).
pub trait Observer: Send + Sync + 'static {
    /// A request of type `kind` ("Tread") was answered after `elapsed`,
    /// with the Linux errno of its error, if it failed.
    fn answered(&self, kind: &'static str, elapsed: Duration, errno: Option<u32>);

    /// A connection was turned away: `why` is "address" (not allowed),
    /// "tls" (handshake failed) or "full" (too many connections).
    fn refused(&self, why: &'static str);
}
