//! The message bus every host-side piece talks to (the messaging capability, the message
//! trigger), with two backends behind one trait: embedded (in-process) and NATS (many hosts).

pub mod embedded;
pub mod nats;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// Header naming why a request failed, as NATS services do.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Header with the numeric code of a failed request.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Longest header value the host sends, in bytes (longer values are cut).
pub const MAX_HEADER_VALUE: usize = 1024;

/// `text` as a header value any backend can carry: control characters (line breaks
/// included, which NATS headers cannot hold) become spaces, and it is cut to
/// [`MAX_HEADER_VALUE`] bytes at a character boundary.
pub fn header_value(text: &str) -> String {
    let mut end = text.len().min(MAX_HEADER_VALUE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The check every backend makes before publishing: a valid subject, and a valid reply
/// subject if there is one (both reach the broker's protocol line).
pub fn check_message(message: &Message) -> Result<(), BusError> {
    let invalid = std::iter::once(&message.subject)
        .chain(&message.reply_to)
        .find(|s| !valid_subject(s));
    match invalid {
        Some(subject) => Err(BusError::InvalidSubject(subject.clone())),
        None => Ok(()),
    }
}

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
    /// Messages the backend dropped because `messages` was full (NATS: a slow
    /// consumer; the embedded bus never drops, it slows the publisher down instead).
    pub dropped: Arc<AtomicU64>,
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
    ) -> BoxFuture<'_, Result<Message, BusError>> {
        self.request_with(subject, Vec::new(), body, timeout)
    }
    /// [`MessageBus::request`] with headers (a trace's context, say).
    fn request_with(
        &self,
        subject: String,
        headers: Vec<(String, String)>,
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
    /// Waits until what was published so far has left the host (NATS: written to the
    /// server's connection), at most `within`; an error says why it could not.
    fn flush(&self, within: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        let _ = within;
        Box::pin(async { Ok(()) })
    }
}

pub use crate::spec::subject::{subject_matches, valid_pattern, valid_subject};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_value("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(MAX_HEADER_VALUE);
        let cut = header_value(&long);
        assert!(cut.len() <= MAX_HEADER_VALUE && cut.chars().all(|c| c == 'é'));
    }
}
