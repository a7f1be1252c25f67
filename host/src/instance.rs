//! Where a component is instantiated: the per-request `Store` with its WASI context,
//! limits and deadline. Every request and message gets an instance nobody has called,
//! instantiated ahead of time when possible (a spare), unless the component opted into
//! reuse (`limits.requests_per_instance`): then an [`InstancePool`] keeps instances that
//! completed a request (or a message) for the next one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::deployment::Deployment;
use crate::guest_log::{GuestLog, Tail, tail_text};
use crate::keyvalue::capability::{KeyValue, KvGrant};
use crate::messaging::capability::{MessagingCtx, MessagingHost, MessagingHostPre};
use crate::outbound_http::OutboundPolicy;

/// The data of one instance's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
    outbound: OutboundPolicy,
    messaging: MessagingCtx,
    kv: KvGrant,
    stderr: Tail,
    /// When the current call must end; read by the epoch callback.
    deadline: Instant,
}

impl HostState {
    /// The key-value capability's view (see `keyvalue::capability`).
    pub fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue::new(&self.kv, &mut self.table)
    }

    /// The messaging capability's state (see `messaging::capability`).
    pub fn messaging(&mut self) -> &mut MessagingCtx {
        &mut self.messaging
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// A fresh store for one call into `deployment`, with its memory cap and a deadline
/// after which the guest traps with [`Trap::Interrupt`]. `reply_to` is the reply
/// subject of the message being handled, which the guest may always publish to.
pub fn new_store(
    deployment: &Deployment,
    deadline: Instant,
    reply_to: Option<String>,
) -> Store<HostState> {
    let spec = &deployment.spec;
    let name: Arc<str> = deployment.name.as_str().into();
    let stderr = Tail::default();
    let mut wasi = WasiCtx::builder();
    wasi.stdout(GuestLog::new(name.clone(), "stdout"))
        .stderr(GuestLog::new(name, "stderr").keeping_tail(stderr.clone()))
        .envs(&spec.config.iter().collect::<Vec<_>>());
    let state = HostState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new()
            .memory_size((spec.limits.memory_mb as usize) << 20)
            .build(),
        outbound: deployment.outbound.clone(),
        messaging: MessagingCtx::new(deployment.messaging_grant.clone(), reply_to),
        kv: deployment.kv_grant.clone(),
        stderr,
        deadline,
    };
    let mut store = Store::new(deployment.component.engine(), state);
    store.limiter(|state| &mut state.limits);
    // Yield to the executor at every epoch tick so a busy guest cannot starve other
    // requests on this thread, and trap once the deadline has passed.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// A component with its imports resolved, instantiated for one kind of call:
/// `ProxyPre` for HTTP requests, `MessagingHostPre` for messages.
pub trait Pre: Send + Sync + 'static {
    /// The typed exports of an instance.
    type Exports: Send + 'static;

    /// A new instance in `store`. (Named like the inherent method it wraps, so a call
    /// on a concrete type means the same thing.)
    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> BoxFuture<'a, wasmtime::Result<Self::Exports>>;
}

impl Pre for ProxyPre<HostState> {
    type Exports = Proxy;

    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> BoxFuture<'a, wasmtime::Result<Proxy>> {
        Box::pin(ProxyPre::instantiate_async(self, store))
    }
}

impl Pre for MessagingHostPre<HostState> {
    type Exports = MessagingHost;

    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> BoxFuture<'a, wasmtime::Result<MessagingHost>> {
        Box::pin(MessagingHostPre::instantiate_async(self, store))
    }
}

/// An instance that completed a request (or message) and may serve another.
struct Warm<E> {
    /// Its store, with the memory and globals the guest left behind.
    store: Store<HostState>,
    /// Its typed exports: `Proxy` for HTTP, `MessagingHost` for messages.
    exports: E,
    /// Calls it has served.
    uses: u32,
}

impl<E> Warm<E> {
    /// Prepares the instance for its next call, which must end by `deadline` and may
    /// always publish to `reply_to`.
    fn rearm(&mut self, deadline: Instant, reply_to: Option<String>) {
        let state = self.store.data_mut();
        state.deadline = deadline;
        state.messaging.set_reply_to(reply_to);
        self.store.set_epoch_deadline(1);
    }
}

/// The idle instances of one deployment, for one kind of call (HTTP requests or
/// messages). Each is handed to one call at a time.
///
/// - With reuse (`limits.requests_per_instance` > 1), instances that completed a call
///   come back for the next one, up to their share of calls; an instance that failed in
///   any way is never put back.
/// - Without reuse (the default), every call still gets an instance nobody has called,
///   but the pool keeps up to [`SPARES`] of them instantiated ahead of time, so the
///   instantiation is not on the call's path (see [`Deployment::prepare_http_spare`]).
///
/// [`Deployment::prepare_http_spare`]: crate::deployment::Deployment::prepare_http_spare
pub struct InstancePool<E> {
    /// Oldest first, each with when it was put back.
    idle: Mutex<Vec<(Instant, Warm<E>)>>,
    /// Calls per instance (`limits.requests_per_instance`); 1: fresh instances only.
    max_uses: u32,
    /// Idle instances kept at most by this pool.
    max_idle: usize,
    /// Spares being instantiated right now.
    preparing: AtomicUsize,
    /// Idle instances kept at most by all the pools on one engine.
    budget: Arc<IdleBudget>,
}

