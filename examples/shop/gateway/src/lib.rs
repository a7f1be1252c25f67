//! The shop's GraphQL gateway (`POST /graphql`, async-graphql): one query spans the
//! orders and inventory services, each field resolved by request/reply on the bus, so
//! the gateway holds no data and knows no service's address.
//!
//! ```graphql
//! { order(id: "1") { id customer items { sku qty inStock } } }
//! ```
//!
//! `order` and `orders` ask `shop.order.get` / `shop.order.list`; each item's
//! `inStock` asks `shop.inventory.stock`. A service that does not answer makes its
//! field an error in the GraphQL response, not a failed request.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "weft:platform/rest-service",
    with: {
        "wasi:http/types@0.2.12": weft_sdk::wasi::http::types,
        "wasi:io/error@0.2.12": weft_sdk::wasi::io::error,
        "wasi:io/poll@0.2.12": weft_sdk::wasi::io::poll,
        "wasi:io/streams@0.2.12": weft_sdk::wasi::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": weft_sdk::wasi::clocks::monotonic_clock,
    },
    generate_all,
});

use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Schema, SimpleObject};
use exports::wasi::http::incoming_handler::Guest;
use serde::Deserialize;
use wasmcloud::messaging::consumer;
use weft_sdk::http::{read_body, respond};
use weft_sdk::wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

const TIMEOUT_MS: u32 = 2000;

/// Asks `subject` with `body` and parses the JSON answer.
fn ask<T: for<'de> Deserialize<'de>>(subject: &str, body: &str) -> async_graphql::Result<T> {
    let reply = consumer::request(subject, body.as_bytes(), TIMEOUT_MS)
        .map_err(|e| async_graphql::Error::new(format!("{subject}: {e}")))?;
    serde_json::from_slice(&reply.body)
        .map_err(|e| async_graphql::Error::new(format!("{subject}: unreadable answer: {e}")))
}

#[derive(Debug, Deserialize, SimpleObject)]
#[graphql(complex)]
struct Item {
    sku: String,
    qty: u64,
}

#[async_graphql::ComplexObject]
impl Item {
    /// Units of this SKU in stock now (from inventory); null, with an error, if
    /// inventory cannot say.
    async fn in_stock(&self) -> async_graphql::Result<Option<i64>> {
        #[derive(Deserialize)]
        struct Stock {
            stock: i64,
        }
        Ok(Some(ask::<Stock>("shop.inventory.stock", &self.sku)?.stock))
    }
}

#[derive(Debug, Deserialize, SimpleObject)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
}

struct Query;

#[Object]
impl Query {
    /// One order (from orders), or null if there is none with that id.
    async fn order(&self, _ctx: &Context<'_>, id: String) -> async_graphql::Result<Option<Order>> {
        ask("shop.order.get", &id)
    }

    /// Every order, oldest first (from orders).
    async fn orders(&self) -> async_graphql::Result<Vec<Order>> {
        ask("shop.order.list", "")
    }
}

struct Gateway;

impl Guest for Gateway {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let json = [("content-type", "application/json")];
        if !matches!(request.method(), Method::Post) {
            let error = br#"{"error":"POST a GraphQL request: {\"query\": \"...\"}"}"#;
            return respond(out, 405, &json, error);
        }
        let body = match read_body(&request) {
            Ok(body) => body,
            Err(e) => return respond(out, 400, &json, e.as_bytes()),
        };
        let gql: async_graphql::Request = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                let error = serde_json::json!({ "error": format!("not a GraphQL request: {e}") });
                return respond(out, 400, &json, error.to_string().as_bytes());
            }
        };
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
            .limit_depth(8)
            .limit_complexity(200)
            .finish();
        // Resolvers call the host synchronously: a single-threaded executor is enough.
        let response = futures::executor::block_on(schema.execute(gql));
        let body = serde_json::to_vec(&response).unwrap_or_default();
        respond(out, 200, &json, &body);
    }
}

export!(Gateway);
