//! Deploy flow, step 4: the set of live deployments, swapped atomically as a whole on
//! every deploy and undeploy, and the triggers told about each change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::prepare::Deployer;
use super::{DeployError, Deployment, Snapshot};
use crate::api::{DeploymentInfo, Tier};
use crate::capabilities::Backends;
use crate::spec::ValidSpec;
use crate::triggers::Attachment;

/// The outcome of a deploy.
#[derive(Debug)]
pub struct Deployed {
    /// The deployment now live.
    pub info: DeploymentInfo,
    /// False when the same code and spec were already live (deploys are idempotent).
    pub changed: bool,
}

/// All deployments of a host, and how they are made and called ([`Deployer`]: engines,
/// compile cache, backends, triggers).
pub struct LiveSet {
    deployer: Deployer,
    /// One Cranelift recompile at a time, on the background compile threads, so
    /// tier-ups never crowd out serving or other deploys.
    tier_up: tokio::sync::Semaphore,
    live: ArcSwap<Snapshot>,
    /// What each trigger started for the live deployment of each name.
    attachments: Mutex<HashMap<String, Vec<Attachment>>>,
    /// Serialises swaps of the live set (held only for the swap itself, never across a
    /// compile or a drain); readers never wait for it.
    writer: tokio::sync::Mutex<()>,
    /// One lock per name with an operation under way, so the deploys and undeploys of
    /// one name take effect in the order they arrived (tokio's mutex is fair) while
    /// other names proceed in parallel.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The turn of one operation on one name; the next operation on it waits until dropped.
struct Turn<'a> {
    turns: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Nobody else holds or waits for this name's lock: forget it.
        if turns
            .get(&self.name)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.name);
        }
    }
}

impl std::fmt::Debug for LiveSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSet")
            .field("live", &self.live.load().by_name.keys())
            .finish()
    }
}

impl LiveSet {
    /// An empty set whose deployments `deployer` makes.
    pub fn new(deployer: Deployer) -> LiveSet {
        LiveSet {
            deployer,
            tier_up: tokio::sync::Semaphore::new(1),
            live: ArcSwap::from_pointee(Snapshot::default()),
            attachments: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for the operations on `name` that arrived earlier, then holds its turn.
    async fn turn(&self, name: &str) -> Turn<'_> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            turns.entry(name.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Turn {
            turns: &self.turns,
            name: name.to_string(),
            guard: Some(guard),
        }
    }

    /// What is live now; cheap, never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Says loudly when the live components together may run more instances than the
    /// host has slots: then a burst answers 503 (`the host is running as many instances
    /// as it may`) before any component reaches its own `max_concurrency`.
    fn warn_if_oversubscribed(&self) {
        let slots = u64::from(self.deployer.engines.max_instances);
        let wanted: u64 = self
            .snapshot()
            .by_name
            .values()
            .map(|d| u64::from(d.spec.limits.max_concurrency))
            .sum();
        if wanted > slots {
            tracing::warn!(
                "the live components may run {wanted} instances at once (the sum of their max_concurrency), but this host has {slots} instance slots (HostConfig::max_instances): under load, requests beyond the slots are answered 503"
            );
        }
    }

