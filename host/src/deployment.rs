//! Deploy flow, step 3: a validated, compiled, pre-instantiated component version and
//! its live counters. Requests hold an `Arc<Deployment>`, so a redeploy never pulls
//! code out from under them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::compile::{CompileCache, Compiled, Write};
use crate::engine::{Compiler, Engines, Tier};
use crate::instance::{HostState, IdleBudget, InstancePool, Pre, deadline_for, new_store};
use crate::keyvalue::KvStore;
use crate::keyvalue::capability::KvGrant;
use crate::messaging::MessageBus;
use crate::messaging::capability::{MessagingGrant, MessagingHost, MessagingHostPre};
use crate::outbound_http::OutboundPolicy;
use crate::spec::ComponentSpec;

/// Why a component cannot be deployed. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Bad name or spec.
    #[error("invalid deployment: {0}")]
    InvalidSpec(String),
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    /// A core module where a component is needed.
    #[error(
        "this is a core WebAssembly module, not a component: build for `wasm32-wasip2` or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// Wasmtime could not compile it.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// It imports something the host does not provide.
    #[error("the component imports what this host does not provide: {0}")]
    UnknownImport(String),
    /// It does not export what its routes or subscriptions need.
    #[error("{0}")]
    WrongWorld(String),
    /// Its subscriptions could not be set up.
    #[error("messaging: {0}")]
    Messaging(String),
    /// Its routes clash with another component's.
    #[error("{0}")]
    RouteConflict(String),
    /// Nothing is deployed under that name.
    #[error("no component named `{0}` is deployed")]
    NotFound(String),
}

/// A component version that is ready to serve.
pub struct Deployment {
    /// The component's name.
    pub name: String,
    /// `sha256:...` of the wasm bytes.
    pub version: String,
    /// Routes, limits, grants and config.
    pub spec: ComponentSpec,
    /// The compiled code.
    pub component: Component,
    /// Imports resolved once; each request only instantiates. `None`: no HTTP export.
    pub proxy: Option<ProxyPre<HostState>>,
    /// The same for messages. `None`: no `wasmcloud:messaging/handler` export.
    pub messaging: Option<MessagingHostPre<HostState>>,
    /// Outgoing HTTP permissions derived from the spec.
    pub outbound: OutboundPolicy,
    /// The bus and the subjects it may publish on.
    pub messaging_grant: MessagingGrant,
    /// The key-value store and the buckets it may open.
    pub kv_grant: KvGrant,
    /// Admission control: one permit per running instance.
    pub concurrency: Arc<Semaphore>,
    /// Instances kept for the next HTTP request (empty unless
    /// `limits.requests_per_instance` > 1).
    pub instances: InstancePool<Proxy>,
    /// The same for messages.
    pub message_instances: InstancePool<MessagingHost>,
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

/// What `weft list` shows of a deployment.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeploymentInfo {
    /// Component name.
    pub name: String,
    /// `sha256:...` content digest.
    pub version: String,
    /// Route paths with their methods.
    pub routes: Vec<crate::spec::RouteSpec>,
    /// Subscribed subjects.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Seconds since the Unix epoch.
    pub deployed_at: u64,
    /// `fresh` or `cached`, with milliseconds.
    pub compiled: serde_json::Value,
    /// `baseline` (Winch, while Cranelift works) or `optimized`.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Requests handled.
    pub requests: u64,
    /// Requests that failed on the host side (trap, deadline, limits).
    pub errors: u64,
}

