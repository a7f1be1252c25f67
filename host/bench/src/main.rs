//! `just bench`: weft side by side with its references, in one run.
//!
//! - HTTP: the same Rust `wasi:http` hello component on weft and on `wasmtime serve`,
//!   and a native axum handler with the same response; then a 16 KiB JSON echo.
//! - Large guests: JavaScript and Python hello components, weft vs `wasmtime serve`.
//! - gRPC: unary calls to the example calculator component vs a native tonic service.
//! - WebSocket: echo round trips through the chat component vs a native axum echo.
//! - Messaging: request/reply through the echo-responder component vs a native
//!   responder doing the same, on nats-server and on the embedded bus.
//! - Durable messages: the echo-responder behind a durable subscription vs a native
//!   JetStream pull consumer doing the same, on nats-server.
//! - Many hosts: `weft deploy` to live on 1, 2 and 3 lattice hosts vs one host alone,
//!   and HTTP throughput of 2 lattice hosts vs 1.
//! - Deploy to first response (cold, and a restart with a warm cache), and density.
//!
//! Every figure is a median over interleaved rounds and a ratio against a reference
//! measured in the same run (see `report.rs`). `host/bench/run.sh` installs the
//! tools and builds the components first.
//!
//! Arguments (after `--`): `--quick` (short runs, 100 density components; results go
//! to target/bench), `--only SECTION,...` with sections `http` (which includes `p3`, the
//! `wasi:http` 0.3 guest), `p3`, `large`, `grpc`, `websocket`, `messaging`
//! (or one of its halves: `messaging-nats`, `messaging-embedded`), `durable`, `lattice`,
//! `deploy`, `density`, `observability` (what traces cost the hot path).
//!
//! `--grpc-load URL SECS` only runs the gRPC section's load generator against a server
//! that is already up, and prints what it measured: to profile a host under that load.

mod deploy;
mod durable;
mod grpc;
mod http;
mod lattice;
mod load;
mod messaging;
mod native;
mod observability;
mod procs;
mod report;
mod tools;
mod websocket;

use std::time::Instant;

use anyhow::{Context, Result};

/// The `weft` binary's allocator, for the sections that run weft in this process (the
/// embedded bus); the native references here use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long and how often each figure is measured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rounds: usize,
    pub secs: u64,
    pub density: usize,
    pub only: Option<Vec<String>>,
    pub quick: bool,
}

impl Settings {
    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .map(|list| list.split(',').map(str::to_string).collect());
        Settings {
            rounds: if quick { 1 } else { 3 },
            secs: if quick { 1 } else { 4 },
            density: if quick { 100 } else { 1000 },
            only,
            quick,
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("\nbenchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--grpc-load") {
        let (Some(url), Some(secs)) = (args.get(i + 1), args.get(i + 2)) else {
            anyhow::bail!("usage: weft-bench --grpc-load URL SECS");
        };
        return grpc::load_only(url, secs.parse().context("SECS: a whole number")?);
    }
    let settings = Settings::from_args();
    // Every section but messaging runs `wasmtime serve` as its reference.
    let wasm = tools::Wasm::find(
        ["http", "p3", "large", "deploy", "density"]
            .iter()
            .any(|s| settings.wants(s)),
    )?;
    let started = Instant::now();
    std::fs::create_dir_all(procs::work_dir())?;
    let mut report = report::Report {
        date: today(),
        machine: machine(),
        quick: settings.quick,
        figures: Vec::new(),
    };
    println!(
        "weft benchmarks: {} round(s) of {} s per contestant{}",
        settings.rounds,
        settings.secs,
        if settings.quick { " (quick)" } else { "" }
    );

    if settings.wants("http") || settings.wants("p3") || settings.wants("large") {
        let dir = procs::work_dir();
        let manifest = dir.join("throughput.toml");
        std::fs::write(&manifest, http::manifest(&wasm))?;
        println!("starting the weft host (compiles the guests once, then caches them)...");
        let weft = procs::weft_up("weft-throughput", &manifest, &dir.join("cache"), &[])
            .context("starting weft for the HTTP benchmarks")?;
        // The large guests start on Winch code; their Cranelift compiles must not run
        // beside the measurements (nor Winch code be measured).
        println!("waiting for the Cranelift tier-up of the large guests...");
        weft.wait_optimized()?;
        if settings.wants("http") {
            http::small(&settings, &wasm, &weft, &mut report)?;
        }
        if settings.wants("http") || settings.wants("p3") {
            http::p3(&settings, &wasm, &weft, &mut report)?;
        }
        if settings.wants("large") {
            http::large(&settings, &wasm, &weft, &mut report)?;
        }
    }
    if settings.wants("grpc") {
        grpc::unary(&settings, &wasm, &mut report)?;
    }
    if settings.wants("websocket") {
        websocket::echo(&settings, &wasm, &mut report)?;
    }
    if settings.wants("observability") {
        observability::tracing_cost(&settings, &wasm, &mut report)?;
    }
    if settings.wants("messaging") || settings.wants("messaging-nats") {
        messaging::nats(&settings, &wasm, &mut report)?;
    }
    if settings.wants("messaging") || settings.wants("messaging-embedded") {
        messaging::embedded(&settings, &wasm, &mut report)?;
    }
    if settings.wants("durable") {
        durable::nats(&settings, &wasm, &mut report)?;
    }
    if settings.wants("lattice") {
        lattice::deploys(&settings, &wasm, &mut report)?;
    }
    if settings.wants("deploy") {
        deploy::deploy_times(&settings, &wasm, &mut report)?;
    }
    if settings.wants("density") {
        deploy::density(&settings, &wasm, &mut report)?;
    }
    println!("\nall done in {:.0} s", started.elapsed().as_secs_f64());
    report.write()
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let wasmtime = std::process::Command::new(tools::wasmtime())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cores} cores, Linux {}, {wasmtime}, weft {} (release)",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}
