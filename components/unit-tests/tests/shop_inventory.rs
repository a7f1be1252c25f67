//! Unit tests of the shop's `inventory` service.
#![allow(clippy::unwrap_used)]

use weft_test::Outcome;
use weft_test::TestComponent;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop/weft.toml");

async fn inventory() -> TestComponent {
    TestComponent::build_and_load(MANIFEST, "inventory")
        .await
        .unwrap()
}

async fn reserve(i: &TestComponent, items: &str) -> serde_json::Value {
    let (outcome, reply) = i
        .request("shop.inventory.reserve", format!(r#"{{"items": {items}}}"#))
        .await;
    assert_eq!(outcome, Outcome::Handled);
    serde_json::from_slice(&reply.unwrap().body).unwrap()
}

#[tokio::test]
async fn reserves_what_is_available_and_no_more() {
    let i = inventory().await;
    assert_eq!(
        i.send("PUT", "/inventory/apple", r#"{"stock": 3}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        reserve(&i, r#"[{"sku": "apple", "qty": 2}]"#).await["ok"],
        true
    );
    let refused = reserve(&i, r#"[{"sku": "apple", "qty": 2}]"#).await;
    assert_eq!(
        (refused["ok"].as_bool(), refused["reason"].as_str()),
        (Some(false), Some("insufficient stock for `apple`"))
    );
    assert_eq!(i.get("/inventory").await.text(), r#"{"apple":1}"#);
}

#[tokio::test]
async fn an_order_is_reserved_whole_or_not_at_all() {
    let i = inventory().await;
    i.send("PUT", "/inventory/apple", r#"{"stock": 5}"#).await;
    i.send("PUT", "/inventory/pear", r#"{"stock": 1}"#).await;
    let refused = reserve(
        &i,
        r#"[{"sku": "apple", "qty": 2}, {"sku": "pear", "qty": 2}]"#,
    )
    .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(
        i.get("/inventory").await.text(),
        r#"{"apple":5,"pear":1}"#,
        "the apples were given back"
    );
}

#[tokio::test]
async fn bad_requests_are_answered_not_dropped() {
    let i = inventory().await;
    assert_eq!(reserve(&i, r#""nonsense""#).await["ok"], false);
    assert_eq!(i.send("PUT", "/inventory/apple", "{}").await.status, 400);
    assert_eq!(
        i.message("shop.inventory.reserve", "{}").await,
        Outcome::HandlerError("reservations are requests: a reply subject is required".into())
    );
}
