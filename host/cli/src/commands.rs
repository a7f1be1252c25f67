//! `weft deploy`, `weft list` and `weft undeploy`: the admin commands, talking to a running
//! host through [`AdminClient`], and what they print.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_runtime::api::{LatticeView, Rollout, RolloutState, Tier};
use weft_runtime::bus::nats::{NatsConfig, connect_client};
use weft_runtime::lattice::Lattice;
use weft_runtime::spec::manifest::Manifest;
use weft_runtime::spec::{ComponentSpec, RouteSpec};

use crate::admin_client::{AdminClient, Answer};
use crate::up::short;

/// What `weft deploy` was asked to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The component's name.
    pub name: String,
    /// The `.wasm`; default: the `source` of the manifest entry named `name`.
    pub wasm: Option<PathBuf>,
    /// The manifest whose entry gives routes, limits, grants and config.
    pub manifest: Option<PathBuf>,
    /// Routes that replace the manifest's.
    pub routes: Vec<String>,
}

/// Where `weft deploy --nats` and friends reach a lattice, with no host at hand.
#[derive(Debug, Clone)]
pub struct LatticeTarget {
    /// The NATS server(s) and credentials.
    pub nats: NatsConfig,
    /// The lattice's name.
    pub lattice: String,
}

impl LatticeTarget {
    async fn open(&self) -> Result<Lattice> {
        let client = connect_client(&self.nats, "cli", 65_536).await?;
        Lattice::open(client, &self.lattice).await
    }
}

/// The name, spec and bytes `request` asks to deploy.
fn resolve(request: DeployRequest) -> Result<(String, ComponentSpec, Vec<u8>)> {
    let DeployRequest {
        name,
        wasm,
        manifest,
        routes,
    } = request;
    let entry = match &manifest {
        Some(path) => Some(
            Manifest::load(path)?
                .components
                .into_iter()
                .find(|c| c.name == name)
                .with_context(|| format!("{} has no component named `{name}`", path.display()))?,
        ),
        None => None,
    };
    let mut spec = entry
        .as_ref()
        .map(|e| e.spec.clone().into_inner())
        .unwrap_or_else(ComponentSpec::default);
    if !routes.is_empty() {
        spec.routes = routes
            .into_iter()
            .map(|path| RouteSpec {
                path,
                methods: vec![],
                websocket: false,
            })
            .collect();
    }
    let path = wasm.or_else(|| entry.map(|e| e.source)).context(
        "say which .wasm to deploy: --wasm FILE, or --manifest weft.toml with an entry for it",
    )?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((name, spec, bytes))
}

/// `weft deploy`: uploads the component to the host at `admin_url` and prints what is
/// live (in a lattice: on every host).
pub async fn deploy(
    client: &AdminClient,
    admin_url: &str,
    request: DeployRequest,
    wait: Duration,
) -> Result<()> {
    let (name, spec, bytes) = resolve(request)?;
    eprintln!(
        "deploying {name} ({} KiB) to {admin_url}...",
        bytes.len() / 1024
    );
    let (info, changed) = match client.deploy_and_wait(&name, &spec, bytes, wait).await? {
        Answer::Host(info, changed) => (info, changed),
        Answer::Lattice(rollout) => return print_rollout(&rollout, "deploy"),
    };
    let state = if changed {
        "live"
    } else {
        "already live (same version and spec)"
    };
    println!("{} {} {state}", info.name, info.version);
    if let Some(handler) = &info.http_handler {
        println!("  handler  {handler}");
    }
    for route in &info.routes {
        let methods = if route.methods.is_empty() {
            "*".to_string()
        } else {
            route.methods.join(",")
        };
        println!("  {methods:8} {}", route.path);
    }
    for subject in &info.subscriptions {
        println!("  {:8} {subject}", "message");
    }
    for schedule in &info.schedules {
        println!("  {:8} {schedule}", "schedule");
    }
    Ok(())
}

/// `weft deploy --nats`: the same rollout, written to the lattice over NATS directly.
pub async fn deploy_to_lattice(
    target: &LatticeTarget,
    request: DeployRequest,
    wait: Duration,
) -> Result<()> {
    let (name, spec, bytes) = resolve(request)?;
    let spec = spec.validate()?;
    weft_runtime::spec::validate_name(&name)?;
    let lattice = target.open().await?;
    eprintln!(
        "deploying {name} ({} KiB) to lattice `{}`...",
        bytes.len() / 1024,
        lattice.name()
    );
    let rollout = lattice.deploy(&name, spec, &bytes, wait).await?;
    print_rollout(&rollout, "deploy")
}

