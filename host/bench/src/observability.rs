//! What observability costs the hot path: hello world (fresh instances and reuse) on
//! weft with traces off, on with sampling at 0 and on at 1% (exporting over OTLP/HTTP
//! to a native sink in this process), interleaved round by round. Metrics are always
//! counted, so every contestant pays for them alike.

use anyhow::{Context, Result};

use crate::http::{Contestant, REUSE, interleave_with};
use crate::procs::{self, Weft};
use crate::report::{Better, Report, Target};
use crate::{Settings, tools::Wasm};

/// Hello through weft with traces off, sampled at 0 and at 1%.
pub fn tracing_cost(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    let command = format!("wrk -t1 -c32 -d{}s --latency URL", settings.secs);
    println!("\nTracing cost, hello world ({command}):");
    // Answers 200 to anything: the exporter's POSTs to /v1/traces included.
    let sink = crate::native::serve_http()?;
    let mut hosts: Vec<(&str, Vec<Weft>)> = Vec::new();
    for (label, sample) in [("off", None), ("0%", Some("0")), ("1%", Some("0.01"))] {
        let extra: Vec<&str> = match sample {
            None => vec![],
            Some(ratio) => vec!["--otlp-endpoint", &sink, "--trace-sample", ratio],
        };
        let prefix = format!("weft-trace-{}", label.trim_end_matches('%'));
        let pair = procs::fresh_and_reuse_with(
            &prefix,
            "hello",
            &wasm.hello,
            "[{ path = \"/hello/...\" }]",
            REUSE,
            &extra,
        )
        .with_context(|| format!("starting the hosts with traces {label}"))?;
        hosts.push((label, pair));
    }
    let labels = [
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
    let m = interleave_with(settings, &contestants, |url, secs| {
        crate::load::wrk(url, secs, None)
    })?;
    let (off_fresh, off_reuse) = (&m[0], &m[1]);
    let higher = Better::Higher;
    let within = Target::ratio_at_least(0.97);
    #[rustfmt::skip]
    report.add_rows("Tracing cost (hello world)", &command, &[
        ("traces at 0%, fresh instance: throughput", "req/s", m[2].rps, "traces off", off_fresh.rps, higher, within),
        ("traces at 1%, fresh instance: throughput", "req/s", m[4].rps, "traces off", off_fresh.rps, higher, within),
        ("traces at 0%, instance reuse: throughput", "req/s", m[3].rps, "traces off", off_reuse.rps, higher, within),
        ("traces at 1%, instance reuse: throughput", "req/s", m[5].rps, "traces off", off_reuse.rps, higher, within),
        ("traces at 1%, instance reuse: p99 latency", "ms", m[5].p99, "traces off", off_reuse.p99, Better::Lower, None),
    ]);
    Ok(())
}
