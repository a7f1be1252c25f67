//! `GET /metrics`: real components called over real HTTP and the bus, counted by
//! outcome, read back from the exposition itself and by a real Prometheus scraping the
//! host (Debian's `prometheus`).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use weft_runtime::Host;
use weft_runtime::spec::{ComponentSpec, Limits, SubscriptionSpec};

const TOKEN: &str = "metrics-test-token";

/// The value of the series of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

/// `GET path` on the admin API with the token; the body.
async fn scrape(url: &str) -> String {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// The first 19 characters of a deployment's version: its label in `/metrics`.
fn version_label(host: &Host, name: &str) -> String {
    let version = host.deployments().snapshot().by_name[name].version.clone();
    version[..19].to_string()
}

async fn start(dir: &std::path::Path) -> Host {
    start_host_with(dir, |config| {
        config.admin_token = Some(TOKEN.into());
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// The components of the test: hello (ok), faults (trap, deadline, too large) and the
/// responder (key-value, publish, request, messages).
async fn deploy_all(host: &Host) {
    deploy(host, "hello", "hello", routes(&["/hello/..."])).await;
    let faults = ComponentSpec {
        limits: Limits {
            timeout_ms: 300,
            max_body_bytes: 1024,
            ..Limits::default()
        },
        ..routes(&["/f/..."])
    };
    deploy(host, "faults", "faults", faults).await;
    let responder = ComponentSpec {
        buckets: vec!["b".into()],
        allowed_publish: vec!["svc.>".into()],
        subscriptions: vec![SubscriptionSpec::to("svc.echo")],
        ..routes(&["/kv/...", "/request/...", "/publish/..."])
    };
    deploy(host, "r", "responder", responder).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_counted_by_trigger_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    deploy_all(&host).await;
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: &'static str| {
        client.request(method, url(&host, path)).body(body).send()
    };
    for _ in 0..3 {
        assert_eq!(
            send(reqwest::Method::GET, "/hello/a", "")
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let trap = send(reqwest::Method::GET, "/f/trap", "").await.unwrap();
    assert_eq!(trap.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let stuck = send(reqwest::Method::GET, "/f/loop", "").await.unwrap();
    assert_eq!(stuck.status(), StatusCode::GATEWAY_TIMEOUT);
    let large = client
        .post(url(&host, "/f/echo"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let nowhere = send(reqwest::Method::GET, "/nowhere", "").await.unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let put = send(reqwest::Method::PUT, "/kv/b/k", "v").await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let refused = send(reqwest::Method::GET, "/kv/other/k", "").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let echoed = send(reqwest::Method::POST, "/request/svc.echo", "hi")
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200, "{}", echoed.text().await.unwrap());
    let nobody = send(reqwest::Method::POST, "/request/svc.nobody", "hi")
        .await
        .unwrap();
    assert_eq!(nobody.status(), StatusCode::BAD_GATEWAY);
    let denied = send(reqwest::Method::POST, "/publish/other.x", "hi")
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    let text = scrape(&admin_url(&host, "/metrics")).await;
    let (hello, faults, r) = (
        version_label(&host, "hello"),
        version_label(&host, "faults"),
        version_label(&host, "r"),
    );
    let calls = |component: &str, version: &str, trigger: &str, outcome: &str| {
        value(
            &text,
            "weft_calls_total",
            &[
                ("component", component),
                ("version", version),
                ("trigger", trigger),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("hello", &hello, "http", "ok"), Some(3.0), "{text}");
    assert_eq!(calls("hello", &hello, "http", "trap"), Some(0.0), "{text}");
    assert_eq!(
        calls("faults", &faults, "http", "trap"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        calls("faults", &faults, "http", "deadline"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        calls("faults", &faults, "http", "denied"),
        Some(1.0),
        "{text}"
    );
    // The responder answered the echo request from its message handler.
    assert_eq!(calls("r", &r, "messaging", "ok"), Some(1.0), "{text}");
    // No WebSocket route, no WebSocket series.
    assert_eq!(calls("hello", &hello, "websocket", "ok"), None, "{text}");

    let hello_http = [("component", "hello"), ("trigger", "http")];
    let count = value(&text, "weft_call_duration_seconds_count", &hello_http);
    assert_eq!(count, Some(3.0), "{text}");
    let inf = [("component", "hello"), ("trigger", "http"), ("le", "+Inf")];
    assert_eq!(
        value(&text, "weft_call_duration_seconds_bucket", &inf),
        Some(3.0)
    );
    assert!(value(&text, "weft_call_duration_seconds_sum", &hello_http).unwrap() > 0.0);

    let kv = |op: &str, outcome: &str| {
        let labels = [("component", "r"), ("operation", op), ("outcome", outcome)];
        value(&text, "weft_kv_operations_total", &labels)
    };
    assert_eq!(kv("set", "ok"), Some(1.0), "{text}");
    assert_eq!(kv("open", "denied"), Some(1.0), "{text}");
    let requests = |outcome: &str| {
        let labels = [("component", "r"), ("outcome", outcome)];
        value(&text, "weft_requests_total", &labels)
    };
    assert_eq!(requests("ok"), Some(1.0), "{text}");
    assert_eq!(requests("no_responders"), Some(1.0), "{text}");
    let publishes = [
        ("component", "r"),
        ("kind", "message"),
        ("outcome", "denied"),
    ];
    assert_eq!(value(&text, "weft_publishes_total", &publishes), Some(1.0));

    assert_eq!(value(&text, "weft_http_unrouted_total", &[]), Some(1.0));
    assert_eq!(value(&text, "weft_deployed_components", &[]), Some(3.0));
    let changed = [("outcome", "changed")];
    assert_eq!(value(&text, "weft_deploys_total", &changed), Some(3.0));
    let fresh = [("tier", "optimized"), ("source", "fresh")];
    let cached = [("tier", "optimized"), ("source", "cache")];
    let compiles = value(&text, "weft_compiles_total", &fresh).unwrap()
        + value(&text, "weft_compiles_total", &cached).unwrap();
    assert_eq!(compiles, 3.0, "{text}");
    let slots = value(&text, "weft_instance_slots", &[("engine", "classic")]);
    assert!(slots.is_some_and(|s| s > 0.0), "{text}");
    // Idle-instance and in-flight gauges per component.
    assert_eq!(
        value(&text, "weft_calls_in_flight", &[("component", "hello")]),
        Some(0.0)
    );
    assert!(value(&text, "weft_idle_instances", &[("component", "hello")]).is_some());
    // No label carries a path or a subject from a request.
    assert!(
        !text.contains("nowhere") && !text.contains("svc.nobody"),
        "{text}"
    );

    // The same on the listener of its own; both need the token.
    let own = format!("http://{}/metrics", host.metrics_addr().unwrap());
    let again = scrape(&own).await;
    assert!(
        again.contains("weft_calls_total{component=\"hello\""),
        "{again}"
    );
    for url in [own.clone(), admin_url(&host, "/metrics")] {
        let anonymous = client.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{url}");
    }

    // An undeployed component's series go with it.
    host.deployments().undeploy("hello").await.unwrap();
    let after = scrape(&own).await;
    assert!(!after.contains("component=\"hello\""), "{after}");
    assert_eq!(value(&after, "weft_deployed_components", &[]), Some(2.0));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_with_metrics_off_counts_nothing_and_serves_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Host::start(weft_runtime::HostConfig {
        metrics: false,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..host_config(dir.path())
    })
    .await
    .unwrap_err();
    assert!(
        format!("{refused:#}").contains("metrics are off (--no-metrics)"),
        "{refused:#}"
    );

    let host = start_host_with(dir.path(), |config| {
        config.admin_token = Some(TOKEN.into());
        config.metrics = false;
    })
    .await;
    deploy(&host, "hello", "hello", routes(&["/hello/..."])).await;
    deploy(&host, "faults", "faults", routes(&["/f/..."])).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let hello = client.get(url(&host, "/hello/a")).send().await.unwrap();
        assert_eq!(hello.status(), 200);
    }
    let trap = client.get(url(&host, "/f/trap")).send().await.unwrap();
    assert_eq!(trap.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let metrics = client
        .get(admin_url(&host, "/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::NOT_FOUND);
    let body = metrics.text().await.unwrap();
    assert!(body.contains("started with --no-metrics"), "{body}");
    let live = host.deployments().snapshot();
    let (http, ok) = (
        weft_runtime::metrics::Trigger::Http,
        weft_runtime::metrics::Outcome::Ok,
    );
    assert_eq!(live.by_name["hello"].calls.calls(http, ok), 0);
    // The console still lists the latest failures.
    let failures = client
        .get(admin_url(&host, "/v1/failures"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(failures.contains("deliberate trap"), "{failures}");
    host.shutdown().await;
}

/// A `prometheus` server of our own, scraping one target every second with the token.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weft\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = NatsServer::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of the first series `query` returns, once it returns one.
    async fn query(&self, query: &str, until: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let response = reqwest::Client::new()
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)])
                .send()
                .await;
            if let Ok(response) = response {
                last = response.text().await.unwrap_or_default();
                let parsed: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
                let found = parsed["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                if let Some(found) = found.filter(|v| until(*v)) {
                    return found;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("prometheus never answered `{query}` as expected; last answer: {last}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_host() {
    if !tool_available("prometheus", "apt-get install prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    deploy(&host, "hello", "hello", routes(&["/hello/..."])).await;
    for _ in 0..5 {
        let ok = reqwest::get(url(&host, "/hello/p")).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let prometheus = Prometheus::start(host.metrics_addr().unwrap());
    let up = prometheus.query("up{job=\"weft\"}", |v| v == 1.0).await;
    assert_eq!(up, 1.0);
    let ok = "weft_calls_total{component=\"hello\",trigger=\"http\",outcome=\"ok\"}";
    assert_eq!(prometheus.query(ok, |v| v == 5.0).await, 5.0);
    // A histogram Prometheus can take quantiles of.
    let p99 = "histogram_quantile(0.99, sum by (le) (weft_call_duration_seconds_bucket{component=\"hello\"}))";
    let latency = prometheus.query(p99, |v| v > 0.0).await;
    assert!(latency < 5.0, "{latency}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_connections_show_their_state_and_reconnects() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = start_host_with(dir.path(), |config| {
        config.admin_token = Some(TOKEN.into());
        config.nats = Some(nats_config(nats.url()));
    })
    .await;
    let metrics = admin_url(&host, "/metrics");
    let state = |text: &str, name: &str, role: &str| value(text, name, &[("role", role)]);
    let text = scrape(&metrics).await;
    for role in ["messaging", "key-value", "events"] {
        assert_eq!(
            state(&text, "weft_nats_connected", role),
            Some(1.0),
            "{text}"
        );
        assert_eq!(state(&text, "weft_nats_reconnects_total", role), Some(0.0));
    }
    // The server goes away: the connections say so, then count the reconnect.
    let stopped = nats.stop();
    connected_becomes(&metrics, 0.0).await;
    let _nats = NatsServer::restart(stopped);
    let text = connected_becomes(&metrics, 1.0).await;
    assert_eq!(
        state(&text, "weft_nats_reconnects_total", "messaging"),
        Some(1.0)
    );
    host.shutdown().await;
}

/// Scrapes `metrics` until the messaging connection's `weft_nats_connected` is `want`.
async fn connected_becomes(metrics: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(metrics).await;
        let labels = [("role", "messaging")];
        if value(&text, "weft_nats_connected", &labels) == Some(want) {
            return text;
        }
        assert!(Instant::now() < deadline, "never connected={want}: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
