//! Shared by the integration tests: real components built from source, real hosts on
//! ephemeral ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use weft_runtime::spec::{ComponentSpec, RouteSpec};
#[allow(unused_imports)]
pub use weft_runtime::triggers::http::idle_instances as http_idle;
#[allow(unused_imports)]
pub use weft_runtime::triggers::messaging::idle_instances as messaging_idle;
use weft_runtime::{Host, HostConfig};
pub use weft_test::host::{NatsServer, host_config, nats_config};

/// The guest crates the tests use, all built by one cargo call.
const COMPONENTS: &[&str] = &[
    "hello",
    "hello-p3",
    "calculator",
    "calculator-p3",
    "chat",
    "faults",
    "bad-import",
    "cli-app",
    "responder",
    "spin-app",
    "wstd-app",
    "orders",
    "inventory",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("host/cli is two levels down")
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
    let mut config = host_config(cache);
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
                websocket: false,
            })
            .collect(),
        ..ComponentSpec::default()
    }
}

/// A spec subscribing to `subject` in the component's queue group, 16 messages in flight.
pub fn subscriber(subject: &str) -> ComponentSpec {
    ComponentSpec {
        subscriptions: vec![weft_runtime::spec::SubscriptionSpec {
            max_in_flight: 16,
            ..weft_runtime::spec::SubscriptionSpec::to(subject)
        }],
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

/// Whether the command `tool` can run (`tool --version`). On a developer machine without
/// it, says loudly that the test is skipped and how to install it; in CI (`CI` set) its
/// absence fails the test.
pub fn tool_available(tool: &str, install: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is required in CI ({install})"
        );
        eprintln!(
            "\n*** SKIPPED: `{tool}` is not installed; install it ({install}) to run this test ***\n"
        );
    }
    found
}

/// Whether npm (for the JavaScript example) can run; see [`tool_available`].
pub fn npm_available() -> bool {
    tool_available("npm", "apt-get install nodejs npm")
}

/// A host like [`start_host`], on the given NATS server.
pub async fn start_host_on_nats(cache: &Path, nats: &NatsServer) -> Host {
    start_host_with(cache, |config| config.nats = Some(nats_config(nats.url()))).await
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

/// A plain HTTP server on an ephemeral loopback port that answers every request with
/// `200 target`: somewhere for a guest's outgoing requests to go that is not the host.
pub async fn http_target() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ntarget",
                    )
                    .await;
            });
        }
    });
    addr
}

/// The `weft` binary of this build.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A `weft` process with its stderr read line by line.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// A test that fails part way never leaves a host running (it would hold the test's
/// output pipe open, and its ports).
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with `{needle}` within 60 s; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// Starts `weft up MANIFEST` on ephemeral ports with its cache and data in `dir`; returns
/// the running process and its HTTP and admin addresses.
pub fn weft_up(dir: &std::path::Path, manifest: &std::path::Path) -> (Running, String, String) {
    weft_up_with(dir, manifest, &[])
}

/// [`weft_up`] with further `weft up` arguments.
pub fn weft_up_with(
    dir: &std::path::Path,
    manifest: &std::path::Path,
    args: &[&str],
) -> (Running, String, String) {
    spawn_weft_up(dir, Some(manifest), args)
}

/// A host joining the lattice on `nats` with no manifest (`weft up --nats URL`, run in
/// `dir`, where there is no weft.toml), with further `weft up` arguments.
pub fn weft_join(dir: &std::path::Path, nats: &str, args: &[&str]) -> (Running, String, String) {
    let mut all = vec!["--nats", nats];
    all.extend_from_slice(args);
    spawn_weft_up(dir, None, &all)
}

fn spawn_weft_up(
    dir: &std::path::Path,
    manifest: Option<&std::path::Path>,
    args: &[&str],
) -> (Running, String, String) {
    let mut command = Command::new(WEFT);
    if manifest.is_none() {
        // Where no weft.toml is: the host joins the lattice with nothing to seed.
        command.current_dir(dir);
    }
    let mut child = command
        .arg("up")
        .args(manifest)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        // Its own key-value store: a host running on this machine holds the default one.
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weft up");
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut up = Running {
        child,
        lines,
        seen: Vec::new(),
    };
    let http = up
        .wait_for("serving on http://")
        .rsplit("http://")
        .next()
        .unwrap()
        .to_string();
    let admin = up
        .wait_for("admin API on http://")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    (up, http, admin)
}

/// `npm install` of playwright-core (no browser download) in `dir`, unless it is there,
/// with npm's cache under target/ rather than the user's.
pub fn install_playwright(dir: &std::path::Path) {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .env(
            "npm_config_cache",
            workspace_root().join("target/npm-cache"),
        )
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .expect("running npm install");
    assert!(status.success(), "npm install of playwright-core failed");
}
