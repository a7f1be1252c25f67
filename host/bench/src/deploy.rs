//! Deploy to first response (cold, and on a restart with a warm compile cache), and
//! density: many distinct components on one host.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procs::{self, Proc};
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

fn empty_manifest(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("empty.toml");
    std::fs::write(&path, "name = \"bench-empty\"\n")?;
    Ok(path)
}

/// A fresh, empty directory under target/bench.
fn fresh_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = procs::work_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `weft deploy` as a user runs it.
fn weft_deploy(admin: &str, name: &str, wasm: &Path, route: &str) -> Result<()> {
    let output = Command::new(crate::procs::weft_bin())
        .args(["deploy", name, "--admin", admin, "--route", route])
        .arg("--wasm")
        .arg(wasm)
        .env_remove("RUST_BACKTRACE")
        .output()?;
    if !output.status.success() {
        bail!(
            "weft deploy {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Deploy to first response for hello and the large guests.
pub fn deploy_times(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    let dir = procs::work_dir();
    let empty = empty_manifest(&dir)?;
    for (label, path, rounds, target_cold, target_warm) in [
        ("hello (Rust)", &wasm.hello, settings.rounds, 50.0, 200.0),
        (
            "JavaScript hello",
            &wasm.js_hello,
            settings.rounds.min(2),
            3000.0,
            200.0,
        ),
        (
            "Python hello",
            &wasm.py_hello,
            settings.rounds.min(2),
            3000.0,
            200.0,
        ),
    ] {
        println!("\nDeploy to first response, {label}:");
        let (mut serve, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            // Reference: `wasmtime serve` from start to first answer (it compiles on start).
            let (mut proc, url) = procs::wasmtime_serve("wasmtime-serve-start", path, &[])?;
            let t = procs::wait_until_ok(&mut proc, &format!("{url}/"), Duration::from_secs(300))?;
            drop(proc);
            serve.push(ms(t));

            // weft, cold: a running host with an empty compile cache.
            let cache = fresh_dir("deploy-cache")?;
            let mut weft = procs::weft_up("weft-deploy", &empty, &cache, &[])?;
            let start = Instant::now();
            weft_deploy(&weft.admin, "svc", path, "/svc/...")?;
            let t_cold = start.elapsed()
                + procs::wait_until_ok(
                    &mut weft.proc,
                    &format!("{}/svc/", weft.http),
                    Duration::from_secs(300),
                )?;
            // The cache is warm once Cranelift's code is in it.
            weft.wait_optimized()?;
            drop(weft);
            cold.push(ms(t_cold));

            // weft, restart with the warm cache: process start to first answer.
            let manifest = dir.join("deploy.toml");
            std::fs::write(
                &manifest,
                format!(
                    "name = \"bench-deploy\"\n[components.svc]\nsource = \"{}\"\nroutes = [{{ path = \"/svc/...\" }}]\n",
                    path.display()
                ),
            )?;
            let start = Instant::now();
            let mut command = Command::new(crate::procs::weft_bin());
            let port = procs::free_port();
            command
                .arg("up")
                .arg(&manifest)
                .args(["--no-build", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin", &format!("127.0.0.1:{}", procs::free_port())])
                .arg("--cache-dir")
                .arg(&cache)
                .arg("--data-dir")
                .arg(cache.join("data"));
            let mut proc = Proc::spawn("weft-restart", command)?;
            procs::wait_until_ok(
                &mut proc,
                &format!("http://127.0.0.1:{port}/svc/"),
                Duration::from_secs(300),
            )?;
            let t_warm = start.elapsed();
            drop(proc);
            warm.push(ms(t_warm));
            println!(
                "    round {round}: wasmtime serve start {:.0} ms; weft deploy (cold) {:.0} ms; weft restart (warm cache) {:.0} ms",
                ms(t),
                ms(t_cold),
                ms(t_warm)
            );
        }
        let s = "Deploy to first response";
        let serve = median(serve);
        report.add(
            s,
            &format!("{label}: `weft deploy`, nothing cached"),
            "ms",
            median(cold),
            "wasmtime serve start",
            serve,
            Better::Lower,
            Target::value_at_most(target_cold),
            "weft deploy svc --wasm W --route /svc/...; GET until 200",
        );
        report.add(
            s,
            &format!("{label}: host restart, warm cache"),
            "ms",
            median(warm),
            "wasmtime serve start",
            serve,
            Better::Lower,
            Target::value_at_most(target_warm),
            "weft up (manifest with svc); GET until 200",
        );
    }
    Ok(())
}

/// `count` distinct components (hello with a distinct custom section each) deployed on
/// one host: the host's memory per idle component, and the deploy time per component.
pub fn density(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    let count = settings.density;
    println!("\nDensity: {count} distinct components on one host:");
    let dir = procs::work_dir();
    let empty = empty_manifest(&dir)?;

    // Reference: one `wasmtime serve` process serving hello, idle after one request.
    let (mut serve, url) = procs::wasmtime_serve("wasmtime-serve-density", &wasm.hello, &[])?;
    let serve_start =
        procs::wait_until_ok(&mut serve, &format!("{url}/"), Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    let serve_rss = serve.rss_kib()? as f64;
    drop(serve);

    let cache = fresh_dir("density-cache")?;
    let mut weft = procs::weft_up("weft-density", &empty, &cache, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = weft.proc.rss_kib()?;
    let hello = std::fs::read(&wasm.hello)?;
    let client = weft::admin_client::AdminClient::new(&weft.admin, None);
    let runtime = crate::native::runtime();
    let start = Instant::now();
    runtime.block_on(async {
        for i in 0..count {
            let spec = weft_runtime::spec::ComponentSpec {
                routes: vec![weft_runtime::spec::RouteSpec {
                    path: format!("/c{i}/..."),
                    methods: vec![],
                    websocket: false,
                }],
                ..Default::default()
            };
            client
                .deploy(&format!("c{i}"), &spec, with_custom_section(&hello, i))
                .await
                .with_context(|| format!("deploying component {i}"))?;
            if (i + 1) % 100 == 0 {
                println!(
                    "    {} deployed, {:.1} s",
                    i + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        anyhow::Ok(())
    })?;
    let elapsed = start.elapsed();
    // Then Cranelift recompiles each in the background; measure memory once all are on
    // their final code.
    let optimized = runtime.block_on(async {
        loop {
            let list = client.list().await?;
            let waiting = list
                .iter()
                .filter(|d| d.tier == Some(weft_runtime::api::Tier::Baseline))
                .count();
            if waiting == 0 {
                return anyhow::Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(900) {
                bail!("{waiting} components still on Winch code after 15 minutes");
            }
            println!("    {waiting} still being optimized...");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })?;
    // Every component answers (a sample, spread over the range).
    for i in (0..count).step_by((count / 10).max(1)) {
        procs::wait_until_ok(
            &mut weft.proc,
            &format!("{}/c{i}/", weft.http),
            Duration::from_secs(10),
        )?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = weft.proc.rss_kib()?;
    let per_component = (rss_after.saturating_sub(rss_before)) as f64 / count as f64;
    println!(
        "    host RSS {rss_before} KiB before, {rss_after} KiB after; all serving after {:.1} s, all optimized after {:.1} s",
        elapsed.as_secs_f64(),
        optimized.as_secs_f64()
    );
    drop(weft);
    let _ = std::fs::remove_dir_all(&cache);

    let s = format!("Density ({count} distinct idle components on one host)");
    report.add(
        &s,
        "host memory per idle component",
        "KiB",
        per_component,
        "one wasmtime serve process (RSS)",
        serve_rss,
        Better::Lower,
        None,
        "weft up; deploy c0..cN over the admin API; VmRSS delta / N",
    );
    report.add(
        &s,
        "deploy time per component, until it serves (Winch)",
        "ms",
        ms(elapsed) / count as f64,
        "wasmtime serve start",
        ms(serve_start),
        Better::Lower,
        None,
        "sequential admin PUTs, no cache",
    );
    report.add(
        &s,
        "time per component, until all run Cranelift code",
        "ms",
        ms(optimized) / count as f64,
        "wasmtime serve start",
        ms(serve_start),
        Better::Lower,
        None,
        "as above, until weft list shows no Winch code",
    );
    Ok(())
}

/// `wasm` with a custom section appended, so each copy is a distinct component.
fn with_custom_section(wasm: &[u8], i: usize) -> Vec<u8> {
    let name = b"weft-bench";
    let payload = i.to_le_bytes();
    let mut section = Vec::new();
    leb128(&mut section, name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, section.len());
    out.extend_from_slice(&section);
    out
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
