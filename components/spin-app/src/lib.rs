//! A component written the way Spin 4 documents it: `spin-sdk` 7, `#[http_service]`,
//! built as a `wasi:http@0.3.0` service. weft runs it unchanged.
//!
//! - `GET  /spin/hello`: a greeting.
//! - `GET  /spin/var/NAME`: the Spin variable `NAME` (404 if undefined).
//! - `POST /spin/count/KEY`: increments KEY in the default key-value store.
//! - `GET  /spin/keys`: the default store's keys, one per line.
//! - `POST /spin/cas/KEY`: adds 1 to KEY with `wasi:keyvalue@0.2.0-draft2`'s
//!   compare-and-swap, retrying when it loses; answers `VALUE RETRIES`.
//! - `POST /spin/incr/KEY?by=N`: `wasi:keyvalue` draft2's `increment`.
//! - `GET  /spin/stream?n=N&ms=M`: N lines, M ms apart, then a trailer `x-lines: N`
//!   (declared in a `Trailer` header, as HTTP/1.1 wants).
//! - `POST /spin/echo`: the request body streamed back as it arrives, its trailers too
//!   (declared with the request's `Trailer` header).
//! - `GET  /spin/sleep?ms=M`: answers after M ms (async: the instance can serve others).
//! - `GET  /spin/served`: requests this instance has served (instance-local state).
//! - `GET  /spin/trap`: panics. `GET /spin/loop`: never returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use spin_sdk::http::{BoxBody, IntoResponse, Request, StatusCode, box_body};
use spin_sdk::{http_service, key_value, variables};

type Response = spin_sdk::http::Response<BoxBody>;

static SERVED: AtomicU64 = AtomicU64::new(0);

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let param = |name: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    match path.as_str() {
        "/spin/hello" => text(StatusCode::OK, "Hello from a Spin 4 component".into()),
        "/spin/served" => text(StatusCode::OK, served.to_string()),
        "/spin/trap" => panic!("spin-app: asked to trap"),
        "/spin/loop" =>
        {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        "/spin/sleep" => {
            spin_sdk::time::sleep(Duration::from_millis(param("ms"))).await;
            text(StatusCode::OK, "slept".into())
        }
        "/spin/keys" => match key_value::Store::open_default().await {
            Ok(store) => match store.get_keys().await.collect().await {
                Ok(keys) => text(StatusCode::OK, keys.join("\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
            },
            Err(e) => text(StatusCode::FORBIDDEN, format!("{e:?}")),
        },
        "/spin/stream" => stream(param("n"), param("ms")),
        "/spin/echo" => {
            let (parts, body) = request.into_parts();
            let body = body.map_err(|e| anyhow_error(format!("{e:?}")));
            let mut response = Response::new(box_body(body));
            // The request's declared trailers come back as the response's.
            for name in ["content-type", "trailer"] {
                if let Some(value) = parts.headers.get(name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        _ => {
            if let Some(name) = path.strip_prefix("/spin/var/") {
                return match variables::get(name).await {
                    Ok(value) => text(StatusCode::OK, value),
                    Err(e) => text(StatusCode::NOT_FOUND, format!("{e:?}")),
                };
            }
            if let Some(key) = path.strip_prefix("/spin/count/") {
                return count(key).await;
            }
            if let Some(key) = path.strip_prefix("/spin/cas/") {
                return cas_increment(key);
            }
            if let Some(key) = path.strip_prefix("/spin/incr/") {
                return increment(key, param("by") as i64);
            }
            text(StatusCode::NOT_FOUND, format!("no route {path}"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(box_body(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

async fn count(key: &str) -> Response {
    let store = match key_value::Store::open_default().await {
        Ok(store) => store,
        Err(e) => return text(StatusCode::FORBIDDEN, format!("{e:?}")),
    };
    let current = match store.get(key).await {
        Ok(value) => value
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
    };
    let next = current + 1;
    match store.set(key, next.to_string()).await {
        Ok(()) => text(StatusCode::OK, next.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
    }
}

/// `n` lines, `ms` apart, written by a task of their own while the response is already
/// on its way, then a trailer.
fn stream(n: u64, ms: u64) -> Response {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Frame<Bytes>>(4);
    spin_sdk::wit_bindgen::spawn(async move {
        use futures::SinkExt;
        for i in 0..n {
            if i > 0 && ms > 0 {
                spin_sdk::time::sleep(Duration::from_millis(ms)).await;
            }
            if tx
                .send(Frame::data(Bytes::from(format!("line {i}\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "x-lines",
            n.to_string().parse().expect("a number is a header value"),
        );
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    use futures::StreamExt;
    let body = http_body_util::StreamBody::new(rx.map(Ok::<_, std::convert::Infallible>));
    let mut response = Response::new(box_body(body));
    // HTTP/1.1 sends only the trailers a response declares.
    response
        .headers_mut()
        .insert("trailer", http::HeaderValue::from_static("x-lines"));
    response
}

fn anyhow_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// Adds 1 to `key` in bucket `default` by compare-and-swap, retrying after each loss.
fn cas_increment(key: &str) -> Response {
    use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
    let bucket = match store::open("default") {
        Ok(bucket) => bucket,
        Err(e) => return text(StatusCode::FORBIDDEN, format!("{e:?}")),
    };
    let mut retries = 0u32;
    loop {
        let cas = match atomics::Cas::new(&bucket, key) {
            Ok(cas) => cas,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
        };
        let current = match cas.current() {
            Ok(value) => value
                .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
                .unwrap_or(0),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
        };
        match atomics::swap(cas, (current + 1).to_string().as_bytes()) {
            Ok(()) => return text(StatusCode::OK, format!("{} {retries}", current + 1)),
            Err(atomics::CasError::CasFailed(_)) => retries += 1,
            Err(atomics::CasError::StoreError(e)) => {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}"));
            }
        }
    }
}

fn increment(key: &str, by: i64) -> Response {
    use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
    match store::open("default").and_then(|bucket| atomics::increment(&bucket, key, by)) {
        Ok(value) => text(StatusCode::OK, value.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
    }
}
