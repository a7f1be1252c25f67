//! Durable subscriptions (`durable = true`), the message trigger's at-least-once path:
//! the subject's stream is bound (or created), a durable consumer named after the
//! component delivers to every host that runs it, and each delivery is settled by how
//! its handling ended:
//! - `ok` -> acknowledged;
//! - a handler error, a trap or a missed deadline -> redelivered after the subscription's
//!   `backoff_ms` for that attempt, until `max_deliver` attempts; the last failure makes
//!   it a dead letter (published, with its error, to the dead-letter subject's stream)
//!   and acknowledges it;
//! - while the handler runs, the ack wait is extended, so a long handler is not
//!   redelivered; a host that stops leaves its deliveries to be redelivered after
//!   `ack_wait_ms`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::bus::{Message, MessageBus, StopDelivery, header_value};
use crate::capabilities::messaging::DeliveryInfo;
use crate::deployment::{DeployError, Deployment};
use crate::events::{ConsumerConfig, Delivery, EventStore, StreamConfig, name_token};
use crate::spec::SubscriptionSpec;
use crate::triggers::messaging::{Outcome, handle_delivery};

/// Headers of a dead letter.
pub const ORIGINAL_SUBJECT: &str = "Weft-Original-Subject";
/// How many times the message was delivered.
pub const ATTEMPTS: &str = "Weft-Attempts";
/// The last failure.
pub const ERROR: &str = "Weft-Error";
/// The original message's id.
pub const ORIGINAL_ID: &str = "Weft-Message-Id";

/// Limits of the streams weft creates (README's limits table).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The oldest messages go beyond this many bytes.
pub const STREAM_MAX_BYTES: u64 = 1 << 30;
/// The oldest messages go beyond this many messages.
pub const STREAM_MAX_MESSAGES: u64 = 1_000_000;

/// What a durable subscription settles deliveries by.
#[derive(Debug, Clone)]
struct Policy {
    max_deliver: u32,
    backoff: Vec<Duration>,
    ack_wait: Duration,
    dead_letter: String,
}

impl Policy {
    fn backoff(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.backoff.len() - 1);
        self.backoff[i]
    }
}

/// The subject dead letters of `sub` of `component` go to by default.
pub fn default_dead_letter(component: &str, subject: &str) -> String {
    let tokens: Vec<&str> = subject
        .split('.')
        .map(|t| match t {
            "*" => "any",
            ">" => "all",
            t => t,
        })
        .collect();
    format!("dead.{component}.{}", tokens.join("."))
}

fn stream_config(name: String, subject: &str) -> StreamConfig {
    StreamConfig {
        name,
        subjects: vec![subject.to_string()],
        max_age: STREAM_MAX_AGE,
        max_bytes: STREAM_MAX_BYTES,
        max_messages: STREAM_MAX_MESSAGES,
    }
}

/// Binds `sub`'s stream and its dead letters' stream, opens its durable consumer and
/// starts serving it for `deployment`.
pub async fn subscribe(
    deployment: &Arc<Deployment>,
    bus: Arc<dyn MessageBus>,
    events: Arc<dyn EventStore>,
    sub: &SubscriptionSpec,
) -> Result<(Box<dyn StopDelivery>, JoinHandle<()>), DeployError> {
    let name = &deployment.name;
    let fail = |what: &str, e: crate::events::EventError| {
        DeployError::Messaging(format!(
            "durable subscription `{}`: {what}: {e}",
            sub.subject
        ))
    };
    let stream_name = sub
        .stream
        .clone()
        .unwrap_or_else(|| format!("weft-{}", name_token(&sub.subject)));
    let stream = events
        .bind_stream(
            sub.subject.clone(),
            stream_config(stream_name, &sub.subject),
        )
        .await
        .map_err(|e| fail("binding its stream", e))?;
    let dead_letter = sub
        .dead_letter
        .clone()
        .unwrap_or_else(|| default_dead_letter(name, &sub.subject));
    // The component's dead letters (`dead.COMPONENT.>`) share one stream; a dead-letter
    // subject elsewhere gets a stream of its own.
    let own = format!("dead.{name}.");
    let (dead_subject, dead_stream) = match &sub.dead_letter {
        Some(d) if !d.starts_with(&own) => (d.clone(), format!("weft-dead-{}", name_token(d))),
        _ => (format!("{own}>"), format!("weft-dead-{name}")),
    };
    events
        .bind_stream(
            dead_subject.clone(),
            stream_config(dead_stream, &dead_subject),
        )
        .await
        .map_err(|e| fail("binding its dead letters' stream", e))?;
    let consumer = ConsumerConfig {
        stream,
        name: format!("{name}-{}", name_token(&sub.subject)),
        filter: sub.subject.clone(),
        ack_wait: Duration::from_millis(sub.ack_wait_ms),
        max_ack_pending: sub.max_in_flight.saturating_mul(32).max(1000),
    };
    let deliveries = events
        .consume(consumer, sub.max_in_flight as usize)
        .await
        .map_err(|e| fail("opening its durable consumer", e))?;
    let policy = Policy {
        max_deliver: sub.max_deliver,
        backoff: sub
            .backoff_ms
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect(),
        ack_wait: Duration::from_millis(sub.ack_wait_ms),
        dead_letter,
    };
    let task = tokio::spawn(serve(
        deployment.clone(),
        bus,
        events,
        policy,
        deliveries.deliveries,
        sub.max_in_flight,
    ));
    Ok((deliveries.stop, task))
}

