//! WebSockets through a real host: the chat example (examples/chat) with a real
//! WebSocket client. Events reach the component one call each, groups fan out (across
//! two hosts on one NATS), a handler reaches only its own connection without a grant,
//! and every limit closes with the right code.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weft_runtime::Host;
use weft_runtime::spec::{ComponentSpec, Limits, RouteSpec};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn chat(limits: Limits, allowed_publish: &[&str]) -> ComponentSpec {
    ComponentSpec {
        routes: vec![
            RouteSpec {
                path: "/chat".into(),
                methods: vec!["GET".into()],
                websocket: false,
            },
            RouteSpec {
                path: "/chat/ws".into(),
                methods: vec![],
                websocket: true,
            },
        ],
        limits,
        allowed_publish: allowed_publish.iter().map(|s| s.to_string()).collect(),
        ..ComponentSpec::default()
    }
}

/// A host with the chat deployed (`limits`, `allowed_publish`).
async fn chat_host(cache: &std::path::Path, limits: Limits, allowed_publish: &[&str]) -> Host {
    let host = start_host(cache).await;
    deploy(&host, "chat", "chat", chat(limits, allowed_publish)).await;
    host
}

/// A host on `nats` with the chat deployed, its room granted.
async fn chat_host_on_nats(cache: &std::path::Path, nats: &NatsServer) -> Host {
    let host = start_host_on_nats(cache, nats).await;
    deploy(
        &host,
        "chat",
        "chat",
        chat(Limits::default(), &["ws.group.chat"]),
    )
    .await;
    host
}

async fn connect(host: &Host) -> Socket {
    let url = format!("ws://{}/chat/ws", host.http_addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(text(&mut socket).await, "* welcome to the chat");
    socket
}

/// The next text frame, within 5 s.
async fn text<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<S>) -> String {
    match next(socket).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn next<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<S>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a frame within 5 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// Nothing arrives within `wait`.
async fn silent(socket: &mut Socket, wait: Duration) {
    if let Ok(Some(frame)) = tokio::time::timeout(wait, socket.next()).await {
        panic!("expected nothing, got {frame:?}");
    }
}

/// Reads until the server's close frame: its code and reason.
async fn close_code(socket: &mut Socket) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (frame.code, frame.reason.to_string());
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn say<S: AsyncRead + AsyncWrite + Unpin>(socket: &mut WebSocketStream<S>, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
}

#[tokio::test]
async fn events_reach_the_component_and_a_group_fans_out() {
    let cache = tempfile::tempdir().unwrap();
    let host = chat_host(cache.path(), Limits::default(), &["ws.group.chat"]).await;

    // The page is an ordinary route of the same component.
    let page = reqwest::get(url(&host, "/chat")).await.unwrap();
    assert!(page.text().await.unwrap().contains("new WebSocket"));
    // A plain GET on the WebSocket route is told to upgrade.
    let plain = reqwest::get(url(&host, "/chat/ws")).await.unwrap();
    assert_eq!(plain.status(), 426);

    let (mut a, mut b) = (connect(&host).await, connect(&host).await);
    say(&mut a, "alice: hi").await;
    assert_eq!(text(&mut a).await, "alice: hi");
    assert_eq!(text(&mut b).await, "alice: hi");
    say(&mut b, "bob: hello").await;
    assert_eq!(text(&mut a).await, "bob: hello");
    assert_eq!(text(&mut b).await, "bob: hello");

    // An answer to the sender alone, and binary frames.
    say(&mut a, "/echo just me").await;
    assert_eq!(text(&mut a).await, "just me");
    silent(&mut b, Duration::from_millis(300)).await;
    a.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut a).await,
        Message::binary(vec![0u8, 159, 146, 150])
    );

    // A handler reaches another connection only with a grant.
    say(&mut b, "/whoami").await;
    let b_subject = text(&mut b).await;
    assert!(b_subject.starts_with("ws.conn."), "{b_subject}");
    say(&mut a, &format!("/to {b_subject} psst")).await;
    let denied = text(&mut a).await;
    assert!(denied.starts_with("denied: permission denied"), "{denied}");
    say(&mut a, &format!("/to {b_subject}.close x")).await;
    assert!(text(&mut a).await.starts_with("denied:"));
    silent(&mut b, Duration::from_millis(300)).await;

    // The component closes a connection.
    say(&mut a, "/bye").await;
    assert_eq!(close_code(&mut a).await, (CloseCode::Normal, "bye".into()));
    // Its group no longer sends to it; the other member still gets the room.
    say(&mut b, "bob: still here").await;
    assert_eq!(text(&mut b).await, "bob: still here");
    host.shutdown().await;
}

