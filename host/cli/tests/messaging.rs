//! Messaging end to end, as a conformance suite run against both backends (embedded and a
//! real nats-server), plus the cases only NATS has: several hosts, outside clients, restarts.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use weft_runtime::Host;
use weft_runtime::bus::{BusError, Message, MessageBus};
use weft_runtime::spec::ComponentSpec;

struct Env {
    host: Host,
    nats: Option<NatsServer>,
    _cache: tempfile::TempDir,
}

/// A host on the embedded bus, or on its own nats-server (`None` if that is unavailable).
async fn env(nats: bool) -> Option<Env> {
    let cache = tempfile::tempdir().unwrap();
    if !nats {
        return Some(Env {
            host: start_host(cache.path()).await,
            nats: None,
            _cache: cache,
        });
    }
    let server = NatsServer::start()?;
    let host = start_host_on_nats(cache.path(), &server).await;
    Some(Env {
        host,
        nats: Some(server),
        _cache: cache,
    })
}

impl Env {
    fn bus(&self) -> Arc<dyn MessageBus> {
        self.host.deployments().backends().bus.clone()
    }

    async fn deploy(&self, name: &str, spec: ComponentSpec) {
        deploy(&self.host, name, "responder", spec).await;
    }

    async fn request(&self, subject: &str, body: impl Into<String>) -> Result<Message, BusError> {
        self.bus()
            .request(
                subject.into(),
                Bytes::from(body.into()),
                Duration::from_secs(5),
            )
            .await
    }

    async fn shutdown(self) {
        self.host.shutdown().await;
        drop(self.nats);
    }
}

fn with_instance(mut spec: ComponentSpec, instance: &str) -> ComponentSpec {
    spec.config.insert("INSTANCE".into(), instance.into());
    spec
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).to_string()
}

conformance!(
    request_reply_with_wildcards,
    failures_answer_with_service_errors,
    publishing_is_limited_to_allowed_subjects,
    guest_requests_tell_timeout_from_no_responders,
    queue_groups_share_and_broadcast_fans_out,
    redeploying_under_a_stream_loses_no_message,
    reuse_keeps_instances_for_messages_but_never_after_a_trap,
    forged_reply_subjects_are_refused,
    reserved_namespaces_are_out_of_every_grant,
    malformed_subjects_never_reach_the_shared_connection,
);

async fn malformed_subjects_never_reach_the_shared_connection(env: Env) {
    env.deploy("wide", bridge(&[">"])).await;
    env.deploy("r", subscriber("svc.echo")).await;
    let client = reqwest::Client::new();
    // Over NATS's 4 KiB control line, the server would close the host's connection and
    // every component would lose messaging until it reconnected.
    let long = format!("events.{}", "x".repeat(5000));
    let refused = client
        .post(url(&env.host, &format!("/publish/{long}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let error = refused.text().await.unwrap();
    assert!(error.starts_with("invalid subject `events.xxx"), "{error}");
    // The connection never saw it: a request right after is answered.
    assert_eq!(
        text(&env.request("svc.echo", "still").await.unwrap()),
        "-:still"
    );
    env.shutdown().await;
}

/// A responder serving the HTTP bridge on every path, publishing on `allowed`.
fn bridge(allowed: &[&str]) -> ComponentSpec {
    ComponentSpec {
        routes: vec![weft_runtime::spec::RouteSpec {
            path: "/...".into(),
            methods: vec![],
            websocket: false,
        }],
        allowed_publish: allowed.iter().map(|s| s.to_string()).collect(),
        ..ComponentSpec::default()
    }
}

/// Waits a moment, then whether `sub` received nothing.
async fn stays_silent(sub: &mut weft_runtime::bus::Subscription) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.messages.try_recv().is_err()
}

async fn forged_reply_subjects_are_refused(env: Env) {
    // The victim answers `svc.*.echo` requests at whatever reply subject they carry.
    env.deploy("victim", subscriber("svc.*.echo")).await;
    env.deploy("attacker", bridge(&["svc.>", "replies.>"]))
        .await;
    let bus = env.bus();
    // Where forged replies would land: bucket `orders` (on NATS, `$KV.orders.<key>` is a
    // write to it) and a subject only another component may publish to.
    let mut bucket = bus
        .subscribe("$KV.orders.>".into(), None, 16)
        .await
        .unwrap();
    let mut orders = bus
        .subscribe("orders.created".into(), None, 16)
        .await
        .unwrap();
    let mut replies = bus.subscribe("replies.a".into(), None, 16).await.unwrap();
    let client = reqwest::Client::new();
    let publish = |reply_to: &str| {
        client
            .post(url(
                &env.host,
                &format!("/publish/svc.x.echo?reply_to={reply_to}"),
            ))
            .body("forged")
            .send()
    };
    for forged in ["$KV.orders.k", "orders.created", "_INBOX.guess"] {
        let refused = publish(forged).await.unwrap();
        assert_eq!(refused.status(), 403, "reply_to {forged}");
        let error = refused.text().await.unwrap();
        assert!(
            error.contains(&format!("may not set reply_to `{forged}`")),
            "{error}"
        );
    }
    // A reply subject of its own is fine: the victim answers there.
    assert_eq!(publish("replies.a").await.unwrap().status(), 202);
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&reply), "-:forged");

    // A client outside any grant forges the same on the bus: neither the victim's reply
    // nor the host's error reply goes into the reserved namespace.
    bus.publish(Message {
        subject: "svc.x.echo".into(),
        reply_to: Some("$KV.orders.k".into()),
        headers: vec![],
        body: Bytes::from("raw"),
    })
    .await
    .unwrap();
    assert_eq!(
        text(&env.request("svc.y.echo", "after").await.unwrap()),
        "-:after"
    );
    assert!(
        stays_silent(&mut bucket).await,
        "nothing reached bucket `orders`"
    );
    assert!(
        stays_silent(&mut orders).await,
        "nothing reached `orders.created`"
    );
    env.shutdown().await;
}

