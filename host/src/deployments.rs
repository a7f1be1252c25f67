//! Deploy flow, step 4: the set of live deployments and their route table, swapped
//! atomically as a whole on every deploy and undeploy.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::compile::CompileCache;
use crate::deployment::{Backends, DeployError, Deployment, DeploymentInfo};
use crate::engine::{Engines, Tier};
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
    engines: Engines,
    cache: CompileCache,
    /// One Cranelift recompile at a time, on the background compile threads, so
    /// tier-ups never crowd out serving or other deploys.
    tier_up: tokio::sync::Semaphore,
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
    /// An empty set on `engines`, subscribing through `messaging`.
    pub fn new(
        engines: Engines,
        cache: CompileCache,
        messaging: Arc<MessagingTrigger>,
        kv: Arc<dyn crate::keyvalue::KvStore>,
    ) -> Deployments {
        Deployments {
            engines,
            cache,
            tier_up: tokio::sync::Semaphore::new(1),
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
        self: &Arc<Self>,
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
                let (engines, cache, owned_name) =
                    (self.engines.clone(), self.cache.clone(), name.to_string());
                let backends = self.backends.clone();
                let (wasm, version) = (wasm.clone(), version.clone());
                // Compiling is CPU-bound and can take seconds: keep it off the I/O threads.
                tokio::task::spawn_blocking(move || {
                    Deployment::prepare(
                        &engines,
                        &cache,
                        &backends,
                        &owned_name,
                        spec,
                        &wasm,
                        version,
                    )
                })
                .await
                .map_err(|e| DeployError::Compile(format!("compile task failed: {e}")))??
            }
        };

        let deployment = Arc::new(deployment);
        self.install(&deployment, None).await?;
        tracing::info!(component = name, version = %deployment.version, compiled = ?deployment.compiled, tier = ?deployment.tier, "deployed");
        if deployment.tier == Tier::Baseline {
            tokio::spawn(self.clone().tier_up(deployment.clone(), wasm));
        }
        Ok(Deployed {
            info: deployment.info(),
            changed: true,
        })
    }

    /// Makes `deployment` live under its name. With `replacing`, only if that exact
    /// deployment is still the live one (returns false otherwise).
    async fn install(
        &self,
        deployment: &Arc<Deployment>,
        replacing: Option<&Arc<Deployment>>,
    ) -> Result<bool, DeployError> {
        let name = deployment.name.as_str();
        let _writer = self.writer.lock().await;
        if replacing.is_some_and(|expected| !self.is_live(expected)) {
            return Ok(false);
        }
        let live = self.snapshot();
        check_routes(&live, name, &deployment.spec)?;
        // The new version joins its queue groups before the old one leaves, so a
        // stream of messages never finds nobody subscribed.
        let subscriptions = self.messaging.subscribe(deployment).await?;
        let mut by_name = live.by_name.clone();
        by_name.insert(name.to_string(), deployment.clone());
        self.publish(by_name);
        let old = self.messaging.replace(name, subscriptions);
        tokio::spawn(retire(old));
        Ok(true)
    }

    /// Recompiles a deployment that started on Winch with Cranelift, in the background,
    /// and switches to the new code atomically, as a redeploy of the same version would.
    async fn tier_up(self: Arc<Self>, baseline: Arc<Deployment>, wasm: bytes::Bytes) {
        let Ok(_turn) = self.tier_up.acquire().await else {
            return;
        };
        if !self.is_live(&baseline) {
            return; // replaced or removed while waiting
        }
        let (engines, cache, current) =
            (self.engines.clone(), self.cache.clone(), baseline.clone());
        let optimized = tokio::task::spawn_blocking(move || {
            crate::compile::in_background(|| current.optimized(&engines, &cache, &wasm))
        })
        .await;
        let name = &baseline.name;
        let optimized = match optimized {
            Ok(Ok(optimized)) => Arc::new(optimized),
            Ok(Err(e)) => {
                tracing::warn!(component = %name, "keeps running on Winch code: Cranelift failed: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(component = %name, "keeps running on Winch code: the compile task failed: {e}");
                return;
            }
        };
        match self.install(&optimized, Some(&baseline)).await {
            Ok(true) => {
                tracing::info!(component = %name, version = %optimized.version, compiled = ?optimized.compiled, "switched to optimized code")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(component = %name, "keeps running on Winch code: {e}"),
        }
    }

    /// Whether `deployment` itself (not just its name) is what serves now.
    fn is_live(&self, deployment: &Arc<Deployment>) -> bool {
        self.snapshot()
            .by_name
            .get(&deployment.name)
            .is_some_and(|d| Arc::ptr_eq(d, deployment))
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

    /// Drops the idle instances (kept or spare) idle for `idle_for` or longer; returns
    /// how many.
    pub fn expire_idle_instances(&self, idle_for: std::time::Duration) -> usize {
        self.snapshot()
            .by_name
            .values()
            .map(|d| d.instances.expire(idle_for) + d.message_instances.expire(idle_for))
            .sum()
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
