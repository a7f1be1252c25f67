//! The processes a benchmark runs: weft hosts, `wasmtime serve`, nats-server, and the
//! polling that says when they are ready.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("host/bench is two levels down")
        .to_path_buf()
}

/// The release `weft` binary the suite runs: `WEFT_BIN`, or `target/release/weft`
/// (`host/bench/run.sh` builds it first).
pub fn weft_bin() -> PathBuf {
    std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/weft"))
}

/// Where the suite keeps its scratch files, logs and caches: `target/bench`.
pub fn work_dir() -> PathBuf {
    repo_root().join("target/bench")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on loopback")
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Starts `command` with its output in `target/bench/logs/<name>.log`, without
    /// `RUST_BACKTRACE` (these machines set it; it makes wasmtime capture backtraces).
    pub fn spawn(name: &str, mut command: Command) -> Result<Proc> {
        let logs = work_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = command
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
        })
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// Fails if the process has exited, pointing at its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); see target/bench/logs/{}.log",
                self.name,
                self.name
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `weft up` process and its addresses.
pub struct Weft {
    pub proc: Proc,
    pub http: String,
    pub admin: String,
}

impl Weft {
    /// Waits until no component on this host runs on Winch code any more, so that what
    /// is measured next is the steady state, with no tier-up compiling beside it.
    pub fn wait_optimized(&self) -> Result<()> {
        let client = weft::admin_client::AdminClient::new(&self.admin, None);
        crate::native::runtime().block_on(async {
            let start = Instant::now();
            while client
                .list()
                .await?
                .iter()
                .any(|d| d.tier == Some(weft_runtime::api::Tier::Baseline))
            {
                if start.elapsed() > Duration::from_secs(300) {
                    bail!("still on Winch code after 5 minutes");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
    }
}

/// Starts `weft up MANIFEST` (release build, no build commands) on fresh ports with its
/// compile cache in `cache`, and waits until its admin API answers.
pub fn weft_up(name: &str, manifest: &Path, cache: &Path, extra: &[&str]) -> Result<Weft> {
    let (http_port, admin_port) = (free_port(), free_port());
    let mut command = Command::new(crate::procs::weft_bin());
    command
        .arg("up")
        .arg(manifest)
        .args(["--no-build", "--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        .arg("--cache-dir")
        .arg(cache)
        .arg("--data-dir")
        .arg(cache.join("data"))
        .args(extra)
        .env("RUST_LOG", "warn");
    let mut weft = Weft {
        proc: Proc::spawn(name, command)?,
        http: format!("http://127.0.0.1:{http_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
    };
    let status = format!("{}/v1/status", weft.admin);
    wait_until_ok(&mut weft.proc, &status, Duration::from_secs(180))?;
    // The admin API answers before the manifest's components are deployed (in a
    // lattice: seeded and converged on); `weft up` says "serving on" once they are.
    wait_for_log(&mut weft.proc, "serving on", Duration::from_secs(300))?;
    Ok(weft)
}

/// Waits until the process's log (target/bench/logs/NAME.log) has a line with `needle`.
pub fn wait_for_log(proc: &mut Proc, needle: &str, timeout: Duration) -> Result<()> {
    let log = work_dir().join("logs").join(format!("{}.log", proc.name));
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle)) {
            return Ok(());
        }
        proc.check_alive()?;
        if start.elapsed() > timeout {
            bail!("no `{needle}` in {} within {timeout:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two `weft up` hosts serving `component` from `wasm` on `routes` (a TOML array), one
/// with a fresh instance per call and one reusing instances for `reuse` calls, each
/// with its own cache, compiled with Cranelift only.
pub fn fresh_and_reuse(
    prefix: &str,
    component: &str,
    wasm: &Path,
    routes: &str,
    reuse: u32,
) -> Result<Vec<Weft>> {
    fresh_and_reuse_with(prefix, component, wasm, routes, reuse, &[])
}

/// [`fresh_and_reuse`] with further `weft up` arguments for both hosts.
pub fn fresh_and_reuse_with(
    prefix: &str,
    component: &str,
    wasm: &Path,
    routes: &str,
    reuse: u32,
    extra: &[&str],
) -> Result<Vec<Weft>> {
    let dir = work_dir();
    let mut hosts = Vec::new();
    for (name, requests) in [(prefix.to_string(), 1), (format!("{prefix}-reuse"), reuse)] {
        let manifest = dir.join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"{name}\"\n[components.{component}]\nsource = \"{}\"\nroutes = {routes}\nlimits = {{ requests_per_instance = {requests}, max_concurrency = 1024 }}\n",
                wasm.display()
            ),
        )?;
        let cache = dir.join(format!("cache-{name}"));
        let mut args = vec!["--cranelift-only"];
        args.extend_from_slice(extra);
        let weft =
            weft_up(&name, &manifest, &cache, &args).with_context(|| format!("starting {name}"))?;
        hosts.push(weft);
    }
    Ok(hosts)
}

/// `wasmtime serve` of the pinned version on a fresh port, with WASI CLI imports
/// allowed (Rust std and the JS and Python runtimes import them).
pub fn wasmtime_serve(name: &str, wasm: &Path, options: &[&str]) -> Result<(Proc, String)> {
    let port = free_port();
    let mut command = Command::new(crate::tools::wasmtime());
    command
        .args(["serve", "-S", "cli", "--addr", &format!("127.0.0.1:{port}")])
        .args(options)
        .arg(wasm);
    Ok((
        Proc::spawn(name, command)?,
        format!("http://127.0.0.1:{port}"),
    ))
}

/// Polls `url` with GET until it answers 2xx; returns how long that took.
pub fn wait_until_ok(proc: &mut Proc, url: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if http_get_ok(url) {
            return Ok(start.elapsed());
        }
        proc.check_alive()?;
        if start.elapsed() > timeout {
            bail!("{url} did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One plain HTTP/1.1 GET on a new connection: true on a 2xx status.
pub fn http_get_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(mut stream) = std::net::TcpStream::connect(authority) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 2")
}

/// A nats-server (2.10 or newer, for the NATS tests' JetStream) on a fresh port.
pub fn nats_server() -> Result<(Proc, String)> {
    let port = free_port();
    let mut command = Command::new(crate::tools::nats_server());
    // JetStream on (the durable section's streams), stored under the bench's work dir.
    let store = work_dir().join(format!("nats-{port}"));
    command.args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-js",
        "--store_dir",
    ]);
    command.arg(&store);
    let mut proc = Proc::spawn("nats-server", command)?;
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        proc.check_alive()?;
        if start.elapsed() > Duration::from_secs(10) {
            bail!("nats-server did not listen on {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((proc, format!("nats://127.0.0.1:{port}")))
}
