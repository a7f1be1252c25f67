//! Key-value end to end, as a conformance suite run against both backends (the embedded
//! redb store and JetStream KV on a real nats-server).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use reqwest::StatusCode;
use weft_runtime::Host;
use weft_runtime::spec::{ComponentSpec, RouteSpec};

struct Env {
    host: Host,
    nats: Option<NatsServer>,
    dir: tempfile::TempDir,
}

async fn start(dir: &Path, nats: Option<&NatsServer>) -> Host {
    match nats {
        Some(nats) => start_host_on_nats(dir, nats).await,
        None => start_host(dir).await,
    }
}

async fn env(nats: bool) -> Option<Env> {
    let dir = tempfile::tempdir().unwrap();
    let server = if nats {
        Some(NatsServer::start()?)
    } else {
        None
    };
    let host = start(dir.path(), server.as_ref()).await;
    Some(Env {
        host,
        nats: server,
        dir,
    })
}

/// The responder component on `/<name>/...`, allowed `buckets`.
async fn deploy_kv(host: &Host, name: &str, buckets: &[&str]) {
    let spec = ComponentSpec {
        routes: vec![RouteSpec {
            path: format!("/{name}/..."),
            methods: vec![],
            websocket: false,
        }],
        buckets: buckets.iter().map(|b| b.to_string()).collect(),
        ..ComponentSpec::default()
    };
    deploy(host, name, "responder", spec).await;
}

/// Calls the responder's `/kv/...` API (it is deployed on `/...`, so the path reaches it as is).
async fn kv(host: &Host, method: reqwest::Method, path: &str, body: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .request(method, url(host, &format!("/kv/{path}")))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

conformance!(
    set_get_list_delete,
    buckets_are_isolated_and_need_a_grant,
    increments_are_atomic_under_contention,
    compare_and_swap_is_atomic_under_contention,
    data_survives_a_host_restart,
    every_call_is_bounded_and_keys_are_read_page_by_page,
);

async fn every_call_is_bounded_and_keys_are_read_page_by_page(env: Env) {
    use reqwest::Method;
    deploy_kv(&env.host, "kv", &["notes", "pages"]).await;
    let host = &env.host;
    let limits = weft_runtime::spec::Limits::default();

    // A value over `kv_max_value_bytes` is an error, not a trap, and is not stored.
    let big = "v".repeat(limits.kv_max_value_bytes as usize + 1);
    let (status, error) = kv(host, Method::PUT, "notes/big", &big).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error.contains("limits.kv_max_value_bytes"), "{error}");
    assert_eq!(
        kv(host, Method::GET, "notes/big", "").await.0,
        StatusCode::NOT_FOUND
    );

    // get-many of one large value, repeated: the host stops at `kv_max_batch_bytes`
    // instead of loading every copy.
    let half = "h".repeat(512 * 1024);
    assert_eq!(
        kv(host, Method::PUT, "notes/half", &half).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, error) = kv(host, Method::POST, "notes/half/many", "1000").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error.contains("limits.kv_max_batch_bytes"), "{error}");
    assert_eq!(
        kv(host, Method::POST, "notes/half/many", "4").await,
        (
            StatusCode::OK,
            format!("4 values, {} bytes", 4 * half.len())
        )
    );
    let too_many = (limits.kv_max_batch_keys + 1).to_string();
    let (status, error) = kv(host, Method::POST, "notes/small/many", &too_many).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error.contains("limits.kv_max_batch_keys"), "{error}");

    // A key escaping would make longer than a NATS protocol line: refused before it
    // reaches the shared connection, which keeps serving every component.
    let long_key = "~".repeat(2000);
    let (status, error) = kv(host, Method::PUT, &format!("notes/{long_key}"), "x").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error.contains("a key is 1 to 512 bytes"), "{error}");
    assert_eq!(
        kv(host, Method::GET, "notes/half", "").await,
        (StatusCode::OK, half.clone())
    );

    // 2,500 keys come back over three pages, each read from the store on its own.
    assert_eq!(
        kv(host, Method::POST, "pages/k/fill", "2500").await.0,
        StatusCode::NO_CONTENT
    );
    let (status, listing) = kv(host, Method::GET, "pages", "").await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = listing.lines().collect();
    let expected: Vec<String> = (0..2500).map(|i| format!("k-{i:05}")).collect();
    assert_eq!(keys, expected);
    env.host.shutdown().await;
}

