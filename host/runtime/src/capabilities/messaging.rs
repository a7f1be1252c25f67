//! Host capability `wasmcloud:messaging/consumer`: publish and request from a guest,
//! limited to the subjects its manifest entry allows (and the reply subject of the
//! message it is handling). Reserved namespaces (`$JS.`, `$KV.`, `_INBOX.`, ...: see
//! [`reserved`]) are never reachable, and a `reply_to` the guest sets must be a subject
//! it could publish to or subscribes to, so nobody else's reply lands where this
//! component may not write.

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::trace::{CallTrace, ChildSpan};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, Linker};

use crate::bus::{BusError, Message, MessageBus, subject_matches};
use crate::events::EventStore;
use crate::metrics::{PublishKind, Usage, UseOutcome};
use crate::spec::ValidSpec;
use crate::spec::subject::{
    MAX_SUBJECT_BYTES, is_connection_control, reserved, valid_reply_target, valid_subject,
};

/// The host side of `wasmcloud:messaging/{types,consumer}`; the message trigger's
/// bindings for the `handler` export share its `types`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weft:platform/messaging-consumer",
        imports: { default: async },
    });
}

pub use bindings::wasmcloud::messaging::types::BrokerMessage;
pub use bindings::weft::platform::events::Delivery as DeliveryInfo;

/// The messaging grant of component `name`: the host's bus, the spec's
/// `allowed_publish`, and its subscriptions (a guest may name them as a `reply_to`).
pub fn grant(
    name: &str,
    spec: &ValidSpec,
    bus: Arc<dyn MessageBus>,
    events: Arc<dyn EventStore>,
    usage: Arc<Usage>,
) -> MessagingGrant {
    MessagingGrant {
        bus,
        events,
        usage,
        allowed: spec.allowed_publish.clone().into(),
        subscribed: spec
            .subscriptions
            .iter()
            .map(|s| s.subject.clone())
            .collect(),
        component: name.into(),
    }
}

/// What one component may do on the bus: shared by all its instances.
#[derive(Debug, Clone)]
pub struct MessagingGrant {
    /// The host's bus.
    pub bus: Arc<dyn MessageBus>,
    /// The host's streams, for durable publishing (`weft:platform/events`).
    pub events: Arc<dyn EventStore>,
    /// Where its publishes and requests are counted.
    pub usage: Arc<Usage>,
    /// Subject patterns it may publish and request on.
    pub allowed: Arc<[String]>,
    /// Subject patterns it subscribes to.
    pub subscribed: Arc<[String]>,
    /// The component's name, for error messages.
    pub component: Arc<str>,
}

/// The per-instance messaging state held in the store.
#[derive(Debug)]
pub struct MessagingCtx {
    grant: MessagingGrant,
    /// The reply subject of the message being handled: always allowed.
    reply_to: Option<String>,
    /// The durable delivery being handled, if it is one.
    delivery: Option<DeliveryInfo>,
    /// The span of the call being handled, when traces are on.
    trace: Option<CallTrace>,
}

impl MessagingCtx {
    /// State for an instance handling a message with `reply_to` (or an HTTP request: `None`).
    pub fn new(grant: MessagingGrant, reply_to: Option<String>) -> MessagingCtx {
        MessagingCtx {
            grant,
            reply_to,
            delivery: None,
            trace: None,
        }
    }

    /// The reply subject and durable delivery of the next message a (reused) instance
    /// handles.
    pub fn set_message(&mut self, reply_to: Option<String>, delivery: Option<DeliveryInfo>) {
        self.reply_to = reply_to;
        self.delivery = delivery;
    }

    /// The span of the call being handled, when traces are on.
    pub fn set_trace(&mut self, trace: Option<CallTrace>) {
        self.trace = trace;
    }

    /// A child span of the call for an outgoing message (`publish` or `request`), if
    /// traces are on, with its context written into `headers`.
    fn trace_out(
        &self,
        kind: SpanKind,
        operation: &str,
        subject: &str,
        headers: &mut Vec<(String, String)>,
    ) -> Option<ChildSpan> {
        let span = self.trace.as_ref()?.child(
            kind,
            || format!("{operation} {subject}"),
            || {
                vec![
                    KeyValue::new("messaging.system", "nats"),
                    KeyValue::new("messaging.operation.name", operation.to_string()),
                    KeyValue::new("messaging.destination.name", subject.to_string()),
                ]
            },
        );
        span.inject(headers);
        Some(span)
    }

    /// Whether `subject` is the reply subject of the message being handled, and one a
    /// reply may go to.
    fn is_current_reply(&self, subject: &str) -> bool {
        self.reply_to.as_deref() == Some(subject) && valid_reply_target(subject)
    }

    /// Whether `subject` controls the WebSocket connection whose event is being handled
    /// (`ws.conn.HOST.N.join`, `.leave`, `.close`, `.binary`).
    fn is_current_connection_control(&self, subject: &str) -> bool {
        self.reply_to
            .as_deref()
            .is_some_and(|reply_to| is_connection_control(subject, reply_to))
    }

