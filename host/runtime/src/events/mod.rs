//! Durable events: streams that keep what is published on their subjects, and durable
//! consumers that deliver each message until a handler acknowledges it. Two backends
//! behind one trait, passing the same conformance tests: embedded (a local redb file,
//! fed by the embedded bus) and NATS JetStream (streams and durable pull consumers shared
//! by every host).
//!
//! The delivery contract (README, "Durable events"): a message stored in a stream is
//! delivered to one consumer at a time until it is acknowledged; a negative
//! acknowledgement redelivers it after the delay it names; a delivery neither
//! acknowledged nor refused within the consumer's ack wait (its host stopped) is
//! delivered again. What a failing handler gets retried with, and when a message becomes a
//! dead letter, is the message trigger's policy (`triggers::durable`), the same on both.

pub mod embedded;
pub mod nats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc};

use crate::bus::{Message, StopDelivery};

/// Header with a message's idempotency id (JetStream's own name for it): a second
/// message with the same id within a stream's dedup window is not stored again.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";

/// How long a stream remembers idempotency ids (JetStream's default).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// A stream weft creates when none captures a subscription's subject yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Its name (`weft-orders_placed`).
    pub name: String,
    /// The subjects (patterns) it keeps.
    pub subjects: Vec<String>,
    /// Messages older than this are removed.
    pub max_age: Duration,
    /// The oldest messages are removed beyond this many bytes.
    pub max_bytes: u64,
    /// The oldest messages are removed beyond this many messages.
    pub max_messages: u64,
}

/// A durable consumer: its position in a stream and its unacknowledged messages are
/// kept by the backend, so every host (and every version of the component) that
/// consumes under its name shares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The stream it reads.
    pub stream: String,
    /// Its durable name.
    pub name: String,
    /// The messages of the stream it takes (a subject pattern).
    pub filter: String,
    /// How long a delivery may go without an acknowledgement (or a sign of progress)
    /// before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries out at once, across every host.
    pub max_ack_pending: u32,
}

/// A stored message, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The stream that keeps it.
    pub stream: String,
    /// Its sequence number there.
    pub sequence: u64,
    /// Whether it had been stored before under the same idempotency id (nothing new
    /// was stored).
    pub duplicate: bool,
}

/// One delivery of a stored message.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Stable across redeliveries: the publisher's idempotency id if it gave one, else
    /// `STREAM:SEQUENCE`.
    pub id: String,
    /// The stream it came from.
    pub stream: String,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub attempt: u32,
    /// Settles it.
    pub ack: Box<dyn Acknowledge>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject)
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// How a delivery is settled. Each call reaches the backend before it returns.
pub trait Acknowledge: Send + Sync {
    /// Handled: never deliver it again.
    fn ack(&self) -> BoxFuture<'_, Result<(), EventError>>;
    /// Not handled: deliver it again after `delay`.
    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), EventError>>;
    /// Still being handled: restart its ack wait.
    fn working(&self) -> BoxFuture<'_, Result<(), EventError>>;
}

/// What a durable consumer delivers, in order, until it is stopped.
#[derive(Debug)]
pub struct Deliveries {
    /// The deliveries; ends when the consumer is stopped or the backend goes away.
    pub deliveries: mpsc::Receiver<Delivery>,
    /// Stops taking new deliveries; those already received stay readable.
    pub stop: Box<dyn StopDelivery>,
}

/// What tells a backend's delivering task to stop: set through the [`StopDelivery`] of
/// [`Stop::signal`], or when that is dropped.
#[derive(Debug, Default)]
struct Stop {
    stopped: AtomicBool,
    wake: Notify,
}

impl Stop {
    /// The signal, and the handle that sets it.
    fn signal() -> (Arc<Stop>, Box<dyn StopDelivery>) {
        let stop = Arc::new(Stop::default());
        (stop.clone(), Box::new(StopHandle(stop)))
    }

    fn set(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }
}

#[derive(Debug)]
struct StopHandle(Arc<Stop>);

impl StopDelivery for StopHandle {
    fn stop(&self) -> BoxFuture<'static, ()> {
        self.0.set();
        async {}.boxed()
    }
}

impl Drop for StopHandle {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Why an event operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

impl EventError {
    /// An error from any displayable cause.
    pub fn from_display(e: impl std::fmt::Display) -> EventError {
        EventError(e.to_string())
    }
}

/// A durable event backend. Both backends pass the same conformance tests.
pub trait EventStore: Send + Sync + std::fmt::Debug {
    /// The name of the stream that captures `subject` (a pattern): an existing one
    /// whose subjects cover it, else `create`, made now. An existing stream that
    /// overlaps `subject` without covering it is an error naming it.
    fn bind_stream(
        &self,
        subject: String,
        create: StreamConfig,
    ) -> BoxFuture<'_, Result<String, EventError>>;

    /// Stores `message` in the stream that captures its subject and waits until it is
    /// stored, deduplicated by `id` within [`DEDUP_WINDOW`]. No stream: an error.
    fn publish(
        &self,
        message: Message,
        id: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, EventError>>;

    /// Starts delivering to `consumer` (created, or updated to this configuration),
    /// holding at most `buffer` deliveries not yet taken.
    fn consume(
        &self,
        consumer: ConsumerConfig,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Deliveries, EventError>>;

    /// A short description of the backend, for listings.
    fn describe(&self) -> String;
}

/// `subject` (a pattern) as one token of a name: `.` becomes `_`, `*` becomes `any` and
/// `>` becomes `all`, and anything else outside `A-Za-z0-9-_` becomes `-`. For the stream
/// and consumer names weft derives (JetStream names take no `.`, `*`, `>` or spaces).
pub fn name_token(subject: &str) -> String {
    subject
        .split('.')
        .map(|token| match token {
            "*" => "any".to_string(),
            ">" => "all".to_string(),
            t => t
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect(),
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Whether every subject that `inner` matches is matched by `outer` (both patterns).
pub fn covers(outer: &str, inner: &str) -> bool {
    let (mut o, mut i) = (outer.split('.'), inner.split('.'));
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_subjects() {
        assert_eq!(name_token("orders.placed"), "orders_placed");
        assert_eq!(name_token("orders.*.eu"), "orders_any_eu");
        assert_eq!(name_token("a.>"), "a_all");
        assert_eq!(name_token("a b.c/d"), "a-b_c-d");
    }

    #[test]
    fn covering_and_overlapping_patterns() {
        assert!(covers("orders.>", "orders.placed"));
        assert!(covers("orders.*", "orders.placed"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.placed", "orders.*"));
        assert!(!covers("orders.*", "orders.placed.eu"));
        assert!(covers(">", "a.b"));
        assert!(overlaps("orders.placed", "orders.*"));
        assert!(overlaps("orders.>", "*.placed"));
        assert!(!overlaps("orders.placed", "orders.cancelled"));
        assert!(!overlaps("a.*", "a.b.c"));
    }
}
