//! Conformance suites at the trait level: what every [`MessageBus`] and every [`KvStore`]
//! must do, whatever the backend. `host/test/tests/conformance.rs` runs them against the
//! embedded backends, the NATS backends on a real nats-server, and the recording world
//! of [`TestComponent`](crate::TestComponent). A new backend passes both before it ships.
//!
//! Each suite panics with the failed expectation, like any test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weft_runtime::bus::{BusError, Message, MessageBus, SERVICE_ERROR, Subscription};
use weft_runtime::kv::{KeyPage, KvStore};

/// How long a suite waits for a message that should arrive.
const ARRIVAL: Duration = Duration::from_secs(5);
/// How long it waits to be sure a message does not arrive.
const SILENCE: Duration = Duration::from_millis(200);

/// Everything a message bus must do: subjects and wildcards, queue groups and broadcast,
/// request/reply with service errors, no-responders and timeouts, subject validation,
/// and stopping a subscription without losing what it already received. `prefix` keeps
/// the suite's subjects apart from anything else on the bus.
pub async fn message_bus(bus: Arc<dyn MessageBus>, prefix: &str) {
    wildcards_match_tokens(bus.as_ref(), prefix).await;
    queue_groups_share_and_broadcast_fans_out(bus.as_ref(), prefix).await;
    request_reply(bus.clone(), prefix).await;
    inboxes_are_unguessable(bus.as_ref(), prefix).await;
    invalid_subjects_are_refused(bus.as_ref(), prefix).await;
    stop_keeps_what_was_received(bus.as_ref(), prefix).await;
}

async fn subscribe(bus: &dyn MessageBus, subject: String, group: Option<&str>) -> Subscription {
    bus.subscribe(subject.clone(), group.map(str::to_string), 64)
        .await
        .unwrap_or_else(|e| panic!("subscribing to `{subject}`: {e}"))
}

async fn publish(bus: &dyn MessageBus, subject: String, body: &str) {
    let message = Message {
        subject: subject.clone(),
        body: Bytes::from(body.to_string()),
        ..Message::default()
    };
    bus.publish(message)
        .await
        .unwrap_or_else(|e| panic!("publishing to `{subject}`: {e}"));
}

async fn next(sub: &mut Subscription, what: &str) -> Message {
    match tokio::time::timeout(ARRIVAL, sub.messages.recv()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing arrived within {ARRIVAL:?}"),
    }
}

/// Messages that arrive within [`SILENCE`].
async fn drain(sub: &mut Subscription) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(SILENCE, sub.messages.recv()).await {
        got.push(message);
    }
    got
}

/// Waits until a new subscription is in effect on the server (NATS subscribes
/// asynchronously): publishes probes to `subject` until one arrives, then drops the rest.
async fn settle(bus: &dyn MessageBus, sub: &mut Subscription, subject: &str) {
    for _ in 0..50 {
        publish(bus, subject.to_string(), "probe").await;
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(100), sub.messages.recv()).await
        {
            drain(sub).await;
            return;
        }
    }
    panic!("the subscription to `{subject}` never received anything");
}

async fn wildcards_match_tokens(bus: &dyn MessageBus, prefix: &str) {
    let mut one = subscribe(bus, format!("{prefix}.w.*"), None).await;
    let mut rest = subscribe(bus, format!("{prefix}.w.>"), None).await;
    settle(bus, &mut one, &format!("{prefix}.w.probe")).await;
    drain(&mut rest).await;
    publish(bus, format!("{prefix}.w.a"), "1").await;
    publish(bus, format!("{prefix}.w.a.b"), "2").await;
    publish(bus, format!("{prefix}.other"), "3").await;
    let got = next(&mut one, "`*` matches one token").await;
    assert_eq!(got.subject, format!("{prefix}.w.a"));
    assert_eq!(got.body, Bytes::from("1"));
    assert!(
        drain(&mut one).await.is_empty(),
        "`*` matches exactly one token"
    );
    let bodies: Vec<Bytes> = [
        next(&mut rest, "`>` matches").await,
        next(&mut rest, "`>` matches").await,
    ]
    .into_iter()
    .map(|m| m.body)
    .collect();
    assert_eq!(
        bodies,
        [Bytes::from("1"), Bytes::from("2")],
        "`>` matches the rest, in order"
    );
    assert!(
        drain(&mut rest).await.is_empty(),
        "other subjects do not match"
    );
}

