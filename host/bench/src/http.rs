//! HTTP throughput and latency: weft against `wasmtime serve` and a native axum
//! handler, the same request to each, interleaved round by round.

use std::path::Path;

use anyhow::Result;

use crate::load::{self, Load};
use crate::procs::{self, Proc, Weft};
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

/// Requests one instance serves when the component opts into reuse.
pub const REUSE: u32 = 1000;

/// Requests one `wasi:http` 0.3 instance serves at once with concurrent reuse.
pub const CONCURRENT: u32 = 16;

/// The manifest of the throughput host: each guest twice, fresh-instance and reuse.
pub fn manifest(wasm: &Wasm) -> String {
    let mut toml = String::from("name = \"bench\"\n");
    for (name, path, route) in [
        ("hello", &wasm.hello, "hello"),
        ("hello-p3", &wasm.hello_p3, "p3"),
        ("js-hello", &wasm.js_hello, "js"),
        ("py-hello", &wasm.py_hello, "py"),
    ] {
        for (suffix, reuse) in [("", 1), ("-reuse", REUSE)] {
            // Only a 0.3 guest can serve requests at once; 0.2 ones ignore the key.
            let concurrent = if reuse > 1 && name == "hello-p3" {
                CONCURRENT
            } else {
                1
            };
            toml += &format!(
                "[components.{name}{suffix}]\nsource = \"{}\"\nroutes = [{{ path = \"/{route}{suffix}/...\" }}]\nlimits = {{ requests_per_instance = {reuse}, max_concurrent_per_instance = {concurrent}, max_concurrency = 1024 }}\n",
                path.display()
            );
        }
    }
    toml
}

pub struct Contestant<'a> {
    pub label: &'a str,
    pub url: String,
}

/// Medians per contestant, over `settings.rounds` interleaved rounds.
pub struct Medians {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
}

fn interleave(
    settings: &Settings,
    contestants: &[Contestant],
    script: Option<&Path>,
) -> Result<Vec<Medians>> {
    interleave_with(settings, contestants, |url, secs| {
        load::wrk(url, secs, script)
    })
}

/// Measures each contestant with `measure(url, secs)`, round after round.
pub fn interleave_with(
    settings: &Settings,
    contestants: &[Contestant],
    measure: impl Fn(&str, u64) -> Result<Load>,
) -> Result<Vec<Medians>> {
    // One short warm-up each: connections, caches, the first instances.
    for c in contestants {
        measure(&c.url, 1)?;
    }
    let mut runs: Vec<Vec<Load>> = contestants.iter().map(|_| Vec::new()).collect();
    for round in 1..=settings.rounds {
        // Each round starts one contestant later, so none always runs first or last
        // (this machine's speed drifts within a round).
        let n = contestants.len();
        for i in (0..n).map(|k| (k + round - 1) % n) {
            let (c, runs) = (&contestants[i], &mut runs[i]);
            let l = measure(&c.url, settings.secs)?;
            println!(
                "    round {round}: {:<24} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms{}",
                c.label,
                l.rps,
                l.p50_ms,
                l.p99_ms,
                if l.errors > 0 {
                    format!("  ({} errors)", l.errors)
                } else {
                    String::new()
                }
            );
            anyhow::ensure!(
                l.errors == 0,
                "{} answered {} requests with errors: see target/bench/logs",
                c.label,
                l.errors
            );
            runs.push(l);
        }
    }
    Ok(runs
        .into_iter()
        .map(|r| Medians {
            rps: median(r.iter().map(|l| l.rps).collect()),
            p50: median(r.iter().map(|l| l.p50_ms).collect()),
            p99: median(r.iter().map(|l| l.p99_ms).collect()),
        })
        .collect())
}

/// Hello world and the 16 KiB JSON echo, weft vs `wasmtime serve` vs native axum.
pub fn small(settings: &Settings, wasm: &Wasm, weft: &Weft, report: &mut Report) -> Result<()> {
    let native = crate::native::serve_http()?;
    let (_serve, serve_url) = start_serve("wasmtime-serve-hello", &wasm.hello)?;
    let hello = [
        format!("{native}/hello"),
        format!("{serve_url}/hello"),
        format!("{}/hello/", weft.http),
        format!("{}/hello-reuse/", weft.http),
    ];
    small_case(settings, report, "HTTP hello world", hello, None)?;

    let dir = procs::work_dir();
    let body = dir.join("echo-16k.json");
    std::fs::write(&body, json_body(16 * 1024))?;
    let script = load::post_script(&dir, &body)?;
    let echo = [
        format!("{native}/echo"),
        format!("{serve_url}/echo"),
        format!("{}/hello/echo", weft.http),
        format!("{}/hello-reuse/echo", weft.http),
    ];
    small_case(
        settings,
        report,
        "HTTP 16 KiB JSON echo",
        echo,
        Some(&script),
    )
}

