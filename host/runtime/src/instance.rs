//! Instances waiting for a call: the spares instantiated ahead of time (every call gets an
//! instance nobody has called), or, for components that opted into reuse
//! (`limits.requests_per_instance`), the instances that completed a call. One
//! [`InstancePool`] per deployment and kind of call, all within the engine's
//! [`IdleBudget`]. The call path that takes from and returns to them is `call.rs`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use wasmtime::Store;

use crate::store_data::StoreData;

/// A component with its imports resolved, for one kind of call: each trigger implements
/// it for the typed pre-instance of the export it calls (`ProxyPre` for HTTP requests,
/// `GuestMessageHandlerPre` for messages).
pub trait Pre: Send + Sync + 'static {
    /// The typed exports of an instance.
    type Exports: Send + 'static;

    /// A new instance in `store`. (Named like the inherent method it wraps, so a call
    /// on a concrete type means the same thing.)
    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<Self::Exports>>;
}

/// One export of a deployment that a trigger calls: pre-linked, with its idle instances.
pub struct Entry<P: Pre> {
    /// Imports resolved once; each call only instantiates.
    pub pre: P,
    /// Spare or kept instances for the next call.
    pub pool: InstancePool<P::Exports>,
}

/// An instance that completed a request (or message) and may serve another.
struct Warm<E> {
    /// Its store, with the memory and globals the guest left behind.
    store: Store<StoreData>,
    /// Its typed exports: `Proxy` for HTTP, `MessagingHost` for messages.
    exports: E,
    /// Calls it has served.
    uses: u32,
}

/// The idle instances of one deployment, for one kind of call (HTTP requests or
/// messages). Each is handed to one call at a time.
///
/// - With reuse (`limits.requests_per_instance` > 1), instances that completed a call
///   come back for the next one, up to their share of calls; an instance that failed in
///   any way is never put back.
/// - Without reuse (the default), every call still gets an instance nobody has called,
///   but the pool keeps up to [`SPARES`] of them instantiated ahead of time, so the
///   instantiation is not on the call's path (see `call.rs`).
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

    /// Idle instances held right now, and the most the engine's pools may hold.
    pub fn usage(&self) -> (usize, usize) {
        (self.held(), self.max)
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

    /// An idle instance (kept or spare), with its exports and the calls it has served;
    /// `None` if none is idle. The caller rearms it for its call.
    pub fn take(&self) -> Option<(Store<StoreData>, E, u32)> {
        let (_, warm) = self.lock().pop()?;
        self.budget.release(1);
        Some((warm.store, warm.exports, warm.uses))
    }

    /// Returns an instance after a call it completed, having served `uses` calls before
    /// it; dropped when it has served its share (always, without reuse) or no room is
    /// left.
    pub fn put(&self, store: Store<StoreData>, exports: E, uses: u32) {
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
    pub fn add_spare(&self, spare: Option<(Store<StoreData>, E)>) {
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
