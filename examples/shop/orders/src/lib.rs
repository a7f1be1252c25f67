//! The shop's orders service (REST), a `wasi:http@0.3.0` service: its HTTP comes from
//! the `wasip3` crate, weft's key-value and messaging from `weft:platform/service-imports`.
//! (inventory, beside it, is a 0.2 component: both generations run side by side.)
//!
//! - `POST /orders` `{"customer": "...", "items": [{"sku": "...", "qty": 1}]}`: validates
//!   the body (400 naming the field), asks inventory to reserve the items over
//!   request/reply (409 when it cannot, 503 when it does not answer), stores the order
//!   in the `orders` bucket, publishes `shop.orders.created`, answers 201 with the order.
//! - `GET /orders/:id` (404 when unknown), `GET /orders` (all, oldest first).
//! - Request/reply (the gateway): `shop.order.get` (body an id) answers the order or
//!   `null`; `shop.order.list` every order.

// weft's capabilities, with the wit-bindgen that `wasip3` uses.
wit_bindgen::generate!({
    path: "../../../wit",
    world: "weft:platform/service-imports-handler",
    generate_all,
});

use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasi::keyvalue::{atomics, store};
use wasip3::http::types::{ErrorCode, Request, Response};
use wasip3::http_compat::{http_from_wasi_request, http_into_wasi_response};
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

wasip3::http::service::export!(Orders);
export!(Orders);

const BUCKET: &str = "orders";
const RESERVE: &str = "shop.inventory.reserve";
const CREATED: &str = "shop.orders.created";
const RESERVE_TIMEOUT_MS: u32 = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
}

struct Orders;

impl exports::wasmcloud::messaging::handler::Guest for Orders {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let reply_to = msg
            .reply_to
            .ok_or("orders answers requests: a reply subject is required")?;
        let answer = if msg.subject.ends_with(".list") {
            list()
        } else {
            get(String::from_utf8_lossy(&msg.body).trim())
        };
        let body = match answer {
            (200, value) => value,
            (404, _) => Value::Null,
            (_, value) => return Err(value.to_string()),
        };
        consumer::publish(&BrokerMessage {
            subject: reply_to,
            body: body.to_string().into_bytes(),
            reply_to: None,
        })
    }
}

impl wasip3::exports::http::handler::Guest for Orders {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let (parts, body) = http_from_wasi_request(request)?.into_parts();
        let path = parts.uri.path().trim_end_matches('/').to_string();
        let (status, body) = match (parts.method, path.strip_prefix("/orders")) {
            (http::Method::POST, Some("")) => {
                let body = body.collect().await?.to_bytes();
                create(&body)
            }
            (http::Method::GET, Some("")) => list(),
            (http::Method::GET, Some(id)) => get(id.trim_start_matches('/')),
            _ => (404, json!({ "error": "not found" })),
        };
        let response = http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| ErrorCode::InternalError(Some(e.to_string())))?;
        http_into_wasi_response(response)
    }
}

fn error(status: u16, message: &str, field: Option<&str>) -> (u16, Value) {
    match field {
        Some(field) => (status, json!({ "error": message, "field": field })),
        None => (status, json!({ "error": message })),
    }
}

/// Checks the body field by field, so the client learns exactly what is wrong.
fn validate(body: &[u8]) -> Result<(String, Vec<Item>), (u16, Value)> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, &format!("body is not JSON: {e}"), None))?;
    let customer = match value.get("customer") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => {
            return Err(error(
                400,
                "customer must be a non-empty string",
                Some("customer"),
            ));
        }
    };
    let Some(Value::Array(raw_items)) = value.get("items") else {
        return Err(error(400, "items must be an array", Some("items")));
    };
    if raw_items.is_empty() {
        return Err(error(400, "items must not be empty", Some("items")));
    }
    let mut items = Vec::new();
    for (i, item) in raw_items.iter().enumerate() {
        let sku = match item.get("sku") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(error(
                    400,
                    "sku must be a non-empty string",
                    Some(&format!("items[{i}].sku")),
                ));
            }
        };
        let qty = match item.get("qty").and_then(Value::as_u64) {
            Some(q) if q > 0 => q,
            _ => {
                return Err(error(
                    400,
                    "qty must be a positive integer",
                    Some(&format!("items[{i}].qty")),
                ));
            }
        };
        items.push(Item { sku, qty });
    }
    Ok((customer, items))
}

fn create(body: &[u8]) -> (u16, Value) {
    let (customer, items) = match validate(body) {
        Ok(valid) => valid,
        Err(rejection) => return rejection,
    };
    let bucket = match store::open(BUCKET) {
        Ok(bucket) => bucket,
        Err(e) => return error(500, &format!("cannot open the orders bucket: {e:?}"), None),
    };
    // The id first: inventory holds the reservation under it until it finds the order.
    let id = match atomics::increment(&bucket, "next-id", 1) {
        Ok(n) => format!("o-{n:06}"),
        Err(e) => return error(500, &format!("cannot allocate an order id: {e:?}"), None),
    };
    let request = json!({ "reservation": id, "items": items }).to_string();
    let reply = match consumer::request(RESERVE, request.as_bytes(), RESERVE_TIMEOUT_MS) {
        Ok(reply) => reply,
        Err(e) => return error(503, &format!("inventory is unavailable: {e}"), None),
    };
    let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    if answer.get("ok") != Some(&Value::Bool(true)) {
        let reason = answer
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("the items cannot be reserved");
        return error(409, reason, None);
    }
    let order = Order {
        id: id.clone(),
        customer,
        items,
    };
    let json = serde_json::to_vec(&order).unwrap_or_default();
    if let Err(e) = bucket.set(&format!("order:{id}"), &json) {
        return error(500, &format!("cannot store the order: {e:?}"), None);
    }
    // The order is stored; a failed event is logged, not turned into a failed order.
    if let Err(e) = consumer::publish(&BrokerMessage {
        subject: CREATED.into(),
        body: json,
        reply_to: None,
    }) {
        eprintln!("could not publish {CREATED} for {id}: {e}");
    }
    (201, serde_json::to_value(&order).unwrap_or_default())
}

fn get(id: &str) -> (u16, Value) {
    let stored = store::open(BUCKET).and_then(|b| b.get(&format!("order:{id}")));
    match stored {
        Ok(Some(json)) => (200, serde_json::from_slice(&json).unwrap_or_default()),
        Ok(None) => error(404, &format!("no order `{id}`"), None),
        Err(e) => error(500, &format!("{e:?}"), None),
    }
}

fn list() -> (u16, Value) {
    let bucket = match store::open(BUCKET) {
        Ok(bucket) => bucket,
        Err(e) => return error(500, &format!("{e:?}"), None),
    };
    let mut orders = Vec::new();
    let mut cursor = None;
    while let Ok(page) = bucket.list_keys(cursor) {
        for key in page.keys.iter().filter(|k| k.starts_with("order:")) {
            if let Ok(Some(json)) = bucket.get(key) {
                orders.push(serde_json::from_slice::<Value>(&json).unwrap_or_default());
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    (200, Value::Array(orders))
}
