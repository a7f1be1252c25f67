//! NATS flow, steps 1 to 4: one task per subscription pulls messages (admission: at most
//! `max_in_flight` at once, then it stops pulling), runs each through the call path in a
//! fresh instance (or a kept one, if the component opted into reuse), and answers a failed
//! request with NATS service-error headers.

use opentelemetry::KeyValue;

use crate::trace::{CallKind, CallTrace};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{Attachment, Trigger};
use crate::bus::{
    Message, MessageBus, SERVICE_ERROR, SERVICE_ERROR_CODE, StopDelivery, header_value,
};
use crate::call::{Call, Invoke};
use crate::capabilities::messaging::BrokerMessage;
use crate::capabilities::messaging::DeliveryInfo;
use crate::deployment::{DeployError, Deployment, LinkedExport};
use crate::events::EventStore;
use crate::instance::{Entry, IdleBudget, InstancePool, Pre};
use crate::metrics;
use crate::spec::ValidSpec;
use crate::spec::subject::{reserved, valid_reply_target};
use crate::store_data::StoreData;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weft:platform/guest-message-handler",
        exports: { default: async },
        with: {
            "wasmcloud:messaging/types": crate::capabilities::messaging::bindings::wasmcloud::messaging::types,
        },
    });
}

pub use bindings::{GuestMessageHandler, GuestMessageHandlerPre};

impl Pre for GuestMessageHandlerPre<StoreData> {
    type Exports = GuestMessageHandler;

    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<GuestMessageHandler>> {
        Box::pin(GuestMessageHandlerPre::instantiate_async(self, store))
    }
}

/// For the triggers whose events the message handler takes (schedules, WebSockets): a
/// component that `needs` it but lacks it is of the wrong world; `why` says what for.
/// Links nothing itself: the message trigger links the handler.
pub fn require_handler(
    pre: &InstancePre<StoreData>,
    needs: bool,
    why: &str,
) -> Result<Option<Box<dyn LinkedExport>>, DeployError> {
    if needs && GuestMessageHandlerPre::new(pre.clone()).is_err() {
        return Err(DeployError::WrongWorld(format!(
            "the component does not export `wasmcloud:messaging/handler@0.2.0`, {why}"
        )));
    }
    Ok(None)
}

/// Idle message instances (kept or spare) of `deployment` right now.
pub fn idle_instances(deployment: &Deployment) -> usize {
    deployment
        .export::<GuestMessageHandlerPre<StoreData>>()
        .map_or(0, |e| e.pool.idle())
}

/// The message trigger: subscribes every deployment to the subjects its spec lists.
#[derive(Debug)]
pub struct MessagingTrigger {
    bus: Arc<dyn MessageBus>,
    events: Arc<dyn EventStore>,
}

impl MessagingTrigger {
    /// A trigger on `bus`, with durable subscriptions on `events`.
    pub fn new(bus: Arc<dyn MessageBus>, events: Arc<dyn EventStore>) -> MessagingTrigger {
        MessagingTrigger { bus, events }
    }
}

/// One subscription being served.
#[derive(Debug)]
struct Running {
    stop: Box<dyn StopDelivery>,
    task: JoinHandle<()>,
}

impl Trigger for MessagingTrigger {
    fn export(&self) -> &'static str {
        "wasmcloud:messaging/handler"
    }

    /// The component's `wasmcloud:messaging/handler`, with a pool of up to one idle
    /// instance per message its subscriptions (and WebSocket events) may have in flight.
    fn link(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Result<Option<Box<dyn LinkedExport>>, DeployError> {
        let Ok(pre) = GuestMessageHandlerPre::new(pre.clone()) else {
            if !spec.subscriptions.is_empty() {
                return Err(DeployError::WrongWorld(
                    "the component does not export `wasmcloud:messaging/handler@0.2.0`, so it cannot handle subscriptions".into(),
                ));
            }
            return Ok(None);
        };
        let mut in_flight: u32 = spec.subscriptions.iter().map(|s| s.max_in_flight).sum();
        // Each schedule's ticks arrive here too, one at a time.
        in_flight = in_flight.saturating_add(spec.schedules.len() as u32);
        // WebSocket events arrive here too, up to `max_concurrency` at once.
        if spec.routes.iter().any(|r| r.websocket) {
            in_flight = in_flight.saturating_add(spec.limits.max_concurrency);
        }
        let pool = InstancePool::new(spec.limits.requests_per_instance, in_flight, budget.clone());
        Ok(Some(Box::new(Entry { pre, pool })))
    }

    fn attach<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
    ) -> BoxFuture<'a, Result<Attachment, DeployError>> {
        async move {
            let running = self.subscribe(deployment).await?;
            Ok(Attachment::new(retire(running).boxed()))
        }
        .boxed()
    }
}