impl Deployment {
    /// Validates, compiles (or loads from cache) and pre-instantiates `wasm`, whose
    /// digest ([`crate::compile::digest`]) is `version`.
    ///
    /// Code already in the cache is used as it is. Otherwise, if the host has a
    /// baseline compiler, the component starts on Winch code and
    /// [`Deployment::tier`] says so: the caller recompiles it with Cranelift in the
    /// background (see `Deployments::deploy`).
    pub fn prepare(
        engines: &Engines,
        cache: &CompileCache,
        backends: &Backends,
        name: &str,
        spec: ComponentSpec,
        wasm: &[u8],
        version: String,
    ) -> Result<Deployment, DeployError> {
        crate::spec::validate_name(name).map_err(DeployError::InvalidSpec)?;
        spec.validate().map_err(DeployError::InvalidSpec)?;
        check_is_component(wasm)?;
        let optimized = &engines.optimized;
        let (compiler, (component, compiled)) =
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
        let code = Code::link(compiler, component, &spec)?;
        Ok(Deployment {
            name: name.to_string(),
            version,
            outbound: OutboundPolicy::new(&spec.allowed_outbound_hosts),
            messaging_grant: grant(backends.bus.clone(), name, &spec),
            kv_grant: kv_grant(backends.kv.clone(), &spec),
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            instances: http_pool(&spec, &code.idle_budget),
            message_instances: message_pool(&spec, &code.idle_budget),
            spec,
            component: code.component,
            proxy: code.proxy,
            messaging: code.messaging,
            tier: compiler.tier,
            deployed_at,
            compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// The same code under a new spec, without compiling again.
    pub fn with_spec(&self, spec: ComponentSpec) -> Result<Deployment, DeployError> {
        spec.validate().map_err(DeployError::InvalidSpec)?;
        check_exports(&spec, self.proxy.is_some(), self.messaging.is_some())?;
        let code = Code {
            component: self.component.clone(),
            proxy: self.proxy.clone(),
            messaging: self.messaging.clone(),
            idle_budget: self.instances.budget().clone(),
        };
        Ok(self.rebuilt(spec, code, self.tier, self.compiled))
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
        let code = Code::link(optimized, component, &self.spec)?;
        let next = self.rebuilt(self.spec.clone(), code, Tier::Optimized, compiled);
        next.requests
            .store(self.requests.load(Ordering::Relaxed), Ordering::Relaxed);
        next.errors
            .store(self.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(next)
    }

    fn rebuilt(
        &self,
        spec: ComponentSpec,
        code: Code,
        tier: Tier,
        compiled: Compiled,
    ) -> Deployment {
        Deployment {
            name: self.name.clone(),
            version: self.version.clone(),
            outbound: OutboundPolicy::new(&spec.allowed_outbound_hosts),
            messaging_grant: grant(self.messaging_grant.bus.clone(), &self.name, &spec),
            kv_grant: kv_grant(self.kv_grant.store.clone(), &spec),
            concurrency: Arc::new(Semaphore::new(spec.limits.max_concurrency as usize)),
            instances: http_pool(&spec, &code.idle_budget),
            message_instances: message_pool(&spec, &code.idle_budget),
            spec,
            component: code.component,
            proxy: code.proxy,
            messaging: code.messaging,
            tier,
            deployed_at: self.deployed_at,
            compiled,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Instantiates a spare HTTP instance in the background, if the pool wants one: the
    /// instance a later request takes instead of instantiating on its own path.
    pub fn prepare_http_spare(self: &Arc<Self>) {
        self.prepare_spare(|d| (&d.instances, d.proxy.as_ref()));
    }

    /// The same for messages.
    pub fn prepare_message_spare(self: &Arc<Self>) {
        self.prepare_spare(|d| (&d.message_instances, d.messaging.as_ref()));
    }

    /// `parts` picks the pool and the pre-linked component of one kind of call.
    fn prepare_spare<P: Pre>(self: &Arc<Self>, parts: CallParts<P>) {
        if !parts(self).0.wants_spare() {
            return;
        }
        let deployment = self.clone();
        tokio::spawn(async move {
            let (pool, pre) = parts(&deployment);
            let mut store = new_store(&deployment, deadline_for(&deployment), None);
            let spare = match pre {
                Some(pre) => pre.instantiate_async(&mut store).await.ok(),
                None => None,
            };
            pool.add_spare(spare.map(|exports| (store, exports)));
        });
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
            compiled: serde_json::to_value(self.compiled).unwrap_or_default(),
            tier: Some(self.tier),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A deployment's pool and pre-linked component for one kind of call.
type CallParts<P> = fn(&Deployment) -> (&InstancePool<<P as Pre>::Exports>, Option<&P>);

/// Compiled code with its imports resolved, on one engine.
struct Code {
    component: Component,
    proxy: Option<ProxyPre<HostState>>,
    messaging: Option<MessagingHostPre<HostState>>,
    /// The idle-instance budget of the engine the code is for.
    idle_budget: Arc<IdleBudget>,
}

impl Code {
    /// Resolves `component`'s imports with `compiler`'s linker and checks that it
    /// exports what `spec` needs.
    fn link(
        compiler: &Compiler,
        component: Component,
        spec: &ComponentSpec,
    ) -> Result<Code, DeployError> {
        let pre = compiler
            .linker
            .instantiate_pre(&component)
            .map_err(|e| DeployError::UnknownImport(format!("{e:#}")))?;
        let proxy = ProxyPre::new(pre.clone()).ok();
        let messaging = MessagingHostPre::new(pre).ok();
        check_exports(spec, proxy.is_some(), messaging.is_some())?;
        Ok(Code {
            component,
            proxy,
            messaging,
            idle_budget: compiler.idle_budget.clone(),
        })
    }
}

fn compile(
    compiler: &Compiler,
    cache: &CompileCache,
    wasm: &[u8],
    version: &str,
) -> Result<(Component, Compiled), DeployError> {
    cache
        .compile(&compiler.engine, wasm, version, Write::Now)
        .map_err(|e| DeployError::Compile(format!("{e:#}")))
}

/// The host's shared backends that deployments are granted access to.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The message bus (embedded or NATS).
    pub bus: Arc<dyn MessageBus>,
    /// The key-value store (embedded or NATS).
    pub kv: Arc<dyn KvStore>,
}

/// Idle instances for HTTP: up to one per request the component may run at once.
fn http_pool(spec: &ComponentSpec, budget: &Arc<IdleBudget>) -> InstancePool<Proxy> {
    InstancePool::new(
        spec.limits.requests_per_instance,
        spec.limits.max_concurrency,
        budget.clone(),
    )
}

/// Idle instances for messages: up to one per message its subscriptions may have in
/// flight.
fn message_pool(spec: &ComponentSpec, budget: &Arc<IdleBudget>) -> InstancePool<MessagingHost> {
    let in_flight = spec.subscriptions.iter().map(|s| s.max_in_flight).sum();
    InstancePool::new(spec.limits.requests_per_instance, in_flight, budget.clone())
}

fn kv_grant(store: Arc<dyn KvStore>, spec: &ComponentSpec) -> KvGrant {
    KvGrant {
        store,
        buckets: spec.buckets.clone().into(),
    }
}

fn grant(bus: Arc<dyn MessageBus>, name: &str, spec: &ComponentSpec) -> MessagingGrant {
    MessagingGrant {
        bus,
        allowed: spec.allowed_publish.clone().into(),
        component: name.into(),
    }
}

/// Checks that the component exports what its routes and subscriptions need.
fn check_exports(spec: &ComponentSpec, http: bool, messaging: bool) -> Result<(), DeployError> {
    if !spec.routes.is_empty() && !http {
        return Err(DeployError::WrongWorld(
            "the component does not export `wasi:http/incoming-handler` (the `wasi:http/proxy` world), so it cannot serve HTTP routes".into(),
        ));
    }
    if !spec.subscriptions.is_empty() && !messaging {
        return Err(DeployError::WrongWorld(
            "the component does not export `wasmcloud:messaging/handler@0.2.0`, so it cannot handle subscriptions".into(),
        ));
    }
    if !http && !messaging {
        return Err(DeployError::WrongWorld(
            "the component exports neither `wasi:http/incoming-handler` nor `wasmcloud:messaging/handler`: it is not a service".into(),
        ));
    }
    Ok(())
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
