//! `components/bad-import` and `components/cli-app` exist to be refused: their unit
//! tests check that loading them fails with the reason a deploy would give.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use weft_test::TestComponent;
use weft_test::spec::{ComponentSpec, RouteSpec};

/// Builds the fixtures (once per run; cargo serialises concurrent builds).
fn built(file: &str) -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
                "target/components",
            ])
            .args(["-p", "bad-import", "-p", "cli-app"])
            .status()
            .unwrap();
    assert!(
        status.success(),
        "building the fixtures failed; run `just build` to see why"
    );
    root.join("target/components/wasm32-wasip2/release")
        .join(file)
}

fn http_route() -> ComponentSpec {
    ComponentSpec {
        routes: vec![RouteSpec {
            path: "/x".into(),
            methods: vec![],
            websocket: false,
        }],
        ..ComponentSpec::default()
    }
}

#[tokio::test]
async fn bad_import_is_refused_naming_the_import() {
    let err = TestComponent::new(&built("bad_import.wasm"), "bad-import", http_route())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("weft-test:bad-import/missing"),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_is_refused_for_http_routes() {
    let err = TestComponent::new(&built("cli-app.wasm"), "cli-app", http_route())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is a command"), "{err}");
}
