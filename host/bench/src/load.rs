//! The HTTP load generator: wrk, one thread, fixed connections, latency percentiles.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx responses plus socket errors.
    pub errors: u64,
}

impl Load {
    /// What a load generator of our own measured: each call's latency, over `elapsed`.
    pub fn from_latencies(
        mut latencies: Vec<std::time::Duration>,
        elapsed: std::time::Duration,
        errors: u64,
    ) -> Load {
        latencies.sort();
        let percentile = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Load {
            rps: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            errors,
        }
    }
}

/// Connections wrk keeps open (the issue's `wrk -t1 -c32`).
pub const CONNECTIONS: u32 = 32;

/// The command line, as recorded next to each figure.
pub fn command_line(secs: u64, script: Option<&Path>) -> String {
    let script = script.map_or(String::new(), |s| {
        format!(
            " -s {}",
            s.file_name().unwrap_or_default().to_string_lossy()
        )
    });
    format!("wrk -t1 -c{CONNECTIONS} -d{secs}s --latency{script} URL")
}

/// Runs wrk against `url` for `secs` seconds; `script` is a wrk Lua script (for POSTs).
pub fn wrk(url: &str, secs: u64, script: Option<&Path>) -> Result<Load> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .output()
        .context("running wrk (setup.sh installs it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {url}: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("reading wrk's report for {url}:\n{text}"))
}

fn parse(text: &str) -> Result<Load> {
    let mut load = Load {
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => load.rps = value.parse()?,
            ["50%", value] => load.p50_ms = millis(value)?,
            ["99%", value] => load.p99_ms = millis(value)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if load.rps.is_nan() || load.p99_ms.is_nan() {
        bail!("no Requests/sec or 99% line");
    }
    Ok(load)
}

/// wrk's durations: `512.00us`, `1.20ms`, `2.00s`, `1.5m`.
fn millis(value: &str) -> Result<f64> {
    let (number, factor) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        bail!("unknown duration `{value}`")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// A wrk script that POSTs the file at `body` as JSON.
pub fn post_script(dir: &Path, body: &Path) -> Result<std::path::PathBuf> {
    let script = dir.join("post-json.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body.display()
        ),
    )?;
    Ok(script)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    1.10ms\n     99%    2.50ms\n  8000 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:   8000.50\nTransfer/sec:      1.00MB\n";
        let load = super::parse(report).expect("a wrk report");
        assert_eq!(load.rps, 8000.5);
        assert!((load.p50_ms - 0.512).abs() < 1e-9);
        assert_eq!(load.p99_ms, 2.5);
        assert_eq!(load.errors, 7);
    }
}