async fn reserved_namespaces_are_out_of_every_grant(env: Env) {
    env.deploy("wide", bridge(&[">"])).await;
    let client = reqwest::Client::new();
    let post = |path: String| client.post(url(&env.host, &path)).body("x").send();

    // `>` reaches ordinary subjects...
    assert_eq!(
        post("/publish/events.x".into()).await.unwrap().status(),
        202
    );
    // ...but not the broker's API (on NATS, `$JS.API.STREAM.DELETE.<s>` deletes a stream),
    // its buckets, its system account, or the host's inboxes and control subjects.
    let refused = post("/request/$JS.API.INFO".into()).await.unwrap();
    assert_eq!(refused.status(), 502);
    let error = refused.text().await.unwrap();
    assert!(
        error.contains("may not publish to `$JS.API.INFO`") && error.contains("broker"),
        "{error}"
    );
    for subject in [
        "$JS.API.STREAM.DELETE.orders",
        "$KV.orders.k",
        "$SYS.REQ.SERVER.PING",
        "_INBOX.x",
        "_WEFT.hosts",
    ] {
        let refused = post(format!("/publish/{subject}")).await.unwrap();
        assert_eq!(refused.status(), 403, "{subject}");
        assert!(
            refused
                .text()
                .await
                .unwrap()
                .contains(&format!("may not publish to `{subject}`")),
            "{subject}"
        );
    }

    // A grant or subscription that names one is refused at deploy, saying why.
    let named = bridge(&["$JS.API.>"]).validate().unwrap_err();
    assert_eq!(named.key, "allowed_publish[0]");
    assert!(named.message.contains("reserved"), "{named}");
    let inbox = subscriber("_INBOX.>").validate().unwrap_err();
    assert_eq!(inbox.key, "subscriptions[0].subject");

    // A `>` subscription hears ordinary subjects only: not the host's replies to other
    // requests, nor writes into buckets.
    env.deploy("all", subscriber(">")).await;
    let bus = env.bus();
    for subject in ["$KV.orders.k", "_INBOX.someone.else"] {
        bus.publish(Message {
            subject: subject.into(),
            body: Bytes::from("x"),
            ..Message::default()
        })
        .await
        .unwrap();
    }
    // `probe.count` is answered (the reply goes to an `_INBOX.` subject `all` also matches).
    assert_eq!(text(&env.request("probe.count", "").await.unwrap()), "1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = env
        .host
        .deployments()
        .list()
        .into_iter()
        .find(|d| d.name == "all")
        .unwrap()
        .requests;
    assert_eq!(handled, 1, "only `probe.count` reached the `>` subscriber");
    env.shutdown().await;
}

async fn request_reply_with_wildcards(env: Env) {
    env.deploy("r", subscriber("svc.*.echo")).await;
    assert_eq!(
        text(&env.request("svc.a.echo", "hi").await.unwrap()),
        "-:hi"
    );
    assert_eq!(
        text(&env.request("svc.b.echo", "there").await.unwrap()),
        "-:there"
    );
    let miss = env.request("svc.a.b.echo", "x").await.unwrap_err();
    assert!(matches!(miss, BusError::NoResponders(_)), "{miss:?}");
    env.shutdown().await;
}

async fn reuse_keeps_instances_for_messages_but_never_after_a_trap(env: Env) {
    let count = || async { text(&env.request("svc.count", "").await.unwrap()) };
    // By default every message gets an instance nobody has called; the next one is
    // instantiated in the background (a spare) while the message is handled.
    env.deploy("r", subscriber("svc.>")).await;
    let fresh = env.host.deployments().snapshot().by_name["r"].clone();
    for _ in 0..5 {
        assert_eq!(count().await, "1");
    }
    for _ in 0..200 {
        if messaging_idle(&fresh) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!((1..=weft_runtime::instance::SPARES).contains(&messaging_idle(&fresh)));
    assert_eq!(count().await, "1", "a spare is as fresh as any instance");

    // Opted in: one instance handles message after message, and each time it may
    // answer that message's own reply subject. The guest replies before it returns,
    // so wait until the instance is back in the pool before sending the next one.
    let mut spec = subscriber("keep.>");
    spec.limits.requests_per_instance = 100;
    spec.subscriptions[0].max_in_flight = 1;
    env.deploy("kept", spec).await;
    let count = || async { text(&env.request("keep.count", "").await.unwrap()) };
    let idle = || messaging_idle(&env.host.deployments().snapshot().by_name["kept"]);
    let kept = || async {
        for _ in 0..200 {
            if idle() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the instance was not kept");
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(count().await);
        kept().await;
    }
    assert_eq!(seen, ["1", "2", "3"]);
    // A handler error is an answer, not a failure: the instance stays.
    let failed = env.request("keep.fail", "").await.unwrap();
    assert_eq!(failed.service_error(), Some("deliberate handler failure"));
    kept().await;
    assert_eq!(count().await, "5");
    kept().await;
    // A trap ends the instance: the next message starts from a fresh one.
    let trapped = env.request("keep.trap", "").await.unwrap();
    assert!(trapped.service_error().is_some());
    assert_eq!(idle(), 0);
    assert_eq!(count().await, "1");
    env.shutdown().await;
}

async fn failures_answer_with_service_errors(env: Env) {
    env.deploy("r", subscriber("svc.>")).await;
    let failed = env.request("svc.fail", "").await.unwrap();
    assert_eq!(failed.service_error(), Some("deliberate handler failure"));
    let trapped = env.request("svc.trap", "").await.unwrap();
    assert_eq!(
        trapped.service_error(),
        Some("component `r` failed to handle the message")
    );
    // An error text with line breaks (which NATS headers cannot carry) or of any length
    // still answers the caller, on one bounded line.
    let multi_line = env
        .request("svc.fail", "line one\r\nline two")
        .await
        .unwrap();
    assert_eq!(multi_line.service_error(), Some("line one  line two"));
    let long = env.request("svc.fail", "x".repeat(100_000)).await.unwrap();
    let error = long.service_error().unwrap();
    assert!(
        error.len() <= weft_runtime::bus::MAX_HEADER_VALUE && error.starts_with("xxx"),
        "{} bytes",
        error.len()
    );
    assert_eq!(
        text(&env.request("svc.echo", "alive").await.unwrap()),
        "-:alive",
        "still serving"
    );
    let info = env
        .host
        .deployments()
        .list()
        .into_iter()
        .find(|d| d.name == "r")
        .unwrap();
    assert_eq!((info.requests, info.errors), (5, 1));
    env.shutdown().await;
}

async fn publishing_is_limited_to_allowed_subjects(env: Env) {
    let mut spec = subscriber("svc.>");
    spec.allowed_publish = vec!["events.>".into()];
    spec.routes = vec![weft_runtime::spec::RouteSpec {
        path: "/...".into(),
        methods: vec![],
        websocket: false,
    }];
    env.deploy("r", spec).await;
    let mut events = env
        .bus()
        .subscribe("events.>".into(), None, 16)
        .await
        .unwrap();

    assert_eq!(
        text(
            &env.request("svc.publish", "events.one\npayload")
                .await
                .unwrap()
        ),
        "ok"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), events.messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.subject.as_str(), text(&event).as_str()),
        ("events.one", "payload")
    );

    let denied = text(
        &env.request("svc.publish", "secret.one\nleak")
            .await
            .unwrap(),
    );
    assert!(
        denied.contains("permission denied") && denied.contains("`secret.one`"),
        "{denied}"
    );

    // The HTTP side is held to the same rules: the bridge from synchronous to asynchronous.
    let client = reqwest::Client::new();
    let published = client
        .post(url(&env.host, "/publish/events.two"))
        .body("via http")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    let event = tokio::time::timeout(Duration::from_secs(5), events.messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.subject.as_str(), text(&event).as_str()),
        ("events.two", "via http")
    );
    let refused = client
        .post(url(&env.host, "/publish/secret.two"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("may not publish to `secret.two`")
    );
    env.shutdown().await;
}

async fn guest_requests_tell_timeout_from_no_responders(env: Env) {
    let spec = ComponentSpec {
        routes: vec![weft_runtime::spec::RouteSpec {
            path: "/...".into(),
            methods: vec![],
            websocket: false,
        }],
        allowed_publish: vec!["nobody.>".into(), "silent.>".into(), "svc.>".into()],
        ..ComponentSpec::default()
    };
    env.deploy("caller", spec).await;
    env.deploy("r", subscriber("svc.echo")).await;
    // Someone listens on `silent.x` but never answers.
    let _silent = env
        .bus()
        .subscribe("silent.x".into(), None, 16)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let call = |subject: &str| {
        client
            .post(url(&env.host, &format!("/request/{subject}")))
            .body("q")
            .send()
    };

    let nobody = call("nobody.home").await.unwrap();
    assert_eq!(nobody.status(), 502);
    assert!(nobody.text().await.unwrap().starts_with("no responders"));
    let silent = call("silent.x").await.unwrap();
    assert_eq!(silent.status(), 502);
    assert!(silent.text().await.unwrap().starts_with("timeout"));
    let answered = call("svc.echo").await.unwrap();
    assert_eq!(
        answered.text().await.unwrap(),
        "-:q",
        "HTTP handler calls a message handler"
    );
    env.shutdown().await;
}

async fn queue_groups_share_and_broadcast_fans_out(env: Env) {
    let shared = |instance| {
        let mut spec = with_instance(subscriber("work.echo"), instance);
        spec.subscriptions[0].queue_group = Some("workers".into());
        spec
    };
    env.deploy("r1", shared("one")).await;
    env.deploy("r2", shared("two")).await;
    let mut answered_by: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let reply = text(&env.request("work.echo", &i.to_string()).await.unwrap());
        let (who, body) = reply.split_once(':').unwrap();
        assert_eq!(body, i.to_string());
        *answered_by.entry(who.to_string()).or_default() += 1;
    }
    assert_eq!(
        answered_by.len(),
        2,
        "both members of the group took work: {answered_by:?}"
    );

    let fanned = |instance| {
        let mut spec = with_instance(subscriber("fan.record"), instance);
        spec.subscriptions[0].broadcast = true;
        spec.allowed_publish = vec!["seen.>".into()];
        spec
    };
    env.deploy("b1", fanned("one")).await;
    env.deploy("b2", fanned("two")).await;
    let mut seen = env
        .bus()
        .subscribe("seen.>".into(), None, 64)
        .await
        .unwrap();
    for i in 0..5 {
        let message = Message {
            subject: "fan.record".into(),
            body: i.to_string().into(),
            ..Message::default()
        };
        env.bus().publish(message).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        let m = tokio::time::timeout(Duration::from_secs(5), seen.messages.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(text(&m));
    }
    got.sort();
    assert_eq!(
        got.iter().filter(|g| g.starts_with("one:")).count(),
        5,
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|g| g.starts_with("two:")).count(),
        5,
        "{got:?}"
    );
    env.shutdown().await;
}

