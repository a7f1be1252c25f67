//! Shared by the integration tests: real components built from source, real hosts on
//! ephemeral ports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use weft::spec::{ComponentSpec, RouteSpec};
use weft::{Host, HostConfig};

/// The guest crates the tests use, all built by one cargo call.
const COMPONENTS: &[&str] = &["hello", "faults", "bad-import", "cli-app"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn build_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--target-dir",
        "target/components",
    ]);
    for c in COMPONENTS {
        cmd.args(["-p", c]);
    }
    cmd
}

/// The bytes of a test component, built from `components/NAME` on first use.
pub fn wasm(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = build_command()
            .status()
            .expect("running cargo to build the test components");
        assert!(
            status.success(),
            "building the test components failed; run `just build` to see why"
        );
    });
    let file = if name == "cli-app" {
        name.to_string()
    } else {
        name.replace('-', "_")
    };
    let path = workspace_root().join(format!(
        "target/components/wasm32-wasip2/release/{file}.wasm"
    ));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build it with `just build`", path.display()))
}

/// A host on ephemeral loopback ports with its own compile cache.
pub async fn start_host(cache: &Path) -> Host {
    init_logs();
    let config = HostConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_listen: "127.0.0.1:0".parse().expect("address"),
        cache_dir: Some(cache.to_path_buf()),
        max_instances: 100,
        shutdown_grace: Duration::from_secs(5),
        ..HostConfig::default()
    };
    Host::start(config).await.expect("starting a host")
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("weft=info")
        .try_init();
}

/// A spec serving `paths` with any method.
pub fn routes(paths: &[&str]) -> ComponentSpec {
    ComponentSpec {
        routes: paths
            .iter()
            .map(|p| RouteSpec {
                path: p.to_string(),
                methods: vec![],
            })
            .collect(),
        ..ComponentSpec::default()
    }
}

/// Deploys a built test component into `host` directly.
pub async fn deploy(host: &Host, name: &str, component: &str, spec: ComponentSpec) {
    host.deployments()
        .deploy(name, spec, wasm(component).into())
        .await
        .unwrap_or_else(|e| panic!("deploying {name}: {e}"));
}

pub fn url(host: &Host, path: &str) -> String {
    format!("http://{}{path}", host.http_addr())
}

pub fn admin_url(host: &Host, path: &str) -> String {
    format!("http://{}{path}", host.admin_addr())
}
