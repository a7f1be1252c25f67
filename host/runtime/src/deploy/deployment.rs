//! Deploy flow, step 3: a validated, compiled, linked component version and its live
//! counters. Calls hold an `Arc<Deployment>`, so a redeploy never pulls code out from
//! under them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use super::DeployError;
use crate::api::{Compiled, DeploymentInfo, Tier};
use crate::capabilities::{Backends, Grants};
use crate::compile::{CompileCache, Write};
use crate::engine::{Engines, TierEngine};
use crate::instance::IdleBudget;
use crate::spec::ValidSpec;
use crate::store_data::{CallContext, StoreData, new_store};
use crate::triggers::Entries;

/// A component version that is ready to serve.
pub struct Deployment {
    /// The component's name.
    pub name: String,
    /// `sha256:...` of the wasm bytes.
    pub version: String,
    /// Routes, subscriptions, limits, grants and config.
    pub spec: ValidSpec,
    /// What its instances may reach, built from the spec.
    pub grants: Grants,
    /// The compiled code.
    pub component: Component,
    /// The component with its imports resolved once; each call only instantiates.
    pre: InstancePre<StoreData>,
    /// The exports triggers call, each with its idle instances.
    pub entries: Entries,
    /// The idle-instance budget of the engine the code is for.
    idle_budget: Arc<IdleBudget>,
    /// Admission control: one permit per running instance.
    pub concurrency: Arc<Semaphore>,
    /// When it went live (seconds since the Unix epoch).
    pub deployed_at: u64,
    /// How the code was obtained.
    pub compiled: Compiled,
    /// Which compiler made the code.
    pub tier: Tier,
    /// Requests handled.
    pub requests: AtomicU64,
    /// Requests that ended in a trap, deadline or host error.
    pub errors: AtomicU64,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

impl Deployment {
    /// Checks, compiles (or loads from cache) and links `wasm`, whose digest
    /// ([`crate::compile::digest`]) is `version`.
    ///
    /// Code already in the cache is used as it is. Otherwise, if the host has a
    /// baseline compiler, the component starts on Winch code and
    /// [`Deployment::tier`] says so: the caller recompiles it with Cranelift in the
    /// background (see `LiveSet::deploy`).
    pub fn prepare(
        engines: &Engines,
        cache: &CompileCache,
        backends: &Backends,
        name: &str,
        spec: ValidSpec,
        wasm: &[u8],
        version: String,
    ) -> Result<Deployment, DeployError> {
        crate::spec::validate_name(name)?;
        check_is_component(wasm)?;
        let optimized = &engines.optimized;
        let (engine, (component, compiled)) =
            match (cache.cached(&optimized.engine, &version), &engines.baseline) {
                (Some(hit), _) => (optimized, hit),
                // Cached too (a host restarted before Cranelift finished starts on it
                // again), but written in the background: writing tens of MB would
                // delay the first response.
                (None, Some(baseline)) => {
                    match cache.compile(&baseline.engine, wasm, &version, Write::InBackground) {
                        Ok(code) => (baseline, code),
                        Err(e) => {
                            // Winch lacks some proposals Cranelift has: not an error yet.
                            tracing::info!(
                                component = name,
                                "Winch cannot compile it, using Cranelift: {e:#}"
                            );
                            (optimized, compile(optimized, cache, wasm, &version)?)
                        }
                    }
                }
                (None, None) => (optimized, compile(optimized, cache, wasm, &version)?),
            };
        let deployed_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let pre = link(engine, &component)?;
        let entries = Entries::link(&pre, &spec, &engine.idle_budget)?;
        Ok(Deployment {
            name: name.to_string(),
            version,
            grants: Grants::new(name, &spec, backends),
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            spec,
            component,
            pre,
            entries,
            idle_budget: engine.idle_budget.clone(),
            tier: engine.tier,
            deployed_at,
            compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// The same code under a new spec, without compiling again.
    pub fn with_spec(&self, spec: ValidSpec) -> Result<Deployment, DeployError> {
        let entries = Entries::link(&self.pre, &spec, &self.idle_budget)?;
        Ok(Deployment {
            name: self.name.clone(),
            version: self.version.clone(),
            grants: Grants::new(&self.name, &spec, &self.grants.backends()),
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            spec,
            component: self.component.clone(),
            pre: self.pre.clone(),
            entries,
            idle_budget: self.idle_budget.clone(),
            tier: self.tier,
            deployed_at: self.deployed_at,
            compiled: self.compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// This deployment on Cranelift code: the tier-up of a deployment that started on
    /// Winch. Same version, spec and grants; counters carry over.
    pub fn optimized(
        &self,
        engines: &Engines,
        cache: &CompileCache,
        wasm: &[u8],
    ) -> Result<Deployment, DeployError> {
        let optimized = &engines.optimized;
        let (component, compiled) = compile(optimized, cache, wasm, &self.version)?;
        let pre = link(optimized, &component)?;
        let entries = Entries::link(&pre, &self.spec, &optimized.idle_budget)?;
        Ok(Deployment {
            name: self.name.clone(),
            version: self.version.clone(),
            grants: self.grants.clone(),
            concurrency: Arc::new(Semaphore::new(self.spec.limits.max_concurrency as usize)),
            spec: self.spec.clone(),
            component,
            pre,
            entries,
            idle_budget: optimized.idle_budget.clone(),
            tier: Tier::Optimized,
            deployed_at: self.deployed_at,
            compiled,
            requests: AtomicU64::new(self.requests.load(Ordering::Relaxed)),
            errors: AtomicU64::new(self.errors.load(Ordering::Relaxed)),
        })
    }

    /// The idle-instance budget of the engine its code runs on.
    pub fn idle_budget(&self) -> &Arc<IdleBudget> {
        &self.idle_budget
    }

    /// The deadline of a call starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.spec.limits.timeout_ms)
    }

    /// A fresh store for one call, with this deployment's grants and memory cap.
    pub fn new_store(&self, call: CallContext) -> Store<StoreData> {
        let memory_bytes = (self.spec.limits.memory_mb as usize) << 20;
        new_store(self.component.engine(), &self.grants, memory_bytes, call)
    }

    /// A snapshot for listings.
    pub fn info(&self) -> DeploymentInfo {
        DeploymentInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            routes: self.spec.routes.clone(),
            subscriptions: self
                .spec
                .subscriptions
                .iter()
                .map(|s| s.subject.clone())
                .collect(),
            deployed_at: self.deployed_at,
            compiled: self.compiled,
            tier: Some(self.tier),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Resolves `component`'s imports with `engine`'s linker.
fn link(engine: &TierEngine, component: &Component) -> Result<InstancePre<StoreData>, DeployError> {
    engine
        .linker
        .instantiate_pre(component)
        .map_err(|e| DeployError::UnknownImport(format!("{e:#}")))
}

fn compile(
    engine: &TierEngine,
    cache: &CompileCache,
    wasm: &[u8],
    version: &str,
) -> Result<(Component, Compiled), DeployError> {
    cache
        .compile(&engine.engine, wasm, version, Write::Now)
        .map_err(|e| DeployError::Compile(format!("{e:#}")))
}

/// Tells a component from a core module or something else, before compiling.
fn check_is_component(wasm: &[u8]) -> Result<(), DeployError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(DeployError::NotWasm);
    }
    // Bytes 4..8: version 1 is a core module; components use layer 1 (`0d 00 01 00`).
    if wasm[6..8] == [0, 0] {
        return Err(DeployError::CoreModule);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_components_from_modules() {
        assert!(matches!(
            check_is_component(b"hello world"),
            Err(DeployError::NotWasm)
        ));
        assert!(matches!(
            check_is_component(b"\0asm\x01\0\0\0"),
            Err(DeployError::CoreModule)
        ));
        assert!(check_is_component(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
