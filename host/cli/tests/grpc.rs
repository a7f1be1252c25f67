//! gRPC services as components: the example calculator (examples/grpc) called by a real
//! tonic client over h2c and over TLS: all four call kinds, statuses from the guest and
//! from the host (deadline, trap, overload, no route), and a redeploy under calls.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use calculator_client::{AddRequest, CalculatorClient, Number, RangeRequest};
use common::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_runtime::Host;
use weft_runtime::spec::{ComponentSpec, Limits};

const SERVICE: &str = "/weft.example.calculator.v1.Calculator/...";

fn calculator(limits: Limits) -> ComponentSpec {
    ComponentSpec {
        limits,
        ..routes(&[SERVICE])
    }
}

async fn h2c(host: &Host) -> CalculatorClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", host.http_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CalculatorClient::new(channel)
}

fn add(a: i64, b: i64) -> AddRequest {
    AddRequest {
        a,
        b,
        ..AddRequest::default()
    }
}

#[tokio::test]
async fn all_four_call_kinds_over_h2c_with_streams_that_flow_both_ways() {
    all_four_call_kinds("calculator").await;
}

#[tokio::test]
async fn all_four_call_kinds_from_a_wasi_http_0_3_service() {
    all_four_call_kinds("calculator-p3").await;
}

/// Every call kind against the calculator built as `component` (0.2 or 0.3).
async fn all_four_call_kinds(component: &str) {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(
        &host,
        "calculator",
        component,
        calculator(Limits::default()),
    )
    .await;
    let mut client = h2c(&host).await;

    // Unary, and a status the guest chose.
    let sum = client.add(add(2, 3)).await.unwrap().into_inner();
    assert_eq!(sum.value, 5);
    let overflow = client.add(add(i64::MAX, 1)).await.unwrap_err();
    assert_eq!(overflow.code(), Code::InvalidArgument);
    assert!(overflow.message().contains("overflows"), "{overflow:?}");

    // Server streaming: each number arrives when it is sent, not all at the end.
    let started = Instant::now();
    let mut range = client
        .range(RangeRequest {
            from: 1,
            to: 5,
            interval_ms: 200,
        })
        .await
        .unwrap()
        .into_inner();
    let mut arrivals = Vec::new();
    while let Some(n) = range.message().await.unwrap() {
        arrivals.push((n.value, started.elapsed()));
    }
    assert_eq!(
        arrivals.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let (first, last) = (arrivals[0].1, arrivals[4].1);
    assert!(
        last - first >= Duration::from_millis(700),
        "the stream was not buffered: {arrivals:?}"
    );

    // Client streaming.
    let all = futures::stream::iter((1..=100).map(|value| Number { value }));
    let total = client.sum(all).await.unwrap().into_inner();
    assert_eq!(total.value, 5050);

    // Bidirectional and full duplex: each reply comes back before the next number is
    // sent, which cannot happen if either body were buffered.
    let (tx, outgoing) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Number { value: 10 }).unwrap();
    let mut replies = client.running_total(outgoing).await.unwrap().into_inner();
    let mut expected = 0;
    for value in [10, 20, 30, 40] {
        if value != 10 {
            tx.unbounded_send(Number { value }).unwrap();
        }
        expected += value;
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply while the request is still open")
            .unwrap()
            .unwrap();
        assert_eq!(reply.value, expected);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none(), "ends with OK");
    host.shutdown().await;
}

/// Calls Add with `grpc-timeout: timeout` over plain HTTP/2: the `grpc-status` of the
/// (trailers-only or trailing) answer.
async fn raw_call(host: &Host, request: AddRequest, timeout: &str) -> Option<String> {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(host.http_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let call = http::Request::post(format!(
        "http://{}/weft.example.calculator.v1.Calculator/Add",
        host.http_addr()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", timeout)
    .body(())
    .unwrap();
    let (response, mut body) = client.send_request(call, false).unwrap();
    let message = request.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(frame.into(), true).unwrap();
    let response = response.await.unwrap();
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    body.trailers().await.unwrap().as_ref().and_then(status)
}

#[tokio::test]
async fn host_failures_become_grpc_statuses() {
    host_failures("calculator").await;
}

#[tokio::test]
async fn host_failures_become_grpc_statuses_for_a_wasi_http_0_3_service() {
    host_failures("calculator-p3").await;
}

/// Deadlines, a trap, overload and missing methods against `component` (0.2 or 0.3).
async fn host_failures(component: &str) {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        timeout_ms: 1000,
        max_concurrency: 1,
        ..Limits::default()
    };
    deploy(&host, "calculator", component, calculator(limits)).await;
    let mut client = h2c(&host).await;

    // The component's deadline.
    let slow = AddRequest {
        delay_ms: 3000,
        ..add(1, 1)
    };
    let status = client.add(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The client's grpc-timeout, shorter than the component's deadline: sent by a raw
    // HTTP/2 client, as tonic's own timer would cancel the call first on its side.
    let started = Instant::now();
    let status = raw_call(
        &host,
        AddRequest {
            delay_ms: 800,
            ..add(1, 1)
        },
        "200m",
    )
    .await;
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_millis(750),
        "the client's timeout applied"
    );
    // Let the slow instance finish, so the next calls find a free slot.
    tokio::time::sleep(Duration::from_millis(800)).await;

    // A trap.
    let status = client
        .add(AddRequest {
            trap: true,
            ..add(1, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(client.add(add(1, 1)).await.unwrap().into_inner().value, 2);

    // Overload: one call at a time, the second is told so.
    let busy = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .add(AddRequest {
                    delay_ms: 600,
                    ..add(1, 1)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = client.add(add(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(busy.await.unwrap().unwrap().into_inner().value, 2);

    // No route, and a method the service lacks.
    let channel = Channel::from_shared(format!("http://{}", host.http_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for path in [
        "/other.v1.Service/Call",
        "/weft.example.calculator.v1.Calculator/Nope",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<Number, Number, _>(
                tonic::Request::new(Number { value: 1 }),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn grpc_over_tls_and_a_redeploy_under_calls_fails_none() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, cert) = tls::self_signed(dir.path());
    let host = start_host_with(cache.path(), |config| config.tls = Some(files)).await;
    deploy(
        &host,
        "calculator",
        "calculator",
        calculator(Limits::default()),
    )
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", host.http_addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CalculatorClient::new(channel);
    assert_eq!(
        client.add(add(20, 22)).await.unwrap().into_inner().value,
        42
    );
    let all = futures::stream::iter((1..=10).map(|value| Number { value }));
    assert_eq!(client.sum(all).await.unwrap().into_inner().value, 55);

    // Four callers keep calling while the component is redeployed twice.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let mut client = client.clone();
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match client.add(add(i, n)).await {
                        Ok(reply) if reply.get_ref().value == i + n => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("failed call: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let limits = Limits {
            timeout_ms: 10_000 + round,
            ..Limits::default()
        };
        deploy(&host, "calculator", "calculator", calculator(limits)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("calls during the redeploys: {ok} ok, {failed} failed");
    assert!(ok > 20, "calls went on during the redeploys: {ok}");
    assert_eq!(failed, 0, "no call failed during the redeploys");
    host.shutdown().await;
}
