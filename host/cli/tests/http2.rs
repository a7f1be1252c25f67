//! HTTP/2 beside HTTP/1.1: h2c with prior knowledge on plain TCP, TLS with ALPN, and the
//! per-connection bounds, against a real host with real components.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_runtime::listener::ConnectionLimits;

#[tokio::test]
async fn http1_and_h2c_reach_the_same_component_with_the_same_request() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "f", "faults", routes(&["/f/..."])).await;
    deploy(&host, "p3", "hello-p3", routes(&["/p3"])).await;
    let base = format!("http://{}", host.http_addr());
    let expected = format!("Method::Get http {} /f/whoami?x=1", host.http_addr());
    for h2 in [false, true] {
        let stream = TcpStream::connect(host.http_addr()).await.unwrap();
        let (status, body) = tls::get(stream, h2, &base, "/f/whoami?x=1").await;
        assert_eq!((status, body.as_str()), (200, expected.as_str()), "h2={h2}");
        let stream = TcpStream::connect(host.http_addr()).await.unwrap();
        let (status, body) = tls::get(stream, h2, &base, "/p3").await;
        assert_eq!(
            status, 200,
            "a wasi:http 0.3 component over h2={h2}: {body}"
        );
    }

    // Many streams at once on one HTTP/2 connection, each its own request.
    let stream = TcpStream::connect(host.http_addr()).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let calls = (0..32).map(|i| {
        let mut send = send.clone();
        let uri = format!("{base}/f/echo");
        async move {
            let request = http::Request::post(uri)
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    "call {i}"
                ))))
                .unwrap();
            let response = send.send_request(request).await.unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, body, i)
        }
    });
    for (status, body, i) in futures::future::join_all(calls).await {
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("call {i}").as_bytes(),
            "stream {i} got its own answer"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn tls_offers_h2_and_http1_by_alpn_and_components_see_https() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, cert) = tls::self_signed(dir.path());
    let host = start_host_with(cache.path(), |config| config.tls = Some(files)).await;
    deploy(&host, "f", "faults", routes(&["/f/..."])).await;
    deploy(&host, "p3", "hello-p3", routes(&["/p3"])).await;
    let base = format!("https://localhost:{}", host.http_addr().port());
    let expected = format!(
        "Method::Get https localhost:{} /f/whoami",
        host.http_addr().port()
    );
    for (offer, h2) in [(&["h2", "http/1.1"][..], true), (&["http/1.1"][..], false)] {
        let (stream, chosen) = tls::tls_connect(host.http_addr(), &cert, offer).await;
        let want = if h2 { "h2" } else { "http/1.1" };
        assert_eq!(chosen.as_deref(), Some(want), "offered {offer:?}");
        let (status, body) = tls::get(stream, h2, &base, "/f/whoami").await;
        assert_eq!((status, body.as_str()), (200, expected.as_str()), "{want}");
        let (stream, _) = tls::tls_connect(host.http_addr(), &cert, offer).await;
        let (status, _) = tls::get(stream, h2, &base, "/p3").await;
        assert_eq!(status, 200, "a wasi:http 0.3 component over TLS {want}");
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(host.http_addr()).await.unwrap();
    plain
        .write_all(b"GET /f/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "plain HTTP is not served on the TLS port"
    );
    host.shutdown().await;
}

#[test]
fn a_bad_certificate_or_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = tls::self_signed(dir.path());
    let not_pem = dir.path().join("garbage.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let cases = [
        (
            weft_runtime::tls::TlsFiles {
                cert: dir.path().join("missing.pem"),
                ..files.clone()
            },
            "cannot read the TLS certificate",
        ),
        (
            weft_runtime::tls::TlsFiles {
                cert: not_pem.clone(),
                ..files.clone()
            },
            "holds no certificate",
        ),
        (
            weft_runtime::tls::TlsFiles {
                key: not_pem.clone(),
                ..files.clone()
            },
            "no PEM private key",
        ),
    ];
    for (files, expected) in cases {
        let error = format!("{:#}", files.acceptor().err().unwrap());
        assert!(error.contains(expected), "{error}");
        assert!(error.contains(".pem"), "names the file: {error}");
    }
    // A key that is not the certificate's.
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = tls::self_signed(other.path());
    let mismatched = weft_runtime::tls::TlsFiles {
        key: other_files.key,
        ..files
    };
    let error = format!("{:#}", mismatched.acceptor().err().unwrap());
    assert!(error.contains("does not fit the certificate"), "{error}");
}

#[tokio::test]
async fn http2_connections_are_bounded_in_streams_header_size_and_idleness() {
    let cache = tempfile::tempdir().unwrap();
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_millis(500),
        max_streams_per_connection: 3,
        max_header_bytes: 16 * 1024,
        ..ConnectionLimits::HTTP
    };
    let host = start_host_with(cache.path(), |config| config.http_connections = limits).await;
    deploy(&host, "f", "faults", routes(&["/f/..."])).await;
    let base = format!("http://{}", host.http_addr());

    // The stream limit is announced in the server's SETTINGS.
    let tcp = TcpStream::connect(host.http_addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("{base}/f/whoami"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 3);

    // An oversized header list is refused, HTTP/2 and HTTP/1.1 alike.
    let big = "x".repeat(32 * 1024);
    let request = http::Request::get(format!("{base}/f/whoami"))
        .header("x-big", big.as_str())
        .body(())
        .unwrap();
    let refused = match client.send_request(request, true) {
        Ok((response, _)) => match response.await {
            Ok(response) => response.status() == 431,
            Err(e) => e.is_reset() || e.is_go_away(),
        },
        Err(_) => true,
    };
    assert!(refused, "a 32 KiB header over HTTP/2 is refused");
    let mut h1 = TcpStream::connect(host.http_addr()).await.unwrap();
    h1.write_all(format!("GET /f/whoami HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 64];
    let n = h1.read(&mut answer).await.unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"),
        "a 32 KiB header over HTTP/1.1 gets 431: {:?}",
        String::from_utf8_lossy(&answer[..n])
    );

    // With no stream open, the connection is closed after the idle timeout (the
    // client keeps its handle, so it is the server that closes).
    let _client = client;
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A connection that never sends its preface is closed after the header timeout.
    let mut silent = TcpStream::connect(host.http_addr()).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a silent connection is closed");
    host.shutdown().await;
}
