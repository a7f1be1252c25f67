//! Unit tests of `components/hello`, loaded from the example manifest.
#![allow(clippy::unwrap_used)]

use weft::testing::TestComponent;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/hello/weft.toml"
);

#[tokio::test]
async fn greets_with_the_configured_greeting_and_the_path() {
    let hello = TestComponent::build_and_load(MANIFEST, "hello")
        .await
        .unwrap();
    let response = hello.get("/hello/unit?x=1").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/plain");
    assert_eq!(
        response.text(),
        "Hello from weft! You asked for /hello/unit?x=1\n"
    );

    let hi = hello.with_config("GREETING", "Hi").unwrap();
    assert_eq!(
        hi.get("/hello").await.text(),
        "Hi from weft! You asked for /hello\n"
    );
    assert!(hi.events().is_empty(), "hello talks to nobody");
}
