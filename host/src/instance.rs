//! Where a component is instantiated: the per-request `Store` with its WASI context,
//! limits and deadline. Every request and message gets a fresh one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::deployment::Deployment;
use crate::guest_log::{GuestLog, Tail, tail_text};
use crate::keyvalue::capability::{KeyValue, KvGrant};
use crate::messaging::capability::MessagingCtx;
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
    };
    let mut store = Store::new(deployment.component.engine(), state);
    store.limiter(|state| &mut state.limits);
    // Yield to the executor at every epoch tick so a busy guest cannot starve other
    // requests on this thread, and trap once the deadline has passed.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
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
