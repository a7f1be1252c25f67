//! The HTTP trigger end to end: real components, a real host, real HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use weft_runtime::spec::{ComponentSpec, Limits, RouteSpec};

#[tokio::test]
async fn hello_greets_with_the_path_and_unknown_paths_get_json_404() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "hello", "hello", routes(&["/hello/..."])).await;

    let response = reqwest::get(url(&host, "/hello/world?x=1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        "Hello from weft! You asked for /hello/world?x=1\n"
    );

    let response = reqwest::get(url(&host, "/nothing/here")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "no route for GET /nothing/here");
    host.shutdown().await;
}

#[tokio::test]
async fn most_specific_route_wins_and_methods_are_enforced() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "hello", "hello", routes(&["/api/..."])).await;
    let mut exact = routes(&["/api/count"]);
    exact.routes.push(RouteSpec {
        path: "/api/items/:id/print".into(),
        methods: vec!["POST".into()],
        websocket: false,
    });
    deploy(&host, "faults", "faults", exact).await;
    let client = reqwest::Client::new();

    let text = |path: &'static str| {
        let client = client.clone();
        let url = url(&host, path);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        text("/api/count").await,
        "1",
        "exact route beats the wildcard"
    );
    assert!(
        text("/api/other").await.starts_with("Hello"),
        "wildcard serves the rest"
    );
    assert!(
        text("/api").await.starts_with("Hello"),
        "wildcard serves its own prefix"
    );

    let post = client
        .post(url(&host, "/api/items/7/print"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.text().await.unwrap(),
        "printed",
        "parameter route with its method"
    );
    // GET on the POST-only route falls back to the wildcard, which takes any method.
    assert!(text("/api/items/7/print").await.starts_with("Hello"));

    host.deployments().undeploy("hello").await.unwrap();
    let get = client
        .get(url(&host, "/api/items/7/print"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");
    host.shutdown().await;
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance_instantiated_ahead_of_it() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "faults", "faults", routes(&["/f/..."])).await;
    let faults = host.deployments().snapshot().by_name["faults"].clone();
    for _ in 0..5 {
        let body = reqwest::get(url(&host, "/f/count"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "1", "a global counter never sees an earlier request");
        // The next request's instance is instantiated in the background (a spare,
        // never called), so the request does not wait for it.
        eventually("a spare instance", || http_idle(&faults) == 1).await;
    }
    // Back-to-back requests may find one spare still being made: then another is
    // started, and never more than two wait.
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let body = client.get(url(&host, "/f/count")).send().await.unwrap();
        assert_eq!(body.text().await.unwrap(), "1");
    }
    eventually("spares ready", || http_idle(&faults) >= 1).await;
    assert!(http_idle(&faults) <= weft_runtime::instance::SPARES);
    // A trap spends the spare it ran on; the next request still gets a pristine one.
    assert_eq!(
        text(url(&host, "/f/trap")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(text(url(&host, "/f/count")).await.1, "1");
    host.shutdown().await;
}

/// Polls `done` for up to 5 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "waited 5 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn idle_instances_never_take_the_pooling_slots_requests_need() {
    // 8 slots per engine: spares and kept instances may hold 2 of them together.
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| config.max_instances = 8).await;
    let reuse = Limits {
        requests_per_instance: 100,
        ..Limits::default()
    };
    for (name, path, limits) in [
        ("a", "/a/...", Limits::default()),
        ("b", "/b/...", Limits::default()),
        ("c", "/c/...", reuse),
        ("d", "/d/...", reuse),
    ] {
        deploy(&host, name, "faults", limited(path, limits)).await;
    }
    let budget = host.deployments().snapshot().by_name["a"]
        .idle_budget()
        .clone();
    let client = reqwest::Client::new();
    for _ in 0..5 {
        for path in ["/a/count", "/b/count", "/c/count", "/d/count"] {
            let response = client.get(url(&host, path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
        assert!(budget.held() <= 2, "idle instances: {}", budget.held());
    }
    // With 2 slots idle at most, 6 requests at once still find a slot each.
    let slow = (0..6).map(|i| {
        let path = ["/a", "/b", "/c"][i % 3];
        client
            .get(url(&host, &format!("{path}/slow?chunks=2&delay_ms=100")))
            .send()
    });
    for response in futures::future::join_all(slow).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert!(budget.held() <= 2, "idle instances: {}", budget.held());
    host.shutdown().await;
}

#[tokio::test]
async fn a_trap_is_a_500_and_the_host_keeps_serving() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "faults", "faults", routes(&["/f/..."])).await;
    deploy(&host, "hello", "hello", routes(&["/hello"])).await;

    let response = reqwest::get(url(&host, "/f/trap")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "component `faults` failed to handle the request"
    );

    assert_eq!(
        reqwest::get(url(&host, "/f/count")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(url(&host, "/hello")).await.unwrap().status(),
        StatusCode::OK
    );
    let faults = host
        .deployments()
        .list()
        .into_iter()
        .find(|d| d.name == "faults")
        .unwrap();
    assert_eq!((faults.requests, faults.errors), (2, 1));
    host.shutdown().await;
}

fn limited(path: &str, limits: Limits) -> ComponentSpec {
    ComponentSpec {
        limits,
        ..routes(&[path])
    }
}

#[tokio::test]
async fn an_endless_loop_hits_the_deadline_with_504() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        timeout_ms: 300,
        ..Limits::default()
    };
    deploy(&host, "faults", "faults", limited("/f/...", limits)).await;

    let start = Instant::now();
    let (looping, counted) = tokio::join!(
        reqwest::get(url(&host, "/f/loop")),
        reqwest::get(url(&host, "/f/count"))
    );
    assert_eq!(looping.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        counted.unwrap().status(),
        StatusCode::OK,
        "a looping guest does not block others"
    );

    // A guest that streams past its deadline is cut off mid-body.
    let slow = reqwest::get(url(&host, "/f/slow?chunks=20&delay_ms=50"))
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(
        slow.text().await.is_err(),
        "the body must not end cleanly after the deadline"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_cap() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        memory_mb: 16,
        ..Limits::default()
    };
    deploy(&host, "faults", "faults", limited("/f/...", limits)).await;

    let response = reqwest::get(url(&host, "/f/hog")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reqwest::get(url(&host, "/f/count")).await.unwrap().status(),
        StatusCode::OK
    );
    host.shutdown().await;
}

#[tokio::test]
async fn excess_concurrency_gets_503_with_retry_after() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        max_concurrency: 1,
        ..Limits::default()
    };
    deploy(&host, "faults", "faults", limited("/f/...", limits)).await;

    let slow = tokio::spawn(reqwest::get(url(&host, "/f/slow?chunks=10&delay_ms=50")));
    // Wait until the slow request holds the only slot.
    let mut rejected = None;
    for _ in 0..100 {
        let response = reqwest::get(url(&host, "/f/count")).await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            rejected = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rejected = rejected.expect("a second request while the slot is taken must be refused");
    assert_eq!(rejected.headers()["retry-after"], "1");
    let body = slow.await.unwrap().unwrap().text().await.unwrap();
    assert_eq!(body.lines().count(), 10, "the admitted request completes");
    assert_eq!(
        reqwest::get(url(&host, "/f/count")).await.unwrap().status(),
        StatusCode::OK
    );
    host.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_large_ones_echo_intact() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(
        &host,
        "faults",
        "faults",
        limited(
            "/small/...",
            Limits {
                max_body_bytes: 1024,
                ..Limits::default()
            },
        ),
    )
    .await;
    deploy(&host, "big", "faults", routes(&["/big/..."])).await;
    let client = reqwest::Client::new();

    let ok = client
        .post(url(&host, "/small/echo"))
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.bytes().await.unwrap().len(), 1000);
    let declared = client
        .post(url(&host, "/small/echo"))
        .body(vec![7u8; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Without Content-Length the limit is enforced while the guest reads.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![1u8; 600])).collect();
    let streamed = client
        .post(url(&host, "/small/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let large: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let echoed = client
        .post(url(&host, "/big/echo"))
        .body(large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert!(
        echoed.bytes().await.unwrap() == large,
        "5 MiB echo must come back byte for byte"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn least_privilege_and_outbound_http_allow_list() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let service = http_target().await;
    let target = format!("http://{service}/");
    let mut denied = routes(&["/denied/..."]);
    denied.config.insert("GREETING".into(), "hi".into());
    deploy(&host, "denied", "faults", denied).await;
    let allowed = ComponentSpec {
        allowed_outbound_hosts: vec![format!("http://{service}")],
        ..routes(&["/allowed/..."])
    };
    deploy(&host, "allowed", "faults", allowed).await;

    let env = reqwest::get(url(&host, "/denied/env"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        env.starts_with("vars: [\"GREETING=hi\"]\n"),
        "only config reaches the environment: {env}"
    );
    assert!(
        env.contains("root: Err"),
        "no filesystem unless granted: {env}"
    );

    let fetch = |prefix: &str| url(&host, &format!("/{prefix}/fetch?url={target}"));
    let denied = reqwest::get(fetch("denied"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(denied, "error: ErrorCode::HttpRequestDenied");
    let allowed = reqwest::get(fetch("allowed"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(allowed, "status: 200");
    host.shutdown().await;
}

async fn text(url: String) -> (StatusCode, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_host_drops_instances_idle_for_longer_than_the_ttl() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| {
        config.idle_instance_ttl = Duration::from_millis(300);
    })
    .await;
    let reuse = Limits {
        requests_per_instance: 100,
        ..Limits::default()
    };
    deploy(&host, "fresh", "faults", routes(&["/f/..."])).await;
    deploy(&host, "kept", "faults", limited("/k/...", reuse)).await;
    let live = host.deployments().snapshot();
    let (fresh, kept) = (&live.by_name["fresh"], &live.by_name["kept"]);
    assert_eq!(text(url(&host, "/f/count")).await.1, "1");
    assert_eq!(text(url(&host, "/k/count")).await.1, "1");
    eventually("a spare and a kept instance", || {
        http_idle(fresh) == 1 && http_idle(kept) == 1
    })
    .await;
    // Nothing asks for them: the host's own sweep drops both, and gives their budget back.
    eventually("the sweep", || {
        http_idle(fresh) == 0 && http_idle(kept) == 0
    })
    .await;
    assert_eq!(fresh.idle_budget().held(), 0);
    assert_eq!(text(url(&host, "/k/count")).await.1, "1", "a new instance");
    host.shutdown().await;
}

#[tokio::test]
async fn reuse_serves_a_bounded_number_of_requests_per_instance_and_never_after_a_failure() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        requests_per_instance: 3,
        timeout_ms: 500,
        max_concurrency: 1,
        ..Limits::default()
    };
    deploy(&host, "faults", "faults", limited("/f/...", limits)).await;
    let count = || text(url(&host, "/f/count"));

    // One instance serves three requests in turn (its counter survives), then a fresh one.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(count().await.1);
    }
    assert_eq!(seen, ["1", "2", "3", "1", "2"]);

    // A trap ends the instance: the next request starts from a fresh one.
    assert_eq!(
        text(url(&host, "/f/trap")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(count().await.1, "1");
    // So does a missed deadline, and the reused instance gets a fresh deadline each time.
    assert_eq!(count().await.1, "2");
    assert_eq!(
        text(url(&host, "/f/loop")).await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(count().await.1, "1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        count().await.1,
        "2",
        "a reused instance is not judged by an old deadline"
    );
    assert_eq!(
        text(url(&host, "/f/slow?chunks=2&delay_ms=100")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reused_instances_are_never_shared_by_concurrent_requests() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        requests_per_instance: 1000,
        ..Limits::default()
    };
    deploy(&host, "faults", "faults", limited("/f/...", limits)).await;
    // Slow requests in parallel each need an instance of their own; afterwards the
    // instances are kept for the requests that follow.
    let client = reqwest::Client::new();
    let slow = (0..4).map(|_| {
        client
            .get(url(&host, "/f/slow?chunks=3&delay_ms=50"))
            .send()
    });
    for response in futures::future::join_all(slow).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap();
    }
    let deployment = host.deployments().snapshot().by_name["faults"].clone();
    // An instance goes back to the pool just after its last body chunk left.
    for _ in 0..100 {
        if http_idle(&deployment) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        (1..=4).contains(&http_idle(&deployment)),
        "instances kept after the burst: {}",
        http_idle(&deployment)
    );
    // Requests one after another take the same kept instance: its counter climbs.
    let first = count_once(&client, &host).await;
    for step in 1..=5 {
        assert_eq!(count_once(&client, &host).await, first + step);
    }
    // Instances idle for too long are dropped (the host does this once a minute):
    // the next request starts from a fresh one.
    assert_eq!(
        host.deployments()
            .expire_idle_instances(Duration::from_secs(60)),
        0
    );
    let kept = http_idle(&deployment);
    assert_eq!(
        host.deployments().expire_idle_instances(Duration::ZERO),
        kept
    );
    assert_eq!(http_idle(&deployment), 0);
    assert_eq!(count_once(&client, &host).await, 1);
}

async fn count_once(client: &reqwest::Client, host: &weft_runtime::Host) -> u64 {
    client
        .get(url(host, "/f/count"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_body_finished_at_once_gets_a_content_length_and_a_slow_one_streams() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "hello", "hello", routes(&["/hello"])).await;
    deploy(&host, "faults", "faults", routes(&["/f/..."])).await;

    let quick = reqwest::get(url(&host, "/hello")).await.unwrap();
    let length = quick.headers()[reqwest::header::CONTENT_LENGTH].clone();
    let body = quick.text().await.unwrap();
    assert_eq!(length.to_str().unwrap(), body.len().to_string());

    let slow = reqwest::get(url(&host, "/f/slow?chunks=3&delay_ms=50"))
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(
        slow.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .is_none()
    );
    assert_eq!(
        slow.headers()[reqwest::header::TRANSFER_ENCODING],
        "chunked",
        "a body still being written streams"
    );
    assert!(!slow.text().await.unwrap().is_empty());
}

/// `wasi:config/store` (the version Spin 4's SDK imports) serves a component its own
/// manifest `config` table, and nothing of another component's or the host's.
#[tokio::test]
async fn components_read_their_own_configuration_through_wasi_config() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let mut mine = routes(&["/config", "/config/..."]);
    mine.config.insert("GREETING".into(), "hello".into());
    mine.config.insert("LEVEL".into(), "3".into());
    let mut theirs = routes(&["/request/..."]);
    theirs.config.insert("SECRET".into(), "theirs-only".into());
    deploy(&host, "mine", "responder", mine).await;
    deploy(&host, "theirs", "responder", theirs).await;

    let get = |path: &str| {
        let url = url(&host, path);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("/config/GREETING").await, (200, "hello".to_string()));
    assert_eq!(
        get("/config/SECRET").await.0,
        404,
        "another component's key"
    );
    assert_eq!(get("/config/PATH").await.0, 404, "the host's environment");
    assert_eq!(
        get("/config").await,
        (200, "GREETING=hello\nLEVEL=3".to_string())
    );
    host.shutdown().await;
}
