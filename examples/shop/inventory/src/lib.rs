//! The shop's inventory service: stock per SKU in its own `inventory` bucket.
//!
//! - `shop.inventory.reserve` (request/reply) `{"reservation": "o-000001", "items":
//!   [{"sku", "qty"}]}`: reserves all items or none; replies `{"ok": true}` or
//!   `{"ok": false, "reason": "..."}`. A reservation is held (`hold:ID`) until the
//!   schedule below finds its order.
//! - Schedule `release-stale` (a tick on `_WEFT.schedule.inventory.release-stale`): each
//!   hold older than `HOLD_SECONDS` (config, default 60) is looked up with orders
//!   (`shop.order.get`, the reservation id is the order id). An order exists: the hold is
//!   dropped and the stock stays sold. None: the order was never stored (its reply came
//!   after orders' timeout, or orders failed), so the items are given back. Orders does
//!   not answer: the hold waits for the next tick.
//! - `shop.inventory.stock` (request/reply), body a SKU: replies `{"stock": available}`
//!   (the gateway's `inStock`).
//! - `GET /inventory`: `{"sku": available, ...}`; `PUT /inventory/:sku` `{"stock": n}`
//!   sets what is available.
//!
//! Reservations must be atomic across concurrent instances and hosts, and
//! `wasi:keyvalue@0.2.0-draft` offers only `increment`. So each SKU keeps three numbers:
//! `stock` (set by PUT), `reserved` and `released` (both only ever incremented).
//! Available = stock - reserved + released. A reservation reads `released`, then
//! increments `reserved`, and keeps it only if the result, less what it read as
//! released, still fits in stock; otherwise it gives the quantity back through
//! `released`. Two orders racing for the last item both increment, and exactly one
//! sees a total that fits (see `reserve_one` for why the read comes first).

wit_bindgen::generate!({
    path: "../../../wit",
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
use serde_json::{Map, Value, json};
use wasi::keyvalue::atomics;
use wasi::keyvalue::store::{self, Bucket};
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;
use weft_sdk::http::read_body;
use weft_sdk::wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

const BUCKET: &str = "inventory";

struct Inventory;

fn number(bucket: &Bucket, key: &str) -> Result<u64, String> {
    match bucket.get(key).map_err(|e| format!("{e:?}"))? {
        None => Ok(0),
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .parse()
            .map_err(|_| format!("`{key}` is not a number")),
    }
}

/// How many of `sku` can still be reserved.
fn available(bucket: &Bucket, sku: &str) -> Result<u64, String> {
    let stock = number(bucket, &format!("stock:{sku}"))?;
    let held = number(bucket, &format!("reserved:{sku}"))?
        .saturating_sub(number(bucket, &format!("released:{sku}"))?);
    Ok(stock.saturating_sub(held))
}

fn give_back(bucket: &Bucket, sku: &str, qty: u64) {
    let _ = atomics::increment(bucket, &format!("released:{sku}"), qty);
}

/// Reserves `qty` of `sku` or nothing.
///
/// `released` is read *before* `reserved` is incremented. Read after, it could include
/// the give-back of a racing reservation that failed with a later ticket, and this one
/// would count that unit as free while the racer's increment still holds it: two
/// orders for the last item, and a third that failed, sold one item twice (seen in
/// the redeploy-under-orders test: 61 sold of 60). Read before, it can only be stale,
/// which makes a reservation fail where it might have succeeded, never oversell.
fn reserve_one(bucket: &Bucket, sku: &str, qty: u64) -> Result<bool, String> {
    let released = number(bucket, &format!("released:{sku}"))?;
    let reserved = atomics::increment(bucket, &format!("reserved:{sku}"), qty)
        .map_err(|e| format!("{e:?}"))?;
    let stock = number(bucket, &format!("stock:{sku}"))?;
    if reserved.saturating_sub(released) <= stock {
        return Ok(true);
    }
    give_back(bucket, sku, qty);
    Ok(false)
}

fn reserve(body: &[u8]) -> Value {
    let request = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let items = request.get("items").cloned();
    let Some(Value::Array(items)) = items else {
        return json!({ "ok": false, "reason": "the request has no `items` array" });
    };
    let bucket = match store::open(BUCKET) {
        Ok(bucket) => bucket,
        Err(e) => {
            return json!({ "ok": false, "reason": format!("inventory store unavailable: {e:?}") });
        }
    };
    let mut done: Vec<(String, u64)> = Vec::new();
    for item in &items {
        let (Some(sku), Some(qty)) = (
            item.get("sku").and_then(Value::as_str),
            item.get("qty").and_then(Value::as_u64),
        ) else {
            return json!({ "ok": false, "reason": "each item needs `sku` and `qty`" });
        };
        match reserve_one(&bucket, sku, qty) {
            Ok(true) => done.push((sku.to_string(), qty)),
            outcome => {
                // All or nothing: hand back what this order already took.
                for (sku, qty) in &done {
                    give_back(&bucket, sku, *qty);
                }
                let reason = match outcome {
                    Err(e) => e,
                    _ => format!("insufficient stock for `{sku}`"),
                };
                return json!({ "ok": false, "reason": reason });
            }
        }
    }
    if let Some(id) = request.get("reservation").and_then(Value::as_str) {
        let hold = json!({ "at": now_seconds(), "items": items });
        if let Err(e) = bucket.set(&format!("{HOLD}{id}"), hold.to_string().as_bytes()) {
            for (sku, qty) in &done {
                give_back(&bucket, sku, *qty);
            }
            return json!({ "ok": false, "reason": format!("cannot record the reservation: {e:?}") });
        }
    }
    json!({ "ok": true })
}

/// Prefix of a held reservation's key; its value `{"at": seconds, "items": [...]}`.
const HOLD: &str = "hold:";
/// Prefix of a released reservation's claim: incremented once per release attempt, so
/// only the first of two overlapping ticks gives the items back.
const RELEASED: &str = "released-hold:";

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `release-stale` tick: settles every hold older than `HOLD_SECONDS`.
fn release_stale() -> Result<(), String> {
    let bucket = store::open(BUCKET).map_err(|e| format!("{e:?}"))?;
    let hold_seconds: u64 = std::env::var("HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut holds = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor).map_err(|e| format!("{e:?}"))?;
        holds.extend(page.keys.into_iter().filter(|k| k.starts_with(HOLD)));
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let (mut released, mut confirmed) = (0, 0);
    for key in holds {
        let Some(hold) = bucket
            .get(&key)
            .map_err(|e| format!("{e:?}"))?
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
        else {
            continue;
        };
        let at = hold.get("at").and_then(Value::as_u64).unwrap_or(0);
        if now_seconds().saturating_sub(at) < hold_seconds {
            continue;
        }
        let id = &key[HOLD.len()..];
        let Ok(reply) = consumer::request("shop.order.get", id.as_bytes(), 1000) else {
            continue; // orders is away: the next tick asks again
        };
        // Only orders' own answer `null` means "no such order": an error reply (orders
        // overloaded, failing) is not JSON, and the hold waits for the next tick.
        let Ok(answer) = serde_json::from_slice::<Value>(&reply.body) else {
            continue;
        };
        if answer == Value::Null {
            let claim = atomics::increment(&bucket, &format!("{RELEASED}{id}"), 1)
                .map_err(|e| format!("{e:?}"))?;
            if claim == 1 {
                for item in hold
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(sku), Some(qty)) = (
                        item.get("sku").and_then(Value::as_str),
                        item.get("qty").and_then(Value::as_u64),
                    ) {
                        give_back(&bucket, sku, qty);
                    }
                }
                released += 1;
            }
        } else {
            confirmed += 1;
        }
        bucket.delete(&key).map_err(|e| format!("{e:?}"))?;
    }
    if released + confirmed > 0 {
        eprintln!(
            "release-stale: {released} reservations without an order released, {confirmed} confirmed"
        );
    }
    Ok(())
}

impl MessageGuest for Inventory {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        if msg.subject.ends_with(".release-stale") {
            return release_stale();
        }
        let answer = if msg.subject.ends_with(".stock") {
            let sku = String::from_utf8_lossy(&msg.body);
            match store::open(BUCKET)
                .map_err(|e| format!("{e:?}"))
                .and_then(|b| available(&b, &sku))
            {
                Ok(stock) => json!({ "stock": stock }),
                Err(e) => return Err(e),
            }
        } else {
            reserve(&msg.body)
        };
        match msg.reply_to {
            Some(reply_to) => consumer::publish(&BrokerMessage {
                subject: reply_to,
                body: answer.to_string().into_bytes(),
                reply_to: None,
            }),
            None => Err("reservations are requests: a reply subject is required".to_string()),
        }
    }
}

