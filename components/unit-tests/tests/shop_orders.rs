//! Unit tests of the shop's `orders` service, with inventory stubbed.
#![allow(clippy::unwrap_used)]

use weft_test::{Event, Stub, TestComponent};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop/weft.toml");

async fn orders() -> TestComponent {
    TestComponent::build_and_load(MANIFEST, "orders")
        .await
        .unwrap()
}

const ORDER: &str = r#"{"customer": "ann", "items": [{"sku": "apple", "qty": 2}]}"#;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn a_reserved_order_is_stored_published_and_returned() {
    let o = orders().await;
    o.stub(
        "shop.inventory.reserve",
        Stub::Reply(br#"{"ok": true}"#.to_vec()),
    );
    let created = o.send("POST", "/orders", ORDER).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let order = json(&created.body);
    assert_eq!(order["id"], "o-000001");
    assert_eq!(order["items"][0]["qty"], 2);

    let events = o.events();
    assert_eq!(
        events[0],
        Event::Requested {
            subject: "shop.inventory.reserve".into(),
            // The reservation is held under the order's id until inventory finds the order.
            body: br#"{"items":[{"qty":2,"sku":"apple"}],"reservation":"o-000001"}"#.to_vec()
        }
    );
    let Event::Published { subject, body } = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (subject.as_str(), json(body)["id"].as_str()),
        ("shop.orders.created", Some("o-000001"))
    );

    assert_eq!(
        json(&o.get("/orders/o-000001").await.body)["customer"],
        "ann"
    );
    assert_eq!(
        json(&o.get("/orders").await.body).as_array().unwrap().len(),
        1
    );
    assert!(o.kv_get("orders", "order:o-000001").await.is_some());
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let o = orders().await;
    let cases = [
        ("not json", None),
        (r#"{"items": [{"sku": "a", "qty": 1}]}"#, Some("customer")),
        (r#"{"customer": "ann", "items": []}"#, Some("items")),
        (
            r#"{"customer": "ann", "items": [{"sku": "a", "qty": 0}]}"#,
            Some("items[0].qty"),
        ),
        (
            r#"{"customer": "ann", "items": [{"qty": 1}]}"#,
            Some("items[0].sku"),
        ),
    ];
    for (body, field) in cases {
        let response = o.send("POST", "/orders", body).await;
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(json(&response.body)["field"].as_str(), field, "{body}");
    }
    assert!(o.events().is_empty(), "nothing is reserved for bad input");
}

#[tokio::test]
async fn inventory_refusals_and_silence_become_409_and_503() {
    let o = orders().await;
    o.stub(
        "shop.inventory.reserve",
        Stub::Reply(br#"{"ok": false, "reason": "insufficient stock for `apple`"}"#.to_vec()),
    );
    let refused = o.send("POST", "/orders", ORDER).await;
    assert_eq!(refused.status, 409);
    assert_eq!(
        json(&refused.body)["error"],
        "insufficient stock for `apple`"
    );

    o.stub("shop.inventory.reserve", Stub::Timeout);
    let silent = o.send("POST", "/orders", ORDER).await;
    assert_eq!(silent.status, 503);
    assert!(
        json(&silent.body)["error"]
            .as_str()
            .unwrap()
            .contains("timeout")
    );
    assert_eq!(
        o.get("/orders/o-000001").await.status,
        404,
        "no order was stored"
    );
    assert!(
        !o.events()
            .iter()
            .any(|e| matches!(e, Event::Published { .. }))
    );
}
