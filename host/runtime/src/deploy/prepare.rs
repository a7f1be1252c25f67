//! Deploy flow, step 3: a component version checked, compiled (or loaded from the
//! cache) and linked, with each trigger linking the export it calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, InstancePre};

use super::{DeployError, Deployment};
use crate::api::{Compiled, Tier};
use crate::capabilities::{Backends, Grants};
use crate::compile::{CompileCache, Write};
use crate::deployment::Exports;
use crate::engine::{Engines, TierEngine};
use crate::instance::IdleBudget;
use crate::metrics::CallMetrics;
use crate::spec::ValidSpec;
use crate::store_data::StoreData;
use crate::triggers::Trigger;

/// What making a deployment takes: the host's engines, compile cache, backends (for the
/// grants) and triggers (each links the export it calls).
#[derive(Clone)]
pub struct Deployer {
    /// Cranelift (classic or concurrent), and Winch for a quick start.
    pub engines: Engines,
    /// Compiled code on disk.
    pub cache: CompileCache,
    /// What grants give access to.
    pub backends: Backends,
    /// Every trigger of the host.
    pub triggers: Vec<Arc<dyn Trigger>>,
    /// Where compiles and deploys are counted.
    pub metrics: Arc<crate::metrics::HostMetrics>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("triggers", &self.triggers)
            .finish()
    }
}

