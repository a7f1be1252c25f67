//! The message bus every host-side piece talks to (the messaging capability, the message
//! trigger), with two backends behind one trait: embedded (in-process) and NATS (many hosts).

pub mod embedded;
pub mod nats;

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

pub use crate::spec::subject::{subject_matches, valid_pattern, valid_subject};