/// Handles deliveries, at most `max_in_flight` at once, until the consumer is stopped
/// and what it delivered is settled.
async fn serve(
    deployment: Arc<Deployment>,
    bus: Arc<dyn MessageBus>,
    events: Arc<dyn EventStore>,
    policy: Policy,
    mut deliveries: tokio::sync::mpsc::Receiver<Delivery>,
    max_in_flight: u32,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    let policy = Arc::new(policy);
    // A handler's room first, then a delivery: one taken early would wait in this task's
    // hand with nobody extending its ack wait.
    while let Ok(permit) = in_flight.clone().acquire_owned().await {
        let Some(delivery) = deliveries.recv().await else {
            break;
        };
        let (deployment, bus, events, policy) = (
            deployment.clone(),
            bus.clone(),
            events.clone(),
            policy.clone(),
        );
        tokio::spawn(async move {
            settle(
                &deployment,
                bus.as_ref(),
                events.as_ref(),
                &policy,
                delivery,
            )
            .await;
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(max_in_flight).await;
}

/// Handles one delivery and settles it.
async fn settle(
    deployment: &Arc<Deployment>,
    bus: &dyn MessageBus,
    events: &dyn EventStore,
    policy: &Policy,
    delivery: Delivery,
) {
    let Delivery {
        message,
        id,
        stream,
        attempt,
        ack,
    } = delivery;
    let outcome = if attempt > policy.max_deliver {
        // Delivered before, but never settled: its hosts stopped while handling it.
        Outcome::Failed(format!(
            "delivered {} times without being settled (its handlers' hosts stopped, or missed the ack wait)",
            attempt - 1
        ))
    } else {
        let info = DeliveryInfo {
            id: id.clone(),
            attempt,
            stream,
            headers: message.headers.clone(),
        };
        let handling = handle_delivery(deployment, bus, message.clone(), Some(info));
        let keep_alive = async {
            loop {
                tokio::time::sleep(policy.ack_wait / 3).await;
                if let Err(e) = ack.working().await {
                    tracing::warn!("events: extending a delivery's ack wait: {e}");
                }
            }
        };
        tokio::select! {
            outcome = handling => outcome,
            () = keep_alive => unreachable!("keep_alive never ends"),
        }
    };
    let result = match outcome {
        Outcome::Handled => ack.ack().await,
        Outcome::HandlerError(error) | Outcome::Failed(error) if attempt >= policy.max_deliver => {
            let dead = Message {
                subject: policy.dead_letter.clone(),
                reply_to: None,
                headers: vec![
                    (ORIGINAL_SUBJECT.into(), message.subject.clone()),
                    (ATTEMPTS.into(), attempt.to_string()),
                    (ERROR.into(), header_value(&error)),
                    (ORIGINAL_ID.into(), header_value(&id)),
                ],
                body: message.body.clone(),
            };
            match events.publish(dead, Some(format!("dead:{id}"))).await {
                Ok(_) => {
                    tracing::warn!(
                        "component {} {}: message {id} on `{}` failed {attempt} times and went to `{}`: {error}",
                        deployment.name,
                        deployment.version,
                        message.subject,
                        policy.dead_letter
                    );
                    ack.ack().await
                }
                Err(e) => {
                    tracing::error!(
                        "component {}: could not store dead letter {id} in `{}` ({e}); it is redelivered",
                        deployment.name,
                        policy.dead_letter
                    );
                    ack.nak(policy.backoff(attempt)).await
                }
            }
        }
        Outcome::HandlerError(_) | Outcome::Failed(_) => ack.nak(policy.backoff(attempt)).await,
    };
    if let Err(e) = result {
        tracing::warn!(
            "component {}: settling message {id}: {e} (it is redelivered after its ack wait)",
            deployment.name
        );
    }
}
