//! `weft up`: build a manifest's components, start a host, deploy them all, print what
//! is served, and run until SIGINT or SIGTERM.

use std::path::Path;

use anyhow::{Context, Result};

use weft_runtime::api::DeploymentInfo;
use weft_runtime::bus::nats::NatsConfig;
use weft_runtime::spec::manifest::Manifest;
use weft_runtime::{Host, HostConfig};

/// Starts a host serving every component of the manifest at `path`.
pub async fn start(path: &Path, mut config: HostConfig, build: bool) -> Result<Host> {
    let manifest = Manifest::load(path)?;
    if config.nats.is_none() {
        config.nats = manifest.nats_url.clone().map(|url| NatsConfig {
            url,
            ..NatsConfig::default()
        });
    }
    if config.tls.is_none() {
        config.tls = manifest.tls.clone();
    }
    if build {
        for entry in &manifest.components {
            crate::builder::build_if_stale(entry)?;
        }
    }
    let config_tls = config.tls.is_some();
    let host = Host::start(config).await?;
    for entry in &manifest.components {
        let wasm = std::fs::read(&entry.source).with_context(|| {
            format!(
                "component `{}`: cannot read {}",
                entry.name,
                entry.source.display()
            )
        })?;
        eprintln!("deploying {} ({} KiB)...", entry.name, wasm.len() / 1024);
        host.deployments()
            .deploy(&entry.name, entry.spec.clone(), wasm.into())
            .await
            .with_context(|| {
                format!("component `{}` from {}", entry.name, entry.source.display())
            })?;
    }
    let scheme = if config_tls { "https" } else { "http" };
    eprintln!(
        "\n{}: serving on {scheme}://{}",
        manifest.name,
        host.http_addr()
    );
    eprintln!("admin API on http://{}\n", host.admin_addr());
    eprintln!(
        "{}",
        route_table(
            &host.deployments().list(),
            &format!("{scheme}://{}", host.http_addr())
        )
    );
    Ok(host)
}

/// A table of every route: method, URL (under `base`, `http://HOST:PORT`), component
/// and version.
pub fn route_table(deployments: &[DeploymentInfo], base: &str) -> String {
    let mut rows = vec![[
        "METHODS".to_string(),
        "URL".to_string(),
        "COMPONENT".to_string(),
        "VERSION".to_string(),
    ]];
    for d in deployments {
        for route in &d.routes {
            let methods = if route.methods.is_empty() {
                "*".to_string()
            } else {
                route.methods.join(",")
            };
            let version = d
                .version
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect();
            rows.push([
                methods,
                format!("{base}{}", route.path),
                d.name.clone(),
                version,
            ]);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            format!(
                "{:w0$}  {:w1$}  {:w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
