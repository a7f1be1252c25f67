//! Today's components, unchanged: a `wasi:http@0.3.0` service written with Spin 4's Rust
//! SDK (spin-sdk 7, `components/spin-app`), deployed with `weft deploy` on a real host
//! and called over real HTTP: its variables, key-value (Spin's and `wasi:keyvalue`
//! draft2 with compare-and-swap, on the embedded store and on NATS), streaming bodies
//! both ways with trailers, the limits and failures every component has, and concurrent
//! reuse of one instance.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use reqwest::StatusCode;

use common::*;
use weft_runtime::spec::{ComponentSpec, Limits};

/// A manifest for the Spin component with `limits`, granted bucket `default` and the
/// variable `greeting`.
fn write_manifest(dir: &std::path::Path, limits: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let wasm_path = dir.join("spin_app.wasm");
    std::fs::write(&wasm_path, wasm("spin-app")).unwrap();
    let manifest = dir.join("weft.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"spin\"\n\
             [components.spin-app]\n\
             source = \"spin_app.wasm\"\n\
             routes = [{{ path = \"/spin/...\" }}]\n\
             buckets = [\"default\"]\n\
             config = {{ greeting = \"hello from the manifest\" }}\n\
             limits = {{ {limits} }}\n"
        ),
    )
    .unwrap();
    (manifest, wasm_path)
}

