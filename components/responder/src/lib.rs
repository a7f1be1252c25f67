//! A messaging test component in the `weft:platform/service` world.
//!
//! Messages: the last subject token picks the behaviour.
//! - `echo`: replies `<INSTANCE>:<body>` (INSTANCE from config, default `-`);
//! - `fail`: returns a handler error (the body, or `deliberate handler failure`);
//!   `trap`: panics;
//! - `publish`: publishes the body to the subject named by the body's first line,
//!   with the rest as payload, and replies `ok` or the error;
//! - `call`: requests the subject named by the body and replies with the answer or error;
//! - `record`: publishes `<INSTANCE>:<body>` to `seen.<subject>`;
//! - `count`: replies how many messages this instance has handled, this one included
//!   (always 1 unless the component reuses instances);
//! - `durable`: for a durable delivery, publishes `<attempt> <id> <INSTANCE>:<body>` to
//!   `seen.<subject>`; a body `poison` always fails, `fail-until-N` fails until attempt
//!   N, `slow-MS` publishes `<attempt> <id> <INSTANCE>` to `seen.start.<subject>` and
//!   sleeps MS milliseconds first; `dead` publishes the dead letter's
//!   `Weft-Error` and `Weft-Original-Subject` headers instead of the body;
//! - `event-publish`: publishes a body `SUBJECT\nPAYLOAD\nID` through
//!   `weft:platform/events` (the id may be empty) and replies `ok` or the error;
//! - `tick` (a schedule named `tick`): publishes `<INSTANCE> <attempt> <body>` to
//!   `seen.tick`;
//! - `slow`: publishes `seen.start.<subject>`, sleeps for the body's milliseconds, then
//!   publishes `seen.done.<subject>` (a handler still running when something stops).
//!
//! HTTP (the bridge): `POST /publish/<subject>[?reply_to=<subject>]` publishes the
//! request body, with that reply subject if given (202, or 403 with the error); `POST /request/<subject>` requests with the body and answers with the
//! reply (200) or the error (502).
//!
//! Logging: `POST /log/<level>` logs the body through `wasi:logging` (204).
//!
//! Configuration: `GET /config/<key>` reads one key through `wasi:config/store` (200, or
//! 404 if absent), `GET /config` every `key=value`, a line.
//!
//! Key-value: `GET|PUT|DELETE /kv/<bucket>/<key>`, `POST /kv/<bucket>/<key>/incr` (by 1),
//! `GET /kv/<bucket>` (every key, one a line, read page by page),
//! `POST /kv/<bucket>/<key>/many` (`get-many` of the key repeated as often as the body
//! says; answers `<n> values, <bytes> bytes`), `POST /kv/<bucket>/<prefix>/fill` (sets
//! as many keys `<prefix>-00000`, ... as the body says, with `set-many` in batches of
//! 500). A refused `open` answers 403; a failed call 500 with the error.

