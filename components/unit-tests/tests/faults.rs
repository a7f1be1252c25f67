//! Unit tests of `components/faults`: the harness reports traps, deadlines and memory
//! exhaustion the way the host does, with the cause.
#![allow(clippy::unwrap_used)]

use weft_test::TestComponent;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../weft.toml");

#[tokio::test]
async fn faults_show_up_with_their_cause() {
    let faults = TestComponent::build_and_load(MANIFEST, "faults")
        .await
        .unwrap();
    assert_eq!(faults.get("/faults/count").await.text(), "1");
    assert_eq!(
        faults.get("/faults/count").await.text(),
        "1",
        "a fresh instance per call"
    );

    let trap = faults.get("/faults/trap").await;
    assert_eq!(trap.status, 500);
    let cause = trap.failure.unwrap();
    assert!(
        cause.contains("deliberate trap")
            && cause.contains("wasm trap")
            && cause.contains("wasm backtrace"),
        "{cause}"
    );

    let looped = faults.get("/faults/loop").await;
    assert_eq!(
        (looped.status, looped.failure.as_deref()),
        (504, Some("deadline exceeded"))
    );
    assert_eq!(
        faults.get("/faults/hog").await.status,
        500,
        "16 MiB memory cap from the manifest"
    );

    let echoed = faults
        .send("POST", "/faults/echo", b"round trip".to_vec())
        .await;
    assert_eq!(echoed.body, b"round trip");
}

#[tokio::test]
async fn a_forbidden_response_header_is_dropped_and_the_rest_kept() {
    let faults = TestComponent::build_and_load(MANIFEST, "faults")
        .await
        .unwrap();
    let allowed = faults.get("/faults/headers?x-a=1&x-b=2").await;
    assert_eq!(
        (allowed.status, allowed.text()),
        (200, "headers".to_string())
    );
    assert_eq!(allowed.headers["x-a"], "1");
    assert_eq!(allowed.headers["x-b"], "2");

    // The host refuses `connection` from a guest: the SDK drops that one header.
    let mixed = faults
        .get("/faults/headers?x-a=1&connection=close&x-b=2")
        .await;
    assert_eq!(mixed.status, 200);
    assert_eq!(mixed.headers["x-a"], "1");
    assert_eq!(mixed.headers["x-b"], "2");
    assert!(
        mixed.headers.get("connection").is_none(),
        "{:?}",
        mixed.headers
    );
}

#[tokio::test]
async fn a_missing_wasm_names_the_command_that_builds_it() {
    let dir = std::env::temp_dir().join(format!("weft-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"t\"\n[components.gone]\nsource = \"gone.wasm\"\n[components.gone.build]\ncommand = \"make gone\"\n",
    )
    .unwrap();
    let err = TestComponent::from_manifest(&manifest, "gone")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gone.wasm does not exist: build it with `make gone`"),
        "{err}"
    );
}
