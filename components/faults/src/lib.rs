//! A misbehaving component for the host's fault tests. The last path segment picks
//! the behaviour, so it works under any route prefix:
//!
//! - `/trap`: panics (a trap), after writing a line to stderr;
//! - `/loop`: spins forever;
//! - `/hog`: allocates until linear memory runs out;
//! - `/slow?chunks=N&delay_ms=M`: streams N chunks, M ms apart;
//! - `/echo`: answers with the request body;
//! - `/count`: bumps a global counter and answers with it (always 1 on a fresh instance);
//! - `/print`: writes one line each to stdout and stderr;
//! - `/flood?lines=N`: writes N lines to stdout;
//! - `/env`: reports the environment variables and preopened directories it can see;
//! - `/fetch?url=U`: makes an outgoing GET to U and reports the outcome;
//! - `/headers?NAME=VALUE&...`: answers with those response headers, the forbidden ones
//!   (`connection`, say) included;
//! - `/scribble?kib=N&hold_ms=M`: fills N KiB of fresh heap with a marker byte, then
//!   holds the instance for M ms before answering;
//! - `/peek?kib=N`: counts marker bytes in N KiB of heap it never wrote (always 0 on a
//!   fresh instance).

use std::sync::atomic::{AtomicU64, Ordering};

use weft_sdk::exports::wasi::http::incoming_handler::Guest;
use weft_sdk::http::{path, read_body, respond, write_all};
use weft_sdk::wasi::clocks::monotonic_clock;
use weft_sdk::wasi::http::outgoing_handler;
use weft_sdk::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The byte `/scribble` writes and `/peek` looks for.
const SCRIBBLE: u8 = 0xA5;

struct Faults;

impl Guest for Faults {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let full = path(&request);
        let (path, query) = full.split_once('?').unwrap_or((&full, ""));
        let route = format!("/{}", path.rsplit('/').next().unwrap_or_default());
        let text = [("content-type", "text/plain")];
        match route.as_str() {
            "/trap" => {
                eprintln!("about to fail on purpose");
                panic!("deliberate trap");
            }
            "/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/slow" => slow(
                out,
                param(query, "chunks", 5),
                param(query, "delay_ms", 100),
            ),
            "/events" => events(out, param(query, "n", 5), param(query, "every_ms", 100)),
            "/echo" => match read_body(&request) {
                Ok(body) => respond(
                    out,
                    200,
                    &[("content-type", "application/octet-stream")],
                    &body,
                ),
                Err(e) => respond(out, 400, &text, e.as_bytes()),
            },
            "/count" => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
                respond(out, 200, &text, n.to_string().as_bytes());
            }
            "/flood" => {
                let lines = param(query, "lines", 1000);
                for i in 0..lines {
                    println!("flood line {i}");
                }
                respond(out, 200, &text, b"flooded");
            }
            "/print" => {
                println!("a line on stdout");
                eprintln!("a line on stderr");
                respond(out, 200, &text, b"printed");
            }
            "/env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let root = std::fs::read_dir("/")
                    .map(|d| d.count())
                    .map_err(|e| e.to_string());
                let body = format!("vars: {vars:?}\nroot: {root:?}\n");
                respond(out, 200, &text, body.as_bytes());
            }
            "/fetch" => {
                let url = query.strip_prefix("url=").unwrap_or_default();
                let outcome = fetch(url);
                respond(out, 200, &text, outcome.as_bytes());
            }
            "/whoami" => {
                // The request as the component sees it, whatever the client's protocol.
                let scheme = match request.scheme() {
                    Some(weft_sdk::wasi::http::types::Scheme::Http) => "http".to_string(),
                    Some(weft_sdk::wasi::http::types::Scheme::Https) => "https".to_string(),
                    Some(weft_sdk::wasi::http::types::Scheme::Other(s)) => s,
                    None => "none".to_string(),
                };
                let answer = format!(
                    "{:?} {scheme} {} {}",
                    request.method(),
                    request.authority().unwrap_or_default(),
                    request.path_with_query().unwrap_or_default()
                );
                respond(out, 200, &text, answer.as_bytes());
            }
            "/headers" => {
                let headers: Vec<(&str, &str)> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                respond(out, 200, &headers, b"headers");
            }
            "/scribble" => {
                // Fills fresh heap with a marker and holds the instance for `hold_ms`.
                let size = param(query, "kib", 4096) as usize * 1024;
                let mut secret = vec![0u8; size];
                secret.fill(SCRIBBLE);
                std::hint::black_box(&secret);
                monotonic_clock::subscribe_duration(param(query, "hold_ms", 0) * 1_000_000).block();
                std::mem::forget(secret);
                respond(out, 200, &text, b"scribbled");
            }
            "/peek" => {
                // Counts marker bytes in heap this instance never wrote: 0 on a fresh instance.
                let size = param(query, "kib", 4096) as usize * 1024;
                let fresh: Vec<u8> = Vec::with_capacity(size);
                let base = fresh.as_ptr();
                let seen = (0..size)
                    .filter(|&i| unsafe { base.add(i).read_volatile() } == SCRIBBLE)
                    .count();
                respond(out, 200, &text, seen.to_string().as_bytes());
            }
            _ => respond(out, 404, &text, b"unknown fault"),
        }
    }
}

fn param(query: &str, name: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// Server-sent events: `n` events `data: I`, one every `every_ms`, each flushed alone.
fn events(out: ResponseOutparam, n: u64, every_ms: u64) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/event-stream");
    let _ = headers.append("cache-control", b"no-cache");
    let response = OutgoingResponse::new(headers);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    let Ok(stream) = body.write() else { return };
    for i in 0..n {
        if i > 0 {
            monotonic_clock::subscribe_duration(every_ms * 1_000_000).block();
        }
        if !write_all(&stream, format!("id: {i}\ndata: event {i}\n\n").as_bytes()) {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn slow(out: ResponseOutparam, chunks: u64, delay_ms: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    let Ok(stream) = body.write() else { return };
    for i in 0..chunks {
        if !write_all(&stream, format!("chunk {i}\n").as_bytes()) {
            return;
        }
        monotonic_clock::subscribe_duration(delay_ms * 1_000_000).block();
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Makes a GET to `url` (`http://host[:port]/path`) and describes what happened.
fn fetch(url: &str) -> String {
    let Some(rest) = url.strip_prefix("http://") else {
        return "only http:// URLs are supported".to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("error: {code:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("status: {}", response.status()),
                Some(Ok(Err(code))) => format!("error: {code:?}"),
                other => format!("error: {other:?}"),
            }
        }
    }
}

weft_sdk::export!(Faults);
