//! Deploys, undeploys and shutdown when things go wrong around them: a NATS server that
//! is gone, operations on one name racing each other, more deploys than the admin API
//! takes at once, and a deploy that would oversubscribe the host's instance slots.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use weft_runtime::Host;
use weft_runtime::admin::AdminLimits;

/// Waits (bounded) until the host's NATS connection is no longer up.
async fn wait_disconnected(host: &Host) {
    let bus = host.deployments().backends().bus.clone();
    for _ in 0..100 {
        if !bus.describe().contains("(connected)") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the host did not notice NATS going away: {}",
        bus.describe()
    );
}

/// Measured before: a host on NATS stopped right after nats-server went away waited
/// its whole grace period. Now nothing waits on a broker that is gone.
#[tokio::test]
async fn shutdown_with_the_broker_gone_does_not_wait_out_the_grace() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| {
        config.nats = Some(nats_config(nats.url()));
        config.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    deploy(&host, "worker", "responder", subscriber("jobs.>")).await;
    deploy(&host, "audit", "responder", subscriber("audit.*")).await;
    let _stopped = nats.stop();
    wait_disconnected(&host).await;
    let start = Instant::now();
    host.shutdown().await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with nothing in flight (grace 10 s)"
    );
}

/// An undeploy drains outside the lock that orders deploys: with NATS stopped (so the
/// drain cannot reach the server), another component deploys and serves meanwhile, and
/// the undeploy itself ends within its bound.
#[tokio::test]
async fn undeploy_with_the_broker_gone_blocks_no_other_deploy() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_on_nats(cache.path(), &nats).await;
    deploy(&host, "worker", "responder", subscriber("jobs.>")).await;
    let _stopped = nats.stop();
    wait_disconnected(&host).await;

    let live = host.deployments().clone();
    let undeploy = tokio::spawn(async move {
        let start = Instant::now();
        live.undeploy("worker").await.map(|_| start.elapsed())
    });
    let deployed = tokio::time::timeout(
        Duration::from_secs(10),
        host.deployments()
            .deploy("web", routes(&["/web/..."]), wasm("hello").into()),
    )
    .await
    .expect("a deploy of another component is not held up by the undeploy")
    .unwrap();
    assert!(deployed.changed);
    let body = reqwest::get(url(&host, "/web/x"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("Hello"), "{body}");
    let took = tokio::time::timeout(Duration::from_secs(10), undeploy)
        .await
        .expect("the undeploy ends within its bound")
        .unwrap()
        .unwrap();
    assert!(took < Duration::from_secs(6), "undeploy took {took:?}");
    assert!(!host.deployments().snapshot().by_name.contains_key("worker"));
    host.shutdown().await;
}

/// Deploys and undeploys of one name take effect in the order they arrived, whichever
/// compiles first: a slow deploy that arrived first never overwrites a quick one that
/// came after it, and a deploy that arrived before an undeploy never brings the
/// component back after it.
#[tokio::test]
async fn operations_on_one_name_take_effect_in_the_order_they_arrived() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let live = host.deployments().clone();
    let spec = routes(&["/svc/..."]);
    deploy(&host, "svc", "hello", spec.clone()).await;

    // `responder` takes longer to compile than `hello`, which is cached by now. The
    // first poll of each operation is where it takes its place in line.
    let mut slow = Box::pin(live.deploy("svc", spec.clone(), wasm("responder").into()));
    assert!(futures::poll!(&mut slow).is_pending());
    let quick = live.deploy("svc", spec.clone(), wasm("hello").into());
    let (slow, quick) = tokio::join!(slow, quick);
    let (slow, quick) = (slow.unwrap(), quick.unwrap());
    assert_eq!(
        live.snapshot().by_name["svc"].version,
        quick.info.version,
        "the deploy that arrived last is live (the first was {})",
        slow.info.version
    );

    let mut redeploy = Box::pin(live.deploy("svc", spec.clone(), wasm("faults").into()));
    assert!(futures::poll!(&mut redeploy).is_pending());
    let (redeployed, undeployed) = tokio::join!(redeploy, live.undeploy("svc"));
    redeployed.unwrap();
    undeployed.unwrap();
    assert!(
        !live.snapshot().by_name.contains_key("svc"),
        "the undeploy that arrived last wins"
    );
    assert_eq!(
        reqwest::get(url(&host, "/svc/x")).await.unwrap().status(),
        404
    );
    host.shutdown().await;
}

/// Each deploy's upload is held in memory whole: the admin API takes at most
/// `max_concurrent_deploys` at once (more: 503 with Retry-After, before their bodies are
/// read) and at most `max_upload_bytes` each (413).
#[tokio::test]
async fn the_admin_api_bounds_upload_size_and_deploys_at_once() {
    let cache = tempfile::tempdir().unwrap();
    let hello = wasm("hello");
    let host = start_host_with(cache.path(), |config| {
        config.admin_limits = AdminLimits {
            max_upload_bytes: hello.len() + 1024,
            max_concurrent_deploys: 1,
        };
    })
    .await;
    let client = reqwest::Client::new();
    let put = |name: &str, body: Vec<u8>| {
        client
            .put(admin_url(&host, &format!("/v1/components/{name}")))
            .body(body)
            .send()
    };
    let too_big = put("big", vec![0; hello.len() + 4096]).await.unwrap();
    assert_eq!(too_big.status(), 413);
    assert!(
        too_big
            .text()
            .await
            .unwrap()
            .contains("larger than this host accepts")
    );

    // A deploy whose upload stalls half-way holds the one slot.
    let mut stalled = tokio::net::TcpStream::connect(host.admin_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/components/slow HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
        host.admin_addr(),
        hello.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&hello[..1000]).await.unwrap();
    let mut busy = None;
    for _ in 0..50 {
        let answer = put("hello", hello.clone()).await.unwrap();
        if answer.status() == 503 {
            busy = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = busy.expect("a second deploy is refused while the first is under way");
    assert_eq!(busy.headers()["retry-after"], "1");
    assert!(
        busy.text()
            .await
            .unwrap()
            .contains("deploys are already under way")
    );

    // The slot frees up when that upload ends (here: the client goes away).
    drop(stalled);
    let mut deployed = None;
    for _ in 0..50 {
        let answer = put("hello", hello.clone()).await.unwrap();
        if answer.status() != 503 {
            deployed = Some(answer.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deployed, Some(reqwest::StatusCode::CREATED));
    host.shutdown().await;
}
