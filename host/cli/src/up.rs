//! `weft up`: build a manifest's components, start a host, deploy them all, print what
//! is served, and run until SIGINT or SIGTERM.

use std::path::Path;

use anyhow::{Context, Result};

use std::time::Duration;

use weft_runtime::api::{DeploymentInfo, RolloutState};
use weft_runtime::bus::nats::NatsConfig;
use weft_runtime::lattice::member::Member;
use weft_runtime::spec::manifest::{ComponentEntry, Manifest};
use weft_runtime::{Host, HostConfig};

/// Starts a host serving every component of the manifest at `path`; with no manifest
/// (only in a lattice), a host that serves what the lattice runs.
pub async fn start(path: Option<&Path>, mut config: HostConfig, build: bool) -> Result<Host> {
    let manifest = match path {
        Some(path) => Manifest::load(path)?,
        None => Manifest {
            name: "lattice host".into(),
            ..Manifest::default()
        },
    };
    if config.nats.is_none() {
        config.nats = manifest.nats_url.clone().map(|url| NatsConfig {
            url,
            ..NatsConfig::default()
        });
    }
    if config.nats.is_none() {
        config.lattice = None;
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
    match host.member() {
        Some(member) => join(member, &manifest).await?,
        None => {
            for entry in &manifest.components {
                let wasm = read_source(entry)?;
                eprintln!("deploying {} ({} KiB)...", entry.name, wasm.len() / 1024);
                host.deployments()
                    .deploy(&entry.name, entry.spec.clone(), wasm.into())
                    .await
                    .with_context(|| {
                        format!("component `{}` from {}", entry.name, entry.source.display())
                    })?;
            }
        }
    }
    let scheme = if config_tls { "https" } else { "http" };
    eprintln!(
        "\n{}: serving on {scheme}://{}",
        manifest.name,
        host.http_addr()
    );
    eprintln!("admin API on http://{}", host.admin_addr());
    let metrics = host.metrics_addr().unwrap_or(host.admin_addr());
    eprintln!("metrics on http://{metrics}/metrics");
    // Read back from the runtime itself: what `--workers` (or the CPU count) made.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    eprintln!("{workers} worker thread(s) run requests, messages and guests\n");
    eprintln!(
        "{}",
        route_table(
            &host.deployments().list(),
            &format!("{scheme}://{}", host.http_addr())
        )
    );
    Ok(host)
}

fn read_source(entry: &ComponentEntry) -> Result<Vec<u8>> {
    std::fs::read(&entry.source).with_context(|| {
        format!(
            "component `{}`: cannot read {}",
            entry.name,
            entry.source.display()
        )
    })
}

/// How long `weft up` waits for a lattice host to converge before it says so.
const CONVERGE_WAIT: Duration = Duration::from_secs(300);

/// In a lattice: seeds the manifest's components the lattice does not have yet (the
/// lattice wins where it has one), then waits until this host runs what the lattice
/// wants. A manifest component refused here fails the start, as it would alone.
async fn join(member: &Member, manifest: &Manifest) -> Result<()> {
    let lattice = member.lattice();
    for entry in &manifest.components {
        let wasm = read_source(entry)?;
        let ours = weft_runtime::compile::digest(&wasm);
        let (_, running) = lattice
            .seed(&entry.name, entry.spec.clone(), &wasm)
            .await
            .with_context(|| format!("seeding `{}` into the lattice", entry.name))?;
        let differs = if running.version != ours {
            Some(format!(
                "this manifest's build {} is not deployed",
                short(&ours)
            ))
        } else if running.spec != *entry.spec {
            Some(
                "this manifest's spec (routes, limits, grants, config) differs and is not deployed"
                    .into(),
            )
        } else {
            None
        };
        if let Some(differs) = differs {
            eprintln!(
                "note: lattice `{}` already runs {} at {}; {differs} (the lattice wins). Roll it out with `weft deploy {} --manifest ...`.",
                lattice.name(),
                entry.name,
                short(&running.version),
                entry.name
            );
        }
    }
    let wanted: Vec<(String, u64)> = lattice
        .desired()
        .await?
        .into_iter()
        .map(|(revision, d)| (d.name, revision))
        .collect();
    eprintln!(
        "lattice `{}`: host `{}` converging on {} components...",
        lattice.name(),
        member.host_id(),
        wanted.len()
    );
    let answers = member.answers(&wanted, CONVERGE_WAIT).await;
    for (name, _) in &wanted {
        let from_manifest = manifest.components.iter().any(|c| &c.name == name);
        match answers.get(name) {
            Some(a) if a.state == RolloutState::Failed => {
                let error = a.error.as_deref().unwrap_or("no details");
                if from_manifest {
                    anyhow::bail!("component `{name}` ({}): {error}", short(&a.version));
                }
                eprintln!("warning: lattice component `{name}` refused on this host: {error}");
            }
            Some(a) if a.state == RolloutState::NotPlaced => {
                eprintln!("{name}: not placed on this host (its placement asks for other labels)")
            }
            Some(_) => {}
            None => eprintln!(
                "warning: `{name}` is not live on this host after {}s; it goes on converging",
                CONVERGE_WAIT.as_secs()
            ),
        }
    }
    Ok(())
}

/// `sha256:0123456789ab`: enough of a digest to tell versions apart.
pub fn short(version: &str) -> String {
    version.chars().take(19).collect()
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
