//! Durable subscriptions end to end, as a conformance suite run against both backends
//! (the embedded store and a real nats-server with JetStream), through the responder
//! component's `durable` action, which publishes `<attempt> <id> <instance>:<body>` to
//! `seen.<subject>` for each delivery it handles.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use weft_runtime::Host;
use weft_runtime::bus::{Message, MessageBus, Subscription};
use weft_runtime::spec::{ComponentSpec, SubscriptionSpec};

const SUBJECT: &str = "jobs.durable";

struct Env {
    host: Option<Host>,
    nats: Option<NatsServer>,
    cache: tempfile::TempDir,
}

async fn env(nats: bool) -> Option<Env> {
    let cache = tempfile::tempdir().unwrap();
    let nats = if nats {
        Some(NatsServer::start()?)
    } else {
        None
    };
    let mut env = Env {
        host: None,
        nats,
        cache,
    };
    env.start().await;
    Some(env)
}

impl Env {
    /// (Re)starts the host, on the same data directory and NATS server.
    async fn start(&mut self) {
        self.host = Some(match &self.nats {
            Some(nats) => start_host_on_nats(self.cache.path(), nats).await,
            None => start_host(self.cache.path()).await,
        });
    }

    async fn stop(&mut self) {
        self.host.take().unwrap().shutdown().await;
    }

    fn host(&self) -> &Host {
        self.host.as_ref().unwrap()
    }

    fn bus(&self) -> Arc<dyn MessageBus> {
        self.host().deployments().backends().bus.clone()
    }

    async fn deploy(&self, spec: ComponentSpec) {
        deploy(self.host(), "worker", "responder", spec).await;
    }

    async fn publish(&self, body: &str) {
        let message = Message {
            subject: SUBJECT.into(),
            body: Bytes::from(body.to_string()),
            ..Message::default()
        };
        self.bus().publish(message).await.unwrap();
    }

    async fn watch(&self, subject: &str) -> Subscription {
        let sub = self
            .bus()
            .subscribe(subject.into(), None, 4096)
            .await
            .unwrap();
        self.bus().flush(Duration::from_secs(5)).await.unwrap();
        sub
    }

    async fn shutdown(mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }
}

fn durable(configure: impl FnOnce(&mut SubscriptionSpec)) -> ComponentSpec {
    let mut sub = SubscriptionSpec {
        durable: true,
        max_in_flight: 8,
        backoff_ms: vec![50],
        ack_wait_ms: 2_000,
        ..SubscriptionSpec::to(SUBJECT)
    };
    configure(&mut sub);
    ComponentSpec {
        subscriptions: vec![sub],
        allowed_publish: vec!["seen.>".into()],
        ..ComponentSpec::default()
    }
}

/// One handled delivery, as the responder reported it.
#[derive(Debug)]
struct Seen {
    attempt: u32,
    id: String,
    body: String,
}

/// What arrives on `sub` until `done` says enough, at most `within`.
async fn collect(
    sub: &mut Subscription,
    within: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + within;
    while !done(&seen) {
        let Ok(Some(m)) = tokio::time::timeout_at(until, sub.messages.recv()).await else {
            break;
        };
        let text = String::from_utf8_lossy(&m.body).to_string();
        let mut parts = text.splitn(3, ' ');
        let attempt = parts.next().unwrap().parse().unwrap();
        let id = parts.next().unwrap().to_string();
        let body = parts.next().unwrap_or_default().to_string();
        let body = body
            .split_once(':')
            .map_or(body.clone(), |(_, b)| b.to_string());
        seen.push(Seen { attempt, id, body });
    }
    seen
}

fn distinct_bodies(seen: &[Seen]) -> HashSet<&str> {
    seen.iter().map(|s| s.body.as_str()).collect()
}

conformance!(
    events_published_while_undeployed_are_all_handled,
    a_poison_message_becomes_a_dead_letter_and_the_rest_flow,
    events_survive_a_host_restart,
    redeploying_under_a_stream_loses_none,
);

async fn events_published_while_undeployed_are_all_handled(env: Env) {
    // Deploying creates the stream and the durable consumer; then the consumer goes away.
    env.deploy(durable(|_| {})).await;
    env.host().deployments().undeploy("worker").await.unwrap();
    for i in 0..50 {
        env.publish(&format!("m{i}")).await;
    }
    let mut seen = env.watch("seen.jobs.durable").await;
    env.deploy(durable(|_| {})).await;
    let got = collect(&mut seen, Duration::from_secs(20), |s| {
        distinct_bodies(s).len() == 50
    })
    .await;
    assert_eq!(
        distinct_bodies(&got).len(),
        50,
        "every event handled: {got:?}"
    );
    let ids: HashSet<&str> = got.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 50, "one id per event, stable: {ids:?}");
    assert!(
        ids.iter().all(|id| id.starts_with("weft-jobs_durable:")),
        "{ids:?}"
    );
    env.shutdown().await;
}

