//! The native references: an axum server that answers like the hello component, and
//! an async-nats responder that answers like the echo-responder component. Each runs on
//! its own Tokio runtime with two workers, as weft does, on a thread of its own.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use axum::serve::ListenerExt;

/// Serves GET (the greeting) and POST (echo) on a fresh port; returns its base URL.
pub fn serve_http() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("native-axum".into())
        .spawn(move || {
            let runtime = runtime();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("registering the native server's listener")
                    .tap_io(|stream| {
                        let _ = stream.set_nodelay(true);
                    });
                let app = axum::Router::new().fallback(handle);
                axum::serve(listener, app).await.expect("the native server");
            });
        })?;
    Ok(url)
}

async fn handle(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if method == Method::GET {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let text = format!("Hello from weft! You asked for {path}\n");
        return (
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            text.into_bytes(),
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    ([(header::CONTENT_TYPE, content_type)], body.to_vec())
}

/// Answers requests on `subject` (queue group `native`) with `-:<body>`, as the
/// echo-responder component does.
pub fn nats_responder(url: &str, subject: &str) -> Result<()> {
    let (url, subject) = (url.to_string(), subject.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("native-responder".into())
        .spawn(move || {
            runtime().block_on(async move {
                use futures::StreamExt;
                let client = async_nats::connect(&url)
                    .await
                    .expect("connecting the native responder");
                let mut sub = client
                    .queue_subscribe(subject, "native".into())
                    .await
                    .expect("subscribing the native responder");
                client.flush().await.expect("flushing the subscription");
                let _ = ready_tx.send(());
                while let Some(message) = sub.next().await {
                    if let Some(reply) = message.reply {
                        let mut body = b"-:".to_vec();
                        body.extend_from_slice(&message.payload);
                        let _ = client.publish(reply, body.into()).await;
                    }
                }
            });
        })?;
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .context("the native responder did not subscribe within 10 s")
}

/// A runtime with two worker threads, as a weft host has on this machine.
pub fn runtime() -> tokio::runtime::Runtime {
    runtime_with(2, "native")
}

/// A runtime with `workers` worker threads, each named `name`.
pub fn runtime_with(workers: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a Tokio runtime")
}