    /// The one check of publishing and requesting: the reply subject of the message
    /// being handled, or a subject `allowed_publish` matches that is not reserved (a
    /// wildcard never reaches `$JS.`, `$KV.`, `_INBOX.` and the like).
    fn check_publish(&self, subject: &str) -> Result<(), String> {
        valid(subject)?;
        if self.is_current_reply(subject) || self.is_current_connection_control(subject) {
            return Ok(());
        }
        if let Some(why) = reserved(subject) {
            return Err(format!(
                "permission denied: component `{}` may not publish to `{subject}`: {why}",
                self.grant.component
            ));
        }
        if self
            .grant
            .allowed
            .iter()
            .any(|pattern| subject_matches(pattern, subject))
        {
            Ok(())
        } else {
            Err(format!(
                "permission denied: component `{}` may not publish to `{subject}` (add it to `allowed_publish` in the manifest)",
                self.grant.component
            ))
        }
    }

    /// The check of a `reply_to` the guest sets: whoever handles the message will
    /// publish there, so it must be a subject this component may publish to or
    /// subscribes to (or the reply subject it is answering, to forward a request).
    fn check_reply_to(&self, reply_to: &str) -> Result<(), String> {
        valid(reply_to)?;
        let own = |patterns: &[String]| patterns.iter().any(|p| subject_matches(p, reply_to));
        let ok = self.is_current_reply(reply_to)
            || (reserved(reply_to).is_none()
                && (own(&self.grant.allowed) || own(&self.grant.subscribed)));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "permission denied: component `{}` may not set reply_to `{reply_to}`: a reply subject must be one it may publish to (`allowed_publish`) or subscribes to{}",
                self.grant.component,
                reserved(reply_to)
                    .map(|why| format!("; {why}"))
                    .unwrap_or_default()
            ))
        }
    }
}

/// A subject a guest names must be one the broker takes: checked before anything reaches
/// the shared connection, which NATS would close over a malformed or oversized line.
fn valid(subject: &str) -> Result<(), String> {
    if valid_subject(subject) {
        return Ok(());
    }
    let mut shown = subject.len().min(64);
    while !subject.is_char_boundary(shown) {
        shown -= 1;
    }
    Err(format!(
        "invalid subject `{}`{} ({} bytes): a subject is at most {MAX_SUBJECT_BYTES} bytes of non-empty `.`-separated tokens without wildcards, whitespace or control characters",
        subject[..shown].escape_debug(),
        if shown < subject.len() { "..." } else { "" },
        subject.len()
    ))
}

struct Messaging;

impl HasData for Messaging {
    type Data<'a> = &'a mut MessagingCtx;
}

/// Adds `wasmcloud:messaging/consumer` (and its types) to the linker; `get` gives the
/// messaging state of a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut MessagingCtx,
) -> wasmtime::Result<()> {
    bindings::weft::platform::events::add_to_linker::<T, Messaging>(linker, get)?;
    bindings::wasmcloud::messaging::types::add_to_linker::<T, Messaging>(linker, get)?;
    bindings::wasmcloud::messaging::consumer::add_to_linker::<T, Messaging>(linker, get)
}

impl bindings::wasmcloud::messaging::types::Host for MessagingCtx {}

impl bindings::weft::platform::events::Host for MessagingCtx {
    async fn current_delivery(&mut self) -> Option<DeliveryInfo> {
        self.delivery.clone()
    }

    async fn publish(
        &mut self,
        subject: String,
        body: Vec<u8>,
        idempotency_id: Option<String>,
    ) -> Result<(), String> {
        let usage = self.grant.usage.clone();
        if let Err(denied) = self.check_publish(&subject) {
            usage.published(PublishKind::Event, UseOutcome::Denied);
            return Err(denied);
        }
        let result = self.publish_event(subject, body, idempotency_id).await;
        usage.published(PublishKind::Event, UseOutcome::of(&result));
        result
    }
}

impl MessagingCtx {
    /// A durable publish the grant allows.
    async fn publish_event(
        &mut self,
        subject: String,
        body: Vec<u8>,
        idempotency_id: Option<String>,
    ) -> Result<(), String> {
        if idempotency_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 256)
        {
            return Err("an idempotency id is 1 to 256 bytes".into());
        }
        let mut headers = vec![];
        let span = self.trace_out(SpanKind::Producer, "publish", &subject, &mut headers);
        let message = Message {
            subject,
            reply_to: None,
            headers,
            body: body.into(),
        };
        let result = self
            .grant
            .events
            .publish(message, idempotency_id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e);
        }
        result
    }
}

