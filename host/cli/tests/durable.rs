//! Durable subscriptions end to end, as a conformance suite run against both backends
//! (the embedded store and a real nats-server with JetStream), through the responder
//! component's `durable` action, which publishes `<attempt> <id> <instance>:<body>` to
//! `seen.<subject>` for each delivery it handles; and schedules, through its `tick`
//! action.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use jiff::Timestamp;
use weft_runtime::Host;
use weft_runtime::bus::{Message, MessageBus, Subscription};
use weft_runtime::spec::schedule::ScheduleSpec;
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
    deliveries_waiting_behind_slow_handlers_are_not_delivered_twice,
    guests_publish_durably_once_and_only_within_their_grant,
    a_tick_missed_while_no_host_ran_fires_once_on_start,
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

/// A host pulls deliveries ahead of its handlers (on NATS, 16 per handler): with one
/// handler of 150 ms and an ack wait of 1.5 s, 20 messages wait up to 3 s. Each must be
/// handled once, on its first delivery: the waiting ones' ack waits are extended.
async fn deliveries_waiting_behind_slow_handlers_are_not_delivered_twice(env: Env) {
    let mut seen = env.watch("seen.jobs.durable").await;
    env.deploy(durable(|s| {
        s.max_in_flight = 1;
        s.ack_wait_ms = 1_500;
    }))
    .await;
    let total = 20;
    for i in 0..total {
        env.publish(&format!("slow-150-{i}")).await;
    }
    let got = collect(&mut seen, Duration::from_secs(30), |s| {
        distinct_bodies(s).len() == total
    })
    .await;
    assert_eq!(distinct_bodies(&got).len(), total, "all handled: {got:?}");
    // Whatever was redelivered would arrive within another ack wait.
    let late = collect(&mut seen, Duration::from_millis(2_000), |_| false).await;
    let redelivered: Vec<&Seen> = got.iter().chain(&late).filter(|s| s.attempt > 1).collect();
    assert!(redelivered.is_empty(), "delivered twice: {redelivered:?}");
    assert_eq!(got.len() + late.len(), total, "each handled once");
    env.shutdown().await;
}

fn with_instance(mut spec: ComponentSpec, instance: &str) -> ComponentSpec {
    spec.config.insert("INSTANCE".into(), instance.into());
    spec
}

async fn guests_publish_durably_once_and_only_within_their_grant(env: Env) {
    let mut spec = durable(|_| {});
    spec.allowed_publish.push(SUBJECT.into());
    spec.subscriptions
        .push(SubscriptionSpec::to("cmd.event-publish"));
    env.deploy(spec).await;
    let mut seen = env.watch("seen.jobs.durable").await;
    let publish = |body: &'static str| {
        let bus = env.bus();
        async move {
            let reply = bus
                .request(
                    "cmd.event-publish".into(),
                    Bytes::from(body),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&reply.body).to_string()
        }
    };
    // Within its grant, into the stream: stored once however often it is retried.
    for _ in 0..3 {
        assert_eq!(publish("jobs.durable\nonce\nevent-1").await, "ok");
    }
    assert_eq!(publish("jobs.durable\nanother\n").await, "ok");
    let got = collect(&mut seen, Duration::from_secs(10), |s| s.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bodies: Vec<&str> = got.iter().map(|s| s.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["another", "once"], "{got:?}");
    assert!(
        seen.messages.try_recv().is_err(),
        "the retries stored nothing"
    );
    assert_eq!(
        got.iter().find(|s| s.body == "once").unwrap().id,
        "event-1",
        "the idempotency id is the delivery id"
    );

    // Outside it: refused with the grant to add, and nothing is stored.
    let denied = publish("other.subject\nnope\n").await;
    assert!(
        denied.contains("permission denied") && denied.contains("allowed_publish"),
        "{denied}"
    );
    // The host's own subjects (schedule ticks among them) are out of every grant's reach.
    let forged = publish("_WEFT.schedule.worker.tick\nforged\n").await;
    assert!(
        forged.contains("permission denied") && forged.contains("`_WEFT.`"),
        "{forged}"
    );
    env.shutdown().await;
}

