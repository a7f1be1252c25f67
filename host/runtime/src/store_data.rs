//! Where a component is instantiated: the data of one instance's `Store`, built from its
//! deployment's [`Grants`], with its memory cap and the deadline of the call it serves;
//! and the one `Linker` setup that registers every capability against it.

use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::guest_log::{Tail, tail_text};
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
    limits: StoreLimits,
    stderr: Tail,
    /// When the current call must end; read by the epoch callback.
    deadline: Instant,
}

/// What one call asks of the instance that serves it.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the call must end: the guest traps with [`Trap::Interrupt`] after it.
    pub deadline: Instant,
    /// The reply subject of the message being handled, which the guest may always
    /// publish to (`None` for anything but a message).
    pub reply_to: Option<String>,
}

impl StoreData {
    fn new(grants: &Grants, memory_bytes: usize, call: CallContext) -> StoreData {
        let stderr = Tail::default();
        StoreData {
            table: ResourceTable::new(),
            wasi: grants.wasi.ctx(stderr.clone()),
            http: WasiHttpCtx::new(),
            logging: grants.logging.clone(),
            outbound_http: grants.outbound_http.clone(),
            messaging: MessagingCtx::new(grants.messaging.clone(), call.reply_to),
            keyvalue: grants.keyvalue.clone(),
            limits: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
            stderr,
            deadline: call.deadline,
        }
    }

    /// Prepares a kept instance for its next call.
    pub fn rearm(store: &mut Store<StoreData>, call: CallContext) {
        let data = store.data_mut();
        data.deadline = call.deadline;
        data.messaging.set_reply_to(call.reply_to);
        store.set_epoch_deadline(1);
    }

    /// The key-value capability's view.
    fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue::new(&self.keyvalue, &mut self.table)
    }

    /// The logging capability's grant.
    fn logging(&mut self) -> &mut LoggingGrant {
        &mut self.logging
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
        if Instant::now() >= store.data().deadline {
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
    Ok(())
}
