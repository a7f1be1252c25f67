//! WebSocket echo round trips: the chat example component (examples/chat) echoes each
//! binary message back to its sender, on weft with fresh instances and with reuse,
//! against a native axum WebSocket echo. The load generator: one thread,
//! [`CONNECTIONS`] connections, each sending a message and waiting for its echo.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::http::{Contestant, REUSE, interleave_with};
use crate::load::Load;
use crate::procs;
use crate::report::{Better, Report, Target};
use crate::{Settings, tools::Wasm};

/// Connections open at once, each with one message in flight.
pub const CONNECTIONS: usize = 32;

/// The message echoed.
const PAYLOAD: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Echo round trips: native axum, weft fresh, weft reuse.
pub fn echo(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    let command = format!(
        "tokio-tungstenite client, 1 thread, {CONNECTIONS} connections, one 32-byte binary message in flight each, {} s",
        settings.secs
    );
    println!("\nWebSocket echo ({command}):");
    let native = serve_native()?;
    let hosts = procs::fresh_and_reuse(
        "weft-ws",
        "chat",
        &wasm.chat,
        "[{ path = \"/chat/ws\", websocket = true }]",
        REUSE,
    )?;
    let ws = |http: &str| format!("{}/chat/ws", http.replacen("http://", "ws://", 1));
    let contestants = [
        Contestant {
            label: "native axum",
            url: native,
        },
        Contestant {
            label: "weft (fresh instance)",
            url: ws(&hosts[0].http),
        },
        Contestant {
            label: "weft (reuse)",
            url: ws(&hosts[1].http),
        },
    ];
    // Deploys finish after the admin API answers: wait for an echo.
    for c in &contestants {
        let started = Instant::now();
        while let Err(e) = load(&c.url, 0) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "{} did not echo within 2 minutes: {e:#}",
                c.url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let m = interleave_with(settings, &contestants, load)?;
    let (native, fresh, reuse) = (&m[0], &m[1], &m[2]);
    let (higher, lower) = (Better::Higher, Better::Lower);
    #[rustfmt::skip]
    report.add_rows("WebSocket echo", &command, &[
        ("fresh instance per message: throughput", "msg/s", fresh.rps, "native axum", native.rps, higher, Target::ratio_at_least(0.5)),
        ("fresh instance per message: p99 round trip", "ms", fresh.p99, "native axum", native.p99, lower, None),
        ("instance reuse: throughput", "msg/s", reuse.rps, "native axum", native.rps, higher, Target::ratio_at_least(0.8)),
        ("instance reuse: p50 round trip", "ms", reuse.p50, "native axum", native.p50, lower, None),
        ("instance reuse: p99 round trip", "ms", reuse.p99, "native axum", native.p99, lower, None),
    ]);
    Ok(())
}

/// A native axum WebSocket echo on a fresh port, on a two-worker runtime of its own;
/// its `ws://` URL.
fn serve_native() -> Result<String> {
    use axum::extract::ws::{Message as Frame, WebSocketUpgrade};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}/chat/ws", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("native-ws".into())
        .spawn(move || {
            crate::native::runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("registering the native server's listener");
                let app = axum::Router::new().route(
                    "/chat/ws",
                    axum::routing::get(|upgrade: WebSocketUpgrade| async move {
                        upgrade.on_upgrade(|mut socket| async move {
                            while let Some(Ok(frame)) = socket.next().await {
                                if let Frame::Binary(bytes) = frame
                                    && socket.send(Frame::Binary(bytes)).await.is_err()
                                {
                                    return;
                                }
                            }
                        })
                    }),
                );
                axum::serve(listener, app).await.expect("the native server");
            });
        })?;
    Ok(url)
}

/// Echo round trips on `url` for `secs` seconds (0: one round trip, as a check).
fn load(url: &str, secs: u64) -> Result<Load> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connections = if secs == 0 { 1 } else { CONNECTIONS };
        let mut sockets = Vec::new();
        for _ in 0..connections {
            let (socket, _) = tokio_tungstenite::connect_async(url)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            sockets.push(socket);
        }
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let clients: Vec<_> = sockets
            .into_iter()
            .map(|mut socket| {
                tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    loop {
                        let sent = Instant::now();
                        if socket.send(Message::binary(PAYLOAD)).await.is_err() {
                            errors += 1;
                            break;
                        }
                        // The chat greets each connection with a text frame first.
                        let echoed = loop {
                            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await
                            {
                                Ok(Some(Ok(Message::Text(_)))) => continue,
                                Ok(Some(Ok(Message::Binary(b)))) => break &b[..] == PAYLOAD,
                                _ => break false,
                            }
                        };
                        if !echoed {
                            errors += 1;
                            break;
                        }
                        latencies.push(sent.elapsed());
                        if Instant::now() >= until {
                            break;
                        }
                    }
                    let _ = socket.close(None).await;
                    (latencies, errors)
                })
            })
            .collect();
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for client in clients {
            let (l, e) = client.await?;
            latencies.extend(l);
            errors += e;
        }
        anyhow::ensure!(errors == 0 || secs > 0, "no echo from {url}");
        Ok(Load::from_latencies(latencies, started.elapsed(), errors))
    })
}
