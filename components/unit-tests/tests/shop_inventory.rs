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

/// The `release-stale` schedule, one tick at a time: a hold older than `HOLD_SECONDS`
/// whose order orders does not know is given back; one whose order exists stays sold;
/// while orders does not answer, nothing changes.
#[tokio::test]
async fn a_tick_releases_reservations_whose_order_was_never_stored() {
    use weft_test::Stub;
    let i = inventory().await.with_config("HOLD_SECONDS", "0").unwrap();
    i.send("PUT", "/inventory/pear", r#"{"stock": 5}"#).await;
    let hold = |id: &str, qty: u32| {
        format!(r#"{{"reservation": "{id}", "items": [{{"sku": "pear", "qty": {qty}}}]}}"#)
    };
    for (id, qty) in [("o-lost", 2), ("o-kept", 1)] {
        let (_, reply) = i.request("shop.inventory.reserve", hold(id, qty)).await;
        assert!(String::from_utf8_lossy(&reply.unwrap().body).contains("\"ok\":true"));
    }
    assert_eq!(i.get("/inventory").await.text(), r#"{"pear":2}"#);

    i.stub("shop.order.get", Stub::Timeout);
    assert_eq!(i.tick("release-stale").await.unwrap(), Outcome::Handled);
    assert_eq!(
        i.get("/inventory").await.text(),
        r#"{"pear":2}"#,
        "orders away: kept"
    );

    i.stub(
        "shop.order.get",
        Stub::Respond(Box::new(|id| {
            if id == b"o-kept" {
                br#"{"id":"o-kept"}"#.to_vec()
            } else {
                b"null".to_vec()
            }
        })),
    );
    assert_eq!(i.tick("release-stale").await.unwrap(), Outcome::Handled);
    assert_eq!(
        i.get("/inventory").await.text(),
        r#"{"pear":4}"#,
        "o-lost given back"
    );
    assert_eq!(i.tick("release-stale").await.unwrap(), Outcome::Handled);
    assert_eq!(i.get("/inventory").await.text(), r#"{"pear":4}"#, "once");
    assert!(i.tick("no-such").await.is_err());
}
