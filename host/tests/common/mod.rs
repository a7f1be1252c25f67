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
const COMPONENTS: &[&str] = &[
    "hello",
    "faults",
    "bad-import",
    "cli-app",
    "responder",
    "orders",
    "inventory",
];

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

/// A host on ephemeral loopback ports with its own compile cache. It compiles with
/// Cranelift only, so no switch to optimized code happens in the middle of a test
/// (`tiered_host` has the default Winch-first start).
pub async fn start_host(cache: &Path) -> Host {
    start_host_with(cache, |_| {}).await
}

/// [`start_host`] with some settings changed by `configure`.
pub async fn start_host_with(cache: &Path, configure: impl FnOnce(&mut HostConfig)) -> Host {
    init_logs();
    let mut config = HostConfig {
        baseline_compiler: false,
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_listen: "127.0.0.1:0".parse().expect("address"),
        cache_dir: Some(cache.to_path_buf()),
        data_dir: cache.join("data"),
        max_instances: 100,
        shutdown_grace: Duration::from_secs(5),
        ..HostConfig::default()
    };
    configure(&mut config);
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

/// Whether npm (for the JavaScript example) can run. On a developer machine without it,
/// says loudly that the test is skipped; in CI (`CI` set) its absence fails the test.
pub fn npm_available() -> bool {
    let found = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "npm is required in CI (apt-get install nodejs npm)"
        );
        eprintln!(
            "\n*** SKIPPED: npm is not installed; install Node.js and npm to run the JavaScript example's tests ***\n"
        );
    }
    found
}

/// A `nats-server` of our own on a free loopback port, with JetStream in a temp dir.
/// Stopped (killed) on drop.
pub struct NatsServer {
    child: std::process::Child,
    pub port: u16,
    store: tempfile::TempDir,
}

const NATS_SERVER: &str = "nats-server";

impl NatsServer {
    /// Starts a server, or returns `None` (loudly) on a developer machine without
    /// `nats-server`. In CI (`CI` set) a missing server fails the test.
    pub fn start() -> Option<NatsServer> {
        // A port is never handed out twice in one test process, so a server stopped for
        // a restart test cannot have its port taken by another test's server meanwhile.
        static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let port = loop {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut used = USED.lock().unwrap();
            if !used.contains(&port) {
                used.push(port);
                break port;
            }
        };
        let store = tempfile::tempdir().unwrap();
        NatsServer::start_on(port, store)
    }

    fn start_on(port: u16, store: tempfile::TempDir) -> Option<NatsServer> {
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "\n*** SKIPPED: `{NATS_SERVER}` could not be started ({e}); install it (apt-get install nats-server) to run the NATS tests ***\n"
                );
                return None;
            }
            Err(e) => panic!("`{NATS_SERVER}` is required in CI: {e}"),
        };
        let server = NatsServer { child, port, store };
        server.wait_ready();
        Some(server)
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nats-server did not listen on port {} within 5 s",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server, as a crash would.
    pub fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().unwrap());
        (port, store)
    }

    /// Starts a server again on the port and store of a stopped one.
    pub fn restart((port, store): (u16, tempfile::TempDir)) -> NatsServer {
        NatsServer::start_on(port, store).expect("nats-server was there a moment ago")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host like [`start_host`], on the given NATS server.
pub async fn start_host_on_nats(cache: &Path, nats: &NatsServer) -> Host {
    init_logs();
    let config = HostConfig {
        baseline_compiler: false,
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_listen: "127.0.0.1:0".parse().expect("address"),
        cache_dir: Some(cache.to_path_buf()),
        max_instances: 100,
        shutdown_grace: Duration::from_secs(5),
        nats: Some(weft::messaging::nats::NatsConfig {
            url: nats.url(),
            ..Default::default()
        }),
        ..HostConfig::default()
    };
    Host::start(config).await.expect("starting a host on NATS")
}

/// Runs each named conformance case (an `async fn(Env)`) against both backends: the
/// embedded one and a real nats-server. The test file provides `async fn env(nats: bool)
/// -> Option<Env>`, which returns `None` when nats-server is unavailable locally.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $case() { if let Some(env) = super::env(false).await { super::$case(env).await } })*
        }
        mod nats {
            $(#[tokio::test] async fn $case() { if let Some(env) = super::env(true).await { super::$case(env).await } })*
        }
    };
}