impl bindings::wasmcloud::messaging::consumer::Host for MessagingCtx {
    async fn publish(&mut self, msg: BrokerMessage) -> Result<(), String> {
        let usage = &self.grant.usage;
        let checked = self
            .check_publish(&msg.subject)
            .and_then(|()| match &msg.reply_to {
                Some(reply_to) => self.check_reply_to(reply_to),
                None => Ok(()),
            });
        if let Err(denied) = checked {
            usage.published(PublishKind::Message, UseOutcome::Denied);
            return Err(denied);
        }
        let mut headers = vec![];
        let span = self.trace_out(SpanKind::Producer, "publish", &msg.subject, &mut headers);
        let message = Message {
            subject: msg.subject,
            reply_to: msg.reply_to,
            headers,
            body: msg.body.into(),
        };
        let result = self
            .grant
            .bus
            .publish(message)
            .await
            .map_err(|e| e.to_string());
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e);
        }
        usage.published(PublishKind::Message, UseOutcome::of(&result));
        result
    }

    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        let usage = &self.grant.usage;
        if let Err(denied) = self.check_publish(&subject) {
            usage.requested(UseOutcome::Denied);
            return Err(denied);
        }
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let mut headers = vec![];
        let span = self.trace_out(SpanKind::Client, "request", &subject, &mut headers);
        let (outcome, result) = match self
            .grant
            .bus
            .request_with(subject.clone(), headers, body.into(), timeout)
            .await
        {
            Ok(reply) => match reply.service_error() {
                Some(error) => (
                    UseOutcome::Error,
                    Err(format!("service error from `{subject}`: {error}")),
                ),
                None => (
                    UseOutcome::Ok,
                    Ok(BrokerMessage {
                        subject: reply.subject,
                        body: reply.body.to_vec(),
                        reply_to: reply.reply_to,
                    }),
                ),
            },
            Err(BusError::Timeout(_)) => (
                UseOutcome::Timeout,
                Err(format!(
                    "timeout: no reply from `{subject}` within {timeout_ms} ms"
                )),
            ),
            Err(BusError::NoResponders(_)) => (
                UseOutcome::NoResponders,
                Err(format!(
                    "no responders: nothing is subscribed to `{subject}`"
                )),
            ),
            Err(e) => (UseOutcome::Error, Err(e.to_string())),
        };
        usage.requested(outcome);
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::embedded::EmbeddedBus;

    fn ctx(allowed: &[&str], subscribed: &[&str], reply_to: Option<&str>) -> MessagingCtx {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        MessagingCtx::new(
            MessagingGrant {
                bus: Arc::new(EmbeddedBus::new()),
                events: Arc::new(crate::events::embedded::EmbeddedEvents::in_memory().unwrap()),
                usage: Default::default(),
                allowed: strings(allowed),
                subscribed: strings(subscribed),
                component: "a".into(),
            },
            reply_to.map(Into::into),
        )
    }

    #[test]
    fn wildcards_never_reach_reserved_namespaces() {
        let all = ctx(&[">"], &[], None);
        assert!(all.check_publish("orders.created").is_ok());
        for subject in [
            "$JS.API.STREAM.DELETE.x",
            "$KV.orders.k",
            "$SYS.REQ.X",
            "_INBOX.x",
            "_WEFT.x",
        ] {
            let err = all.check_publish(subject).unwrap_err();
            assert!(err.contains(subject), "{err}");
        }
        assert!(
            ctx(&["*.API.>"], &[], None)
                .check_publish("$JS.API.INFO")
                .is_err()
        );
    }

    #[test]
    fn the_reply_subject_being_answered_is_allowed_unless_reserved() {
        assert!(
            ctx(&[], &[], Some("_INBOX.r1"))
                .check_publish("_INBOX.r1")
                .is_ok()
        );
        assert!(
            ctx(&[], &[], Some("_INBOX.r1"))
                .check_publish("_INBOX.r2")
                .is_err()
        );
        assert!(
            ctx(&[], &[], Some("$KV.orders.k"))
                .check_publish("$KV.orders.k")
                .is_err()
        );
        assert!(ctx(&[], &[], None).check_publish("orders.created").is_err());
    }

    #[test]
    fn a_reply_to_must_be_the_components_own() {
        let c = ctx(&["svc.>"], &["answers.a"], Some("_INBOX.r1"));
        assert!(c.check_reply_to("svc.replies").is_ok());
        assert!(c.check_reply_to("answers.a").is_ok());
        assert!(
            c.check_reply_to("_INBOX.r1").is_ok(),
            "forwarding the request it answers"
        );
        let err = c.check_reply_to("orders.created").unwrap_err();
        assert!(err.contains("`orders.created`"), "{err}");
        let err = c.check_reply_to("$KV.orders.k").unwrap_err();
        assert!(
            err.contains("`$KV.orders.k`") && err.contains("broker"),
            "{err}"
        );
        assert!(c.check_reply_to("_INBOX.other").is_err());
        assert!(
            ctx(&[">"], &[], None)
                .check_reply_to("$KV.orders.k")
                .is_err()
        );
    }

    #[test]
    fn malformed_and_oversized_subjects_never_reach_the_bus() {
        let all = ctx(&[">"], &[], None);
        let long = format!("a.{}", "b".repeat(5000));
        let err = all.check_publish(&long).unwrap_err();
        assert!(
            err.starts_with("invalid subject `a.bbb") && err.contains("5002 bytes"),
            "{err}"
        );
        assert!(err.len() < 400, "the error does not echo the whole subject");
        assert!(all.check_publish("a\r\nPUB x 1").is_err());
        let own = ctx(&["replies.>"], &[], None);
        assert!(own.check_reply_to("replies.a\r\nPUB $KV.x.y 1").is_err());
    }
}