/// A WebSocket over HTTP/2 on `stream` (RFC 8441: a CONNECT with `:protocol =
/// websocket`, answered 200), to `base`'s `/chat/ws`.
async fn h2_websocket<S>(
    stream: S,
    base: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // An ordinary request first: the server's settings (which allow extended CONNECT)
    // have arrived once it is answered.
    let page = http::Request::get(format!("{base}/chat"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(page).await.unwrap().status(), 200);
    let mut request = http::Request::connect(format!("{base}/chat/ws"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "RFC 8441 accepts with 200");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    assert_eq!(text(&mut socket).await, "* welcome to the chat");
    socket
}

#[tokio::test]
async fn websockets_over_tls_and_over_http2_share_one_room() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, cert) = tls::self_signed(dir.path());
    let host = start_host_with(cache.path(), |config| config.tls = Some(files)).await;
    deploy(
        &host,
        "chat",
        "chat",
        chat(Limits::default(), &["ws.group.chat"]),
    )
    .await;
    let (addr, base) = (
        host.http_addr(),
        format!("https://localhost:{}", host.http_addr().port()),
    );
    // wss: the HTTP/1.1 upgrade over TLS.
    let (stream, chosen) = tls::tls_connect(addr, &cert, &["http/1.1"]).await;
    assert_eq!(chosen.as_deref(), Some("http/1.1"));
    let (mut a, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/chat/ws", addr.port()), stream)
            .await
            .unwrap();
    assert_eq!(text(&mut a).await, "* welcome to the chat");
    // HTTP/2 over TLS.
    let (stream, chosen) = tls::tls_connect(addr, &cert, &["h2"]).await;
    assert_eq!(chosen.as_deref(), Some("h2"));
    let mut b = h2_websocket(stream, &base).await;
    say(&mut a, "alice: over wss").await;
    assert_eq!(text(&mut a).await, "alice: over wss");
    assert_eq!(text(&mut b).await, "alice: over wss");
    say(&mut b, "bob: over h2").await;
    assert_eq!(text(&mut a).await, "bob: over h2");
    assert_eq!(text(&mut b).await, "bob: over h2");
    b.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(&mut b).await, Message::binary(vec![1u8, 2, 3]));
    host.shutdown().await;

    // HTTP/2 without TLS (h2c, prior knowledge), as gRPC clients use it.
    let cache = tempfile::tempdir().unwrap();
    let host = chat_host(cache.path(), Limits::default(), &["ws.group.chat"]).await;
    let tcp = tokio::net::TcpStream::connect(host.http_addr())
        .await
        .unwrap();
    let mut c = h2_websocket(tcp, &format!("http://{}", host.http_addr())).await;
    say(&mut c, "/echo h2c").await;
    assert_eq!(text(&mut c).await, "h2c");
    host.shutdown().await;
}

#[tokio::test]
async fn a_browser_from_a_foreign_origin_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let spec = ComponentSpec {
        websocket_origins: vec!["https://app.example.com".into()],
        ..chat(Limits::default(), &["ws.group.chat"])
    };
    deploy(&host, "chat", "chat", spec).await;
    let url = format!("ws://{}/chat/ws", host.http_addr());
    let from = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    match from("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("a foreign origin is refused: {other:?}"),
    }
    // The page's own origin, a listed one, and a client that is no browser.
    let own = format!("http://{}", host.http_addr());
    for origin in [own.as_str(), "https://app.example.com"] {
        let (mut socket, _) = from(origin).await.unwrap();
        assert_eq!(text(&mut socket).await, "* welcome to the chat", "{origin}");
    }
    connect(&host).await;
    host.shutdown().await;
}

#[tokio::test]
async fn without_the_group_grant_nothing_fans_out() {
    let cache = tempfile::tempdir().unwrap();
    let host = chat_host(cache.path(), Limits::default(), &[]).await;
    let (mut a, mut b) = (connect(&host).await, connect(&host).await);
    say(&mut a, "alice: anyone?").await;
    silent(&mut b, Duration::from_millis(300)).await;
    silent(&mut a, Duration::from_millis(10)).await;
    // The connection survives its handler's error.
    say(&mut a, "/echo still open").await;
    assert_eq!(text(&mut a).await, "still open");
    host.shutdown().await;
}

