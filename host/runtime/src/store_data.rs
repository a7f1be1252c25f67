//! Where a component is instantiated: the data of one instance's `Store`, built from its
//! deployment's [`Grants`], with its memory cap and the deadline of the call it serves;
//! and the one `Linker` setup that registers every capability against it.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::config::ConfigGrant;
use crate::capabilities::guest_log::{Tail, TraceCell, tail_text};
use crate::capabilities::keyvalue::{KeyValue, KvGrant};
use crate::capabilities::logging::LoggingGrant;
use crate::capabilities::messaging::MessagingCtx;
use crate::capabilities::outbound_http::OutboundPolicy;
use crate::capabilities::{self, Grants};

/// The data of one instance's `Store`: per-instance state of each capability, the
/// resource table they share, the memory limit and the current call's deadline.
pub struct StoreData {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    logging: LoggingGrant,
    outbound_http: OutboundPolicy,
    messaging: MessagingCtx,
    keyvalue: KvGrant,
    config: ConfigGrant,
    limits: InstanceLimits,
    stderr: Tail,
    /// The current call's trace id, for its log lines (only while traces are on).
    trace_id: Option<TraceCell>,
    /// When the current call must end; read by the epoch callback, moved later by the
    /// call path (a streaming response's body, a 0.3 instance's next request).
    deadline: Arc<Deadline>,
}

/// A call's deadline, shared between the store's epoch callback and the call path, so
/// the deadline can move while the guest runs (never earlier).
#[derive(Debug)]
pub struct Deadline {
    /// Nanoseconds after [`DEADLINE_BASE`].
    nanos: std::sync::atomic::AtomicU64,
}

static DEADLINE_BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl Deadline {
    /// A deadline at `when`.
    pub fn at(when: Instant) -> Arc<Deadline> {
        Arc::new(Deadline {
            nanos: std::sync::atomic::AtomicU64::new(Deadline::nanos(when)),
        })
    }

    /// When it is now.
    pub fn get(&self) -> Instant {
        *DEADLINE_BASE
            + std::time::Duration::from_nanos(self.nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Moves it to `when`, if that is later.
    pub fn extend_to(&self, when: Instant) {
        self.nanos
            .fetch_max(Deadline::nanos(when), std::sync::atomic::Ordering::Relaxed);
    }

    fn nanos(when: Instant) -> u64 {
        u64::try_from(when.saturating_duration_since(*DEADLINE_BASE).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Table elements one instance may hold across all of its tables.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The memory and table bounds of one instance. `memory_mb` caps all of its linear
/// memories together: a component may have several (each core module can bring its
/// own), and a cap per memory would give it that many times the limit.
#[derive(Debug)]
pub struct InstanceLimits {
    memory_left: usize,
    table_elements_left: usize,
}

impl InstanceLimits {
    /// Bounds of `memory_bytes` of linear memory in all, and [`MAX_TABLE_ELEMENTS`].
    pub fn new(memory_bytes: usize) -> InstanceLimits {
        InstanceLimits {
            memory_left: memory_bytes,
            table_elements_left: MAX_TABLE_ELEMENTS,
        }
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        if growth > self.memory_left {
            return Ok(false);
        }
        self.memory_left -= growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        if growth > self.table_elements_left {
            return Ok(false);
        }
        self.table_elements_left -= growth;
        Ok(true)
    }
}

/// What one call asks of the instance that serves it.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the call must end: the guest traps with [`Trap::Interrupt`] after it.
    pub deadline: Instant,
    /// The reply subject of the message being handled, which the guest may always
    /// publish to (`None` for anything but a message).
    pub reply_to: Option<String>,
    /// The durable delivery being handled, if it is one.
    pub delivery: Option<crate::capabilities::messaging::DeliveryInfo>,
    /// The call's span, when traces are on: what the guest sends out continues it.
    pub trace: Option<crate::trace::CallTrace>,
}

impl StoreData {
    fn new(grants: &Grants, memory_bytes: usize, call: CallContext) -> StoreData {
        let stderr = Tail::default();
        let trace_id: Option<TraceCell> = grants.tracing.as_ref().map(|_| Default::default());
        let mut data = StoreData {
            table: ResourceTable::new(),
            wasi: grants.wasi.ctx(stderr.clone(), trace_id.clone()),
            http: WasiHttpCtx::new(),
            logging: grants.logging.tracing(trace_id.clone()),
            outbound_http: grants.outbound_http.for_instance(),
            messaging: {
                let mut ctx = MessagingCtx::new(grants.messaging.clone(), None);
                ctx.set_message(call.reply_to, call.delivery);
                ctx
            },
            keyvalue: grants.keyvalue.clone(),
            config: grants.config.clone(),
            limits: InstanceLimits::new(memory_bytes),
            stderr,
            trace_id,
            deadline: Deadline::at(call.deadline),
        };
        data.set_trace(call.trace);
        data
    }

    /// Prepares a kept instance for its next call.
    pub fn rearm(store: &mut Store<StoreData>, call: CallContext) {
        let data = store.data_mut();
        // A new one: whoever held the last call's deadline cannot move this call's.
        data.deadline = Deadline::at(call.deadline);
        data.messaging.set_message(call.reply_to, call.delivery);
        data.set_trace(call.trace);
        store.set_epoch_deadline(1);
    }

    /// The span of the call the instance serves now, when traces are on: what the guest
    /// sends out continues it, its log lines carry its id. Set for each call (a 0.3
    /// instance's per request).
    pub fn set_trace(&mut self, trace: Option<crate::trace::CallTrace>) {
        set_trace_id(&self.trace_id, &trace);
        self.outbound_http.set_trace(trace.clone());
        self.keyvalue.trace = trace.clone();
        self.messaging.set_trace(trace);
    }

    /// Moves the deadline of an instance serving several calls at once (a 0.3 HTTP
    /// instance) to `deadline`, if that is later: the epoch callback stops it then.
    pub fn extend_deadline(&mut self, deadline: Instant) {
        self.deadline.extend_to(deadline);
    }

    /// The current call's deadline, to move it later while the guest runs.
    pub fn deadline(&self) -> Arc<Deadline> {
        self.deadline.clone()
    }

    /// The key-value capability's view.
    fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue::new(&self.keyvalue, &mut self.table)
    }

    /// The logging capability's grant.
    fn logging(&mut self) -> &mut LoggingGrant {
        &mut self.logging
    }

    /// The configuration capability's grant.
    fn config(&mut self) -> &mut ConfigGrant {
        &mut self.config
    }

    /// The messaging capability's state.
    fn messaging(&mut self) -> &mut MessagingCtx {
        &mut self.messaging
    }

    /// What the guest last wrote to stderr (a panic message, say), joined on one line.
    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr)
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound_http,
        }
    }
}