impl HttpGuest for Inventory {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        let (status, body) = match (request.method(), path.strip_prefix("/inventory")) {
            (Method::Get, Some("")) => list(),
            (Method::Put, Some(sku)) if sku.len() > 1 => {
                set_stock(&sku[1..], &read_body(&request).unwrap_or_default())
            }
            _ => (404, json!({ "error": "not found" })),
        };
        respond(out, status, &body);
    }
}

fn list() -> (u16, Value) {
    let bucket = match store::open(BUCKET) {
        Ok(bucket) => bucket,
        Err(e) => return (500, json!({ "error": format!("{e:?}") })),
    };
    let keys = bucket.list_keys(None).map(|r| r.keys).unwrap_or_default();
    let mut stock = Map::new();
    for sku in keys.iter().filter_map(|k| k.strip_prefix("stock:")) {
        stock.insert(sku.to_string(), json!(available(&bucket, sku).unwrap_or(0)));
    }
    (200, Value::Object(stock))
}

/// Makes `n` available: stock = n + what is currently held.
fn set_stock(sku: &str, body: &[u8]) -> (u16, Value) {
    let Some(n) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stock").and_then(Value::as_u64))
    else {
        return (
            400,
            json!({ "error": "body must be {\"stock\": <non-negative integer>}", "field": "stock" }),
        );
    };
    let result = store::open(BUCKET)
        .map_err(|e| format!("{e:?}"))
        .and_then(|bucket| {
            let held = number(&bucket, &format!("reserved:{sku}"))?
                .saturating_sub(number(&bucket, &format!("released:{sku}"))?);
            bucket
                .set(&format!("stock:{sku}"), (n + held).to_string().as_bytes())
                .map_err(|e| format!("{e:?}"))
        });
    match result {
        Ok(()) => (200, json!({ "sku": sku, "available": n })),
        Err(e) => (500, json!({ "error": e })),
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &Value) {
    weft_sdk::http::respond(
        out,
        status,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
}

export!(Inventory);
