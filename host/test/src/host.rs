//! Real hosts for end-to-end tests: the one place that says how a test host is
//! configured (ephemeral loopback ports, compile cache and data in the test's own
//! directory), and a `nats-server` of the test's own on a free port.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_runtime::HostConfig;
use weft_runtime::bus::nats::NatsConfig;

/// How a test host runs: HTTP and admin on ephemeral loopback ports, compiled code in
/// `dir` and the embedded store in `dir/data` (never the user's directories), at most
/// 100 instances, 5 s of shutdown grace, and Cranelift only, so no switch to optimized
/// code happens in the middle of a test (set `baseline_compiler` for Winch first).
pub fn host_config(dir: &Path) -> HostConfig {
    HostConfig {
        baseline_compiler: false,
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        cache_dir: Some(dir.to_path_buf()),
        data_dir: dir.join("data"),
        max_instances: 100,
        shutdown_grace: Duration::from_secs(5),
        ..HostConfig::default()
    }
}

/// The settings to use the NATS server at `url`.
pub fn nats_config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        ..NatsConfig::default()
    }
}

/// A `nats-server` of our own on a free loopback port, with JetStream in a temp dir.
/// Stopped (killed) on drop.
pub struct NatsServer {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
    store: tempfile::TempDir,
}

const NATS_SERVER: &str = "nats-server";

impl NatsServer {
    /// Starts a server, or returns `None` (loudly) on a developer machine without
    /// `nats-server`. In CI (`CI` set) a missing server fails the test.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with(&[])
    }

    /// [`NatsServer::start`] with extra `nats-server` arguments (`--user`, `--pass`, ...).
    pub fn start_with(args: &[&str]) -> Option<NatsServer> {
        let port = NatsServer::free_port();
        let store = tempfile::tempdir().expect("a temporary directory");
        NatsServer::start_on(port, store, args)
    }

    /// A free loopback port never handed out before in this test process (for a
    /// server's client or cluster port), so a server stopped for a restart test cannot
    /// have its port taken by another test's server meanwhile.
    pub fn free_port() -> u16 {
        static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        loop {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            let port = listener.local_addr().expect("a bound port").port();
            let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
            if !used.contains(&port) {
                used.push(port);
                return port;
            }
        }
    }

    fn start_on(port: u16, store: tempfile::TempDir, args: &[&str]) -> Option<NatsServer> {
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .args(args)
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
        // 15 s: a loaded machine (a build beside the tests) starts it slowly.
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nats-server did not listen on port {} within 15 s",
            self.port
        );
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server, as a crash would.
    pub fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let store = std::mem::replace(
            &mut self.store,
            tempfile::tempdir().expect("a temporary directory"),
        );
        (port, store)
    }

    /// Starts a server again on the port and store of a stopped one.
    pub fn restart((port, store): (u16, tempfile::TempDir)) -> NatsServer {
        NatsServer::start_on(port, store, &[]).expect("nats-server was there a moment ago")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
