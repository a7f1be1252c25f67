//! gRPC unary calls: the example calculator component (examples/grpc) on weft, with
//! fresh instances and with reuse, against the same service written natively with
//! tonic. The load generator is a tonic client in this process: one thread,
//! [`CHANNELS`] HTTP/2 connections, [`IN_FLIGHT`] calls in flight.
//!
//! Besides throughput and latency, each server's CPU time per call is reported: on a
//! 2-core machine that the load generator shares, throughput moves with the machine by
//! 10-30% between runs, while CPU per call is what a server costs, and moves far less.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use calculator_client::{AddRequest, CalculatorClient};
use tonic::transport::Channel;

use crate::http::{Contestant, REUSE, interleave_with};
use crate::load::Load;
use crate::procs;
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

/// HTTP/2 connections the client keeps open.
pub const CHANNELS: usize = 4;

/// Calls in flight at once (as wrk's 32 connections elsewhere).
pub const IN_FLIGHT: usize = 32;

/// Unary `Add` calls: native tonic, weft fresh, weft reuse; with every server on one
/// worker thread, then on two.
///
/// One worker each is the cleaner comparison on a 2-core machine: the server under test
/// has one core and the load generator the other. With two workers, the server's
/// threads and the client's share two cores, and what is measured includes the
/// scheduler's contention between them (weft's longer calls suffer it more: its
/// stream tasks and the HTTP/2 connection's task meet on the connection's lock). Both
/// are reported, against native tonic on the same number of workers.
pub fn unary(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    for workers in [1, 2] {
        unary_on(settings, wasm, report, workers)?;
    }
    Ok(())
}

/// [`unary`] with every server on `workers` worker threads.
fn unary_on(settings: &Settings, wasm: &Wasm, report: &mut Report, workers: u16) -> Result<()> {
    let threads = if workers == 1 { "thread" } else { "threads" };
    let command = format!(
        "servers on {workers} worker {threads}; tonic client, 1 thread, {CHANNELS} connections, {IN_FLIGHT} calls in flight, {} s, Calculator/Add",
        settings.secs
    );
    println!("\ngRPC unary ({command}):");
    let native_url = serve_native(workers)?;
    let workers_arg = workers.to_string();
    let hosts = procs::fresh_and_reuse_with(
        &format!("weft-grpc-{workers}w"),
        "calculator",
        &wasm.calculator,
        "[{ path = \"/weft.example.calculator.v1.Calculator/...\" }]",
        REUSE,
        &["--workers", &workers_arg],
    )?;
    for weft in &hosts {
        answers(&weft.http)?;
    }
    let contestants = [
        Contestant {
            label: "native tonic",
            url: native_url.clone(),
        },
        Contestant {
            label: "weft (fresh instance)",
            url: hosts[0].http.clone(),
        },
        Contestant {
            label: "weft (reuse)",
            url: hosts[1].http.clone(),
        },
    ];
    // Each server's CPU time per call, in µs, for every measured run.
    let cpu: HashMap<&str, Cpu> = HashMap::from([
        (native_url.as_str(), Cpu::Threads(NATIVE_THREADS)),
        (
            hosts[0].http.as_str(),
            Cpu::Process(hosts[0].proc.child.id()),
        ),
        (
            hosts[1].http.as_str(),
            Cpu::Process(hosts[1].proc.child.id()),
        ),
    ]);
    let per_call: RefCell<HashMap<String, Vec<f64>>> = RefCell::default();
    let m = interleave_with(settings, &contestants, |url, secs| {
        let probe = &cpu[url];
        let before = probe.seconds()?;
        let measured = load(url, secs)?;
        let used = probe.seconds()? - before;
        let calls = measured.rps * secs as f64;
        let mut per_call = per_call.borrow_mut();
        let runs = per_call.entry(url.to_string()).or_default();
        runs.push(used * 1e6 / calls.max(1.0));
        Ok(measured)
    })?;
    let (native, fresh, reuse) = (&m[0], &m[1], &m[2]);
    // The first run of each is the warm-up.
    let cpu_median = |url: &str| {
        let runs = per_call.borrow().get(url).cloned().unwrap_or_default();
        median(runs.into_iter().skip(1).collect())
    };
    let (native_cpu, fresh_cpu, reuse_cpu) = (
        cpu_median(&native_url),
        cpu_median(&hosts[0].http),
        cpu_median(&hosts[1].http),
    );
    println!(
        "    server CPU per call (median): native tonic {native_cpu:.1} µs, weft fresh {fresh_cpu:.1} µs, weft reuse {reuse_cpu:.1} µs"
    );
    let (higher, lower) = (Better::Higher, Better::Lower);
    let on = format!("{workers} worker {threads}");
    let name = |figure: &str| format!("{on}: {figure}");
    let names = [
        name("fresh instance per call: throughput"),
        name("fresh instance per call: p99 latency"),
        name("instance reuse: throughput"),
        name("instance reuse: p99 latency"),
        name("instance reuse: p50 latency"),
        name("fresh instance per call: server CPU per call"),
        name("instance reuse: server CPU per call"),
    ];
    #[rustfmt::skip]
    report.add_rows("gRPC unary", &command, &[
        (names[0].as_str(), "calls/s", fresh.rps, "native tonic", native.rps, higher, Target::ratio_at_least(0.5)),
        (names[1].as_str(), "ms", fresh.p99, "native tonic", native.p99, lower, Target::ratio_at_most(2.0)),
        (names[2].as_str(), "calls/s", reuse.rps, "native tonic", native.rps, higher, Target::ratio_at_least(0.8)),
        (names[3].as_str(), "ms", reuse.p99, "native tonic", native.p99, lower, Target::ratio_at_most(2.0)),
        (names[4].as_str(), "ms", reuse.p50, "native tonic", native.p50, lower, None),
        (names[5].as_str(), "µs", fresh_cpu, "native tonic", native_cpu, lower, None),
        (names[6].as_str(), "µs", reuse_cpu, "native tonic", native_cpu, lower, None),
    ]);
    Ok(())
}

