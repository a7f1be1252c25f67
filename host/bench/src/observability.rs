//! What observability costs the hot path: hello world (fresh instances and reuse) on
//! weft with metrics off (`--no-metrics`), with metrics on (the default) and traces
//! off, and with traces sampled at 0 and at 1% (exporting over OTLP/HTTP to a native
//! sink in this process), interleaved round by round.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::http::{Contestant, REUSE, interleave_with};
use crate::procs::{self, Weft};
use crate::report::{Better, Report, Target};
use crate::{Settings, tools::Wasm};

/// Hello through weft with metrics off, then on with traces off, sampled at 0 and at 1%.
pub fn tracing_cost(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    // The differences sought are a few percent, less than this machine's swing from one
    // round to the next: three times the rounds, each half as long.
    let settings = &Settings {
        rounds: settings.rounds * 3,
        secs: settings.secs.div_ceil(2),
        ..settings.clone()
    };
    let command = format!("wrk -t1 -c32 -d{}s --latency URL", settings.secs);
    println!("\nObservability cost, hello world ({command}):");
    // Answers 200 to anything: the exporter's POSTs to /v1/traces included.
    let sink = crate::native::serve_http()?;
    let mut hosts: Vec<(&str, Vec<Weft>)> = Vec::new();
    let setups: [(&str, &[&str]); 4] = [
        ("nometrics", &["--no-metrics"]),
        ("off", &[]),
        ("0", &["--otlp-endpoint", &sink, "--trace-sample", "0"]),
        ("1", &["--otlp-endpoint", &sink, "--trace-sample", "0.01"]),
    ];
    for (label, extra) in setups {
        let prefix = format!("weft-trace-{label}");
        let pair = procs::fresh_and_reuse_with(
            &prefix,
            "hello",
            &wasm.hello,
            "[{ path = \"/hello/...\" }]",
            REUSE,
            extra,
        )
        .with_context(|| format!("starting the hosts `{label}`"))?;
        hosts.push((label, pair));
    }
    let labels = [
        ["metrics off, fresh", "metrics off, reuse"],
        ["traces off, fresh", "traces off, reuse"],
        ["traces at 0%, fresh", "traces at 0%, reuse"],
        ["traces at 1%, fresh", "traces at 1%, reuse"],
    ];
    let mut contestants = Vec::new();
    for ((_, pair), labels) in hosts.iter().zip(&labels) {
        for (weft, label) in pair.iter().zip(labels) {
            contestants.push(Contestant {
                label,
                url: format!("{}/hello/", weft.http),
            });
        }
    }
    // Besides throughput, the host's own CPU time per request (from /proc), which this
    // machine's swings in speed move far less.
    let pids: HashMap<String, u32> = hosts
        .iter()
        .flat_map(|(_, pair)| pair)
        .map(|weft| (format!("{}/hello/", weft.http), weft.proc.child.id()))
        .collect();
    let cpu: RefCell<HashMap<String, Vec<f64>>> = RefCell::default();
    let m = interleave_with(settings, &contestants, |url, secs| {
        let before = cpu_seconds(pids[url])?;
        let load = crate::load::wrk(url, secs, None)?;
        let used = cpu_seconds(pids[url])? - before;
        let per_request_us = used * 1e6 / (load.rps * secs as f64);
        cpu.borrow_mut()
            .entry(url.to_string())
            .or_default()
            .push(per_request_us);
        Ok(load)
    })?;
    let cpu = cpu.into_inner();
    let us: Vec<f64> = contestants
        .iter()
        .map(|c| crate::report::median(cpu[&c.url].clone()))
        .collect();
    for (c, us) in contestants.iter().zip(&us) {
        println!("  {:<24} host CPU {us:.1} µs per request (median)", c.label);
    }
    let (bare_fresh, bare_reuse) = (&m[0], &m[1]);
    let (off_fresh, off_reuse) = (&m[2], &m[3]);
    let higher = Better::Higher;
    let within = Target::ratio_at_least(0.97);
    let cpu_within = Target::ratio_at_most(1.03);
    #[rustfmt::skip]
    report.add_rows("Observability cost (hello world)", &command, &[
        ("metrics on, fresh instance: throughput", "req/s", off_fresh.rps, "metrics off", bare_fresh.rps, higher, within),
        ("metrics on, instance reuse: throughput", "req/s", off_reuse.rps, "metrics off", bare_reuse.rps, higher, within),
        ("traces at 0%, fresh instance: throughput", "req/s", m[4].rps, "traces off", off_fresh.rps, higher, within),
        ("traces at 1%, fresh instance: throughput", "req/s", m[6].rps, "traces off", off_fresh.rps, higher, within),
        ("traces at 0%, instance reuse: throughput", "req/s", m[5].rps, "traces off", off_reuse.rps, higher, within),
        ("traces at 1%, instance reuse: throughput", "req/s", m[7].rps, "traces off", off_reuse.rps, higher, within),
        ("traces at 1%, instance reuse: p99 latency", "ms", m[7].p99, "traces off", off_reuse.p99, Better::Lower, None),
        ("metrics on, fresh instance: host CPU per request", "µs", us[2], "metrics off", us[0], Better::Lower, cpu_within),
        ("metrics on, instance reuse: host CPU per request", "µs", us[3], "metrics off", us[1], Better::Lower, cpu_within),
        ("traces at 0%, fresh instance: host CPU per request", "µs", us[4], "traces off", us[2], Better::Lower, cpu_within),
        ("traces at 1%, fresh instance: host CPU per request", "µs", us[6], "traces off", us[2], Better::Lower, cpu_within),
        ("traces at 0%, instance reuse: host CPU per request", "µs", us[5], "traces off", us[3], Better::Lower, cpu_within),
        ("traces at 1%, instance reuse: host CPU per request", "µs", us[7], "traces off", us[3], Better::Lower, cpu_within),
    ]);
    Ok(())
}

/// The CPU time (user and system) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("a /proc stat line without its command")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("a short /proc stat line")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the command), in clock
    // ticks of 1/100 s (USER_HZ on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
