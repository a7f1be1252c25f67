//! Messaging: the bus every host-side piece talks to, with two backends behind one
//! trait (embedded, in-process; NATS, for many hosts), and the subject rules they share.

pub mod capability;
pub mod embedded;
pub mod nats;
pub mod trigger;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// Header naming why a request failed, as NATS services do.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Header with the numeric code of a failed request.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// A message on the bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Where it was published.
    pub subject: String,
    /// Where to answer, for requests.
    pub reply_to: Option<String>,
    /// Headers (for example the service-error headers of a failed request).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// The service error carried by a reply, if it is one.
    pub fn service_error(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(SERVICE_ERROR))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// A request got no reply in time.
    #[error("request to `{0}` timed out")]
    Timeout(String),
    /// A request found nobody subscribed to its subject.
    #[error("no responders on `{0}`")]
    NoResponders(String),
    /// The subject is not valid for the operation.
    #[error("invalid subject `{0}`")]
    InvalidSubject(String),
    /// The backend cannot be reached.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

/// Messages delivered to one subscription, in order. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// The messages; ends when the subscription is drained or the bus goes away.
    pub messages: mpsc::Receiver<Message>,
    /// Stops delivery of new messages; those already received stay readable.
    pub stop: Box<dyn StopDelivery>,
}

/// Stops a subscription's delivery (unsubscribe), leaving buffered messages to drain.
pub trait StopDelivery: Send + Sync + std::fmt::Debug {
    /// Unsubscribes.
    fn stop(&self) -> BoxFuture<'static, ()>;
}

/// A message bus backend. Both backends pass the same conformance tests.
pub trait MessageBus: Send + Sync + std::fmt::Debug {
    /// Publishes a message without waiting for anyone.
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>>;
    /// Publishes to `subject` and waits for the first reply.
    fn request(
        &self,
        subject: String,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Message, BusError>>;
    /// Subscribes to `subject` (wildcards allowed), sharing the load with the other
    /// members of `queue_group` if one is given. Holds at most `buffer` undelivered messages.
    fn subscribe(
        &self,
        subject: String,
        queue_group: Option<String>,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Subscription, BusError>>;
    /// A short description of the backend and its connection state, for listings.
    fn describe(&self) -> String;
}

/// Whether `subject` is a valid subject to publish to (no wildcards, no empty tokens).
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(' '))
}

/// Whether `pattern` is a valid subscription subject (`*` tokens, a final `>`).
pub fn valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    !pattern.is_empty()
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| !t.is_empty() && !t.contains(' ') && (*t != ">" || i == tokens.len() - 1))
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("*.b.>", "x.b.y"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn subject_validity() {
        assert!(valid_subject("shop.orders.created"));
        assert!(!valid_subject("shop.*"));
        assert!(!valid_subject("shop..x"));
        assert!(!valid_subject(""));
        assert!(valid_pattern("shop.>"));
        assert!(valid_pattern("*.orders"));
        assert!(!valid_pattern("shop.>.x"));
    }
}
