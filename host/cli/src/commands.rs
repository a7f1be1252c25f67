//! `weft deploy`, `weft list` and `weft undeploy`: the admin commands, talking to a running
//! host through [`AdminClient`], and what they print.

use std::path::PathBuf;

use anyhow::{Context, Result};
use weft_runtime::api::Tier;
use weft_runtime::spec::manifest::Manifest;
use weft_runtime::spec::{ComponentSpec, RouteSpec};

use crate::admin_client::AdminClient;

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

/// `weft deploy`: uploads the component to the host at `admin_url` and prints what is live.
pub async fn deploy(client: &AdminClient, admin_url: &str, request: DeployRequest) -> Result<()> {
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
    eprintln!(
        "deploying {name} ({} KiB) to {admin_url}...",
        bytes.len() / 1024
    );
    let (info, changed) = client.deploy(&name, &spec, bytes).await?;
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

/// `weft list`: the host's messaging and every deployment, one line each.
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
    Ok(())
}

/// `weft undeploy`: removes a component from the host.
pub async fn undeploy(client: &AdminClient, name: &str) -> Result<()> {
    let info = client.undeploy(name).await?;
    println!("undeployed {} {}", info.name, info.version);
    Ok(())
}
