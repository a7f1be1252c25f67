//! NATS flow, steps 1 to 4: one task per subscription pulls messages (admission: at most
//! `max_in_flight` at once, then it stops pulling), runs each in a fresh instance (or a
//! kept one, if the component opted into reuse), and answers a failed request with
//! NATS service-error headers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::capability::BrokerMessage;
use super::{Message, MessageBus, SERVICE_ERROR, SERVICE_ERROR_CODE, StopDelivery};
use crate::deployment::{DeployError, Deployment};
use crate::instance::{deadline_for, with_guest_stderr};

/// The live subscriptions of every deployment.
#[derive(Debug)]
pub struct MessagingTrigger {
    bus: Arc<dyn MessageBus>,
    running: Mutex<HashMap<String, Vec<Running>>>,
}

/// One subscription being served.
#[derive(Debug)]
pub struct Running {
    stop: Box<dyn StopDelivery>,
    task: JoinHandle<()>,
}

impl MessagingTrigger {
    /// A trigger on `bus`.
    pub fn new(bus: Arc<dyn MessageBus>) -> MessagingTrigger {
        MessagingTrigger {
            bus,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The bus it subscribes on.
    pub fn bus(&self) -> &Arc<dyn MessageBus> {
        &self.bus
    }

    /// Subscribes `deployment` to everything its spec lists. Not yet registered: pass
    /// the result to [`MessagingTrigger::replace`] once the deployment is live.
    pub async fn subscribe(
        &self,
        deployment: &Arc<Deployment>,
    ) -> Result<Vec<Running>, DeployError> {
        let mut running = Vec::new();
        for sub in &deployment.spec.subscriptions {
            let group = if sub.broadcast {
                None
            } else {
                Some(
                    sub.queue_group
                        .clone()
                        .unwrap_or_else(|| deployment.name.clone()),
                )
            };
            let buffer = sub.max_in_flight as usize;
            let subscription = match self.bus.subscribe(sub.subject.clone(), group, buffer).await {
                Ok(s) => s,
                Err(e) => {
                    retire(running).await;
                    return Err(DeployError::Messaging(format!(
                        "subscribing to `{}`: {e}",
                        sub.subject
                    )));
                }
            };
            let task = tokio::spawn(serve(
                deployment.clone(),
                self.bus.clone(),
                subscription.messages,
                sub.max_in_flight,
            ));
            running.push(Running {
                stop: subscription.stop,
                task,
            });
        }
        Ok(running)
    }

    /// Registers `new` as `name`'s subscriptions and returns the ones it replaces.
    pub fn replace(&self, name: &str, new: Vec<Running>) -> Vec<Running> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let old = running.remove(name).unwrap_or_default();
        if !new.is_empty() {
            running.insert(name.to_string(), new);
        }
        old
    }

    /// Stops every subscription and waits for the messages already received.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().flat_map(|(_, r)| r).collect()
        };
        retire(all).await;
    }
}

/// Stops delivery to `old` subscriptions, then waits until the messages they already
/// received have been handled.
pub async fn retire(old: Vec<Running>) {
    for r in &old {
        r.stop.stop().await;
    }
    for r in old {
        let _ = r.task.await;
    }
}

/// Pulls messages while there is room, handles each in its own task.
async fn serve(
    deployment: Arc<Deployment>,
    bus: Arc<dyn MessageBus>,
    mut messages: tokio::sync::mpsc::Receiver<Message>,
    max_in_flight: u32,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    while let Some(message) = messages.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (deployment, bus) = (deployment.clone(), bus.clone());
        tokio::spawn(async move {
            let _ = handle(&deployment, bus.as_ref(), message).await;
            drop(permit);
        });
    }
    // Drained: wait for the handlers still running.
    let _ = in_flight.acquire_many(max_in_flight).await;
}

/// How handling one message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned `ok`.
    Handled,
    /// The handler returned `err(text)`.
    HandlerError(String),
    /// The instance trapped, missed its deadline or could not start; the cause.
    Failed(String),
}

/// Take a kept instance or instantiate a fresh one, call the handler, log the outcome,
/// answer failures. Also the in-process entry point of the component test harness.
pub async fn handle(
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    message: Message,
) -> Outcome {
    let Some(pre) = &deployment.messaging else {
        return Outcome::Failed("the component does not export wasmcloud:messaging/handler".into());
    };
    deployment.requests.fetch_add(1, Ordering::Relaxed);
    let deadline = deadline_for(deployment);
    // A kept instance (with reuse) or a spare (without) if one is idle, else a fresh
    // store, instantiated below; then the next spare, if the pool wants one.
    let instances = &deployment.message_instances;
    let (mut store, warm) = instances.take(deployment, deadline, message.reply_to.clone());
    deployment.prepare_message_spare();
    let guest_message = BrokerMessage {
        subject: message.subject.clone(),
        body: message.body.to_vec(),
        reply_to: message.reply_to.clone(),
    };
    let (exports, uses) = match warm {
        Some((exports, uses)) => (Some(exports), uses),
        None => (None, 0),
    };
    let call = async {
        let exports = match exports {
            Some(exports) => exports,
            None => pre.instantiate_async(&mut store).await?,
        };
        let handled = exports
            .wasmcloud_messaging_handler()
            .call_handle_message(&mut store, &guest_message)
            .await?;
        anyhow::Ok((exports, handled))
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Trap::Interrupt.into()),
    }
    .map_err(|error| with_guest_stderr(&store, error))
    .map(|(exports, handled)| {
        // The handler returned (a handler error included): the instance is sound and
        // free for the next message, if the component reuses instances.
        instances.put(store, exports, uses);
        handled
    });
    let (error, result) = match outcome {
        Ok(Ok(())) => return Outcome::Handled,
        Ok(Err(handler_error)) => {
            tracing::info!(
                "component {} {}: handler error on `{}`: {handler_error}",
                deployment.name,
                deployment.version,
                message.subject
            );
            (handler_error.clone(), Outcome::HandlerError(handler_error))
        }
        Err(failure) => {
            crate::http_trigger::log_failure(deployment, &failure);
            let cause = crate::http_trigger::one_line(&failure);
            let error = format!(
                "component `{}` failed to handle the message",
                deployment.name
            );
            (error, Outcome::Failed(cause))
        }
    };
    if let Some(reply_to) = message.reply_to {
        let reply = Message {
            subject: reply_to,
            reply_to: None,
            headers: vec![
                (SERVICE_ERROR.into(), error),
                (SERVICE_ERROR_CODE.into(), "500".into()),
            ],
            body: Default::default(),
        };
        if let Err(e) = bus.publish(reply).await {
            tracing::warn!(
                "component {}: could not send the error reply: {e}",
                deployment.name
            );
        }
    }
    result
}