/// The body of the next message on `subject` (others are skipped), within 30 s.
async fn next_on(seen: &mut async_nats::Subscriber, subject: &str) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(seen))
            .await
            .unwrap_or_else(|_| panic!("nothing on `{subject}` within 30 s"))
            .unwrap();
        if m.subject.as_str() == subject {
            return String::from_utf8_lossy(&m.payload).to_string();
        }
    }
}

/// Two `weft up` processes on one nats-server share a durable consumer; the one
/// handling a message is killed with SIGKILL mid-handling (no drain, no nak): the
/// message is delivered again, after its ack wait, to the other host.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_whose_host_is_killed_mid_handling_goes_to_another_host() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = client.subscribe("seen.>").await.unwrap();
    client.flush().await.unwrap();
    let wasm = wasm("responder");
    let host = |instance: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("responder.wasm"), &wasm).unwrap();
        let manifest = dir.path().join("weft.toml");
        std::fs::write(
            &manifest,
            format!(
                "name = \"fleet\"\n[components.worker]\nsource = \"responder.wasm\"\n\
                 allowed_publish = [\"seen.>\"]\nconfig = {{ INSTANCE = \"{instance}\" }}\n\
                 subscriptions = [{{ subject = \"{SUBJECT}\", durable = true, max_in_flight = 1, ack_wait_ms = 1000 }}]\n"
            ),
        )
        .unwrap();
        // Serving means its manifest is deployed: its consumer is pulling. Each host
        // runs its own config (INSTANCE says who handled what), so each is operated
        // alone: in a lattice, the first host's spec would win on both.
        let (up, _, _) = tokio::task::block_in_place(|| {
            weft_up_with(
                dir.path(),
                &manifest,
                &["--nats", &nats.url(), "--no-lattice"],
            )
        });
        (up, dir)
    };
    let mut hosts = HashMap::from([("a", host("a")), ("b", host("b"))]);

    client
        .publish(SUBJECT, Bytes::from_static(b"slow-3000-k"))
        .await
        .unwrap();
    let started = next_on(&mut seen, "seen.start.jobs.durable").await;
    let (attempt, rest) = started.split_once(' ').unwrap();
    let (id, victim) = rest.split_once(' ').unwrap();
    assert_eq!(attempt, "1", "{started}");
    let (mut killed, _dir) = hosts.remove(victim).unwrap();
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();

    let survivor = if victim == "a" { "b" } else { "a" };
    let handled = next_on(&mut seen, "seen.jobs.durable").await;
    assert_eq!(
        handled,
        format!("2 {id} {survivor}:slow-3000-k"),
        "redelivered once, to the other host"
    );
    for (_, (mut up, _)) in hosts {
        let _ = up.child.kill();
        let _ = up.child.wait();
    }
}

fn ticking(every: &str, instance: &str) -> ComponentSpec {
    with_instance(
        ComponentSpec {
            schedules: vec![ScheduleSpec::every("tick", every)],
            allowed_publish: vec!["seen.>".into()],
            ..ComponentSpec::default()
        },
        instance,
    )
}

/// A tick the responder handled: `<instance> <attempt> <tick time>`.
async fn next_tick(seen: &mut Subscription, within: Duration) -> Option<(String, u32, Timestamp)> {
    let m = tokio::time::timeout(within, seen.messages.recv())
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let mut parts = text.split(' ');
    let instance = parts.next()?.to_string();
    let attempt = parts.next()?.parse().ok()?;
    let tick = parts.next()?.parse().ok()?;
    Some((instance, attempt, tick))
}

