//! Deploy flow, step 1: the one wasmtime `Engine` of a host and the `Linker` every
//! component is checked against, plus the epoch ticker that enforces deadlines.

use std::time::Duration;

use anyhow::Result;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::instance::HostState;
use crate::spec::MAX_MEMORY_MB;

/// How often the epoch advances; the granularity of deadlines and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the host's engine: Cranelift, async, pooling allocator, epoch interruption.
pub fn build_engine(max_instances: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 4)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 4)
        .total_stacks(max_instances)
        .max_memory_size((MAX_MEMORY_MB as usize) << 20)
        // Toolchains such as componentize-js/py produce components with many core
        // modules, tables and large instance state.
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(32)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_tables_per_module(8)
        .max_memories_per_module(2)
        // Keep a little of each slot resident between instances: on these VMs,
        // madvise and page faults per request cost more than a memset.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    Ok(Engine::new(&config)?)
}

/// Builds the linker with every import a weft host provides: all of WASI 0.2 (nothing
/// granted unless the manifest says), `wasi:http`, `wasmcloud:messaging` and `wasi:keyvalue`.
pub fn build_linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::messaging::capability::add_to_linker(&mut linker)?;
    crate::keyvalue::capability::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weft-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread at start-up");
}