async fn set_get_list_delete(env: Env) {
    deploy_kv(&env.host, "kv", &["orders"]).await;
    use reqwest::Method;
    assert_eq!(
        kv(&env.host, Method::GET, "orders/a", "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        kv(&env.host, Method::PUT, "orders/a", "one").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        kv(&env.host, Method::PUT, "orders/b", "two").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        kv(&env.host, Method::GET, "orders/a", "").await,
        (StatusCode::OK, "one".into())
    );
    assert_eq!(
        kv(&env.host, Method::GET, "orders", "").await,
        (StatusCode::OK, "a\nb".into())
    );
    assert_eq!(
        kv(&env.host, Method::DELETE, "orders/a", "").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        kv(&env.host, Method::GET, "orders/a", "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        kv(&env.host, Method::GET, "orders", "").await,
        (StatusCode::OK, "b".into())
    );
    env.host.shutdown().await;
}

async fn buckets_are_isolated_and_need_a_grant(env: Env) {
    use reqwest::Method;
    deploy_kv(&env.host, "kv", &["mine"]).await;
    let (status, body) = kv(&env.host, Method::GET, "theirs/x", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("access denied to bucket `theirs`"), "{body}");

    // Same key, two buckets: separate values, straight from the backend.
    kv(&env.host, Method::PUT, "mine/k", "from mine").await;
    let store = env.host.deployments().backends().kv.clone();
    store
        .set("theirs".into(), "k".into(), Bytes::from("from theirs"))
        .await
        .unwrap();
    assert_eq!(
        kv(&env.host, Method::GET, "mine/k", "").await.1,
        "from mine"
    );
    assert_eq!(
        &store
            .get("theirs".into(), "k".into())
            .await
            .unwrap()
            .unwrap()[..],
        b"from theirs"
    );
    env.host.shutdown().await;
}

async fn increments_are_atomic_under_contention(env: Env) {
    deploy_kv(&env.host, "kv", &["counters"]).await;
    let env = Arc::new(env);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let env = env.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..25 {
                let (status, body) =
                    kv(&env.host, reqwest::Method::POST, "counters/hits/incr", "").await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        kv(&env.host, reqwest::Method::GET, "counters/hits", "")
            .await
            .1,
        "200"
    );
    // A value that is not a number cannot be incremented: an error, not a trap.
    kv(&env.host, reqwest::Method::PUT, "counters/name", "abc").await;
    let (status, body) = kv(&env.host, reqwest::Method::POST, "counters/name/incr", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("not a decimal number"), "{body}");
    Arc::into_inner(env).unwrap().host.shutdown().await;
}

async fn compare_and_swap_is_atomic_under_contention(env: Env) {
    let store = env.host.deployments().backends().kv.clone();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut wins = 0;
            while wins < 10 {
                let current = store.get("cas".into(), "n".into()).await.unwrap();
                let n: u64 = current
                    .as_deref()
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                let next = Bytes::from((n + 1).to_string());
                if store
                    .compare_and_swap("cas".into(), "n".into(), current, next)
                    .await
                    .unwrap()
                {
                    wins += 1;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        &store.get("cas".into(), "n".into()).await.unwrap().unwrap()[..],
        b"60"
    );
    // The last-item race: two claims on the same expected value, exactly one wins.
    store
        .set("cas".into(), "stock".into(), "1".into())
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        store.compare_and_swap("cas".into(), "stock".into(), Some("1".into()), "0".into()),
        store.compare_and_swap("cas".into(), "stock".into(), Some("1".into()), "0".into()),
    );
    assert!(a.unwrap() ^ b.unwrap(), "exactly one claim wins");
    env.host.shutdown().await;
}

async fn data_survives_a_host_restart(env: Env) {
    deploy_kv(&env.host, "kv", &["durable"]).await;
    kv(&env.host, reqwest::Method::PUT, "durable/k", "kept").await;
    env.host.shutdown().await;

    let host = start(env.dir.path(), env.nats.as_ref()).await;
    deploy_kv(&host, "kv", &["durable"]).await;
    assert_eq!(
        kv(&host, reqwest::Method::GET, "durable/k", "").await,
        (StatusCode::OK, "kept".into())
    );
    host.shutdown().await;
}