/// `weft ARGS --admin HOST`, as a user runs it; its stdout. It must succeed.
async fn weft(host: &weft_runtime::Host, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(["--admin", &admin_url(host, "")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "weft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `weft deploy spin-app` with the manifest; its stdout.
async fn weft_deploy(host: &weft_runtime::Host, manifest: &std::path::Path) -> String {
    weft(
        host,
        &[
            "deploy",
            "spin-app",
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    )
    .await
}

/// `weft deploy NAME --wasm WASM --route ROUTE` of `wasm` written to `dir`; its stdout.
async fn weft_deploy_wasm(
    host: &weft_runtime::Host,
    dir: &std::path::Path,
    name: &str,
    wasm: &[u8],
    route: &str,
) -> String {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    let path = path.to_str().unwrap();
    weft(host, &["deploy", name, "--wasm", path, "--route", route]).await
}

async fn get(host: &weft_runtime::Host, path: &str) -> (StatusCode, String) {
    let response = reqwest::get(url(host, path)).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn post(host: &weft_runtime::Host, path: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .post(url(host, path))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_spin_4_component_deploys_with_weft_deploy_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    let (manifest, _) = write_manifest(dir.path(), "timeout_ms = 2000, max_body_bytes = 65536");
    let deployed = weft_deploy(&host, &manifest).await;
    assert!(
        deployed.contains("handler  wasi:http/handler@0.3.0"),
        "the deploy says which handler it found: {deployed}"
    );
    let listed = weft(&host, &["list"]).await;
    assert!(
        listed.contains("handler=wasi:http/handler@0.3.0"),
        "{listed}"
    );

    assert_eq!(
        get(&host, "/spin/hello").await,
        (StatusCode::OK, "Hello from a Spin 4 component".into())
    );
    // spin:variables, from the manifest's config table; nothing else.
    assert_eq!(
        get(&host, "/spin/var/greeting").await,
        (StatusCode::OK, "hello from the manifest".into())
    );
    let (status, body) = get(&host, "/spin/var/HOME").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("Undefined"), "{body}");

    // spin:key-value on the granted store; its keys come back through a stream.
    for expected in 1..=3 {
        assert_eq!(
            post(&host, "/spin/count/visits").await,
            (StatusCode::OK, expected.to_string())
        );
    }
    post(&host, "/spin/count/other").await;
    assert_eq!(
        get(&host, "/spin/keys").await,
        (StatusCode::OK, "other\nvisits".into())
    );
    // wasi:keyvalue@0.2.0-draft2 on the same bucket.
    assert_eq!(
        post(&host, "/spin/incr/visits?by=10").await,
        (StatusCode::OK, "13".into())
    );
    assert_eq!(
        post(&host, "/spin/cas/visits").await,
        (StatusCode::OK, "14 0".into())
    );

    // A trap is a 500 and the component keeps serving; a loop meets the deadline.
    assert_eq!(
        get(&host, "/spin/trap").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let started = Instant::now();
    assert_eq!(
        get(&host, "/spin/loop").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get(&host, "/spin/hello").await.0, StatusCode::OK);
    // The body limit holds for 0.3 components too.
    let big = reqwest::Client::new()
        .post(url(&host, "/spin/echo"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let listed = host.deployments().list();
    assert_eq!(listed[0].errors, 2, "the trap and the deadline are counted");
    host.shutdown().await;
}

/// A raw HTTP/1.1 connection to the host, to see frames and trailers as they come.
async fn connect(
    host: &weft_runtime::Host,
) -> hyper::client::conn::http1::SendRequest<
    http_body_util::StreamBody<
        futures::channel::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, std::io::Error>>,
    >,
> {
    let stream = tokio::net::TcpStream::connect(host.http_addr())
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn a_0_3_component_streams_both_ways_with_trailers() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    let (manifest, _) = write_manifest(dir.path(), "timeout_ms = 10000");
    weft_deploy(&host, &manifest).await;

    // The response streams line by line, then ends with a trailer.
    let mut sender = connect(&host).await;
    let (_tx, rx) = futures::channel::mpsc::channel(1);
    let request = http::Request::get("/spin/stream?n=5&ms=100")
        .header("host", "weft.test")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    let started = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "line 0\n");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "the first line comes before the last is written: {:?}",
        started.elapsed()
    );
    let rest = body.collect().await.unwrap();
    let trailers = rest.trailers().cloned();
    assert_eq!(
        rest.to_bytes(),
        "line 1\nline 2\nline 3\nline 4\n",
        "the rest, in order"
    );
    assert_eq!(
        trailers.and_then(|t| t.get("x-lines").cloned()).unwrap(),
        "5"
    );

    // Full duplex: each chunk of the request comes back before the next is sent, and the
    // trailers after them.
    let mut sender = connect(&host).await;
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    let request = http::Request::post("/spin/echo")
        .header("host", "weft.test")
        .header("content-type", "text/plain")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    tx.send(Ok(hyper::body::Frame::data(Bytes::from("ping 1 "))))
        .await
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for round in 1..=3 {
        let echoed = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo comes back while the request is still open")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(echoed, format!("ping {round} "));
        if round < 3 {
            tx.send(Ok(hyper::body::Frame::data(Bytes::from(format!(
                "ping {} ",
                round + 1
            )))))
            .await
            .unwrap();
        }
    }
    // The request's trailers reach the guest, which sends them back as its own.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    tx.send(Ok(hyper::body::Frame::trailers(trailers)))
        .await
        .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(
        rest.trailers().and_then(|t| t.get("x-checksum")).unwrap(),
        "abc123"
    );
    assert!(rest.to_bytes().is_empty());
    host.shutdown().await;
}

#[tokio::test]
async fn concurrent_reuse_serves_overlapping_requests_in_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;

    // Default: a fresh instance per request, so each has served exactly one.
    let (manifest, _) = write_manifest(dir.path(), "timeout_ms = 5000");
    weft_deploy(&host, &manifest).await;
    for _ in 0..3 {
        assert_eq!(get(&host, "/spin/served").await.1, "1");
    }

    // Opted in: 8 at once in one instance, 1,000 in its life. A burst that finds no
    // instance free starts more (each instantiation takes a moment), so the sleepers
    // arrive a little apart, once an instance is up.
    let (manifest, _) = write_manifest(
        dir.path(),
        "timeout_ms = 5000, max_concurrent_per_instance = 8, requests_per_instance = 1000",
    );
    weft_deploy(&host, &manifest).await;
    assert_eq!(get(&host, "/spin/served").await.1, "1");
    let started = Instant::now();
    let mut sleepers = Vec::new();
    for _ in 0..8 {
        let url = url(&host, "/spin/sleep?ms=500");
        sleepers.push(tokio::spawn(async move {
            reqwest::get(url).await.unwrap().status()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sleeper in sleepers {
        assert_eq!(sleeper.await.unwrap(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "8 sleeps of 500 ms overlapped: {:?}",
        started.elapsed()
    );
    let served: u64 = get(&host, "/spin/served").await.1.parse().unwrap();
    assert!(
        served >= 6,
        "one instance served most of the sleepers, then this request: {served}"
    );

    // A trap ends that instance: the next request finds a fresh one.
    assert_eq!(
        get(&host, "/spin/trap").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(get(&host, "/spin/served").await.1, "1");
    host.shutdown().await;
}

/// Many guests at once add 1 by compare-and-swap: none is lost.
async fn cas_under_contention(host: &weft_runtime::Host) {
    let spec = ComponentSpec {
        buckets: vec!["default".into()],
        limits: Limits {
            timeout_ms: 20_000,
            ..Limits::default()
        },
        ..routes(&["/spin/..."])
    };
    deploy(host, "spin-app", "spin-app", spec).await;
    const GUESTS: usize = 40;
    let calls: Vec<_> = (0..GUESTS)
        .map(|_| {
            let url = url(host, "/spin/cas/contended");
            tokio::spawn(async move {
                let response = reqwest::Client::new().post(url).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let text = response.text().await.unwrap();
                let (_, retries) = text.split_once(' ').unwrap();
                retries.parse::<u64>().unwrap()
            })
        })
        .collect();
    let mut retries = 0;
    for call in calls {
        retries += call.await.unwrap();
    }
    let (_, last) = post(host, "/spin/cas/contended").await;
    let (value, _) = last.split_once(' ').unwrap();
    assert_eq!(
        value,
        (GUESTS + 1).to_string(),
        "every swap counted once ({retries} lost races retried)"
    );
}

#[tokio::test]
async fn compare_and_swap_is_atomic_under_contention_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    cas_under_contention(&host).await;
    host.shutdown().await;
}

#[tokio::test]
async fn compare_and_swap_is_atomic_under_contention_on_nats() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = start_host_with(dir.path(), |config| {
        config.nats = Some(nats_config(nats.url()));
    })
    .await;
    cas_under_contention(&host).await;
    host.shutdown().await;
}

/// A `wasi:http` 0.2 server written with `wstd` 0.6, as wasmCloud v2's Rust templates
/// write them (`components/wstd-app`), deployed with `weft deploy`.
#[tokio::test]
async fn a_wstd_component_deploys_with_weft_deploy_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    let stdout = weft_deploy_wasm(
        &host,
        dir.path(),
        "wstd-app",
        &wasm("wstd-app"),
        "/wstd/...",
    )
    .await;
    assert!(
        stdout.contains("handler  wasi:http/incoming-handler@0.2"),
        "{stdout}"
    );
    assert_eq!(
        get(&host, "/wstd/hello").await,
        (StatusCode::OK, "Hello from wstd at /wstd/hello".into())
    );
    let echoed = reqwest::Client::new()
        .post(url(&host, "/wstd/echo"))
        .body("round trip")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.text().await.unwrap(), "round trip");
    assert_eq!(
        get(&host, "/wstd/slow").await,
        (StatusCode::OK, "slow".into())
    );
    host.shutdown().await;
}

/// The Python `wasi:http` 0.3 service (`components/py-p3`), built once with
/// componentize-py, or `None` (loudly) on a developer machine without it. In CI
/// (`CI` set) a missing componentize-py fails the test.
fn py_p3_wasm() -> Option<Vec<u8>> {
    static BUILT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let path = BUILT.get_or_init(|| {
        let root = workspace_root();
        if !tool_available("componentize-py", "pip install componentize-py==0.25.1") {
            return None;
        }
        let out = root.join("target/components/py/py-p3.wasm");
        let status = std::process::Command::new("bash")
            .arg(root.join("components/py-p3/build.sh"))
            .arg(&out)
            .status()
            .expect("running components/py-p3/build.sh");
        assert!(status.success(), "building components/py-p3 failed");
        Some(out)
    });
    path.as_ref().map(|p| std::fs::read(p).unwrap())
}

/// A `wasi:http` 0.3 service in another language: Python, an `async def handle`,
/// built from source with componentize-py (PyPI) and deployed with `weft deploy`.
#[tokio::test]
async fn a_python_0_3_component_deploys_with_weft_deploy_and_answers() {
    let Some(wasm) = py_p3_wasm() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    let stdout = weft_deploy_wasm(&host, dir.path(), "py-p3", &wasm, "/py3/...").await;
    assert!(
        stdout.contains("handler  wasi:http/handler@0.3.0"),
        "{stdout}"
    );
    assert_eq!(
        get(&host, "/py3/hello").await,
        (
            StatusCode::OK,
            "Hello from Python on wasi:http 0.3! You asked for /py3/hello\n".into()
        )
    );
    let echoed = reqwest::Client::new()
        .post(url(&host, "/py3/echo"))
        .body(vec![b'p'; 40_000])
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(echoed.bytes().await.unwrap().len(), 40_000);
    host.shutdown().await;
}
