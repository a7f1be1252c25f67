//! Unit tests of `components/hello`, loaded from the example manifest.
#![allow(clippy::unwrap_used)]

use weft_test::TestComponent;

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
    assert!(
        !hi.concurrent(),
        "a WASI 0.2 component runs without the component model's async support"
    );
}

#[tokio::test]
async fn echoes_the_body_of_other_methods_with_its_content_type() {
    let hello = TestComponent::build_and_load(MANIFEST, "hello")
        .await
        .unwrap();
    let json = format!("{{\"items\":[{}]}}", vec!["1"; 4000].join(","));
    let request = http::Request::post("/hello/echo")
        .header("content-type", "application/json")
        .body(json.clone().into_bytes())
        .unwrap();
    let response = hello.http(request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(response.text(), json);

    let response = hello.send("PUT", "/hello", "plain bytes").await;
    assert_eq!(response.headers["content-type"], "application/octet-stream");
    assert_eq!(response.text(), "plain bytes");
}
