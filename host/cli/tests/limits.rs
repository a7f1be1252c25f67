//! Bounded under abuse: slow and hostile clients on raw sockets against a real host.
//! (Key-value and subject bounds are in `keyvalue.rs` and `messaging.rs`, on both
//! backends.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_runtime::Host;
use weft_runtime::listener::ConnectionLimits;
use weft_runtime::spec::{ComponentSpec, Limits};

const SHORT: ConnectionLimits = ConnectionLimits {
    max_connections: 4,
    header_timeout: Duration::from_millis(300),
    body_idle_timeout: Duration::from_millis(300),
    ..ConnectionLimits::HTTP
};

async fn host_with(limits: ConnectionLimits, cache: &std::path::Path) -> Host {
    start_host_with(cache, |config| {
        config.http_connections = limits;
        config.admin_connections = limits;
    })
    .await
}

/// Reads until the server closes the connection; how long that took (at most `within`).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| start.elapsed())
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with(SHORT, cache.path()).await;
    deploy(&host, "hello", "hello", routes(&["/hello"])).await;
    for addr in [host.http_addr(), host.admin_addr()] {
        // Headers trickled and never finished (slowloris).
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "{addr}: a request whose headers never finish is closed"
        );
        // A keep-alive connection idle after its request.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "{addr}: an idle keep-alive connection is closed"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_cap_frees_up() {
    let cache = tempfile::tempdir().unwrap();
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        ..SHORT
    };
    let host = host_with(limits, cache.path()).await;
    deploy(&host, "hello", "hello", routes(&["/hello"])).await;
    let mut held = Vec::new();
    for _ in 0..limits.max_connections {
        held.push(TcpStream::connect(host.http_addr()).await.unwrap());
    }
    // Give the host a moment to accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(host.http_addr()).await.unwrap();
    extra
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok() && answer.is_empty(),
        "a connection over the cap is closed unanswered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = reqwest::get(url(&host, "/hello")).await.unwrap();
    assert_eq!(ok.status(), 200, "closing connections frees the cap");
    host.shutdown().await;
}

#[tokio::test]
async fn a_trickling_body_does_not_hold_the_component_for_its_deadline() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with(
        ConnectionLimits {
            max_connections: 64,
            ..SHORT
        },
        cache.path(),
    )
    .await;
    let spec = ComponentSpec {
        limits: Limits {
            max_concurrency: 1,
            ..Limits::default()
        },
        ..routes(&["/f/..."])
    };
    deploy(&host, "f", "faults", spec).await;
    // Promises 1,000 bytes, sends 10, then nothing.
    let mut stalled = TcpStream::connect(host.http_addr()).await.unwrap();
    stalled
        .write_all(b"POST /f/echo HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let echo = || client.post(url(&host, "/f/echo")).body("hi").send();
    assert_eq!(
        echo().await.unwrap().status(),
        503,
        "the stalled request holds the only instance"
    );
    // Past the body's idle timeout the stalled request fails and the instance is free,
    // long before the component's 30 s deadline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let freed = echo().await.unwrap();
    assert_eq!(freed.status(), 200);
    assert_eq!(freed.text().await.unwrap(), "hi");
    host.shutdown().await;
}

#[tokio::test]
async fn a_full_host_answers_503_and_does_not_blame_the_component() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| config.max_instances = 2).await;
    let spec = ComponentSpec {
        limits: Limits {
            max_concurrency: 16,
            ..Limits::default()
        },
        ..routes(&["/f/..."])
    };
    deploy(&host, "f", "faults", spec).await;
    // Six slow requests at once on a host with two instance slots.
    let client = reqwest::Client::new();
    let slow = |_| {
        client
            .get(url(&host, "/f/slow?chunks=3&delay_ms=200"))
            .send()
    };
    let answers = futures::future::join_all((0..6).map(slow)).await;
    let mut statuses: Vec<u16> = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        if answer.status() == 503 {
            assert_eq!(
                answer
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                Some("1")
            );
        }
        statuses.push(answer.status().as_u16());
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "never a 500: {statuses:?}"
    );
    let info = host.deployments().list().pop().unwrap();
    assert_eq!(info.errors, 0, "a full host is not the component's error");
    host.shutdown().await;
}

#[tokio::test]
async fn outgoing_requests_are_capped_per_component() {
    // A service that takes 500 ms to answer.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = slow.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let spec = ComponentSpec {
        allowed_outbound_hosts: vec![format!("http://{target}")],
        limits: Limits {
            max_outbound_requests: 1,
            ..Limits::default()
        },
        ..routes(&["/f/..."])
    };
    deploy(&host, "f", "faults", spec).await;
    let fetch = || async {
        reqwest::get(url(&host, &format!("/f/fetch?url=http://{target}/")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(fetch(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fetch().await
    });
    assert_eq!(
        (a.as_str(), b.as_str()),
        ("status: 200", "error: ErrorCode::ConnectionLimitReached")
    );
    assert_eq!(fetch().await, "status: 200", "the slot is free again");
    host.shutdown().await;
}