#[tokio::test]
async fn limits_close_with_the_right_code() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let limits = Limits {
        ws_max_connections: 2,
        ws_max_message_bytes: 1024,
        ws_idle_timeout_ms: 1500,
        ..Limits::default()
    };
    deploy(&host, "chat", "chat", chat(limits, &["ws.group.chat"])).await;

    // Connections per component.
    let (mut a, mut b) = (connect(&host).await, connect(&host).await);
    let third =
        tokio_tungstenite::connect_async(format!("ws://{}/chat/ws", host.http_addr())).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("a third connection is refused with 503: {other:?}"),
    }

    // Message size.
    say(&mut a, &"x".repeat(2000)).await;
    assert_eq!(close_code(&mut a).await.0, CloseCode::Size);

    // A client that does not read while the component floods it: the buffer fills
    // and the host closes it as too slow (1008) instead of holding it all.
    say(&mut b, "/flood 3000 16384").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, reason) = close_code(&mut b).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");

    // Idle.
    let mut c = connect(&host).await;
    let started = std::time::Instant::now();
    let (code, reason) = close_code(&mut c).await;
    assert_eq!(code, CloseCode::Normal);
    assert!(reason.contains("idle"), "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    host.shutdown().await;
}

#[tokio::test]
async fn a_redeploy_keeps_connections_and_an_undeploy_closes_them() {
    let cache = tempfile::tempdir().unwrap();
    let host = chat_host(cache.path(), Limits::default(), &["ws.group.chat"]).await;
    let (mut a, mut b) = (connect(&host).await, connect(&host).await);
    let newer = Limits {
        timeout_ms: 20_000,
        ..Limits::default()
    };
    deploy(&host, "chat", "chat", chat(newer, &["ws.group.chat"])).await;
    say(&mut a, "alice: after the redeploy").await;
    assert_eq!(text(&mut a).await, "alice: after the redeploy");
    assert_eq!(text(&mut b).await, "alice: after the redeploy");
    host.deployments().undeploy("chat").await.unwrap();
    assert_eq!(close_code(&mut a).await.0, CloseCode::Away);
    assert_eq!(close_code(&mut b).await.0, CloseCode::Away);
    host.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_cleanly() {
    let cache = tempfile::tempdir().unwrap();
    let host = chat_host(cache.path(), Limits::default(), &["ws.group.chat"]).await;
    let mut a = connect(&host).await;
    let shutdown = tokio::spawn(host.shutdown());
    assert_eq!(close_code(&mut a).await.0, CloseCode::Away);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends")
        .unwrap();
}

#[tokio::test]
async fn groups_fan_out_across_hosts_on_nats() {
    let Some(nats) = weft_runtime_nats() else {
        return;
    };
    let (cache1, cache2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (
        chat_host_on_nats(cache1.path(), &nats).await,
        chat_host_on_nats(cache2.path(), &nats).await,
    );
    let (mut a, mut b) = (connect(&one).await, connect(&two).await);
    // The group subscriptions reach the server before the first message.
    tokio::time::sleep(Duration::from_millis(200)).await;
    say(&mut a, "alice@one: hi").await;
    assert_eq!(text(&mut a).await, "alice@one: hi");
    assert_eq!(text(&mut b).await, "alice@one: hi");
    say(&mut b, "bob@two: hello").await;
    assert_eq!(text(&mut a).await, "bob@two: hello");
    assert_eq!(text(&mut b).await, "bob@two: hello");
    // One host's connection, answered by name from the other (with a grant for it).
    one.shutdown().await;
    two.shutdown().await;
}

fn weft_runtime_nats() -> Option<NatsServer> {
    NatsServer::start()
}

/// The chat page in two real headless Chromium tabs (the system's `chromium`, driven by
/// Playwright from npm), each on its own host, both hosts on one NATS: each tab sees
/// the other's message.
#[tokio::test(flavor = "multi_thread")]
async fn two_browsers_on_two_hosts_see_each_other() {
    if !npm_available() || !tool_available("chromium", "apt-get install chromium") {
        return;
    }
    let Some(nats) = weft_runtime_nats() else {
        return;
    };
    let browser_dir = workspace_root().join("examples/chat/browser");
    install_playwright(&browser_dir);
    let (cache1, cache2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (
        chat_host_on_nats(cache1.path(), &nats).await,
        chat_host_on_nats(cache2.path(), &nats).await,
    );
    let (url1, url2) = (
        format!("http://{}", one.http_addr()),
        format!("http://{}", two.http_addr()),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg("two-tabs.mjs")
            .args([&url1, &url2])
            .current_dir(&browser_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.contains("ok: both tabs"),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    one.shutdown().await;
    two.shutdown().await;
}