/// The name of every thread of the native tonic server (the one that starts it and its
/// runtime's workers), by which its CPU time is found.
const NATIVE_THREADS: &str = "native-grpc";

/// Where a server's CPU time is read.
enum Cpu {
    /// A `weft up` child process: all of its threads.
    Process(u32),
    /// This process's threads of that name.
    Threads(&'static str),
}

impl Cpu {
    /// CPU seconds (user and system) used so far.
    fn seconds(&self) -> Result<f64> {
        match self {
            Cpu::Process(pid) => stat_seconds(&format!("/proc/{pid}/stat")),
            Cpu::Threads(name) => {
                let mut total = 0.0;
                for task in std::fs::read_dir("/proc/self/task")? {
                    let dir = task?.path();
                    let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                    if comm.trim_end() == *name {
                        total += stat_seconds(&dir.join("stat").to_string_lossy())?;
                    }
                }
                Ok(total)
            }
        }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        let field = fields
            .get(i)
            .with_context(|| format!("{path} is too short"))?;
        Ok(field.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// The kernel's clock ticks per second (USER_HZ), in which /proc reports CPU time.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The native tonic calculator on a fresh port, on a runtime of its own with `workers`
/// worker threads (as weft's); its base URL.
fn serve_native(workers: u16) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name(NATIVE_THREADS.into())
        .spawn(move || {
            crate::native::runtime_with(usize::from(workers), NATIVE_THREADS).block_on(
                async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("registering the native server's listener");
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    tonic::transport::Server::builder()
                        .add_service(calculator_client::native_server())
                        .serve_with_incoming(incoming)
                        .await
                        .expect("the native tonic server");
                },
            );
        })?;
    Ok(url)
}

/// Waits until `url` answers an `Add` call (the component is deployed).
fn answers(url: &str) -> Result<()> {
    crate::native::runtime().block_on(async {
        let started = Instant::now();
        loop {
            let channel = Channel::from_shared(url.to_string())?;
            if let Ok(channel) = channel.connect().await
                && CalculatorClient::new(channel)
                    .add(AddRequest::default())
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "{url} did not answer a gRPC call within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// `weft-bench --grpc-load URL SECS`: [`load`] alone, against a server already up.
pub fn load_only(url: &str, secs: u64) -> Result<()> {
    answers(url)?;
    let m = load(url, secs)?;
    println!(
        "{:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        m.rps, m.p50_ms, m.p99_ms, m.errors
    );
    Ok(())
}

/// Calls `Add` on `url` for `secs` seconds with [`IN_FLIGHT`] calls in flight.
fn load(url: &str, secs: u64) -> Result<Load> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            let channel = Channel::from_shared(url.to_string())?
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            channels.push(channel);
        }
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let callers: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let mut client = CalculatorClient::new(channels[i % CHANNELS].clone());
                tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    while Instant::now() < until {
                        let call = Instant::now();
                        let request = AddRequest {
                            a: i as i64,
                            b: 1,
                            ..AddRequest::default()
                        };
                        match client.add(request).await {
                            Ok(_) => latencies.push(call.elapsed()),
                            Err(_) => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for caller in callers {
            let (l, e) = caller.await?;
            latencies.extend(l);
            errors += e;
        }
        Ok(Load::from_latencies(latencies, started.elapsed(), errors))
    })
}
