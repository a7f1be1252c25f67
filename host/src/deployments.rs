//! Deploy flow, step 4: the set of live deployments and their route table, swapped
//! atomically as a whole on every deploy and undeploy.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::compile::CompileCache;
use crate::deployment::{Backends, DeployError, Deployment, DeploymentInfo};
use crate::instance::HostState;
use crate::messaging::trigger::{MessagingTrigger, retire};
use crate::router::RouteTable;
use crate::spec::ComponentSpec;

/// What is live at one moment: never edited, only replaced.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Deployments by name.
    pub by_name: BTreeMap<String, Arc<Deployment>>,
    /// Routes of all of them.
    pub routes: RouteTable,
}

/// The outcome of a deploy.
#[derive(Debug)]
pub struct Deployed {
    /// The deployment now live.
    pub info: DeploymentInfo,
    /// False when the same code and spec were already live (deploys are idempotent).
    pub changed: bool,
}

/// All deployments of a host, and the engine they run on.
pub struct Deployments {
    engine: Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    messaging: Arc<MessagingTrigger>,
    backends: Backends,
    live: ArcSwap<Snapshot>,
    /// Serialises writers; readers never wait for it.
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments")
            .field("live", &self.live.load().by_name.keys())
            .finish()
    }
}

impl Deployments {
    /// An empty set on `engine`, checking imports against `linker`, subscribing through `messaging`.
    pub fn new(
        engine: Engine,
        linker: Linker<HostState>,
        cache: CompileCache,
        messaging: Arc<MessagingTrigger>,
        kv: Arc<dyn crate::keyvalue::KvStore>,
    ) -> Deployments {
        Deployments {
            engine,
            linker,
            cache,
            backends: Backends {
                bus: messaging.bus().clone(),
                kv,
            },
            messaging,
            live: ArcSwap::from_pointee(Snapshot::default()),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// What is live now; cheap, never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Deploys `wasm` as `name`, replacing any earlier version once the new one is ready.
    /// Requests in flight finish on the version they started on.
    pub async fn deploy(
        &self,
        name: &str,
        spec: ComponentSpec,
        wasm: bytes::Bytes,
    ) -> Result<Deployed, DeployError> {
        // Cheap checks first, so a bad deploy fails before a long compile.
        spec.validate().map_err(DeployError::InvalidSpec)?;
        check_routes(&self.snapshot(), name, &spec)?;

        let version = crate::compile::digest(&wasm);
        let current = self.snapshot().by_name.get(name).cloned();
        let deployment = match current {
            Some(current) if current.version == version => {
                if current.spec == spec {
                    return Ok(Deployed {
                        info: current.info(),
                        changed: false,
                    });
                }
                current.with_spec(spec)?
            }
            _ => {
                let (engine, linker, cache, owned_name) = (
                    self.engine.clone(),
                    self.linker.clone(),
                    self.cache.clone(),
                    name.to_string(),
                );
                let backends = self.backends.clone();
                // Compiling is CPU-bound and can take seconds: keep it off the I/O threads.
                tokio::task::spawn_blocking(move || {
                    Deployment::prepare(
                        &engine,
                        &linker,
                        &cache,
                        &backends,
                        &owned_name,
                        spec,
                        &wasm,
                    )
                })
                .await
                .map_err(|e| DeployError::Compile(format!("compile task failed: {e}")))??
            }
        };

        let deployment = Arc::new(deployment);
        let _writer = self.writer.lock().await;
        let live = self.snapshot();
        check_routes(&live, name, &deployment.spec)?;
        // The new version joins its queue groups before the old one leaves, so a
        // stream of messages never finds nobody subscribed.
        let subscriptions = self.messaging.subscribe(&deployment).await?;
        let mut by_name = live.by_name.clone();
        by_name.insert(name.to_string(), deployment.clone());
        self.publish(by_name);
        let old = self.messaging.replace(name, subscriptions);
        tokio::spawn(retire(old));
        tracing::info!(component = name, version = %deployment.version, compiled = ?deployment.compiled, "deployed");
        Ok(Deployed {
            info: deployment.info(),
            changed: true,
        })
    }

    /// Removes `name`; its routes answer 404 from now on, requests in flight finish.
    pub async fn undeploy(&self, name: &str) -> Result<DeploymentInfo, DeployError> {
        let _writer = self.writer.lock().await;
        let mut by_name = self.snapshot().by_name.clone();
        let removed = by_name
            .remove(name)
            .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
        self.publish(by_name);
        retire(self.messaging.replace(name, Vec::new())).await;
        tracing::info!(component = name, version = %removed.version, "undeployed");
        Ok(removed.info())
    }

    /// Everything live, by name.
    pub fn list(&self) -> Vec<DeploymentInfo> {
        self.snapshot().by_name.values().map(|d| d.info()).collect()
    }

    /// The backends deployments are granted (bus and key-value store).
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The messaging trigger (and through it, the bus).
    pub fn messaging(&self) -> &Arc<MessagingTrigger> {
        &self.messaging
    }

    fn publish(&self, by_name: BTreeMap<String, Arc<Deployment>>) {
        let routes = RouteTable::build(by_name.values());
        self.live.store(Arc::new(Snapshot { by_name, routes }));
    }
}

/// Checks `spec`'s routes against every other component's.
fn check_routes(live: &Snapshot, name: &str, spec: &ComponentSpec) -> Result<(), DeployError> {
    let mut specs: Vec<(&str, &ComponentSpec)> = vec![(name, spec)];
    specs.extend(
        live.by_name
            .values()
            .filter(|d| d.name != name)
            .map(|d| (d.name.as_str(), &d.spec)),
    );
    RouteTable::check_conflicts(&specs).map_err(DeployError::RouteConflict)
}