async fn a_poison_message_becomes_a_dead_letter_and_the_rest_flow(env: Env) {
    let mut dead = env.watch("dead.worker.>").await;
    let mut seen = env.watch("seen.jobs.durable").await;
    env.deploy(durable(|s| s.max_deliver = 3)).await;
    env.publish("poison").await;
    env.publish("fail-until-3").await;
    for i in 0..10 {
        env.publish(&format!("ok{i}")).await;
    }
    let got = collect(&mut seen, Duration::from_secs(20), |s| {
        distinct_bodies(s).len() == 11
    })
    .await;
    let bodies = distinct_bodies(&got);
    assert_eq!(
        bodies.len(),
        11,
        "the rest flowed past the poison message: {got:?}"
    );
    assert!(!bodies.contains("poison"));
    let retried = got.iter().find(|s| s.body == "fail-until-3").unwrap();
    assert_eq!(retried.attempt, 3, "handled on its third delivery");

    let letter = tokio::time::timeout(Duration::from_secs(10), dead.messages.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(letter.subject, "dead.worker.jobs.durable");
    assert_eq!(&letter.body[..], b"poison");
    let headers: HashMap<&str, &str> = letter
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(headers["Weft-Original-Subject"], SUBJECT);
    assert_eq!(headers["Weft-Attempts"], "3");
    assert!(
        headers["Weft-Error"].contains("poison message"),
        "{headers:?}"
    );
    // Settled: it is not delivered again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dead.messages.try_recv().is_err(), "one dead letter");
    env.shutdown().await;
}

async fn events_survive_a_host_restart(mut env: Env) {
    // One at a time and slow, so most are still in the stream when the host stops.
    let spec = || durable(|s| s.max_in_flight = 1);
    env.deploy(spec()).await;
    let mut seen = env.watch("seen.jobs.durable").await;
    for i in 0..10 {
        env.publish(&format!("slow-100-{i}")).await;
    }
    let mut first = collect(&mut seen, Duration::from_secs(10), |s| !s.is_empty()).await;
    assert!(!first.is_empty());
    // Stopping drains what the host already took in; those are handled before it stops.
    env.stop().await;
    first.extend(collect(&mut seen, Duration::from_millis(500), |_| false).await);
    drop(seen);
    env.start().await;
    let mut seen = env.watch("seen.jobs.durable").await;
    env.deploy(spec()).await;
    let mut bodies: HashSet<String> = first.iter().map(|s| s.body.clone()).collect();
    let rest = collect(&mut seen, Duration::from_secs(30), |s| {
        let mut all = bodies.clone();
        all.extend(s.iter().map(|s| s.body.clone()));
        all.len() == 10
    })
    .await;
    bodies.extend(rest.iter().map(|s| s.body.clone()));
    assert_eq!(bodies.len(), 10, "none lost across the restart: {bodies:?}");
    env.shutdown().await;
}

async fn redeploying_under_a_stream_loses_none(env: Env) {
    let mut seen = env.watch("seen.jobs.durable").await;
    env.deploy(with_instance(durable(|_| {}), "v1")).await;
    let total = 200;
    let publisher = {
        let bus = env.bus();
        tokio::spawn(async move {
            for i in 0..total {
                let message = Message {
                    subject: SUBJECT.into(),
                    body: Bytes::from(format!("r{i}")),
                    ..Message::default()
                };
                bus.publish(message).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.deploy(with_instance(durable(|_| {}), "v2")).await;
    publisher.await.unwrap();
    let got = collect(&mut seen, Duration::from_secs(20), |s| {
        distinct_bodies(s).len() == total
    })
    .await;
    assert_eq!(distinct_bodies(&got).len(), total, "none lost");
    println!(
        "redeploy under a stream: {} events, {} deliveries handled ({} duplicates)",
        total,
        got.len(),
        got.len() - total
    );
    env.shutdown().await;
}

fn with_instance(mut spec: ComponentSpec, instance: &str) -> ComponentSpec {
    spec.config.insert("INSTANCE".into(), instance.into());
    spec
}