wit_bindgen::generate!({
    path: "../../wit",
    world: "weft:platform/service",
    // Share weft-sdk's HTTP and I/O types, so its helpers work on this crate's requests.
    with: {
        "wasi:http/types@0.2.12": weft_sdk::wasi::http::types,
        "wasi:io/error@0.2.12": weft_sdk::wasi::io::error,
        "wasi:io/poll@0.2.12": weft_sdk::wasi::io::poll,
        "wasi:io/streams@0.2.12": weft_sdk::wasi::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": weft_sdk::wasi::clocks::monotonic_clock,
    },
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as HttpGuest;
use exports::wasmcloud::messaging::handler::Guest as MessageGuest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;
use weft_sdk::http::{read_body, respond};
use weft_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Responder;

fn instance() -> String {
    std::env::var("INSTANCE").unwrap_or_else(|_| "-".to_string())
}

fn reply(to: &Option<String>, body: Vec<u8>) -> Result<(), String> {
    match to {
        Some(subject) => consumer::publish(&BrokerMessage {
            subject: subject.clone(),
            body,
            reply_to: None,
        }),
        None => Ok(()),
    }
}

/// Messages this instance has handled.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl MessageGuest for Responder {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let action = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let text = String::from_utf8_lossy(&msg.body).to_string();
        match action.as_str() {
            "echo" => reply(&msg.reply_to, format!("{}:{text}", instance()).into_bytes()),
            "fail" if text.is_empty() => Err("deliberate handler failure".to_string()),
            "fail" => Err(text),
            "trap" => panic!("deliberate trap in a message handler"),
            "publish" => {
                let (subject, payload) = text.split_once('\n').unwrap_or((&text, ""));
                let outcome = consumer::publish(&BrokerMessage {
                    subject: subject.to_string(),
                    body: payload.as_bytes().to_vec(),
                    reply_to: None,
                });
                reply(
                    &msg.reply_to,
                    outcome.err().unwrap_or_else(|| "ok".into()).into_bytes(),
                )
            }
            "call" => {
                let answer = match consumer::request(&text, b"from responder", 1000) {
                    Ok(m) => m.body,
                    Err(e) => e.into_bytes(),
                };
                reply(&msg.reply_to, answer)
            }
            "record" => consumer::publish(&BrokerMessage {
                subject: format!("seen.{}", msg.subject),
                body: format!("{}:{text}", instance()).into_bytes(),
                reply_to: None,
            }),
            "count" => reply(&msg.reply_to, handled.to_string().into_bytes()),
            "event-publish" => {
                let mut lines = text.splitn(3, '\n');
                let subject = lines.next().unwrap_or_default();
                let payload = lines.next().unwrap_or_default();
                let id = lines.next().filter(|id| !id.is_empty()).map(str::to_string);
                let outcome =
                    weft::platform::events::publish(subject, payload.as_bytes(), id.as_deref());
                reply(
                    &msg.reply_to,
                    outcome.err().unwrap_or_else(|| "ok".into()).into_bytes(),
                )
            }
            "tick" => {
                let attempt = weft::platform::events::current_delivery().map_or(0, |d| d.attempt);
                consumer::publish(&BrokerMessage {
                    subject: "seen.tick".into(),
                    body: format!("{} {attempt} {text}", instance()).into_bytes(),
                    reply_to: None,
                })
            }
            "durable" | "dead" => {
                let Some(d) = weft::platform::events::current_delivery() else {
                    return Err("not a durable delivery".into());
                };
                if text == "poison" {
                    return Err("poison message: cannot be handled".into());
                }
                let until: u32 = text
                    .strip_prefix("fail-until-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                if d.attempt < until {
                    return Err(format!("failing attempt {}", d.attempt));
                }
                if let Some(ms) = text.strip_prefix("slow-") {
                    consumer::publish(&BrokerMessage {
                        subject: format!("seen.start.{}", msg.subject),
                        body: format!("{} {} {}", d.attempt, d.id, instance()).into_bytes(),
                        reply_to: None,
                    })?;
                    let ms = ms.split('-').next().unwrap_or("0");
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                }
                let header = |name: &str| {
                    d.headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let what = if action == "dead" {
                    format!(
                        "{}|{}",
                        header("Weft-Original-Subject"),
                        header("Weft-Error")
                    )
                } else {
                    format!("{}:{text}", instance())
                };
                consumer::publish(&BrokerMessage {
                    subject: format!("seen.{}", msg.subject),
                    body: format!("{} {} {what}", d.attempt, d.id).into_bytes(),
                    reply_to: None,
                })
            }
            "slow" => {
                let seen = |stage: &str| {
                    consumer::publish(&BrokerMessage {
                        subject: format!("seen.{stage}.{}", msg.subject),
                        body: vec![],
                        reply_to: None,
                    })
                };
                seen("start")?;
                let ms = text.trim().parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                seen("done")
            }
            other => Err(format!("unknown action `{other}`")),
        }
    }
}

impl HttpGuest for Responder {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let body = read_body(&request).unwrap_or_default();
        let (status, answer) = if let Some(target) = path.strip_prefix("/publish/") {
            let (subject, reply_to) = match target.split_once("?reply_to=") {
                Some((subject, reply_to)) => (subject, Some(reply_to.to_string())),
                None => (target, None),
            };
            match consumer::publish(&BrokerMessage {
                subject: subject.to_string(),
                body,
                reply_to,
            }) {
                Ok(()) => (202, b"published".to_vec()),
                Err(e) => (403, e.into_bytes()),
            }
        } else if let Some(subject) = path.strip_prefix("/request/") {
            match consumer::request(subject, &body, 1000) {
                Ok(m) => (200, m.body),
                Err(e) => (502, e.into_bytes()),
            }
        } else if path == "/config" {
            config_all()
        } else if let Some(key) = path.strip_prefix("/config/") {
            match wasi::config0_2_0_draft_2024_09_27::store::get(key) {
                Ok(Some(value)) => (200, value.into_bytes()),
                Ok(None) => (404, format!("no config key `{key}`").into_bytes()),
                Err(e) => (500, format!("{e:?}").into_bytes()),
            }
        } else if let Some(rest) = path.strip_prefix("/kv/") {
            kv(&request.method(), rest, body)
        } else if let Some(level) = path.strip_prefix("/log/") {
            log(level, &body)
        } else {
            (404, b"unknown path".to_vec())
        };
        respond(out, status, &[], &answer);
    }
}

