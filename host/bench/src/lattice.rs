//! Many hosts (`--only lattice`): time from `weft deploy` to "live on every host" for
//! 1, 2 and 3 hosts of a lattice on one nats-server, against the same deploy to one
//! host alone through its admin API; and HTTP throughput of 2 hosts vs 1.
//!
//! On a 2-core machine the hosts, nats-server and the load generator share the same
//! two cores: more hosts cannot add CPU, so the throughput figure shows what sharing
//! NATS costs, not how a fleet of machines scales.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procs::{self, Proc, Weft};
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

/// A fresh, empty directory under target/bench.
fn fresh_dir(name: &str) -> Result<PathBuf> {
    let dir = procs::work_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A host joining lattice `lattice` on `nats` with no manifest, with a fresh cache.
fn join(nats: &str, lattice: &str, id: &str) -> Result<Weft> {
    let dir = fresh_dir(&format!("lattice-{lattice}-{id}"))?;
    let (http_port, admin_port) = (procs::free_port(), procs::free_port());
    let mut command = Command::new(procs::weft_bin());
    command
        .current_dir(&dir)
        .args(["up", "--nats", nats, "--lattice", lattice, "--host-id", id])
        .args(["--listen", &format!("127.0.0.1:{http_port}")])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn");
    let mut weft = Weft {
        proc: Proc::spawn(&format!("weft-lattice-{id}"), command)?,
        http: format!("http://127.0.0.1:{http_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
    };
    let status = format!("{}/v1/status", weft.admin);
    procs::wait_until_ok(&mut weft.proc, &status, Duration::from_secs(60))?;
    // Joined and converged: its record is in the lattice.
    procs::wait_for_log(&mut weft.proc, "serving on", Duration::from_secs(300))?;
    Ok(weft)
}

/// A one-component manifest: `source` on `/svc/...`, with a config value that makes
/// each round a new revision of the spec.
fn manifest(dir: &Path, source: &Path, round: usize) -> Result<PathBuf> {
    let path = dir.join(format!("svc-{round}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"bench-lattice\"\n[components.svc]\nsource = \"{}\"\nroutes = [{{ path = \"/svc/...\" }}]\nconfig = {{ ROUND = \"{round}\" }}\n",
            source.display()
        ),
    )?;
    Ok(path)
}

/// Runs `weft deploy svc --manifest M` as a user does (`target`: `--nats URL` or
/// `--admin URL`); returns its wall-clock time, process start included.
fn deploy(target: &[&str], manifest: &Path, hosts: usize) -> Result<f64> {
    let start = Instant::now();
    let output = Command::new(procs::weft_bin())
        .args(["deploy", "svc", "--manifest"])
        .arg(manifest)
        .args(target)
        .env_remove("RUST_BACKTRACE")
        .output()?;
    let took = start.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success()
        || (hosts > 0 && !stdout.contains(&format!("live on {hosts} of {hosts} hosts")))
    {
        bail!(
            "weft deploy failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(took)
}

/// The section.
pub fn deploys(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    let work = fresh_dir("lattice")?;
    let (_nats, nats) = procs::nats_server()?;
    // The target: `weft deploy` of hello returns within 1 s.
    let mut guests = vec![("hello (Rust)", wasm.hello.clone(), Some(1000.0))];
    if wasm.js_hello.exists() {
        guests.push(("JavaScript hello", wasm.js_hello.clone(), None));
    } else {
        println!("  (no JavaScript hello built: run `just bench --only lattice`, which builds it)");
    }
    let rounds = settings.rounds.max(3);
    let command = "weft deploy svc --manifest M --nats URL (lattice of N hosts) vs --admin URL (one host alone)";
    for (label, source, target) in &guests {
        println!("\nDeploy to live on every host, {label}:");
        // Reference: one host alone (no NATS), through its admin API.
        let alone_dir = fresh_dir("lattice-alone")?;
        let empty = alone_dir.join("empty.toml");
        std::fs::write(&empty, "name = \"bench-alone\"\n")?;
        let alone = procs::weft_up("weft-alone", &empty, &alone_dir.join("cache"), &[])?;
        let admin = ["--admin", alone.admin.as_str()];
        let first_alone = deploy(&admin, &manifest(&work, source, 0)?, 0)?;
        let mut again_alone = Vec::new();
        for round in 1..=rounds {
            again_alone.push(deploy(&admin, &manifest(&work, source, round)?, 0)?);
        }
        drop(alone);
        let again_alone = median(again_alone);
        println!("  one host alone: first {first_alone:.0} ms, redeploy {again_alone:.0} ms");
        for n in 1..=3usize {
            let lattice = format!("bench-{}-{n}", if target.is_some() { "rs" } else { "js" });
            let hosts: Vec<Weft> = (0..n)
                .map(|i| join(&nats, &lattice, &format!("h{i}")))
                .collect::<Result<_>>()
                .with_context(|| format!("starting {n} lattice hosts"))?;
            let to = ["--nats", nats.as_str(), "--lattice", lattice.as_str()];
            let first = deploy(&to, &manifest(&work, source, 0)?, n)?;
            let mut again = Vec::new();
            for round in 1..=rounds {
                again.push(deploy(&to, &manifest(&work, source, round)?, n)?);
            }
            let again = median(again);
            println!("  {n} hosts: first {first:.0} ms, redeploy {again:.0} ms");
            let s = "Many hosts: deploy to live everywhere";
            report.add(
                s,
                &format!("{label}, {n} host(s): first deploy (each host compiles)"),
                "ms",
                first,
                "one host alone, admin API",
                first_alone,
                Better::Lower,
                target.and_then(Target::value_at_most),
                command,
            );
            report.add(
                s,
                &format!("{label}, {n} host(s): redeploy (new spec, code cached)"),
                "ms",
                again,
                "one host alone, admin API",
                again_alone,
                Better::Lower,
                None,
                command,
            );
            drop(hosts);
        }
    }
    throughput(settings, &nats, &wasm.hello, &work, report)
}

/// HTTP requests per second of two lattice hosts (one wrk each, at once) vs one.
fn throughput(
    settings: &Settings,
    nats: &str,
    hello: &Path,
    work: &Path,
    report: &mut Report,
) -> Result<()> {
    println!("\nThroughput of 2 lattice hosts vs 1 (hello, fresh instances):");
    let hosts: Vec<Weft> = (0..2)
        .map(|i| join(nats, "bench-rps", &format!("r{i}")))
        .collect::<Result<_>>()?;
    deploy(
        &["--nats", nats, "--lattice", "bench-rps"],
        &manifest(work, hello, 0)?,
        2,
    )?;
    for h in &hosts {
        h.wait_optimized()?;
    }
    let url = |h: &Weft| format!("{}/svc/", h.http);
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        one.push(crate::load::wrk(&url(&hosts[0]), settings.secs, None)?.rps);
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| crate::load::wrk(&url(&hosts[0]), settings.secs, None));
            let b = scope.spawn(|| crate::load::wrk(&url(&hosts[1]), settings.secs, None));
            (a.join(), b.join())
        });
        let (a, b) = (
            a.map_err(|_| anyhow::anyhow!("wrk thread panicked"))??,
            b.map_err(|_| anyhow::anyhow!("wrk thread panicked"))??,
        );
        two.push(a.rps + b.rps);
    }
    report.add(
        "Many hosts: throughput (2 cores shared by hosts, NATS and wrk)",
        "hello, 2 hosts sharing one NATS (sum of one wrk each)",
        "req/s",
        median(two),
        "1 host",
        median(one),
        Better::Higher,
        None,
        &crate::load::command_line(settings.secs, None),
    );
    Ok(())
}
