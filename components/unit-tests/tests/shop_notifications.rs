//! Unit tests of the shop's `notifications` service: JavaScript, built by componentize-js,
//! tested with the same harness as the Rust components.
#![allow(clippy::unwrap_used)]

use weft_test::Outcome;
use weft_test::TestComponent;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop/weft.toml");

#[tokio::test]
async fn keeps_order_events_and_serves_the_recent_ones() {
    let npm = std::process::Command::new("npm").arg("--version").output();
    if !npm.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "npm is required in CI (apt-get install nodejs npm)"
        );
        eprintln!(
            "\n*** SKIPPED: npm is not installed; install Node.js and npm to test the JavaScript service ***\n"
        );
        return;
    }
    let n = TestComponent::build_and_load(MANIFEST, "notifications")
        .await
        .unwrap();
    assert_eq!(n.get("/notifications").await.text(), "[]");

    for id in ["o-1", "o-2"] {
        let order = format!(r#"{{"id": "{id}", "customer": "ann", "items": []}}"#);
        assert_eq!(
            n.message("shop.orders.created", order).await,
            Outcome::Handled
        );
    }
    let response = n.get("/notifications").await;
    assert_eq!(response.status, 200);
    let events: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(events[0]["subject"], "shop.orders.created");
    assert_eq!(events[1]["order"]["id"], "o-2");
    assert_eq!(n.kv_get("notifications", "seq").await.unwrap(), b"2");
    assert!(n.events().is_empty(), "notifications only listens");

    let Outcome::HandlerError(error) = n.message("shop.orders.created", "not json").await else {
        panic!("a malformed event is a handler error, not a trap")
    };
    assert!(
        error.starts_with("event on shop.orders.created is not JSON"),
        "{error}"
    );
    assert_eq!(n.get("/nothing").await.status, 404);
}