    /// Deploys `wasm` as `name`, replacing any earlier version once the new one is ready.
    /// Requests in flight finish on the version they started on. Operations on one name
    /// take effect in the order they arrive: a deploy that arrived before an undeploy
    /// never brings the component back after it.
    /// `spec` is validated here if it is not a [`ValidSpec`] yet.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        spec: impl TryInto<ValidSpec, Error: Into<DeployError>>,
        wasm: bytes::Bytes,
    ) -> Result<Deployed, DeployError> {
        use crate::metrics::DeployOutcome;
        let started = std::time::Instant::now();
        let result = match spec.try_into() {
            Ok(spec) => self.deploy_valid(name, spec, wasm).await,
            Err(e) => Err(e.into()),
        };
        let outcome = match &result {
            Ok(deployed) if deployed.changed => DeployOutcome::Changed,
            Ok(_) => DeployOutcome::Unchanged,
            Err(_) => DeployOutcome::Refused,
        };
        self.deployer.metrics.deployed(outcome, started.elapsed());
        result
    }

    async fn deploy_valid(
        self: &Arc<Self>,
        name: &str,
        spec: ValidSpec,
        wasm: bytes::Bytes,
    ) -> Result<Deployed, DeployError> {
        let _turn = self.turn(name).await;
        // Cheap checks first, so a bad deploy fails before a long compile.
        self.check(&self.snapshot(), name, &spec)?;

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
                self.deployer.with_spec(&current, spec)?
            }
            _ => {
                let (deployer, owned_name) = (self.deployer.clone(), name.to_string());
                let (wasm, version) = (wasm.clone(), version.clone());
                // Compiling is CPU-bound and can take seconds: keep it off the I/O threads.
                tokio::task::spawn_blocking(move || {
                    deployer.prepare(&owned_name, spec, &wasm, version)
                })
                .await
                .map_err(|e| DeployError::Compile(format!("compile task failed: {e}")))??
            }
        };

        let deployment = Arc::new(deployment);
        self.install(&deployment, None).await?;
        tracing::info!(component = name, version = %deployment.version, compiled = ?deployment.compiled, tier = ?deployment.tier, "deployed");
        self.warn_if_oversubscribed();
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
        self.check(&live, name, &deployment.spec)?;
        // The new version is attached (joins its queue groups, say) before the old one
        // is detached, so a stream of messages never finds nobody subscribed.
        let triggers = &self.deployer.triggers;
        let mut attached = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            match trigger.attach(deployment).await {
                Ok(attachment) => attached.push(attachment),
                Err(e) => {
                    detach_all(attached).await;
                    return Err(e);
                }
            }
        }
        let mut by_name = live.by_name.clone();
        by_name.insert(name.to_string(), deployment.clone());
        self.publish(by_name);
        let old = self.replace_attachments(name, attached);
        tokio::spawn(detach_all(old));
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
        let (deployer, current) = (self.deployer.clone(), baseline.clone());
        let optimized = tokio::task::spawn_blocking(move || {
            crate::compile::in_background(|| deployer.optimized(&current, &wasm))
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
    /// Returns once its subscriptions are drained; other deploys and undeploys go on
    /// meanwhile (the drain may take a while, or wait out its bound with NATS away).
    pub async fn undeploy(&self, name: &str) -> Result<DeploymentInfo, DeployError> {
        let (removed, old) = {
            let _turn = self.turn(name).await;
            let _writer = self.writer.lock().await;
            let mut by_name = self.snapshot().by_name.clone();
            let removed = by_name
                .remove(name)
                .ok_or_else(|| DeployError::NotFound(name.to_string()))?;
            self.publish(by_name);
            (removed, self.replace_attachments(name, Vec::new()))
        };
        tracing::info!(component = name, version = %removed.version, "undeployed");
        detach_all(old).await;
        Ok(removed.info())
    }

    /// Drops the idle instances (kept or spare) idle for `idle_for` or longer; returns
    /// how many.
    pub fn expire_idle_instances(&self, idle_for: std::time::Duration) -> usize {
        self.snapshot()
            .by_name
            .values()
            .map(|d| d.exports.expire(idle_for))
            .sum()
    }

    /// Everything live, by name.
    pub fn list(&self) -> Vec<DeploymentInfo> {
        self.snapshot().by_name.values().map(|d| d.info()).collect()
    }

    /// The host's engines.
    pub fn engines(&self) -> &crate::engine::Engines {
        &self.deployer.engines
    }

    /// The backends deployments are granted (bus and key-value store).
    pub fn backends(&self) -> &Backends {
        &self.deployer.backends
    }

    /// Stops every trigger's delivery to every deployment and waits for the calls
    /// already taken in (graceful shutdown). `draining` names the components whose
    /// calls are still running, for the caller to report if it stops waiting.
    pub async fn shutdown(&self, draining: &Mutex<BTreeSet<String>>) {
        let all: Vec<(String, Vec<Attachment>)> = {
            let mut attachments = self.attachments.lock().unwrap_or_else(|e| e.into_inner());
            attachments.drain().collect()
        };
        let lock = || draining.lock().unwrap_or_else(|e| e.into_inner());
        lock().extend(all.iter().map(|(name, _)| name.clone()));
        futures::future::join_all(all.into_iter().map(|(name, attachments)| async move {
            detach_all(attachments).await;
            lock().remove(&name);
        }))
        .await;
    }

    /// Asks every trigger whether `spec` may go live as `name` next to `live`.
    fn check(&self, live: &Snapshot, name: &str, spec: &ValidSpec) -> Result<(), DeployError> {
        self.deployer
            .triggers
            .iter()
            .try_for_each(|trigger| trigger.check(live, name, spec))
    }

    /// Records `new` as what the triggers started for `name`; returns what it replaces.
    fn replace_attachments(&self, name: &str, new: Vec<Attachment>) -> Vec<Attachment> {
        let mut attachments = self.attachments.lock().unwrap_or_else(|e| e.into_inner());
        let old = attachments.remove(name).unwrap_or_default();
        if !new.is_empty() {
            attachments.insert(name.to_string(), new);
        }
        old
    }

    fn publish(&self, by_name: BTreeMap<String, Arc<Deployment>>) {
        let snapshot = Arc::new(Snapshot { by_name });
        self.live.store(snapshot.clone());
        for trigger in &self.deployer.triggers {
            trigger.went_live(&snapshot);
        }
    }
}

/// Detaches (stops and drains) every attachment, all at once.
async fn detach_all(attachments: Vec<Attachment>) {
    futures::future::join_all(attachments.into_iter().map(Attachment::detach)).await;
}
