//! Triggers: what calls a component. [`http`] serves its routes; [`messaging`] delivers
//! the messages of its subscriptions; [`websocket`] the events of the WebSocket
//! connections its routes accept; [`schedule`] the ticks of its schedules. Each trigger is one module with
//! - its export: a `Pre` impl for the typed export it calls, linked at deploy into an
//!   [`Entry`](crate::instance::Entry) with its pool (a spec that needs it from a component without it: refused);
//! - its calls, through the one call path (`call.rs`: take or instantiate, deadline,
//!   stderr tail, failure, release), which finds that entry by its type;
//! - a [`Trigger`] that the deploy flow and the live set (`deploy/`) drive: link at
//!   deploy, check before compiling, attach before going live, detach and drain after
//!   being replaced or removed, and at shutdown.
//!
//! ## Adding a trigger
//! 1. `triggers/NAME.rs`: its `Pre` impl, its [`Invoke`](crate::call::Invoke), and a
//!    [`Trigger`] impl.
//! 2. `spec/mod.rs`: the spec field that configures it (routes, subscriptions, ...).
//! 3. Here: one line in [`all`].

pub mod durable;
pub mod http;
pub mod messaging;
pub mod schedule;
pub mod websocket;

use std::sync::Arc;

use futures::future::BoxFuture;
use wasmtime::component::InstancePre;

use crate::bus::MessageBus;
use crate::deployment::{DeployError, Deployment, LinkedExport, Snapshot};
use crate::instance::IdleBudget;
use crate::spec::ValidSpec;
use crate::store_data::StoreData;

/// A host's triggers, and the bus its guests publish on.
pub struct Triggers {
    /// The HTTP trigger, on its own for the listener.
    pub http: Arc<http::HttpTrigger>,
    /// Every trigger, the HTTP one included.
    pub all: Vec<Arc<dyn Trigger>>,
    /// The host's bus, except that what guests send to this host's own WebSocket
    /// connections goes straight to them ([`websocket::LocalConnections`]).
    pub guest_bus: Arc<dyn MessageBus>,
}

/// Every trigger of a host whose message bus is `bus`, whose streams are `events` and
/// whose key-value store is `kv`. The one list to extend with a new trigger.
pub fn all(
    bus: &Arc<dyn MessageBus>,
    events: &Arc<dyn crate::events::EventStore>,
    kv: &Arc<dyn crate::kv::KvStore>,
    metrics: &Arc<crate::metrics::HostMetrics>,
) -> Triggers {
    let websocket = websocket::WebSocketTrigger::new(bus.clone());
    let guest_bus = websocket::LocalConnections::over(bus.clone(), websocket.clone());
    let http = Arc::new(http::HttpTrigger::new(websocket.clone(), metrics.clone()));
    let all: Vec<Arc<dyn Trigger>> = vec![
        http.clone(),
        Arc::new(messaging::MessagingTrigger::new(
            bus.clone(),
            events.clone(),
        )),
        websocket,
        Arc::new(schedule::ScheduleTrigger::new(
            bus.clone(),
            events.clone(),
            kv.clone(),
        )),
    ];
    Triggers {
        http,
        all,
        guest_bus,
    }
}

/// Something that calls components: told by the deploy flow about every change.
pub trait Trigger: Send + Sync + std::fmt::Debug {
    /// The export it calls, as WIT names it (for errors).
    fn export(&self) -> &'static str;

    /// Links the export it calls from the component behind `pre`, with a pool of idle
    /// instances in the engine's `budget`: `None` if the component lacks it, an error
    /// (wrong world) if `spec` needs it all the same.
    fn link(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Result<Option<Box<dyn LinkedExport>>, DeployError>;

    /// Refuses `spec` for component `name` next to what is `live` (a route conflict, say),
    /// before anything is compiled, and again just before it goes live.
    fn check(&self, live: &Snapshot, name: &str, spec: &ValidSpec) -> Result<(), DeployError> {
        let _ = (live, name, spec);
        Ok(())
    }

    /// Starts serving `deployment`, which is not live yet and runs next to the version it
    /// replaces until that one is detached (so a stream of messages never finds nobody
    /// subscribed). What it returns stops it again.
    fn attach<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
    ) -> BoxFuture<'a, Result<Attachment, DeployError>>;

    /// `live` is what serves now (after a deploy or an undeploy).
    fn went_live(&self, live: &Snapshot) {
        let _ = live;
    }
}

/// What a trigger started for one deployment; detaching stops it and waits for the calls
/// it already took in.
pub struct Attachment(Option<BoxFuture<'static, ()>>);

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attachment")
    }
}

impl Attachment {
    /// Nothing to stop: the trigger serves from the live set alone (HTTP).
    pub fn none() -> Attachment {
        Attachment(None)
    }

    /// `detach` stops it and drains it when awaited.
    pub fn new(detach: BoxFuture<'static, ()>) -> Attachment {
        Attachment(Some(detach))
    }

    /// Stops it and waits for what it already took in.
    pub async fn detach(self) {
        if let Some(detach) = self.0 {
            detach.await;
        }
    }
}