/// Puts the trace id of `trace` (or none) in `cell`, if the instance has one.
fn set_trace_id(cell: &Option<TraceCell>, trace: &Option<crate::trace::CallTrace>) {
    if let Some(cell) = cell {
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = trace.clone();
    }
}

/// A fresh store on `engine` for one call into a component with `grants`, its linear
/// memory capped at `memory_bytes`.
pub fn new_store(
    engine: &Engine,
    grants: &Grants,
    memory_bytes: usize,
    call: CallContext,
) -> Store<StoreData> {
    let mut store = Store::new(engine, StoreData::new(grants, memory_bytes, call));
    store.limiter(|data| &mut data.limits);
    // Yield to the executor at every epoch tick so a busy guest cannot starve other
    // requests on this thread, and trap once the deadline has passed.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().deadline.get() {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Registers every capability a weft host provides: one line each (see
/// `capabilities`' checklist).
pub fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    capabilities::wasi::add_to_linker(linker)?;
    capabilities::logging::add_to_linker(linker, StoreData::logging)?;
    capabilities::outbound_http::add_to_linker(linker)?;
    capabilities::messaging::add_to_linker(linker, StoreData::messaging)?;
    capabilities::keyvalue::add_to_linker(linker, StoreData::keyvalue)?;
    capabilities::config::add_to_linker(linker, StoreData::config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with two linear memories of `pages` 64 KiB pages each.
    fn two_memories(pages: u64) -> Vec<u8> {
        let mut memories = wasm_encoder::MemorySection::new();
        for _ in 0..2 {
            memories.memory(wasm_encoder::MemoryType {
                minimum: pages,
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        let mut module = wasm_encoder::Module::new();
        module.section(&memories);
        module.finish()
    }

    fn instantiate(limit: usize, pages: u64) -> wasmtime::Result<()> {
        let engine = Engine::default();
        let module = wasmtime::Module::new(&engine, two_memories(pages))?;
        let mut store = Store::new(&engine, InstanceLimits::new(limit));
        store.limiter(|limits| limits);
        wasmtime::Instance::new(&mut store, &module, &[]).map(|_| ())
    }

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        // Two memories of 640 KiB each: 1.25 MiB in all.
        assert!(
            instantiate(1 << 20, 10).is_err(),
            "over a 1 MiB cap together"
        );
        assert!(instantiate(2 << 20, 10).is_ok(), "within a 2 MiB cap");
    }
}