/// One request shape against native axum, `wasmtime serve`, weft with fresh instances
/// and weft with reuse (`urls` in that order), sent with `script` if any.
fn small_case(
    settings: &Settings,
    report: &mut Report,
    section: &str,
    urls: [String; 4],
    script: Option<&Path>,
) -> Result<()> {
    let cmd = load::command_line(settings.secs, script);
    println!("\n{section} ({cmd}):");
    let labels = [
        "native axum",
        "wasmtime serve",
        "weft (fresh instance)",
        "weft (reuse)",
    ];
    let contestants: Vec<Contestant> = labels
        .into_iter()
        .zip(urls)
        .map(|(label, url)| Contestant { label, url })
        .collect();
    let m = interleave(settings, &contestants, script)?;
    let (native, serve, fresh, reuse) = (&m[0], &m[1], &m[2], &m[3]);
    let (higher, lower) = (Better::Higher, Better::Lower);
    #[rustfmt::skip]
    report.add_rows(section, &cmd, &[
        ("fresh instance per request: throughput", "req/s", fresh.rps, "wasmtime serve", serve.rps, higher, Target::ratio_at_least(2.0)),
        ("fresh instance per request: p99 latency", "ms", fresh.p99, "wasmtime serve", serve.p99, lower, Target::ratio_at_most(1.0)),
        ("fresh instance per request: p50 latency", "ms", fresh.p50, "wasmtime serve", serve.p50, lower, None),
        ("fresh instance per request: throughput", "req/s", fresh.rps, "native axum", native.rps, higher, None),
        ("instance reuse: throughput", "req/s", reuse.rps, "native axum", native.rps, higher, Target::ratio_at_least(0.6)),
        ("instance reuse: p99 latency", "ms", reuse.p99, "native axum", native.p99, lower, None),
        ("(reference) wasmtime serve: throughput", "req/s", serve.rps, "native axum", native.rps, higher, None),
    ]);
    Ok(())
}

/// Hello world as a `wasi:http@0.3.0` guest: weft against `wasmtime serve` (0.3
/// support on: `-W component-model-async`), fresh instances and each side's reuse, and
/// against native axum and weft's own 0.2 hello.
pub fn p3(settings: &Settings, wasm: &Wasm, weft: &Weft, report: &mut Report) -> Result<()> {
    let cmd = load::command_line(settings.secs, None);
    println!("\nHTTP hello world, wasi:http 0.3 guest ({cmd}):");
    let native = crate::native::serve_http()?;
    // serve reuses 0.3 instances by default (128 requests, 16 at once): fresh is asked for.
    let (_fresh, serve_fresh) = start_serve_with(
        "wasmtime-serve-p3",
        &wasm.hello_p3,
        &[
            "-W",
            "component-model-async",
            "--max-instance-reuse-count",
            "1",
            "--max-instance-concurrent-reuse-count",
            "1",
        ],
    )?;
    let reuse = REUSE.to_string();
    let concurrent = CONCURRENT.to_string();
    let (_reuse, serve_reuse) = start_serve_with(
        "wasmtime-serve-p3-reuse",
        &wasm.hello_p3,
        &[
            "-W",
            "component-model-async",
            "--max-instance-reuse-count",
            &reuse,
            "--max-instance-concurrent-reuse-count",
            &concurrent,
        ],
    )?;
    let contestants = [
        ("native axum", format!("{native}/hello")),
        ("wasmtime serve 0.3", format!("{serve_fresh}/hello")),
        ("wasmtime serve 0.3 (reuse)", format!("{serve_reuse}/hello")),
        ("weft 0.2 (fresh instance)", format!("{}/hello/", weft.http)),
        ("weft 0.3 (fresh instance)", format!("{}/p3/", weft.http)),
        (
            "weft 0.3 (concurrent reuse)",
            format!("{}/p3-reuse/", weft.http),
        ),
    ];
    let contestants: Vec<Contestant> = contestants
        .iter()
        .map(|(label, url)| Contestant {
            label,
            url: url.clone(),
        })
        .collect();
    let m = interleave(settings, &contestants, None)?;
    let (native, serve, serve_reuse, p2, fresh, reuse) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
    let (higher, lower) = (Better::Higher, Better::Lower);
    #[rustfmt::skip]
    report.add_rows("HTTP hello world, wasi:http 0.3 guest", &cmd, &[
        ("fresh instance per request: throughput", "req/s", fresh.rps, "wasmtime serve 0.3", serve.rps, higher, Target::ratio_at_least(2.0)),
        ("fresh instance per request: p99 latency", "ms", fresh.p99, "wasmtime serve 0.3", serve.p99, lower, None),
        ("concurrent reuse: throughput", "req/s", reuse.rps, "wasmtime serve 0.3 (reuse)", serve_reuse.rps, higher, Target::ratio_at_least(2.0)),
        ("concurrent reuse: throughput", "req/s", reuse.rps, "native axum", native.rps, higher, Target::ratio_at_least(0.8)),
        ("concurrent reuse: p99 latency", "ms", reuse.p99, "native axum", native.p99, lower, None),
        ("what concurrent reuse buys: throughput", "req/s", reuse.rps, "weft 0.3 (fresh instance)", fresh.rps, higher, None),
        ("0.3 against 0.2, fresh instances: throughput", "req/s", fresh.rps, "weft 0.2 (fresh instance)", p2.rps, higher, None),
        ("(reference) wasmtime serve 0.3: throughput", "req/s", serve.rps, "native axum", native.rps, higher, None),
    ]);
    Ok(())
}

