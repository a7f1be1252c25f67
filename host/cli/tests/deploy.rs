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
use weft::admin_client::AdminClient;
use weft_runtime::HostConfig;
use weft_runtime::api::Compiled;

fn client_for(host: &weft_runtime::Host) -> AdminClient {
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
            "it is a command (it exports `wasi:cli/run@0.2",
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
    assert!(
        matches!(compiled, Compiled::Fresh { .. }),
        "first compile: {compiled:?}"
    );
    first.shutdown().await;

    let second = start_host(cache.path()).await;
    second
        .deployments()
        .deploy("hello", routes(&["/hello"]), wasm("hello").into())
        .await
        .unwrap();
    let compiled = &second.deployments().list()[0].compiled;
    assert!(
        matches!(compiled, Compiled::Cached { .. }),
        "after restart: {compiled:?}"
    );
    assert_eq!(
        reqwest::get(url(&second, "/hello")).await.unwrap().status(),
        StatusCode::OK
    );
    second.shutdown().await;
}

/// Every `.cwasm` file under `dir`.
fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(cache_files(&path));
        } else if path.extension().is_some_and(|e| e == "cwasm") {
            files.push(path);
        }
    }
    files
}

/// A cache file torn short or with its code overwritten is never loaded as native code:
/// the host notices, compiles afresh, serves, and writes a good file again.
#[tokio::test]
async fn a_corrupted_or_torn_cache_file_is_recompiled_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let deploy_hello = |host: &weft_runtime::Host| {
        let deployments = host.deployments().clone();
        async move {
            deployments
                .deploy("hello", routes(&["/hello"]), wasm("hello").into())
                .await
                .unwrap();
            deployments.list()[0].compiled
        }
    };
    let first = start_host(cache.path()).await;
    deploy_hello(&first).await;
    first.shutdown().await;
    let files = cache_files(cache.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];

    type Damage = fn(&mut Vec<u8>);
    let overwrite: Damage = |bytes| {
        // 4 KiB of `int3` in the middle of the code, as a bad disk might.
        let middle = bytes.len() / 2;
        bytes[middle..middle + 4096].fill(0xCC);
    };
    let truncate: Damage = |bytes| bytes.truncate(bytes.len() / 2);
    for (what, damage) in [("overwritten", overwrite), ("torn", truncate)] {
        let mut bytes = std::fs::read(file).unwrap();
        damage(&mut bytes);
        std::fs::write(file, &bytes).unwrap();
        let host = start_host(cache.path()).await;
        let compiled = deploy_hello(&host).await;
        assert!(
            matches!(compiled, Compiled::Fresh { .. }),
            "{what}: compiled afresh, not loaded: {compiled:?}"
        );
        assert_eq!(
            reqwest::get(url(&host, "/hello")).await.unwrap().status(),
            StatusCode::OK,
            "{what}: serves"
        );
        host.shutdown().await;
        // The good file written in its place is used again.
        let host = start_host(cache.path()).await;
        let compiled = deploy_hello(&host).await;
        assert!(
            matches!(compiled, Compiled::Cached { .. }),
            "{what}: the rewritten file loads: {compiled:?}"
        );
        host.shutdown().await;
    }
}

#[tokio::test]
async fn admin_api_off_loopback_requires_a_token() {
    let cache = tempfile::tempdir().unwrap();
    init_logs();
    // Its own data directory too: never the user's (a `weft up` may be running).
    let open = HostConfig {
        admin_listen: "0.0.0.0:0".parse().unwrap(),
        ..host_config(cache.path())
    };
    let err = weft_runtime::Host::start(open.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--admin-token"), "{err}");

    let host = weft_runtime::Host::start(HostConfig {
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

/// A host with the default compile strategy: Winch first, Cranelift in the background.
async fn tiered_host(cache: &std::path::Path) -> weft_runtime::Host {
    start_host_with(cache, |config| {
        config.baseline_compiler = true;
        config.shutdown_grace = HostConfig::default().shutdown_grace;
    })
    .await
}

fn tier(host: &weft_runtime::Host, name: &str) -> Option<weft_runtime::api::Tier> {
    host.deployments()
        .list()
        .into_iter()
        .find(|d| d.name == name)
        .and_then(|d| d.tier)
}

#[tokio::test]
async fn a_new_component_serves_on_winch_then_switches_to_cranelift_without_failing_a_request() {
    let cache = tempfile::tempdir().unwrap();
    let host = tiered_host(cache.path()).await;
    let admin = client_for(&host);
    let (info, _) = admin
        .deploy("faults", &routes(&["/f/..."]), wasm("faults"))
        .await
        .unwrap();
    assert_eq!(
        info.tier,
        Some(weft_runtime::api::Tier::Baseline),
        "{info:?}"
    );

    // Requests run throughout; the switch must not fail one of them.
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let load = {
        let (stop, client, target) = (stop.clone(), client.clone(), url(&host, "/f/count"));
        tokio::spawn(async move {
            let mut served = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(&target).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                served += 1;
            }
            served
        })
    };
    let start = std::time::Instant::now();
    while tier(&host, "faults") != Some(weft_runtime::api::Tier::Optimized) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still on Winch code after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);

    // Traps and deadlines behave the same on the optimized code.
    let trap = client.get(url(&host, "/f/trap")).send().await.unwrap();
    assert_eq!(trap.status(), StatusCode::INTERNAL_SERVER_ERROR);
    host.shutdown().await;

    // A restart finds the Cranelift code in the cache and starts on it directly.
    let again = tiered_host(cache.path()).await;
    let (info, _) = client_for(&again)
        .deploy("faults", &routes(&["/f/..."]), wasm("faults"))
        .await
        .unwrap();
    assert_eq!(
        info.tier,
        Some(weft_runtime::api::Tier::Optimized),
        "{info:?}"
    );
    assert!(matches!(info.compiled, Compiled::Cached { .. }), "{info:?}");
    again.shutdown().await;
}

#[tokio::test]
async fn a_trap_and_a_deadline_on_winch_code_are_reported_like_on_cranelift() {
    let cache = tempfile::tempdir().unwrap();
    let host = tiered_host(cache.path()).await;
    let spec = weft_runtime::spec::ComponentSpec {
        limits: weft_runtime::spec::Limits {
            timeout_ms: 300,
            ..Default::default()
        },
        ..routes(&["/f/..."])
    };
    let (info, _) = client_for(&host)
        .deploy("faults", &spec, wasm("faults"))
        .await
        .unwrap();
    assert_eq!(info.tier, Some(weft_runtime::api::Tier::Baseline));
    let trap = reqwest::get(url(&host, "/f/trap")).await.unwrap();
    assert_eq!(trap.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let endless = reqwest::get(url(&host, "/f/loop")).await.unwrap();
    assert_eq!(endless.status(), StatusCode::GATEWAY_TIMEOUT);
    host.shutdown().await;
}
