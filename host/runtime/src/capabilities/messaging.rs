//! Host capability `wasmcloud:messaging/consumer`: publish and request from a guest,
//! limited to the subjects its manifest entry allows (and the reply subject of the
//! message it is handling).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, Linker};

use crate::bus::{BusError, Message, MessageBus, subject_matches};
use crate::spec::ValidSpec;

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

/// The messaging grant of component `name`: the host's bus, and the spec's
/// `allowed_publish`.
pub fn grant(name: &str, spec: &ValidSpec, bus: Arc<dyn MessageBus>) -> MessagingGrant {
    MessagingGrant {
        bus,
        allowed: spec.allowed_publish.clone().into(),
        component: name.into(),
    }
}

/// What one component may do on the bus: shared by all its instances.
#[derive(Debug, Clone)]
pub struct MessagingGrant {
    /// The host's bus.
    pub bus: Arc<dyn MessageBus>,
    /// Subject patterns it may publish and request on.
    pub allowed: Arc<[String]>,
    /// The component's name, for error messages.
    pub component: Arc<str>,
}

/// The per-instance messaging state held in the store.
#[derive(Debug)]
pub struct MessagingCtx {
    grant: MessagingGrant,
    /// The reply subject of the message being handled: always allowed.
    reply_to: Option<String>,
}

impl MessagingCtx {
    /// State for an instance handling a message with `reply_to` (or an HTTP request: `None`).
    pub fn new(grant: MessagingGrant, reply_to: Option<String>) -> MessagingCtx {
        MessagingCtx { grant, reply_to }
    }

    /// The reply subject of the next message a reused instance handles.
    pub fn set_reply_to(&mut self, reply_to: Option<String>) {
        self.reply_to = reply_to;
    }

    fn check(&self, subject: &str) -> Result<(), String> {
        let allowed = self.reply_to.as_deref() == Some(subject)
            || self
                .grant
                .allowed
                .iter()
                .any(|pattern| subject_matches(pattern, subject));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "permission denied: component `{}` may not publish to `{subject}` (add it to `allowed_publish` in the manifest)",
                self.grant.component
            ))
        }
    }
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
    bindings::wasmcloud::messaging::types::add_to_linker::<T, Messaging>(linker, get)?;
    bindings::wasmcloud::messaging::consumer::add_to_linker::<T, Messaging>(linker, get)
}

impl bindings::wasmcloud::messaging::types::Host for MessagingCtx {}

impl bindings::wasmcloud::messaging::consumer::Host for MessagingCtx {
    async fn publish(&mut self, msg: BrokerMessage) -> Result<(), String> {
        self.check(&msg.subject)?;
        let message = Message {
            subject: msg.subject,
            reply_to: msg.reply_to,
            headers: vec![],
            body: msg.body.into(),
        };
        self.grant
            .bus
            .publish(message)
            .await
            .map_err(|e| e.to_string())
    }

    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<BrokerMessage, String> {
        self.check(&subject)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        match self
            .grant
            .bus
            .request(subject.clone(), body.into(), timeout)
            .await
        {
            Ok(reply) => match reply.service_error() {
                Some(error) => Err(format!("service error from `{subject}`: {error}")),
                None => Ok(BrokerMessage {
                    subject: reply.subject,
                    body: reply.body.to_vec(),
                    reply_to: reply.reply_to,
                }),
            },
            Err(BusError::Timeout(_)) => Err(format!(
                "timeout: no reply from `{subject}` within {timeout_ms} ms"
            )),
            Err(BusError::NoResponders(_)) => Err(format!(
                "no responders: nothing is subscribed to `{subject}`"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}
