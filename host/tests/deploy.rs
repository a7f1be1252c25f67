//! Independent deployment through the admin API: redeploys under load, bad uploads,
//! undeploy, the compile cache across restarts and admin authentication.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use weft::HostConfig;
use weft::admin_client::AdminClient;

fn client_for(host: &weft::Host) -> AdminClient {
    AdminClient::new(&admin_url(host, ""), None)
}

#[tokio::test]
async fn redeploying_under_load_fails_no_request() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let admin = client_for(&host);
    let spec = routes(&["/svc/..."]);
    admin.deploy("svc", &spec, wasm("hello")).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            url(&host, "/svc/count"),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            // Bounded: the load stops when told, or after 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let success = match client.get(&url).send().await {
                    Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if success { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Alternate between two different components on the same route.
    let mut versions = std::collections::HashSet::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let component = if round % 2 == 0 { "faults" } else { "hello" };
        let (info, changed) = admin.deploy("svc", &spec, wasm(component)).await.unwrap();
        assert!(changed);
        versions.insert(info.version);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(versions.len(), 2);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "the load must be real: {ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during redeploys",
        ok + failed
    );
    host.shutdown().await;
}

#[tokio::test]
async fn bad_uploads_are_rejected_with_the_reason_while_the_old_version_serves() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let admin = client_for(&host);
    let spec = routes(&["/hello/..."]);
    let (live, _) = admin.deploy("hello", &spec, wasm("hello")).await.unwrap();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"<html>not wasm</html>".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module, not a component",
        ),
        (
            wasm("cli-app"),
            "does not export `wasi:http/incoming-handler`",
        ),
        (wasm("bad-import"), "weft-test:bad-import/missing"),
        (wasm("hello")[..1000].to_vec(), "does not compile"),
    ];
    for (bytes, reason) in cases {
        let err = admin
            .deploy("hello", &spec, bytes)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("422") && err.contains(reason),
            "expected `{reason}` in: {err}"
        );
        let response = reqwest::get(url(&host, "/hello/still")).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the running version keeps serving"
        );
    }
    let listed = admin.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version, live.version);
    host.shutdown().await;
}

#[tokio::test]
async fn conflicting_routes_are_refused_naming_both_components() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let admin = client_for(&host);
    admin
        .deploy("first", &routes(&["/items/:id"]), wasm("hello"))
        .await
        .unwrap();
    let err = admin
        .deploy("second", &routes(&["/items/:name"]), wasm("faults"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("409"), "{err}");
    assert!(err.contains("`second`") && err.contains("`first`"), "{err}");
    // The same component may move its own routes.
    admin
        .deploy("first", &routes(&["/items/:name"]), wasm("hello"))
        .await
        .unwrap();
    host.shutdown().await;
}

#[tokio::test]
async fn deploys_are_idempotent_and_undeploy_means_404() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let admin = client_for(&host);
    let spec = routes(&["/hello"]);
    let (first, changed) = admin.deploy("hello", &spec, wasm("hello")).await.unwrap();
    assert!(changed);
    let (again, changed) = admin.deploy("hello", &spec, wasm("hello")).await.unwrap();
    assert!(!changed, "same digest and spec: nothing to do");
    assert_eq!(first.version, again.version);
    assert!(first.version.starts_with("sha256:"));

    assert_eq!(
        reqwest::get(url(&host, "/hello")).await.unwrap().status(),
        StatusCode::OK
    );
    admin.undeploy("hello").await.unwrap();
    assert_eq!(
        reqwest::get(url(&host, "/hello")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let err = admin.undeploy("hello").await.unwrap_err().to_string();
    assert!(
        err.contains("404") && err.contains("no component named `hello`"),
        "{err}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_restarted_host_loads_compiled_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = start_host(cache.path()).await;
    first
        .deployments()
        .deploy("hello", routes(&["/hello"]), wasm("hello").into())
        .await
        .unwrap();
    let compiled = &first.deployments().list()[0].compiled;
    assert!(compiled.get("fresh").is_some(), "first compile: {compiled}");
    first.shutdown().await;

    let second = start_host(cache.path()).await;
    second
        .deployments()
        .deploy("hello", routes(&["/hello"]), wasm("hello").into())
        .await
        .unwrap();
    let compiled = &second.deployments().list()[0].compiled;
    assert!(
        compiled.get("cached").is_some(),
        "after restart: {compiled}"
    );
    assert_eq!(
        reqwest::get(url(&second, "/hello")).await.unwrap().status(),
        StatusCode::OK
    );
    second.shutdown().await;
}

#[tokio::test]
async fn admin_api_off_loopback_requires_a_token() {
    let cache = tempfile::tempdir().unwrap();
    init_logs();
    let open = HostConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "0.0.0.0:0".parse().unwrap(),
        cache_dir: Some(cache.path().to_path_buf()),
        ..HostConfig::default()
    };
    let err = weft::Host::start(open.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--admin-token"), "{err}");

    let host = weft::Host::start(HostConfig {
        admin_token: Some("s3cret".into()),
        ..open
    })
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", host.admin_addr().port());
    let anonymous = reqwest::get(format!("{base}/v1/components")).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    let wrong = AdminClient::new(&base, Some("guess".into()))
        .list()
        .await
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("401"), "{wrong}");
    assert!(
        AdminClient::new(&base, Some("s3cret".into()))
            .list()
            .await
            .unwrap()
            .is_empty()
    );
    host.shutdown().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_version_across_redeploy_and_shutdown() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let admin = client_for(&host);
    let spec = routes(&["/svc/..."]);
    admin.deploy("svc", &spec, wasm("faults")).await.unwrap();

    // Started on `faults`, which streams for about half a second.
    let slow = tokio::spawn(reqwest::get(url(&host, "/svc/slow?chunks=10&delay_ms=50")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin.deploy("svc", &spec, wasm("hello")).await.unwrap();
    let now = reqwest::get(url(&host, "/svc/slow"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        now.starts_with("Hello"),
        "new requests reach the new version: {now}"
    );
    let body = slow.await.unwrap().unwrap().text().await.unwrap();
    assert_eq!(
        body.lines().count(),
        10,
        "the old version finished its response: {body}"
    );

    // Shutdown stops accepting but lets the request in flight complete.
    admin.deploy("svc", &spec, wasm("faults")).await.unwrap();
    let slow = tokio::spawn(reqwest::get(url(&host, "/svc/slow?chunks=10&delay_ms=50")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let http_addr = host.http_addr();
    host.shutdown().await;
    let body = slow.await.unwrap().unwrap().text().await.unwrap();
    assert_eq!(
        body.lines().count(),
        10,
        "in-flight request completes during shutdown"
    );
    assert!(
        reqwest::get(format!("http://{http_addr}/svc/count"))
            .await
            .is_err(),
        "no longer accepting"
    );
}
