//! Unit tests of `components/responder`: messages in, replies, publishes and requests
//! out, with stubbed peers, key-value and the manifest's permissions.
#![allow(clippy::unwrap_used)]

use weft_test::Outcome;
use weft_test::{Event, KvOp, Stub, TestComponent};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../weft.toml");

async fn responder() -> TestComponent {
    TestComponent::build_and_load(MANIFEST, "responder")
        .await
        .unwrap()
}

#[tokio::test]
async fn echo_replies_on_the_reply_subject() {
    let r = responder().await;
    let (outcome, reply) = r.request("svc.echo", "ping").await;
    assert_eq!(outcome, Outcome::Handled);
    assert_eq!(reply.unwrap().body, "unit:ping");
    assert_eq!(
        r.events(),
        vec![Event::Replied {
            body: b"unit:ping".to_vec()
        }]
    );
}

#[tokio::test]
async fn handler_errors_and_traps_are_told_apart() {
    let r = responder().await;
    assert_eq!(
        r.message("svc.fail", "").await,
        Outcome::HandlerError("deliberate handler failure".into())
    );
    let (outcome, reply) = r.request("svc.trap", "").await;
    let Outcome::Failed(cause) = outcome else {
        panic!("expected a trap, got {outcome:?}")
    };
    assert!(
        cause.contains("deliberate trap in a message handler") && cause.contains("wasm trap"),
        "{cause}"
    );
    assert_eq!(
        reply.unwrap().service_error(),
        Some("component `responder` failed to handle the message")
    );
}

#[tokio::test]
async fn publishes_follow_the_manifest_permissions() {
    let r = responder().await;
    let (_, reply) = r.request("svc.publish", "events.created\nhello").await;
    assert_eq!(reply.unwrap().body, "ok");
    let (_, reply) = r.request("svc.publish", "billing.charge\n100").await;
    let denied = String::from_utf8(reply.unwrap().body.to_vec()).unwrap();
    assert!(
        denied.contains("permission denied") && denied.contains("billing.charge"),
        "{denied}"
    );
    let published: Vec<Event> = r
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Published { .. }))
        .collect();
    assert_eq!(
        published,
        vec![Event::Published {
            subject: "events.created".into(),
            body: b"hello".to_vec()
        }]
    );
}

#[tokio::test]
async fn requests_are_answered_by_stubs() {
    let r = responder().await;
    r.stub(
        "inventory.reserve",
        Stub::Respond(Box::new(|body| [b"reserved ", body].concat())),
    );
    r.stub("inventory.slow", Stub::Timeout);
    r.stub(
        "inventory.broken",
        Stub::ServiceError("out of stock".into()),
    );

    let answer = |(_, reply): (Outcome, Option<weft_test::Message>)| {
        String::from_utf8(reply.unwrap().body.to_vec()).unwrap()
    };
    assert_eq!(
        answer(r.request("svc.call", "inventory.reserve").await),
        "reserved from responder"
    );
    assert!(answer(r.request("svc.call", "inventory.slow").await).starts_with("timeout"));
    assert!(answer(r.request("svc.call", "inventory.gone").await).starts_with("no responders"));
    assert!(answer(r.request("svc.call", "inventory.broken").await).contains("out of stock"));
    assert!(r.events().contains(&Event::Requested {
        subject: "inventory.reserve".into(),
        body: b"from responder".to_vec()
    }));
}

#[tokio::test]
async fn key_value_is_seeded_recorded_and_limited_to_granted_buckets() {
    let r = responder().await;
    r.seed("notes", "a", "seeded").await;
    assert_eq!(r.get("/kv/notes/a").await.text(), "seeded");
    assert_eq!(r.send("POST", "/kv/notes/n/incr", "").await.text(), "1");
    assert_eq!(r.send("PUT", "/kv/notes/b", "written").await.status, 204);
    assert_eq!(r.kv_get("notes", "b").await.unwrap(), b"written");
    assert_eq!(
        r.get("/kv/secrets/x").await.status,
        403,
        "not in the manifest's buckets"
    );
    let ops: Vec<&str> = r.kv_ops().iter().map(|op| op.op).collect();
    assert_eq!(
        ops,
        ["get", "increment", "set"],
        "seeding is the test's doing, not the component's"
    );
    assert_eq!(
        r.kv_ops()[1],
        KvOp {
            op: "increment",
            bucket: "notes".into(),
            key: "n".into()
        }
    );
}

#[tokio::test]
async fn http_handlers_publish_through_the_same_rules() {
    let r = responder().await;
    assert_eq!(
        r.send("POST", "/publish/events.http", "via http")
            .await
            .status,
        202
    );
    assert_eq!(r.send("POST", "/publish/secret.x", "no").await.status, 403);
    assert_eq!(
        r.events(),
        vec![Event::Published {
            subject: "events.http".into(),
            body: b"via http".to_vec()
        }]
    );
}

/// The example from the README's "Testing a component" section, verbatim.
#[tokio::test]
async fn reserves_through_inventory() {
    let r = TestComponent::build_and_load(MANIFEST, "responder")
        .await
        .unwrap();
    r.stub("inventory.reserve", Stub::Reply(b"reserved".to_vec()));
    r.seed("notes", "a", "seeded").await;

    let (outcome, reply) = r.request("svc.call", "inventory.reserve").await;
    assert_eq!(outcome, Outcome::Handled);
    assert_eq!(reply.unwrap().body, "reserved");
    assert_eq!(
        r.events()[0],
        Event::Requested {
            subject: "inventory.reserve".into(),
            body: b"from responder".to_vec()
        }
    );

    let response = r.get("/kv/notes/a").await;
    assert_eq!(
        (response.status, response.text()),
        (200, "seeded".to_string())
    );
    assert_eq!(r.kv_ops()[0].op, "get");
}
