//! Server-sent events: a component's `text/event-stream` response reaches the client
//! event by event (over HTTP/1.1 and HTTP/2), and a stream outlives the request's
//! deadline only as long as the component's `stream_timeout_ms` says.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use weft_runtime::spec::{ComponentSpec, Limits};

/// The events of a GET to `url`, each with when its last byte arrived (from the
/// request's start), and whether the body ended cleanly.
async fn events(url: &str) -> (Vec<(String, Duration)>, bool) {
    let started = Instant::now();
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "the component's content type"
    );
    let mut body = response.bytes_stream();
    let (mut buffer, mut seen) = (String::new(), Vec::new());
    let clean = loop {
        match body.next().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(chunk)) => {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    let data = event
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap_or_default()
                        .to_string();
                    seen.push((data, started.elapsed()));
                }
            }
        }
    };
    (seen, clean)
}

fn faults(limits: Limits) -> ComponentSpec {
    ComponentSpec {
        limits,
        ..routes(&["/f/..."])
    }
}

#[tokio::test]
async fn events_arrive_one_by_one() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "f", "faults", faults(Limits::default())).await;
    let (seen, clean) = events(&url(&host, "/f/events?n=5&every_ms=300")).await;
    assert!(clean);
    let data: Vec<&str> = seen.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        data,
        ["event 0", "event 1", "event 2", "event 3", "event 4"]
    );
    // The whole body takes 1.2 s: a buffered one would deliver every event at its end.
    let (first, last) = (seen[0].1, seen[4].1);
    assert!(
        first < Duration::from_millis(600),
        "the first event came at once: {seen:?}"
    );
    assert!(
        last - first >= Duration::from_millis(1000),
        "events came one by one: {seen:?}"
    );
    for pair in seen.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= Duration::from_millis(200),
            "each event came on its own: {seen:?}"
        );
    }

    // The same over HTTP/2.
    let stream = tokio::net::TcpStream::connect(host.http_addr())
        .await
        .unwrap();
    let (mut send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    let request = http::Request::get(url(&host, "/f/events?n=4&every_ms=300"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = send.send_request(request).await.unwrap().into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            let events = String::from_utf8_lossy(&data).matches("data: ").count();
            arrivals.extend(std::iter::repeat_n(started.elapsed(), events));
        }
    }
    assert_eq!(arrivals.len(), 4, "{arrivals:?}");
    assert!(
        arrivals[3] - arrivals[0] >= Duration::from_millis(800),
        "{arrivals:?}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_stream_outlives_the_deadline_only_as_long_as_the_component_says() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let short = Limits {
        timeout_ms: 500,
        ..Limits::default()
    };
    // 6 events over 1 s: past the 500 ms deadline, so the stream is cut.
    deploy(&host, "f", "faults", faults(short)).await;
    let (seen, clean) = events(&url(&host, "/f/events?n=6&every_ms=200")).await;
    assert!(!clean && seen.len() < 6, "cut at the deadline: {seen:?}");

    // With stream_timeout_ms, the body may go on after the head.
    let streaming = Limits {
        stream_timeout_ms: 3000,
        ..short
    };
    deploy(&host, "f", "faults", faults(streaming)).await;
    let (seen, clean) = events(&url(&host, "/f/events?n=6&every_ms=200")).await;
    assert!(clean && seen.len() == 6, "the whole stream: {seen:?}");

    // Still bounded: 3 s of events against a stream timeout of 1 s.
    let bounded = Limits {
        stream_timeout_ms: 1000,
        ..short
    };
    deploy(&host, "f", "faults", faults(bounded)).await;
    let started = Instant::now();
    let (seen, clean) = events(&url(&host, "/f/events?n=15&every_ms=200")).await;
    assert!(
        !clean && seen.len() < 15,
        "cut at the stream timeout: {seen:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    host.shutdown().await;
}