impl MessagingTrigger {
    /// Subscribes `deployment` to everything its spec lists.
    async fn subscribe(&self, deployment: &Arc<Deployment>) -> Result<Vec<Running>, DeployError> {
        let mut running = Vec::new();
        for sub in &deployment.spec.subscriptions {
            if sub.durable {
                let started = super::durable::subscribe(
                    deployment,
                    self.bus.clone(),
                    self.events.clone(),
                    sub,
                )
                .await;
                match started {
                    Ok((stop, task)) => running.push(Running { stop, task }),
                    Err(e) => {
                        retire(running).await;
                        return Err(e);
                    }
                }
                continue;
            }
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
                sub.subject.clone(),
                subscription.messages,
                subscription.dropped,
                sub.max_in_flight,
            ));
            running.push(Running {
                stop: subscription.stop,
                task,
            });
        }
        Ok(running)
    }
}

/// Stops delivery to `old` subscriptions, then waits until the messages they already
/// received have been handled.
async fn retire(old: Vec<Running>) {
    for r in &old {
        r.stop.stop().await;
    }
    for r in old {
        let _ = r.task.await;
    }
}

/// Pulls messages while there is room, handles each in its own task, and reports the
/// messages the bus dropped because the subscription was full.
async fn serve(
    deployment: Arc<Deployment>,
    bus: Arc<dyn MessageBus>,
    subject: String,
    mut messages: tokio::sync::mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    max_in_flight: u32,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    let mut drops = DropReport::new(&deployment, subject, dropped, max_in_flight);
    loop {
        // Messages first; the tick only reports drops while the subscription is idle.
        let message = tokio::select! {
            biased;
            message = messages.recv() => match message {
                Some(message) => message,
                None => break,
            },
            () = drops.tick() => continue,
        };
        drops.report_if_due();
        // A wildcard subscription (`>`) on NATS also hears the broker's and the host's
        // own traffic (`$KV.` writes, `_INBOX.` replies): never another component's data.
        if reserved(&message.subject).is_some() {
            continue;
        }
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
    drops.report();
}

/// Reports, at most once a second, how many messages a subscription lost because its
/// handlers were all busy and its queue full, and adds them to the deployment's count.
struct DropReport {
    deployment: Arc<Deployment>,
    subject: String,
    dropped: Arc<AtomicU64>,
    reported: u64,
    last_report: Option<std::time::Instant>,
    max_in_flight: u32,
    every: tokio::time::Interval,
}

impl DropReport {
    fn new(
        deployment: &Arc<Deployment>,
        subject: String,
        dropped: Arc<AtomicU64>,
        max_in_flight: u32,
    ) -> DropReport {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        DropReport {
            deployment: deployment.clone(),
            subject,
            dropped,
            reported: 0,
            last_report: None,
            max_in_flight,
            every,
        }
    }

    async fn tick(&mut self) {
        self.every.tick().await;
        self.report_if_due();
    }

    /// Reports new drops unless the last report is less than a second old; one atomic
    /// load when there are none.
    fn report_if_due(&mut self) {
        if self.dropped.load(Ordering::Relaxed) == self.reported {
            return;
        }
        let second = std::time::Duration::from_secs(1);
        if self.last_report.is_some_and(|at| at.elapsed() < second) {
            return;
        }
        self.report();
    }

    fn report(&mut self) {
        let total = self.dropped.load(Ordering::Relaxed);
        let new = total - self.reported;
        if new == 0 {
            return;
        }
        self.reported = total;
        self.last_report = Some(std::time::Instant::now());
        self.deployment
            .dropped_messages
            .fetch_add(new, Ordering::Relaxed);
        tracing::warn!(
            "component {} {}: dropped {new} messages on `{}` ({total} in all): all {max} handlers were busy and {max} more messages waiting (max_in_flight = {max}); raise it, or run more hosts in its queue group",
            self.deployment.name,
            self.deployment.version,
            self.subject,
            max = self.max_in_flight,
        );
    }
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

/// A call of `handle-message`.
struct HandleMessage(BrokerMessage);

impl Invoke<GuestMessageHandler> for HandleMessage {
    type Output = Result<(), String>;

    fn invoke<'a>(
        self,
        exports: &'a GuestMessageHandler,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<Result<(), String>>> {
        Box::pin(async move {
            exports
                .wasmcloud_messaging_handler()
                .call_handle_message(store, &self.0)
                .await
        })
    }
}

/// Handles one message through the call path, logs the outcome and answers failures.
/// Also the in-process entry point of the component test harness.
pub async fn handle(
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    message: Message,
) -> Outcome {
    handle_delivery(deployment, bus, message, None).await
}

/// [`handle`] for a message that is a durable `delivery` (a schedule's tick if it says
/// so), which the guest can read.
pub async fn handle_delivery(
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    message: Message,
    delivery: Option<DeliveryInfo>,
) -> Outcome {
    let trigger = match &delivery {
        None => metrics::Trigger::Messaging,
        Some(d)
            if d.headers
                .iter()
                .any(|(k, _)| k == super::schedule::SCHEDULE) =>
        {
            metrics::Trigger::Schedule
        }
        Some(_) => metrics::Trigger::Durable,
    };
    handle_as(trigger, deployment, bus, message, delivery).await
}

/// [`handle_delivery`], counted in `/metrics` as called by `trigger`.
pub(crate) async fn handle_as(
    trigger: metrics::Trigger,
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    message: Message,
    delivery: Option<DeliveryInfo>,
) -> Outcome {
    let recording = deployment.calls.start(trigger);
    let trace = deployment.grants.tracing.as_ref().and_then(|tracing| {
        let trace = tracing.call(
            CallKind::Message,
            || format!("process {}", message.subject),
            &deployment.name,
            &deployment.version,
            message
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        trace.set(|| KeyValue::new("messaging.system", "nats"));
        trace.set(|| KeyValue::new("messaging.destination.name", message.subject.clone()));
        trace.set(|| KeyValue::new("weft.trigger", trigger.as_str()));
        Some(trace)
    });
    let (outcome, counted) =
        handle_counted(deployment, bus, message, delivery, trace.clone()).await;
    recording.finish(counted);
    if let Some(trace) = trace {
        let error = match &outcome {
            Outcome::Handled => None,
            Outcome::HandlerError(e) | Outcome::Failed(e) => Some(e.as_str()),
        };
        trace.finish(counted.as_str(), error);
    }
    outcome
}

async fn handle_counted(
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    message: Message,
    delivery: Option<DeliveryInfo>,
    trace: Option<CallTrace>,
) -> (Outcome, metrics::Outcome) {
    let reply_to = message.reply_to.clone();
    let Some(call) = Call::<GuestMessageHandlerPre<StoreData>>::begin_message(
        deployment,
        reply_to,
        delivery,
        trace.clone(),
    ) else {
        let missing = "the component does not export wasmcloud:messaging/handler";
        return (Outcome::Failed(missing.into()), metrics::Outcome::Trap);
    };
    if let Some(trace) = &trace {
        trace.instance(call.is_warm());
    }
    deployment.requests.fetch_add(1, Ordering::Relaxed);
    let guest_message = BrokerMessage {
        subject: message.subject.clone(),
        body: message.body.to_vec(),
        reply_to: message.reply_to.clone(),
    };
    let mut code = "500";
    let (error, result, counted) = match call.run(HandleMessage(guest_message)).await {
        Ok(Ok(())) => return (Outcome::Handled, metrics::Outcome::Ok),
        Ok(Err(handler_error)) => {
            tracing::info!(
                "component {} {}: handler error on `{}`: {handler_error}",
                deployment.name,
                deployment.version,
                message.subject
            );
            let outcome = Outcome::HandlerError(handler_error.clone());
            (handler_error, outcome, metrics::Outcome::GuestError)
        }
        Err(failure) if crate::failure::is_host_full(&failure.error) => {
            code = "503";
            let error = "the host is running as many instances as it may, retry later";
            let outcome = Outcome::Failed(error.to_string());
            (error.to_string(), outcome, metrics::Outcome::Overload)
        }
        Err(failure) => {
            let cause = crate::failure::one_line(&failure.error);
            let error = format!(
                "component `{}` failed to handle the message",
                deployment.name
            );
            let counted = if crate::failure::is_deadline(&failure.error) {
                metrics::Outcome::Deadline
            } else {
                metrics::Outcome::Trap
            };
            (error, Outcome::Failed(cause), counted)
        }
    };
    // Never into a reserved namespace: a forged `reply_to = "$KV.orders.k"` must not
    // make the host write into bucket `orders`.
    if let Some(reply_to) = message.reply_to.filter(|r| valid_reply_target(r)) {
        let reply = Message {
            subject: reply_to,
            reply_to: None,
            headers: vec![
                (SERVICE_ERROR.into(), header_value(&error)),
                (SERVICE_ERROR_CODE.into(), code.into()),
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
    (result, counted)
}