/// Prints each host's answer; fails if any host refused or did not answer.
fn print_rollout(rollout: &Rollout, what: &str) -> Result<()> {
    let hosts = rollout.hosts.len();
    let ok = rollout
        .hosts
        .iter()
        .filter(|h| matches!(h.state, RolloutState::Live | RolloutState::Removed))
        .count();
    for h in &rollout.hosts {
        let error = h
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!("  {:24} {} ({} ms){error}", h.host, h.state.as_str(), h.ms);
    }
    let failed = rollout.failures().count();
    let summary = match (what, rollout.changed) {
        ("deploy", false) => "already the lattice's version".to_string(),
        ("deploy", true) => format!("live on {ok} of {hosts} hosts"),
        _ => format!("removed from {ok} of {hosts} hosts"),
    };
    println!(
        "{} {} {summary} in lattice `{}` ({} ms)",
        rollout.name,
        short(&rollout.version),
        rollout.lattice,
        rollout.ms
    );
    if hosts == 0 {
        println!(
            "  no host is in the lattice yet: it runs on each host that joins (`weft up --nats URL`)"
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {hosts} hosts did not take the {what}; what they ran before still runs there (see the errors above, and `weft hosts`)"
        );
    }
    Ok(())
}

/// `weft list`: the host's messaging and every deployment, one line each; in a
/// lattice, then each component's version on every host, flagging those that differ.
pub async fn list(client: &AdminClient) -> Result<()> {
    let status = client.status().await?;
    println!("messaging: {}", status.messaging);
    let list = client.list().await?;
    if list.is_empty() {
        println!("no components deployed");
    }
    for d in &list {
        let routes: Vec<&str> = d.routes.iter().map(|r| r.path.as_str()).collect();
        let code = match d.tier {
            Some(Tier::Baseline) => "code=winch(optimizing) ",
            _ => "",
        };
        let dropped = match d.dropped_messages {
            0 => String::new(),
            n => format!("dropped_messages={n} "),
        };
        let schedules = match d.schedules.len() {
            0 => String::new(),
            n => format!("schedules={n} "),
        };
        let handler = match &d.http_handler {
            Some(handler) => format!("handler={handler} "),
            None => String::new(),
        };
        println!(
            "{:20} {:20} requests={} errors={} {dropped}{code}{handler}{schedules}routes={}",
            d.name,
            d.version.chars().take(19).collect::<String>(),
            d.requests,
            d.errors,
            routes.join(",")
        );
    }
    if status.lattice.is_some() {
        print_fleet(&client.lattice().await?);
    }
    Ok(())
}

/// Each component of the lattice and its state on every host that is heartbeating.
fn print_fleet(view: &LatticeView) {
    println!("\nlattice `{}`:", view.lattice);
    if view.components.is_empty() {
        println!("  no components (deploy one with `weft deploy`)");
    }
    for c in &view.components {
        println!("  {:20} {}", c.name, short(&c.version));
        for h in view.hosts.iter().filter(|h| !h.lost) {
            let line = match h.record.components.get(&c.name) {
                Some(s) if s.state == RolloutState::Live && s.version == c.version => {
                    format!("live {}", short(&s.version))
                }
                Some(s) if s.state == RolloutState::NotPlaced => "not placed (labels)".into(),
                Some(s) => format!(
                    "NOT CONVERGED: {} {}{}",
                    s.state.as_str(),
                    short(&s.version),
                    s.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                None => "NOT CONVERGED: has not seen it yet".into(),
            };
            println!("    {:24} {line}", h.record.id);
        }
    }
}

/// `weft undeploy`: removes a component from the host (in a lattice: from every host).
pub async fn undeploy(client: &AdminClient, name: &str, wait: Duration) -> Result<()> {
    match client.undeploy_and_wait(name, wait).await? {
        Answer::Host(info, _) => {
            println!("undeployed {} {}", info.name, info.version);
            Ok(())
        }
        Answer::Lattice(rollout) => print_rollout(&rollout, "undeploy"),
    }
}

/// `weft undeploy --nats`: removes a component from the lattice over NATS directly.
pub async fn undeploy_from_lattice(
    target: &LatticeTarget,
    name: &str,
    wait: Duration,
) -> Result<()> {
    let lattice = target.open().await?;
    let rollout = lattice.undeploy(name, wait).await?;
    print_rollout(&rollout, "undeploy")
}

/// `weft hosts`: the lattice of the host at the admin API.
pub async fn hosts(client: &AdminClient) -> Result<()> {
    print_hosts(&client.lattice().await?);
    Ok(())
}

/// `weft hosts --nats`: the lattice, read over NATS directly.
pub async fn hosts_of_lattice(target: &LatticeTarget) -> Result<()> {
    print_hosts(&target.open().await?.view().await?);
    Ok(())
}

fn print_hosts(view: &LatticeView) {
    println!("lattice `{}`: {} hosts", view.lattice, view.hosts.len());
    let wanted: std::collections::BTreeMap<&str, &str> = view
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.version.as_str()))
        .collect();
    for h in &view.hosts {
        let r = &h.record;
        let state = if h.lost {
            format!("LOST (last seen {}s ago)", h.last_seen_ms / 1000)
        } else {
            "up".to_string()
        };
        let live = r
            .components
            .iter()
            .filter(|(name, s)| {
                s.state == RolloutState::Live
                    && wanted.get(name.as_str()) == Some(&s.version.as_str())
            })
            .count();
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:24} {state:10} http={} admin={} version={} uptime={}s components={live}/{} requests={} errors={}{}",
            r.id,
            r.http,
            r.admin,
            r.version,
            h.uptime_s,
            wanted.len(),
            r.requests,
            r.errors,
            if labels.is_empty() {
                String::new()
            } else {
                format!(" labels={}", labels.join(","))
            }
        );
    }
}
