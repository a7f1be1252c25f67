//! A deployment: one component version, compiled and linked, with the exports its
//! triggers call, what it is granted, its limits and its counters. Calls hold an
//! `Arc<Deployment>`, so a redeploy never pulls code out from under them. How one is
//! made (check, compile, link) is the deploy flow, `deploy/`; this is what the call path
//! and the triggers use of it.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use crate::api::{Compiled, DeploymentInfo, Tier};
use crate::capabilities::Grants;
use crate::instance::{Entry, IdleBudget, Pre};
use crate::metrics::CallMetrics;
use crate::spec::{SpecError, ValidSpec};
use crate::store_data::{CallContext, StoreData, new_store};

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
    pub(crate) pre: InstancePre<StoreData>,
    /// The exports triggers call, each linked by its trigger, with its idle instances.
    pub(crate) exports: Exports,
    /// The idle-instance budget of the engine the code is for.
    pub(crate) idle_budget: Arc<IdleBudget>,
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
    /// Messages dropped before reaching it because its subscriptions were full (NATS).
    pub dropped_messages: AtomicU64,
    /// Its calls by trigger and outcome, for `/metrics`; kept by a tier-up or a new spec.
    pub calls: Arc<CallMetrics>,
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
            schedules: self.spec.schedules.iter().map(|s| s.describe()).collect(),
            deployed_at: self.deployed_at,
            compiled: self.compiled,
            tier: Some(self.tier),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped_messages: self.dropped_messages.load(Ordering::Relaxed),
            http_handler: crate::triggers::http::handler_kind(self).map(str::to_string),
        }
    }

    /// The linked export of type `P` (the one a trigger calls), if the component has it.
    pub fn export<P: Pre>(&self) -> Option<&Entry<P>> {
        self.exports.get::<P>()
    }

    /// The linked export of concrete type `L`, if the component has it.
    pub fn linked<L: LinkedExport + 'static>(&self) -> Option<&L> {
        self.exports.find::<L>()
    }
}

/// What is live at one moment: never edited, only replaced.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Deployments by name.
    pub by_name: BTreeMap<String, Arc<Deployment>>,
}

/// One export of a deployment as its trigger linked it: an [`Entry`] of some `Pre`.
pub trait LinkedExport: Send + Sync {
    /// Drops the instances idle for `idle_for` or longer; returns how many.
    fn expire(&self, idle_for: Duration) -> usize;
    /// Idle instances (kept or spare) right now.
    fn idle(&self) -> usize;
    /// The entry itself, to get back its type.
    fn as_any(&self) -> &dyn Any;
}

impl<P: Pre> LinkedExport for Entry<P> {
    fn expire(&self, idle_for: Duration) -> usize {
        self.pool.expire(idle_for)
    }

    fn idle(&self) -> usize {
        self.pool.idle()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The exports of a deployment that triggers call, each linked by its trigger at
/// deploy. A trigger finds its own by type ([`Exports::get`]).
#[derive(Default)]
pub struct Exports(Vec<Box<dyn LinkedExport>>);

impl Exports {
    /// The exports in `linked`.
    pub fn new(linked: Vec<Box<dyn LinkedExport>>) -> Exports {
        Exports(linked)
    }

    /// The export of type `P`, if linked.
    pub fn get<P: Pre>(&self) -> Option<&Entry<P>> {
        self.find()
    }

    /// The linked export of concrete type `L` (an [`Entry`], or a trigger's own type
    /// around one), if linked.
    pub fn find<L: LinkedExport + 'static>(&self) -> Option<&L> {
        self.0.iter().find_map(|e| e.as_any().downcast_ref())
    }

    /// Drops the idle instances (kept or spare) idle for `idle_for` or longer; returns
    /// how many.
    pub fn expire(&self, idle_for: Duration) -> usize {
        self.0.iter().map(|e| e.expire(idle_for)).sum()
    }

    /// Idle instances (kept or spare) of every export right now.
    pub fn idle(&self) -> usize {
        self.0.iter().map(|e| e.idle()).sum()
    }
}

/// What a component exports, as a refusal to deploy it says: a command is called one.
pub fn what_it_exports(pre: &InstancePre<StoreData>) -> String {
    let component = pre.component();
    let names: Vec<String> = component
        .component_type()
        .exports(component.engine())
        .map(|(name, _)| name.to_string())
        .collect();
    if names.iter().any(|n| n.starts_with("wasi:cli/run@")) {
        return format!(
            "it is a command (it exports {}): it runs once and exits. Build it as a service: for HTTP, `wasi:http/proxy` (0.2, e.g. cargo-component or wstd) or `wasi:http/service` (0.3, e.g. Spin 4's SDK)",
            quoted(&names)
        );
    }
    if names.is_empty() {
        return "it exports nothing".into();
    }
    format!("it exports {}", quoted(&names))
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a component cannot be deployed. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Bad name or spec: the key and what is wrong with it.
    #[error("invalid deployment: {0}")]
    InvalidSpec(#[from] SpecError),
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
    /// The host could not store what the deploy needs (its compiled code, on a full disk).
    #[error("{0}")]
    Storage(String),
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

impl From<std::convert::Infallible> for DeployError {
    fn from(never: std::convert::Infallible) -> DeployError {
        match never {}
    }
}