async fn redeploying_under_a_stream_loses_no_message(env: Env) {
    env.deploy("r", with_instance(subscriber("svc.echo"), "v0"))
        .await;
    let env = Arc::new(env);
    let mut senders = Vec::new();
    for sender in 0..4 {
        let env = env.clone();
        senders.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..150 {
                let body = format!("{sender}-{i}");
                match env.request("svc.echo", &body).await {
                    Ok(reply) if text(&reply).ends_with(&format!(":{body}")) => {}
                    other => failures.push(format!("{body}: {other:?}")),
                }
            }
            failures
        }));
    }
    for version in 1..=4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        env.deploy(
            "r",
            with_instance(subscriber("svc.echo"), &format!("v{version}")),
        )
        .await;
    }
    let mut failures = Vec::new();
    for s in senders {
        failures.extend(s.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} requests failed during redeploys: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    Arc::into_inner(env).unwrap().shutdown().await;
}

#[tokio::test]
async fn two_hosts_on_one_nats_share_work_and_call_each_other() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_host_on_nats(cache_a.path(), &nats).await;
    let b = start_host_on_nats(cache_b.path(), &nats).await;
    deploy(
        &a,
        "r",
        "responder",
        with_instance(subscriber("svc.echo"), "a"),
    )
    .await;
    deploy(
        &b,
        "r",
        "responder",
        with_instance(subscriber("svc.echo"), "b"),
    )
    .await;

    // A plain NATS client, not a host, sees the components answer.
    let client = async_nats::connect(nats.url()).await.unwrap();
    // Subscribed before any other traffic, for the event check at the end.
    let mut events = client.subscribe("bonly.note").await.unwrap();
    client.flush().await.unwrap();
    let mut hosts = HashMap::new();
    for i in 0..40 {
        let reply = client
            .request("svc.echo", i.to_string().into())
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&reply.payload).to_string();
        *hosts
            .entry(reply.split(':').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        hosts.len(),
        2,
        "one queue group across both hosts: {hosts:?}"
    );

    // A component on host A calls a component that only host B runs.
    deploy(
        &b,
        "only-b",
        "responder",
        with_instance(subscriber("bonly.echo"), "b"),
    )
    .await;
    let caller = ComponentSpec {
        routes: vec![weft_runtime::spec::RouteSpec {
            path: "/...".into(),
            methods: vec![],
            websocket: false,
        }],
        allowed_publish: vec!["bonly.>".into()],
        ..ComponentSpec::default()
    };
    deploy(&a, "caller", "responder", caller).await;
    let answer = reqwest::Client::new()
        .post(url(&a, "/request/bonly.echo"))
        .body("hop")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "b:hop");

    // And it publishes events a plain subscriber receives. (A generous bound: this test
    // runs on one thread beside a dozen others compiling components.)
    let status = reqwest::Client::new()
        .post(url(&a, "/publish/bonly.note"))
        .body("fyi")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let event = tokio::time::timeout(Duration::from_secs(15), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&event.payload[..], b"fyi");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_host_reconnects_after_nats_restarts() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_on_nats(cache.path(), &nats).await;
    deploy(&host, "r", "responder", subscriber("svc.echo")).await;
    let url = nats.url();
    let client = async_nats::connect(&url).await.unwrap();
    assert_eq!(
        &client
            .request("svc.echo", "1".into())
            .await
            .unwrap()
            .payload[..],
        b"-:1"
    );

    let stopped = nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nats = NatsServer::restart(stopped);
    // Bounded wait: both the host and the test client reconnect with backoff.
    let mut answered = false;
    for _ in 0..60 {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.request("svc.echo", "2".into()),
        )
        .await
        {
            assert_eq!(&reply.payload[..], b"-:2");
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered,
        "the component answers again after the NATS server came back"
    );
    host.shutdown().await;
    drop(nats);
}