/// The JavaScript and Python hello components, weft vs `wasmtime serve`.
pub fn large(settings: &Settings, wasm: &Wasm, weft: &Weft, report: &mut Report) -> Result<()> {
    let cmd = load::command_line(settings.secs, None);
    for (language, path, route) in [
        ("JavaScript", &wasm.js_hello, "js"),
        ("Python", &wasm.py_hello, "py"),
    ] {
        println!(
            "\nHTTP hello world, {language} guest ({cmd}); wasmtime serve compiles it first..."
        );
        let (_serve, serve_url) = start_serve(&format!("wasmtime-serve-{route}"), path)?;
        let m = interleave(
            settings,
            &[
                Contestant {
                    label: "wasmtime serve",
                    url: format!("{serve_url}/"),
                },
                Contestant {
                    label: "weft (fresh instance)",
                    url: format!("{}/{route}/", weft.http),
                },
                Contestant {
                    label: "weft (reuse)",
                    url: format!("{}/{route}-reuse/", weft.http),
                },
            ],
            None,
        )?;
        let (serve, fresh, reuse) = (&m[0], &m[1], &m[2]);
        let (higher, lower) = (Better::Higher, Better::Lower);
        #[rustfmt::skip]
        report.add_rows(&format!("{language} guest (hello world)"), &cmd, &[
            ("fresh instance per request: throughput", "req/s", fresh.rps, "wasmtime serve", serve.rps, higher, None),
            ("fresh instance per request: p99 latency", "ms", fresh.p99, "wasmtime serve", serve.p99, lower, None),
            ("instance reuse: throughput", "req/s", reuse.rps, "wasmtime serve", serve.rps, higher, Target::ratio_at_least(5.0)),
            ("instance reuse: p99 latency", "ms", reuse.p99, "wasmtime serve", serve.p99, lower, None),
        ]);
    }
    Ok(())
}

/// Starts `wasmtime serve` and waits for its first answer (it compiles on start).
pub fn start_serve(name: &str, wasm: &Path) -> Result<(Proc, String)> {
    start_serve_with(name, wasm, &[])
}

/// [`start_serve`] with more `wasmtime serve` options.
pub fn start_serve_with(name: &str, wasm: &Path, options: &[&str]) -> Result<(Proc, String)> {
    let (mut proc, url) = procs::wasmtime_serve(name, wasm, options)?;
    procs::wait_until_ok(
        &mut proc,
        &format!("{url}/"),
        std::time::Duration::from_secs(300),
    )?;
    Ok((proc, url))
}

/// A JSON document of exactly `len` bytes.
pub fn json_body(len: usize) -> Vec<u8> {
    let mut body = String::from("{\"items\":[");
    let mut i = 0;
    while body.len() + 16 < len {
        if i > 0 {
            body.push(',');
        }
        body += &format!("{}", i % 1000);
        i += 1;
    }
    body += "],\"pad\":\"";
    while body.len() + 2 < len {
        body.push('x');
    }
    body += "\"}";
    body.into_bytes()
}
