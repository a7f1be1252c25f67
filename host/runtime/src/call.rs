//! The one call path every trigger takes into a guest: take an idle instance (a spare, or
//! a kept one with reuse) or make a fresh store, start the next spare, instantiate if
//! needed, call the export under the deadline, then put the instance back, or report the
//! failure (with the guest's last stderr lines) through `failure.rs`.
//!
//! A trigger names the export it calls by its `Pre` type and says how to call it
//! ([`Invoke`]); everything else here is shared.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use wasmtime::{Store, Trap};

use crate::deployment::Deployment;
use crate::instance::Pre;
use crate::store_data::{CallContext, StoreData};

/// How a trigger calls the export, once the instance exists.
pub trait Invoke<E>: Send {
    /// What the export returned.
    type Output: Send;

    /// Calls the export of the instance in `store`.
    fn invoke<'a>(
        self,
        exports: &'a E,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<Self::Output>>;
}

/// A failed call. The instance (its store) ends when this is dropped, not before: a
/// trigger may first mark what the instance was still writing as broken.
pub struct Failure {
    /// The cause, with the guest's last stderr lines. Already logged and counted.
    pub error: anyhow::Error,
    _store: Store<StoreData>,
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failure")
            .field("error", &self.error)
            .finish()
    }
}

/// One call into one instance of a deployment, from the moment its instance is taken.
pub struct Call<P: Pre> {
    deployment: Arc<Deployment>,
    store: Store<StoreData>,
    warm: Option<(P::Exports, u32)>,
    deadline: Instant,
}

impl<P: Pre> Call<P> {
    /// Takes an idle instance of the deployment's export `P`, or makes a fresh store for
    /// one, and starts the next spare if the pool wants one. `reply_to`: the reply
    /// subject of the message being handled. `None` if the deployment lacks the export.
    pub fn begin(
        deployment: &Arc<Deployment>,
        reply_to: Option<String>,
        trace: Option<crate::trace::CallTrace>,
    ) -> Option<Call<P>> {
        Call::begin_message(deployment, reply_to, None, trace)
    }

    /// [`Call::begin`] for a message that is a durable `delivery`, which the guest can
    /// read (`weft:platform/events`).
    pub fn begin_message(
        deployment: &Arc<Deployment>,
        reply_to: Option<String>,
        delivery: Option<crate::capabilities::messaging::DeliveryInfo>,
        trace: Option<crate::trace::CallTrace>,
    ) -> Option<Call<P>> {
        let entry = deployment.export::<P>()?;
        let call = CallContext {
            deadline: deployment.deadline(),
            reply_to,
            delivery,
            trace,
        };
        let deadline = call.deadline;
        let (store, warm) = match entry.pool.take() {
            Some((mut store, exports, uses)) => {
                StoreData::rearm(&mut store, call);
                (store, Some((exports, uses)))
            }
            None => (deployment.new_store(call), None),
        };
        prepare_spare::<P>(deployment);
        Some(Call {
            deployment: deployment.clone(),
            store,
            warm,
            deadline,
        })
    }

    /// The instance's store, to create the call's resources in before [`Call::run`].
    pub fn store_mut(&mut self) -> &mut Store<StoreData> {
        &mut self.store
    }

    /// Whether the call runs on an instance kept from an earlier call (or a spare made
    /// ahead of time), rather than one instantiated for it.
    pub fn is_warm(&self) -> bool {
        self.warm.is_some()
    }

    /// When the call must end.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Instantiates (unless the instance was idle), calls the export with `invoke` under
    /// the deadline, then puts the instance back for the next call (if the component
    /// reuses instances) or logs and counts the failure.
    pub async fn run<I: Invoke<P::Exports>>(self, invoke: I) -> Result<I::Output, Failure> {
        let Call {
            deployment,
            mut store,
            warm,
            deadline,
        } = self;
        let Some(entry) = deployment.export::<P>() else {
            let error = anyhow::anyhow!("the component lacks the export this trigger calls");
            return Err(Failure {
                error,
                _store: store,
            });
        };
        let (exports, uses) = match warm {
            Some((exports, uses)) => (Some(exports), uses),
            None => (None, 0),
        };
        // The deadline may move later while the guest runs (a streaming response).
        let shared = store.data().deadline();
        let call = async {
            let exports = match exports {
                Some(exports) => exports,
                None => entry.pre.instantiate_async(&mut store).await?,
            };
            let output = invoke.invoke(&exports, &mut store).await?;
            anyhow::Ok((exports, output))
        };
        let result = {
            tokio::pin!(call);
            let mut until = deadline;
            loop {
                match tokio::time::timeout_at(until.into(), &mut call).await {
                    Ok(result) => break result,
                    Err(_) if shared.get() > until => until = shared.get(),
                    Err(_) => break Err(Trap::Interrupt.into()),
                }
            }
        };
        match result {
            Ok((exports, output)) => {
                // The export returned: the instance is sound and free for the next call.
                entry.pool.put(store, exports, uses);
                Ok(output)
            }
            Err(error) => {
                let error = crate::failure::with_guest_stderr(store.data(), error);
                crate::failure::log(&deployment, &error);
                Err(Failure {
                    error,
                    _store: store,
                })
            }
        }
    }
}

/// Instantiates a spare of the deployment's export `P` in the background, if its pool
/// wants one: the instance a later call takes instead of instantiating on its own path.
pub(crate) fn prepare_spare<P: Pre>(deployment: &Arc<Deployment>) {
    if !deployment
        .export::<P>()
        .is_some_and(|entry| entry.pool.wants_spare())
    {
        return;
    }
    let deployment = deployment.clone();
    tokio::spawn(async move {
        let Some(entry) = deployment.export::<P>() else {
            return;
        };
        let call = CallContext {
            deadline: deployment.deadline(),
            reply_to: None,
            delivery: None,
            trace: None,
        };
        let mut store = deployment.new_store(call);
        let spare = entry.pre.instantiate_async(&mut store).await.ok();
        entry.pool.add_spare(spare.map(|exports| (store, exports)));
    });
}