impl Deployer {
    /// Checks, compiles (or loads from cache) and links `wasm`, whose digest
    /// ([`crate::compile::digest`]) is `version`, as component `name` under `spec`.
    ///
    /// Code already in the cache is used as it is. Otherwise, if the host has a
    /// baseline compiler, the component starts on Winch code and
    /// [`Deployment::tier`] says so: the caller recompiles it with Cranelift in the
    /// background ([`Deployer::optimized`], see `LiveSet::deploy`).
    pub fn prepare(
        &self,
        name: &str,
        spec: ValidSpec,
        wasm: &[u8],
        version: String,
    ) -> Result<Deployment, DeployError> {
        crate::spec::validate_name(name)?;
        check_is_component(wasm)?;
        let (cache, optimized) = (&self.cache, self.engines.optimized_for(wasm));
        let (engine, (component, compiled)) = match (
            cache.cached(&optimized.engine, &version),
            &self.engines.baseline,
        ) {
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
        self.metrics.compiled(engine.tier, compiled);
        let deployed_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let pre = link(engine, &component)?;
        let exports = self.link_exports(&pre, &spec, &engine.idle_budget)?;
        Ok(Deployment {
            name: name.to_string(),
            grants: Grants::new(name, &version, &spec, &self.backends),
            version,
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            spec,
            component,
            pre,
            exports,
            idle_budget: engine.idle_budget.clone(),
            tier: engine.tier,
            deployed_at,
            compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            calls: Arc::new(CallMetrics::new(self.metrics.count_calls)),
        })
    }

    /// The same code as `current` under a new spec, without compiling again.
    pub fn with_spec(
        &self,
        current: &Deployment,
        spec: ValidSpec,
    ) -> Result<Deployment, DeployError> {
        let exports = self.link_exports(&current.pre, &spec, &current.idle_budget)?;
        Ok(Deployment {
            name: current.name.clone(),
            version: current.version.clone(),
            grants: Grants::new(&current.name, &current.version, &spec, &self.backends),
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            spec,
            component: current.component.clone(),
            pre: current.pre.clone(),
            exports,
            idle_budget: current.idle_budget.clone(),
            tier: current.tier,
            deployed_at: current.deployed_at,
            compiled: current.compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            calls: current.calls.clone(),
        })
    }

    /// `current` on Cranelift code: the tier-up of a deployment that started on Winch.
    /// Same version, spec and grants; counters carry over.
    pub fn optimized(&self, current: &Deployment, wasm: &[u8]) -> Result<Deployment, DeployError> {
        let optimized = self.engines.optimized_for(wasm);
        let (component, compiled) = compile(optimized, &self.cache, wasm, &current.version)?;
        self.metrics.compiled(Tier::Optimized, compiled);
        let pre = link(optimized, &component)?;
        let exports = self.link_exports(&pre, &current.spec, &optimized.idle_budget)?;
        let max_concurrency = current.spec.limits.max_concurrency as usize;
        Ok(Deployment {
            name: current.name.clone(),
            version: current.version.clone(),
            grants: current.grants.clone(),
            concurrency: Arc::new(Semaphore::new(max_concurrency)),
            spec: current.spec.clone(),
            component,
            pre,
            exports,
            idle_budget: optimized.idle_budget.clone(),
            tier: Tier::Optimized,
            deployed_at: current.deployed_at,
            compiled,
            requests: AtomicU64::new(current.requests.load(Ordering::Relaxed)),
            errors: AtomicU64::new(current.errors.load(Ordering::Relaxed)),
            dropped_messages: AtomicU64::new(current.dropped_messages.load(Ordering::Relaxed)),
            calls: current.calls.clone(),
        })
    }

    /// Each trigger's export of the component behind `pre`, with pools in `budget`.
    /// Refused if the spec needs an export the component lacks (its trigger says
    /// which), or if no trigger has anything to call.
    fn link_exports(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Result<Exports, DeployError> {
        let mut linked = Vec::new();
        for trigger in &self.triggers {
            linked.extend(trigger.link(pre, spec, budget)?);
        }
        if linked.is_empty() {
            let exports: Vec<String> = self
                .triggers
                .iter()
                .map(|t| format!("`{}`", t.export()))
                .collect();
            return Err(DeployError::WrongWorld(format!(
                "the component exports none of {}, so nothing can call it: {}",
                exports.join(", "),
                crate::deployment::what_it_exports(pre)
            )));
        }
        Ok(Exports::new(linked))
    }
}

/// Resolves `component`'s imports with `engine`'s linker. An import it lacks is named
/// with the versions the host serves of its package.
fn link(engine: &TierEngine, component: &Component) -> Result<InstancePre<StoreData>, DeployError> {
    engine.linker.instantiate_pre(component).map_err(|e| {
        let message = format!("{e:#}");
        // "component imports instance `NAME`, but a matching implementation was not found"
        let named = message.split('`').nth(1).filter(|n| n.contains(':'));
        DeployError::UnknownImport(match named {
            Some(name) => crate::capabilities::explain_unknown_import(name),
            None => message,
        })
    })
}

fn compile(
    engine: &TierEngine,
    cache: &CompileCache,
    wasm: &[u8],
    version: &str,
) -> Result<(Component, Compiled), DeployError> {
    cache
        .compile(&engine.engine, wasm, version, Write::Now)
        .map_err(|e| match e.downcast::<crate::compile::CacheWriteFailed>() {
            Ok(cache) => DeployError::Storage(cache.to_string()),
            Err(e) => DeployError::Compile(explain_compile_error(&format!("{e:#}"))),
        })
}

/// A compile error as a deploy tells it: one that names a WebAssembly proposal the host
/// does not enable says so and what the host runs, instead of only the parser's words.
fn explain_compile_error(message: &str) -> String {
    if message.contains(" feature") && message.contains(" require") {
        format!(
            "it uses a WebAssembly feature this host does not enable ({message}). weft runs components of the component model with its async support (WASI 0.2 and 0.3); build the component without that proposal"
        )
    } else {
        message.to_string()
    }
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
    fn a_missing_feature_is_named_as_one() {
        let raw = "failed to parse WebAssembly module: bad magic number";
        assert_eq!(explain_compile_error(raw), raw, "not this shape");
        let raw = "failed to parse WebAssembly module: `thread.spawn` requires the component model threading feature (at offset 0xc)";
        let told = explain_compile_error(raw);
        assert!(
            told.contains("does not enable") && told.contains(raw),
            "{told}"
        );
    }

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
