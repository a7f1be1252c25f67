//! Schedules: ticks delivered to a component's `wasmcloud:messaging/handler` as durable
//! messages (README, "Schedules").
//!
//! Every host that runs a component runs its schedules' clocks. When a tick is due, a
//! host reads the schedule's last fired tick (key `schedule.COMPONENT.NAME` of the host's
//! bucket, [`HOST_BUCKET`]); if it is older, the host publishes the tick to the
//! schedule's stream with the id `tick:COMPONENT:NAME:MILLIS`, so the stream keeps one
//! copy however many hosts publish it, then records it with a compare-and-swap, which
//! makes hosts whose clocks run late skip it. From the stream the tick is delivered once,
//! through a durable consumer like any durable subscription (one host handles it; a
//! failure is retried with backoff and ends as a dead letter).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmtime::component::InstancePre;

use super::{Attachment, Trigger};
use crate::bus::{Message, MessageBus, StopDelivery};
use crate::deployment::{DeployError, Deployment, LinkedExport};
use crate::events::EventStore;
use crate::instance::IdleBudget;
use crate::kv::KvStore;
use crate::spec::schedule::{ScheduleSpec, Timing};
use crate::spec::{HOST_BUCKET, ValidSpec};
use crate::store_data::StoreData;

/// A tick's header: the schedule's name.
pub const SCHEDULE: &str = "Weft-Schedule";
/// A tick's header (and its body): the time it was due, RFC 3339 in UTC.
pub const TICK: &str = "Weft-Tick";

/// The message of `schedule`'s tick due `at`, and its id, as every host builds them.
pub fn tick(component: &str, schedule: &ScheduleSpec, at: Timestamp) -> (Message, String) {
    let time = at.to_string();
    let message = Message {
        subject: schedule.subject(component),
        reply_to: None,
        headers: vec![
            (SCHEDULE.into(), schedule.name.clone()),
            (TICK.into(), time.clone()),
        ],
        body: Bytes::from(time),
    };
    let id = format!("tick:{component}:{}:{}", schedule.name, at.as_millisecond());
    (message, id)
}

/// The schedule trigger: runs the clocks of every deployment's schedules.
#[derive(Debug)]
pub struct ScheduleTrigger {
    bus: Arc<dyn MessageBus>,
    events: Arc<dyn EventStore>,
    kv: Arc<dyn KvStore>,
}

impl ScheduleTrigger {
    /// Ticks go to `events`, deliveries' publishes to `bus`, fired ticks into `kv`.
    pub fn new(
        bus: Arc<dyn MessageBus>,
        events: Arc<dyn EventStore>,
        kv: Arc<dyn KvStore>,
    ) -> ScheduleTrigger {
        ScheduleTrigger { bus, events, kv }
    }
}

impl Trigger for ScheduleTrigger {
    fn export(&self) -> &'static str {
        "wasmcloud:messaging/handler"
    }

    /// Ticks are handled by the message handler the message trigger links; this only
    /// refuses schedules of a component without one.
    fn link(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        _budget: &Arc<IdleBudget>,
    ) -> Result<Option<Box<dyn LinkedExport>>, DeployError> {
        super::messaging::require_handler(
            pre,
            !spec.schedules.is_empty(),
            "which takes its schedules' ticks",
        )
    }

    fn attach<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
    ) -> BoxFuture<'a, Result<Attachment, DeployError>> {
        async move {
            let mut running = Vec::new();
            for schedule in &deployment.spec.schedules {
                match self.start(deployment, schedule).await {
                    Ok(r) => running.push(r),
                    Err(e) => {
                        stop_all(running).await;
                        return Err(e);
                    }
                }
            }
            Ok(Attachment::new(stop_all(running).boxed()))
        }
        .boxed()
    }
}

/// One schedule being served: its clock and its tick consumer.
struct Running {
    clock: watch::Sender<bool>,
    clock_task: JoinHandle<()>,
    consumer: Box<dyn StopDelivery>,
    consumer_task: JoinHandle<()>,
}

async fn stop_all(running: Vec<Running>) {
    for r in &running {
        let _ = r.clock.send(true);
        r.consumer.stop().await;
    }
    for r in running {
        let _ = r.clock_task.await;
        let _ = r.consumer_task.await;
    }
}