async fn a_tick_missed_while_no_host_ran_fires_once_on_start(mut env: Env) {
    let mut seen = env.watch("seen.tick").await;
    env.deploy(ticking("5s", "a")).await;
    let (_, _, first) = next_tick(&mut seen, Duration::from_secs(10))
        .await
        .expect("a first tick");
    drop(seen);
    env.stop().await;
    // Two ticks pass with no host: first + 5 s and first + 10 s.
    let missed = first + jiff::SignedDuration::from_secs(10);
    let wait = Duration::try_from(missed.duration_since(Timestamp::now())).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    env.start().await;
    let mut seen = env.watch("seen.tick").await;
    env.deploy(ticking("5s", "a")).await;
    let (_, attempt, caught_up) = next_tick(&mut seen, Duration::from_secs(10)).await.unwrap();
    assert_eq!(caught_up, missed, "the latest missed tick, and only it");
    assert_eq!(attempt, 1);
    assert!(
        Timestamp::now() < missed + jiff::SignedDuration::from_secs(5),
        "fired on start, not at the next tick"
    );
    let (_, _, next) = next_tick(&mut seen, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        next,
        missed + jiff::SignedDuration::from_secs(5),
        "then on schedule"
    );
    env.shutdown().await;
}

/// Three hosts on one nats-server run the same schedule for two minutes: every tick in
/// the window is handled exactly once, by one of them.
#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_fire_every_tick_of_a_schedule_exactly_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = Vec::new();
    for dir in &dirs {
        hosts.push(start_host_on_nats(dir.path(), &nats).await);
    }
    let bus = hosts[0].deployments().backends().bus.clone();
    let mut seen = bus.subscribe("seen.tick".into(), None, 4096).await.unwrap();
    bus.flush(Duration::from_secs(5)).await.unwrap();
    for (host, instance) in hosts.iter().zip(["a", "b", "c"]) {
        deploy(host, "worker", "responder", ticking("1s", instance)).await;
    }
    let start = Timestamp::now();
    let window = Duration::from_secs(120);
    let mut handled: HashMap<Timestamp, Vec<(String, u32)>> = HashMap::new();
    let until = tokio::time::Instant::now() + window;
    while let Ok(Some(tick)) = tokio::time::timeout_at(until, next_tick(&mut seen, window)).await {
        let (instance, attempt, at) = tick;
        handled.entry(at).or_default().push((instance, attempt));
    }
    let end = Timestamp::now();
    // What was due by the end is handled a moment later (later ticks are not counted).
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some((instance, attempt, at))) =
        tokio::time::timeout_at(settle, next_tick(&mut seen, Duration::from_secs(3))).await
    {
        handled.entry(at).or_default().push((instance, attempt));
    }
    let twice: Vec<_> = handled.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "ticks handled more than once: {twice:?}");
    let mut missing = Vec::new();
    let mut tick = start.as_millisecond() / 1000 + 1;
    while tick < end.as_millisecond() / 1000 {
        let at = Timestamp::from_second(tick).unwrap();
        if !handled.contains_key(&at) {
            missing.push(at);
        }
        tick += 1;
    }
    assert!(missing.is_empty(), "ticks not handled: {missing:?}");
    let mut by_host: HashMap<&str, usize> = HashMap::new();
    for h in handled.values().flatten() {
        *by_host.entry(h.0.as_str()).or_default() += 1;
    }
    println!(
        "{} ticks in {window:?}, each handled once; by host: {by_host:?}",
        handled.len()
    );
    for host in hosts {
        host.shutdown().await;
    }
}

/// A schedule on a component that cannot take its ticks is refused at deploy, saying so;
/// a bad schedule is refused naming its key.
#[tokio::test]
async fn schedules_the_component_cannot_take_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let spec = ComponentSpec {
        schedules: vec![ScheduleSpec::every("tick", "1m")],
        ..ComponentSpec::default()
    };
    let error = host
        .deployments()
        .deploy("clock", spec, wasm("hello").into())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("schedules' ticks"), "{error}");
    let bad = ComponentSpec {
        schedules: vec![ScheduleSpec {
            cron: Some("61 * * * *".into()),
            every: None,
            ..ScheduleSpec::every("tick", "1m")
        }],
        ..ComponentSpec::default()
    };
    let error = bad.validate().unwrap_err();
    assert_eq!(error.key, "schedules[0].cron");
    assert!(
        error.message.contains("not a valid cron expression"),
        "{}",
        error.message
    );
    host.shutdown().await;
}
