//! Traces: the shop on two hosts on one real nats-server, both exporting to an OTLP/HTTP
//! receiver in this test (opentelemetry-proto's types, decoded from the protobuf the
//! hosts send). One `POST /orders` must be one trace: the request's span on the first
//! host, its request to inventory, inventory handling it on the second host, the publish
//! of the order, and notifications handling that, each the child of the one before, with
//! the key-value calls of orders and inventory under their calls.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use weft_runtime::HostConfig;
use weft_runtime::trace::TraceConfig;

/// A received span, with what the assertions read.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on a free loopback port: every span exported to
/// `/v1/traces`, kept in order of arrival.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let kept = kept.clone();
                        async move { receive(request, &kept).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(
    request: hyper::Request<hyper::body::Incoming>,
    kept: &Mutex<Vec<Span>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    assert_eq!(request.uri().path(), "/v1/traces");
    assert_eq!(
        request.headers()["content-type"],
        "application/x-protobuf",
        "OTLP/HTTP with protobuf"
    );
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let export = ExportTraceServiceRequest::decode(body).unwrap();
    let mut spans = kept.lock().unwrap();
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|a| {
                            Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))
                        })
                        .collect(),
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(hyper::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(http_body_util::Full::new(answer.into()))
        .unwrap())
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The shop's manifest with only `components`, their sources made absolute, in `dir`.
fn shop_manifest(dir: &Path, components: &[&str]) -> PathBuf {
    let shop = workspace_root().join("examples/shop");
    let text = std::fs::read_to_string(shop.join("weft.toml")).unwrap();
    let mut manifest: toml::Table = text.parse().unwrap();
    let all = manifest["components"].as_table_mut().unwrap();
    all.retain(|name, _| components.contains(&name));
    for (_, entry) in all.iter_mut() {
        let entry = entry.as_table_mut().unwrap();
        let source = shop.join(entry["source"].as_str().unwrap());
        entry.insert("source".into(), source.display().to_string().into());
        entry.remove("build");
    }
    let path = dir.join(format!("{}.toml", components.join("-")));
    std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
    path
}

/// Builds the shop's components that are stale (the JavaScript one with npm).
fn build_shop() {
    let manifest = workspace_root().join("examples/shop/weft.toml");
    for entry in weft_runtime::spec::manifest::Manifest::load(&manifest)
        .unwrap()
        .components
    {
        weft::builder::build_if_stale(&entry).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_two_hosts_and_nats() {
    init_logs();
    if !npm_available() {
        return;
    }
    let Some(nats) = NatsServer::start() else {
        return;
    };
    tokio::task::spawn_blocking(build_shop).await.unwrap();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let host = |name: &str| HostConfig {
        // Shared with the shop tests: the JavaScript component takes seconds to compile.
        cache_dir: Some(workspace_root().join("target/test-cache/shop")),
        data_dir: dir.path().join(name),
        nats: Some(nats_config(nats.url())),
        tracing: Some(TraceConfig {
            endpoint: receiver.endpoint(),
            sample: 1.0,
            service: format!("weft-{name}"),
        }),
        ..host_config(dir.path())
    };
    let one = weft::up::start(
        Some(&shop_manifest(dir.path(), &["orders", "notifications"])),
        host("one"),
        false,
    )
    .await
    .unwrap();
    let two = weft::up::start(
        Some(&shop_manifest(dir.path(), &["inventory"])),
        host("two"),
        false,
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let stocked = client
        .put(url(&two, "/inventory/widget"))
        .json(&serde_json::json!({ "stock": 5 }))
        .send()
        .await
        .unwrap();
    assert!(stocked.status().is_success(), "{}", stocked.status());
    // A caller's trace context: weft's spans continue that trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let placed = client
        .post(url(&one, "/orders"))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&serde_json::json!({ "customer": "ann", "items": [{ "sku": "widget", "qty": 2 }] }))
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success(), "{}", placed.status());

    // Spans are exported in batches: wait for the whole chain, at most 30 s.
    let wanted = [
        "POST /orders",
        "request shop.inventory.reserve",
        "process shop.inventory.reserve",
        "publish shop.orders.created",
        "process shop.orders.created",
    ];
    let trace_id = hex::decode(caller_trace).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Span> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w))
            || tokio::time::Instant::now() > deadline
        {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span `{name}` in the trace: {spans:#?}"))
    };
    let (server, request, reserve, publish, notify) = (
        find(wanted[0]),
        find(wanted[1]),
        find(wanted[2]),
        find(wanted[3]),
        find(wanted[4]),
    );
    assert_eq!(
        server.parent,
        hex::decode("00f067aa0ba902b7").unwrap(),
        "the caller's span"
    );
    assert_eq!(
        request.parent, server.span_id,
        "orders' request, within its call"
    );
    assert_eq!(
        reserve.parent, request.span_id,
        "inventory's call, on the request"
    );
    assert_eq!(
        publish.parent, server.span_id,
        "orders' publish, within its call"
    );
    assert_eq!(
        notify.parent, publish.span_id,
        "notifications' call, on the publish"
    );
    let kv_under = |parent: &Span| {
        spans
            .iter()
            .find(|s| s.name.starts_with("kv ") && s.parent == parent.span_id)
            .unwrap_or_else(|| panic!("no key-value span under `{}`: {spans:#?}", parent.name))
    };
    assert_eq!(kv_under(server).attributes["db.namespace"], "orders");
    assert_eq!(kv_under(reserve).attributes["db.namespace"], "inventory");
    assert_eq!(server.service, "weft-one");
    assert_eq!(
        reserve.service, "weft-two",
        "inventory ran on the other host"
    );
    assert_eq!(notify.service, "weft-one");
    assert_eq!(server.attributes["weft.component"], "orders");
    assert_eq!(server.attributes["weft.outcome"], "ok");
    assert_eq!(server.attributes["http.route"], "/orders");
    assert!(server.attributes["weft.version"].starts_with("sha256:"));
    assert_eq!(server.attributes["weft.http.handler"], "wasi:http@0.3.0");
    assert_eq!(reserve.attributes["weft.component"], "inventory");
    assert!(
        reserve.attributes.contains_key("weft.instance.warm"),
        "fresh or reused"
    );
    assert_eq!(notify.attributes["weft.component"], "notifications");
    assert_eq!(notify.attributes["weft.trigger"], "durable");
    one.shutdown().await;
    two.shutdown().await;
}