impl ScheduleTrigger {
    async fn start(
        &self,
        deployment: &Arc<Deployment>,
        schedule: &ScheduleSpec,
    ) -> Result<Running, DeployError> {
        let timing = schedule
            .timing()
            .map_err(|e| DeployError::Messaging(format!("schedule `{}`: {e}", schedule.name)))?;
        let subscription = schedule.subscription(&deployment.name);
        let (consumer, consumer_task) = super::durable::subscribe(
            deployment,
            self.bus.clone(),
            self.events.clone(),
            &subscription,
        )
        .await?;
        let (clock, stopped) = watch::channel(false);
        let clock_task = tokio::spawn(
            Clock {
                component: deployment.name.clone(),
                schedule: schedule.clone(),
                timing,
                events: self.events.clone(),
                kv: self.kv.clone(),
            }
            .run(stopped),
        );
        Ok(Running {
            clock,
            clock_task,
            consumer,
            consumer_task,
        })
    }
}

/// One schedule's clock on this host.
struct Clock {
    component: String,
    schedule: ScheduleSpec,
    timing: Timing,
    events: Arc<dyn EventStore>,
    kv: Arc<dyn KvStore>,
}

impl Clock {
    fn key(&self) -> String {
        format!("schedule.{}.{}", self.component, self.schedule.name)
    }

    /// The last tick fired by any host, in Unix milliseconds.
    async fn last_fired(&self) -> Result<Option<i64>, String> {
        let value = self
            .kv
            .get(HOST_BUCKET.into(), self.key())
            .await
            .map_err(|e| e.to_string())?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut after = Timestamp::now();
        if self.schedule.catch_up {
            self.catch_up(after).await;
        }
        loop {
            let Some(mut due) = self.timing.next_after(after) else {
                tracing::info!(
                    "component {}: schedule `{}` has no more ticks",
                    self.component,
                    self.schedule.name
                );
                return;
            };
            let now = Timestamp::now();
            if due > now {
                let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
            } else if let Some(latest) = self.timing.latest_at_or_before(now).filter(|l| *l > due) {
                // Behind (the host was suspended, or the store slow): the latest due tick only.
                tracing::warn!(
                    "component {}: schedule `{}` skipped the ticks from {due} to before {latest}: this host fell behind",
                    self.component,
                    self.schedule.name
                );
                due = latest;
            }
            if *stopped.borrow() {
                return;
            }
            self.fire(due).await;
            after = due;
        }
    }

    /// Fires the latest tick at or before `now` if ticks were missed since the last one
    /// fired (none recorded: the schedule is new, nothing was missed).
    async fn catch_up(&self, now: Timestamp) {
        let Some(latest) = self.timing.latest_at_or_before(now) else {
            return;
        };
        match self.last_fired().await {
            Ok(Some(last)) if last < latest.as_millisecond() => {
                tracing::info!(
                    "component {}: schedule `{}` missed ticks since {}: firing the latest, {latest}",
                    self.component,
                    self.schedule.name,
                    Timestamp::from_millisecond(last).unwrap_or(latest)
                );
                self.fire(latest).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "component {}: schedule `{}`: reading its last tick: {e}; not catching up",
                self.component,
                self.schedule.name
            ),
        }
    }

    /// Publishes tick `due` unless a host already recorded it, then records it.
    async fn fire(&self, due: Timestamp) {
        let at = due.as_millisecond();
        let fail = |what: &str, e: String| {
            tracing::warn!(
                "component {}: schedule `{}`, tick {due}: {what}: {e}; another host may fire it",
                self.component,
                self.schedule.name
            );
        };
        let mut last = match self.last_fired().await {
            Ok(last) => last,
            Err(e) => return fail("reading its last tick", e),
        };
        if last.is_some_and(|l| l >= at) {
            return;
        }
        let (message, id) = tick(&self.component, &self.schedule, due);
        if let Err(e) = self.events.publish(message, Some(id)).await {
            return fail("storing it", e.to_string());
        }
        // Record it; a host that recorded it (or a later tick) first has won.
        loop {
            let expected = last.map(|l| Bytes::from(l.to_string()));
            let swapped = self
                .kv
                .compare_and_swap(
                    HOST_BUCKET.into(),
                    self.key(),
                    expected,
                    Bytes::from(at.to_string()),
                )
                .await;
            match swapped {
                Ok(true) => return,
                Ok(false) => match self.last_fired().await {
                    Ok(now) if now.is_some_and(|l| l >= at) => return,
                    Ok(now) => last = now,
                    Err(e) => return fail("recording it", e),
                },
                Err(e) => return fail("recording it", e.to_string()),
            }
        }
    }
}