/// Upper bound on the idle instances one deployment keeps per kind of call.
const MAX_IDLE_PER_DEPLOYMENT: usize = 64;

/// Pristine instances a pool without reuse keeps ready. Two, not one: a call takes one
/// and starts the next, and a caller sending its next request at once finds the other.
pub const SPARES: usize = 2;

/// How long an idle instance is kept: after a burst, the instances it left behind give
/// their pooling slots and memory back once traffic is quiet (see `Host::start`).
pub const IDLE_INSTANCE_TTL: Duration = Duration::from_secs(60);

/// How many idle instances (kept or spare) the pools of one engine hold together. Each
/// holds slots of the engine's pooling allocator, which calls need too: idle instances
/// may take a quarter of them, never all.
#[derive(Debug)]
pub struct IdleBudget {
    held: AtomicUsize,
    max: usize,
}

impl IdleBudget {
    /// A budget of a quarter of `max_instances`, the engine's pooling slots.
    pub fn for_engine(max_instances: u32) -> Arc<IdleBudget> {
        Arc::new(IdleBudget {
            held: AtomicUsize::new(0),
            max: max_instances as usize / 4,
        })
    }

    /// Takes one unit if any is left.
    fn hold(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    fn release(&self, units: usize) {
        self.held.fetch_sub(units, Ordering::AcqRel);
    }

    /// Idle instances held right now, by all pools of the engine.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl<E> InstancePool<E> {
    /// A pool reusing each instance `requests_per_instance` times, keeping at most
    /// `concurrency` (capped at 64) idle, within the engine's `budget`.
    pub fn new(
        requests_per_instance: u32,
        concurrency: u32,
        budget: Arc<IdleBudget>,
    ) -> InstancePool<E> {
        InstancePool {
            idle: Mutex::new(Vec::new()),
            max_uses: requests_per_instance,
            max_idle: (concurrency as usize).min(MAX_IDLE_PER_DEPLOYMENT),
            preparing: AtomicUsize::new(0),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Warm<E>)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store for one call into `deployment`, which must end by `deadline` (handling
    /// a message with `reply_to`, if any): an idle instance's (kept or spare), rearmed,
    /// with its exports and the calls it has served; or, if none is idle, a fresh store
    /// for the caller to instantiate.
    pub fn take(
        &self,
        deployment: &Deployment,
        deadline: Instant,
        reply_to: Option<String>,
    ) -> (Store<HostState>, Option<(E, u32)>) {
        let idle = self.lock().pop();
        match idle {
            Some((_, mut warm)) => {
                self.budget.release(1);
                warm.rearm(deadline, reply_to);
                (warm.store, Some((warm.exports, warm.uses)))
            }
            None => (new_store(deployment, deadline, reply_to), None),
        }
    }

    /// Returns an instance after a call it completed, having served `uses` calls before
    /// it; dropped when it has served its share (always, without reuse) or no room is
    /// left.
    pub fn put(&self, store: Store<HostState>, exports: E, uses: u32) {
        let uses = uses + 1;
        if uses >= self.max_uses {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle && self.budget.hold() {
            let warm = Warm {
                store,
                exports,
                uses,
            };
            idle.push((Instant::now(), warm));
        }
    }

    /// Whether the caller should instantiate a spare now, for a later call: only a pool
    /// without reuse keeps spares, up to [`SPARES`]. If true, the caller must hand the
    /// outcome to [`InstancePool::add_spare`].
    pub fn wants_spare(&self) -> bool {
        if self.max_uses > 1 {
            return false;
        }
        let idle = self.lock();
        let ready = idle.len() + self.preparing.load(Ordering::Acquire);
        if ready >= SPARES.min(self.max_idle) || !self.budget.hold() {
            return false;
        }
        self.preparing.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The spare the caller instantiated after [`InstancePool::wants_spare`], or `None`
    /// if that failed.
    pub fn add_spare(&self, spare: Option<(Store<HostState>, E)>) {
        let mut idle = self.lock();
        self.preparing.fetch_sub(1, Ordering::AcqRel);
        match spare {
            Some((store, exports)) => {
                let warm = Warm {
                    store,
                    exports,
                    uses: 0,
                };
                idle.push((Instant::now(), warm));
            }
            None => self.budget.release(1),
        }
    }

    /// Drops the instances that have been idle for `idle_for` or longer; returns how many.
    pub fn expire(&self, idle_for: Duration) -> usize {
        let mut idle = self.lock();
        let before = idle.len();
        idle.retain(|(since, _)| since.elapsed() < idle_for);
        let expired = before - idle.len();
        self.budget.release(expired);
        expired
    }

    /// The engine-wide budget this pool keeps its idle instances in.
    pub fn budget(&self) -> &Arc<IdleBudget> {
        &self.budget
    }

    /// Idle instances right now (kept or spare).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

impl<E> Drop for InstancePool<E> {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.release(idle.len());
    }
}

/// Adds what the guest last wrote to stderr (a panic message, say) to a failure.
pub fn with_guest_stderr(store: &Store<HostState>, error: anyhow::Error) -> anyhow::Error {
    let stderr = tail_text(&store.data().stderr);
    if stderr.is_empty() {
        error
    } else {
        error.context(format!("guest stderr: {stderr}"))
    }
}

/// The deadline for a call starting now under `deployment`'s limits.
pub fn deadline_for(deployment: &Deployment) -> Instant {
    Instant::now() + Duration::from_millis(deployment.spec.limits.timeout_ms)
}