/// Every configuration key and value, `key=value` a line, through `wasi:config/store`.
fn config_all() -> (u16, Vec<u8>) {
    match wasi::config0_2_0_draft_2024_09_27::store::get_all() {
        Ok(pairs) => {
            let lines: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (200, lines.join("\n").into_bytes())
        }
        Err(e) => (500, format!("{e:?}").into_bytes()),
    }
}

/// Logs the body through `wasi:logging` at `level`, with context `responder`.
fn log(level: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use wasi::logging::logging::{Level, log};
    let level = match level {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warn" => Level::Warn,
        "error" => Level::Error,
        "critical" => Level::Critical,
        _ => return (400, format!("unknown level `{level}`").into_bytes()),
    };
    log(level, "responder", &String::from_utf8_lossy(body));
    (204, vec![])
}

fn kv(method: &weft_sdk::wasi::http::types::Method, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    use wasi::keyvalue::{atomics, batch, store};
    use weft_sdk::wasi::http::types::Method;
    let mut parts = path.splitn(3, '/');
    let (bucket_name, key, action) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    let bucket = match store::open(bucket_name) {
        Ok(bucket) => bucket,
        Err(store::Error::AccessDenied) => {
            return (
                403,
                format!("access denied to bucket `{bucket_name}`").into_bytes(),
            );
        }
        Err(e) => return (500, format!("{e:?}").into_bytes()),
    };
    let outcome = match (method, key, action) {
        (Method::Get, None, _) => {
            list_all_keys(&bucket).map(|keys| (200, keys.join("\n").into_bytes()))
        }
        (Method::Get, Some(key), None) => bucket.get(key).map(|v| match v {
            Some(v) => (200, v),
            None => (404, b"no such key".to_vec()),
        }),
        (Method::Put, Some(key), None) => bucket.set(key, &body).map(|()| (204, vec![])),
        (Method::Delete, Some(key), None) => bucket.delete(key).map(|()| (204, vec![])),
        (Method::Post, Some(key), Some("incr")) => {
            atomics::increment(&bucket, key, 1).map(|n| (200, n.to_string().into_bytes()))
        }
        (Method::Post, Some(key), Some("many")) => {
            let n = String::from_utf8_lossy(&body).trim().parse().unwrap_or(1);
            let keys = vec![key.to_string(); n];
            batch::get_many(&bucket, &keys).map(|values| {
                let bytes: usize = values.iter().flatten().map(|(_, v)| v.len()).sum();
                (
                    200,
                    format!("{} values, {bytes} bytes", values.len()).into_bytes(),
                )
            })
        }
        (Method::Post, Some(prefix), Some("fill")) => {
            let n: usize = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
            let mut outcome = Ok((204, vec![]));
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let pairs: Vec<(String, Vec<u8>)> = chunk
                    .iter()
                    .map(|i| (format!("{prefix}-{i:05}"), b"v".to_vec()))
                    .collect();
                if let Err(e) = batch::set_many(&bucket, &pairs) {
                    outcome = Err(e);
                    break;
                }
            }
            outcome
        }
        _ => Ok((405, b"unsupported".to_vec())),
    };
    outcome.unwrap_or_else(|e| (500, format!("{e:?}").into_bytes()))
}

/// Every key of `bucket`, page by page.
fn list_all_keys(
    bucket: &wasi::keyvalue::store::Bucket,
) -> Result<Vec<String>, wasi::keyvalue::store::Error> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor)?;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(keys),
        }
    }
}

export!(Responder);