/// Admission on NATS: a subscription holds `max_in_flight` messages running and as many
/// waiting; past that the host drops (core NATS delivers at most once), counts the drops
/// in the component's listing and says so at warn. Before, async-nats buffered up to
/// 65,536 messages per subscription ahead of the bound, where nothing could see them.
#[tokio::test]
async fn a_saturated_subscription_drops_and_counts_instead_of_buffering_on_nats() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_on_nats(cache.path(), &nats).await;
    let mut spec = subscriber("work.>");
    spec.subscriptions[0].max_in_flight = 2;
    spec.allowed_publish = vec!["seen.>".into()];
    deploy(&host, "slowpoke", "responder", spec).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut started = client.subscribe("seen.start.>").await.unwrap();
    client.flush().await.unwrap();
    const SENT: u64 = 40;
    for i in 0..SENT {
        client
            .publish(format!("work.{i}.slow"), "400".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // 2 running, 2 waiting, and at most one more in the hand between them.
    let mut handled = 0u64;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1500), started.next()).await
    {
        handled += 1;
    }
    assert!(
        (2..=5).contains(&handled),
        "{handled} of {SENT} were handled with max_in_flight = 2"
    );
    let mut dropped = 0;
    for _ in 0..40 {
        dropped = host.deployments().list()[0].dropped_messages;
        if dropped + handled == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dropped + handled,
        SENT,
        "every message is handled or counted as dropped"
    );
    host.shutdown().await;
}