async fn queue_groups_share_and_broadcast_fans_out(bus: &dyn MessageBus, prefix: &str) {
    let subject = format!("{prefix}.q");
    let mut a = subscribe(bus, subject.clone(), Some("workers")).await;
    let mut b = subscribe(bus, subject.clone(), Some("workers")).await;
    let mut all = subscribe(bus, subject.clone(), None).await;
    settle(bus, &mut all, &subject).await;
    drain(&mut a).await;
    drain(&mut b).await;
    for i in 0..20 {
        publish(bus, subject.clone(), &i.to_string()).await;
    }
    let mut everything = Vec::new();
    for _ in 0..20 {
        everything.push(
            next(
                &mut all,
                "a subscriber outside the group gets every message",
            )
            .await,
        );
    }
    let (from_a, from_b) = (drain(&mut a).await.len(), drain(&mut b).await.len());
    assert_eq!(
        from_a + from_b,
        20,
        "the queue group gets each message exactly once"
    );
}

async fn request_reply(bus: Arc<dyn MessageBus>, prefix: &str) {
    let subject = format!("{prefix}.svc");
    let mut sub = subscribe(bus.as_ref(), subject.clone(), Some("svc")).await;
    let responder = bus.clone();
    let serve = tokio::spawn(async move {
        while let Some(request) = sub.messages.recv().await {
            let Some(reply_to) = request.reply_to else {
                continue;
            };
            let fail = request.body.as_ref() == b"fail";
            let reply = Message {
                subject: reply_to,
                reply_to: None,
                headers: if fail {
                    vec![(SERVICE_ERROR.to_string(), "it failed".to_string())]
                } else {
                    vec![]
                },
                body: if fail { Bytes::new() } else { request.body },
            };
            let _ = responder.publish(reply).await;
        }
    });
    let mut reply = None;
    // NATS subscribes asynchronously: the first requests may find nobody yet.
    for _ in 0..50 {
        match bus
            .request(subject.clone(), Bytes::from("ping"), Duration::from_secs(2))
            .await
        {
            Ok(message) => {
                reply = Some(message);
                break;
            }
            Err(BusError::NoResponders(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("request to `{subject}`: {e}"),
        }
    }
    let reply = reply.expect("a reply to the request");
    assert_eq!(
        reply.body,
        Bytes::from("ping"),
        "the reply answers the request"
    );
    let failed = bus
        .request(subject.clone(), Bytes::from("fail"), Duration::from_secs(2))
        .await
        .expect("a service-error reply");
    assert_eq!(
        failed.service_error(),
        Some("it failed"),
        "headers travel with a reply"
    );
    serve.abort();

    let nobody = bus
        .request(
            format!("{prefix}.nobody"),
            Bytes::new(),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(nobody, Err(BusError::NoResponders(_))),
        "a request nobody subscribes to: {nobody:?}"
    );
    let mut silent = subscribe(bus.as_ref(), format!("{prefix}.silent"), None).await;
    settle(bus.as_ref(), &mut silent, &format!("{prefix}.silent")).await;
    let timed_out = bus
        .request(
            format!("{prefix}.silent"),
            Bytes::new(),
            Duration::from_millis(200),
        )
        .await;
    assert!(
        matches!(timed_out, Err(BusError::Timeout(_))),
        "a request nobody answers: {timed_out:?}"
    );
}

/// Reply inboxes are random, like NATS's own: knowing one request's inbox tells nothing
/// about the next, so nobody can answer a request meant for someone else first.
async fn inboxes_are_unguessable(bus: &dyn MessageBus, prefix: &str) {
    let subject = format!("{prefix}.inbox");
    let mut sub = subscribe(bus, subject.clone(), None).await;
    settle(bus, &mut sub, &subject).await;
    let mut inboxes = Vec::new();
    for _ in 0..2 {
        let _ = bus
            .request(subject.clone(), Bytes::new(), Duration::from_millis(50))
            .await;
        let request = next(&mut sub, "a request").await;
        inboxes.push(request.reply_to.expect("a request carries its inbox"));
    }
    for inbox in &inboxes {
        let unique = inbox
            .strip_prefix("_INBOX.")
            .unwrap_or_else(|| panic!("inbox `{inbox}` is under `_INBOX.`"));
        assert!(
            unique.len() >= 22,
            "inbox `{inbox}` is long enough to be unguessable"
        );
    }
    let differing = inboxes[0]
        .chars()
        .zip(inboxes[1].chars())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing >= 8,
        "consecutive inboxes `{}` and `{}` differ in more than a counter",
        inboxes[0],
        inboxes[1]
    );
}

async fn invalid_subjects_are_refused(bus: &dyn MessageBus, prefix: &str) {
    let bad = Message {
        subject: format!("{prefix}..x"),
        ..Message::default()
    };
    assert!(
        matches!(bus.publish(bad).await, Err(BusError::InvalidSubject(_))),
        "an empty token"
    );
    let wildcard = Message {
        subject: format!("{prefix}.*"),
        ..Message::default()
    };
    assert!(
        matches!(
            bus.publish(wildcard).await,
            Err(BusError::InvalidSubject(_))
        ),
        "a wildcard is no subject to publish to"
    );
    let pattern = bus.subscribe(format!("{prefix}.>.x"), None, 8).await;
    assert!(
        matches!(pattern, Err(BusError::InvalidSubject(_))),
        "`>` only at the end"
    );
}

async fn stop_keeps_what_was_received(bus: &dyn MessageBus, prefix: &str) {
    let subject = format!("{prefix}.stop");
    let mut sub = subscribe(bus, subject.clone(), None).await;
    settle(bus, &mut sub, &subject).await;
    publish(bus, subject.clone(), "before").await;
    // Received, not yet read: it must survive the stop.
    tokio::time::sleep(SILENCE).await;
    sub.stop.stop().await;
    publish(bus, subject.clone(), "after").await;
    let mut bodies = Vec::new();
    let end = tokio::time::timeout(ARRIVAL, async {
        while let Some(message) = sub.messages.recv().await {
            bodies.push(message.body);
        }
    })
    .await;
    assert!(end.is_ok(), "a stopped subscription ends once drained");
    assert_eq!(
        bodies,
        [Bytes::from("before")],
        "stopping loses nothing received and takes nothing new"
    );
}

/// Paging: each page holds at most `limit` keys, in order, after the given key, and
/// says whether more follow; paging through visits every key once.
async fn keys_page_by_page(store: &dyn KvStore, bucket: &str) {
    let b = bucket.to_string();
    let mut all: Vec<String> = (0..25).map(|i| format!("key-{i:02}")).collect();
    all.push("key-10.5".into());
    all.sort();
    for key in all.iter().rev() {
        store
            .set(b.clone(), key.clone(), Bytes::from("v"))
            .await
            .expect("set");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .keys_after(b.clone(), after.clone(), 7)
            .await
            .expect("a page of keys");
        assert!(page.keys.len() <= 7, "a page holds at most its limit");
        seen.extend(page.keys.iter().cloned());
        if !page.more {
            break;
        }
        after = page.keys.last().cloned();
    }
    assert_eq!(seen, all, "paging visits every key once, in order");
    let empty = store
        .keys_after(format!("{bucket}-none"), None, 7)
        .await
        .expect("keys of an empty bucket");
    assert_eq!(empty, KeyPage::default());
}

/// Everything a key-value store must do: get, set, delete and sorted keys per bucket,
/// buckets apart from each other, counters, compare-and-swap, and atomicity of both under
/// concurrent writers. `bucket` names a bucket the suite may use (and a second one,
/// `bucket` + `-2`).
pub async fn kv_store(store: Arc<dyn KvStore>, bucket: &str) {
    let (b, other) = (bucket.to_string(), format!("{bucket}-2"));
    let get = |bucket: &str, key: &str| store.get(bucket.into(), key.into());
    assert_eq!(get(&b, "k").await.expect("get"), None, "absent at first");
    store
        .set(b.clone(), "k".into(), Bytes::from("v1"))
        .await
        .expect("set");
    store
        .set(b.clone(), "k".into(), Bytes::from("v2"))
        .await
        .expect("overwrite");
    store
        .set(b.clone(), "a".into(), Bytes::from("x"))
        .await
        .expect("set");
    assert_eq!(get(&b, "k").await.expect("get"), Some(Bytes::from("v2")));
    assert_eq!(
        get(&other, "k").await.expect("get"),
        None,
        "buckets are apart"
    );
    assert_eq!(
        store
            .keys_after(b.clone(), None, 10)
            .await
            .expect("keys")
            .keys,
        ["a", "k"],
        "keys, sorted"
    );
    store.delete(b.clone(), "k".into()).await.expect("delete");
    store
        .delete(b.clone(), "k".into())
        .await
        .expect("deleting an absent key");
    assert_eq!(get(&b, "k").await.expect("get"), None, "deleted");
    assert_eq!(
        store
            .keys_after(b.clone(), None, 10)
            .await
            .expect("keys")
            .keys,
        ["a"]
    );
    keys_page_by_page(store.as_ref(), &format!("{bucket}-pages")).await;
    awkward_keys(store.as_ref(), &format!("{bucket}-keys")).await;

    assert_eq!(
        store
            .increment(b.clone(), "n".into(), 5)
            .await
            .expect("increment"),
        5
    );
    assert_eq!(
        store
            .increment(b.clone(), "n".into(), 2)
            .await
            .expect("increment"),
        7
    );
    assert_eq!(
        get(&b, "n").await.expect("get"),
        Some(Bytes::from("7")),
        "a decimal number"
    );
    let not_a_number = store.increment(b.clone(), "a".into(), 1).await;
    assert!(not_a_number.is_err(), "incrementing text: {not_a_number:?}");

    let cas = |key: &str, expected: Option<&str>, new: &str| {
        store.compare_and_swap(
            b.clone(),
            key.into(),
            expected.map(|e| Bytes::from(e.to_string())),
            Bytes::from(new.to_string()),
        )
    };
    assert!(
        cas("c", None, "1").await.expect("cas"),
        "absent, expected absent"
    );
    assert!(
        !cas("c", None, "2").await.expect("cas"),
        "present, expected absent"
    );
    assert!(!cas("c", Some("9"), "2").await.expect("cas"), "wrong value");
    assert!(cas("c", Some("1"), "2").await.expect("cas"), "right value");
    assert_eq!(get(&b, "c").await.expect("get"), Some(Bytes::from("2")));

    let writers = (0..16).map(|_| {
        let store = store.clone();
        let bucket = b.clone();
        tokio::spawn(async move { store.increment(bucket, "racy".into(), 1).await })
    });
    for writer in futures::future::join_all(writers).await {
        writer
            .expect("writer task")
            .expect("increment under contention");
    }
    assert_eq!(
        get(&b, "racy").await.expect("get"),
        Some(Bytes::from("16")),
        "no increment lost"
    );
    let swappers = (0..8).map(|i| {
        let store = store.clone();
        let bucket = b.clone();
        tokio::spawn(async move {
            store
                .compare_and_swap(bucket, "once".into(), None, Bytes::from(i.to_string()))
                .await
        })
    });
    let won = futures::future::join_all(swappers)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(true))))
        .count();
    assert_eq!(won, 1, "exactly one compare-and-swap from absent wins");
}

/// Keys with the characters that NATS subjects give meaning to (dots in a row, at either
/// end, wildcards, spaces, the escape character) are stored and listed as they are.
async fn awkward_keys(store: &dyn KvStore, bucket: &str) {
    let keys = [
        "a..b", ".x", "x.", "...", "a b", "*", ">", "$KV", "=2E", "é/ü",
    ];
    for key in keys {
        store
            .set(bucket.into(), key.into(), Bytes::from(key))
            .await
            .unwrap_or_else(|e| panic!("set `{key}`: {e}"));
    }
    for key in keys {
        let value = store.get(bucket.into(), key.into()).await;
        assert_eq!(value, Ok(Some(Bytes::from(key))), "get `{key}`");
    }
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort_unstable();
    let listed = store
        .keys_after(bucket.into(), None, 100)
        .await
        .expect("keys")
        .keys;
    assert_eq!(listed, expected, "listed as they were set");
}
