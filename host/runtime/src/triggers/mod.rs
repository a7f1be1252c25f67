//! Triggers: what calls a component. [`http`] serves its routes; [`messaging`] delivers
//! the messages of its subscriptions. Each trigger is one module with
//! - its export: an [`Entry`] in [`Entries`], linked at deploy (wrong world: refused);
//! - its calls, through the one call path (`call.rs`: take or instantiate, deadline,
//!   stderr tail, failure, release);
//! - a [`Trigger`] that the live set (`deploy::live_set`) tells about deploys:
//!   checked before compiling, attached before going live, detached and drained after
//!   being replaced or removed, shut down with the host.
//!
//! ## Adding a trigger
//! 1. `triggers/NAME.rs`: its `Pre` impl (the typed export), `link` (the export, or a
//!    wrong-world error if the spec needs it and the component lacks it), its
//!    [`Invoke`](crate::call::Invoke), and a [`Trigger`] impl.
//! 2. `spec/mod.rs`: the spec field that configures it (routes, subscriptions, ...).
//! 3. Here: a field of [`Entries`] and its line in [`Entries::link`].
//! 4. `host.rs`: one line in the host's list of triggers.

pub mod http;
pub mod messaging;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use wasmtime::component::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::deploy::{DeployError, Deployment, Snapshot};
use crate::instance::{Entry, IdleBudget};
use crate::spec::ValidSpec;
use crate::store_data::StoreData;

/// Something that calls components: told by the live set about every change.
pub trait Trigger: Send + Sync + std::fmt::Debug {
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

/// The exports of a deployment that triggers call, each pre-linked with its pool.
pub struct Entries {
    /// `wasi:http/incoming-handler`: the HTTP trigger.
    pub http: Option<Entry<ProxyPre<StoreData>>>,
    /// `wasmcloud:messaging/handler`: the message trigger.
    pub messaging: Option<Entry<messaging::GuestMessageHandlerPre<StoreData>>>,
}

impl Entries {
    /// The exports of the component behind `pre` that `spec` needs, each with a pool in
    /// the engine's `budget`. Refused if the spec needs an export the component lacks,
    /// or if it exports nothing a trigger calls.
    pub fn link(
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Result<Entries, DeployError> {
        let entries = Entries {
            http: http::link(pre, spec, budget)?,
            messaging: messaging::link(pre, spec, budget)?,
        };
        if entries.http.is_none() && entries.messaging.is_none() {
            return Err(DeployError::WrongWorld(
                "the component exports neither `wasi:http/incoming-handler` nor `wasmcloud:messaging/handler`: it is not a service".into(),
            ));
        }
        Ok(entries)
    }

    /// Idle HTTP instances (kept or spare) right now.
    pub fn http_idle(&self) -> usize {
        self.http.as_ref().map_or(0, |e| e.pool.idle())
    }

    /// Idle message instances (kept or spare) right now.
    pub fn messaging_idle(&self) -> usize {
        self.messaging.as_ref().map_or(0, |e| e.pool.idle())
    }

    /// Drops the idle instances (kept or spare) idle for `idle_for` or longer; returns
    /// how many.
    pub fn expire(&self, idle_for: Duration) -> usize {
        self.http.as_ref().map_or(0, |e| e.pool.expire(idle_for))
            + self
                .messaging
                .as_ref()
                .map_or(0, |e| e.pool.expire(idle_for))
    }
}
