//! Deploy flow, step 1: the wasmtime engines of a host (Cranelift, and Winch for a quick
//! start), the `Linker` every component is checked against, and the epoch ticker that
//! enforces deadlines.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    RegallocAlgorithm, Strategy,
};

pub use crate::api::Tier;
use crate::instance::IdleBudget;
use crate::spec::MAX_MEMORY_MB;
use crate::store_data::StoreData;

/// How often the epoch advances; the granularity of deadlines and of yielding.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine of one compiler tier, and the linker that resolves components' imports on it.
#[derive(Clone)]
pub struct TierEngine {
    /// The engine.
    pub engine: Engine,
    /// Every import a weft host provides, on that engine.
    pub linker: Linker<StoreData>,
    /// The compiler behind the engine.
    pub tier: Tier,
    /// How many idle instances the deployments on this engine may keep together.
    pub idle_budget: Arc<IdleBudget>,
}

impl TierEngine {
    fn new(max_instances: u32, tier: Tier, concurrent: bool) -> Result<TierEngine> {
        let engine = build_engine(max_instances, tier, concurrent)?;
        let linker = build_linker(&engine)?;
        start_epoch_ticker(&engine);
        Ok(TierEngine {
            engine,
            linker,
            tier,
            idle_budget: IdleBudget::for_engine(max_instances),
        })
    }
}

/// A host's compilers: Cranelift always, twice; Winch too where it runs (x86-64 with
/// AVX).
///
/// Cranelift runs a component on one of two engines. The component model's async
/// support (what `wasi:http@0.3.0` and Spin 4's async imports need) puts every call,
/// even one into a WASI 0.2 component, through wasmtime's task bookkeeping: about 8% of
/// a busy host's CPU in `perf`. So a component that uses none of it runs on `classic`,
/// an engine without that support, and only the others on `optimized`.
#[derive(Clone)]
pub struct Engines {
    /// Cranelift with the component model's async support: what a component that
    /// needs it ends up running on.
    pub optimized: TierEngine,
    /// Cranelift without it: what every other component ends up running on.
    pub classic: TierEngine,
    /// Winch: what a component not found in the cache starts on.
    pub baseline: Option<TierEngine>,
    /// Instances that may run at once across all components (each engine's pool).
    pub max_instances: u32,
}

impl Engines {
    /// Builds the engines (Winch only if `baseline`), their linkers and epoch tickers.
    pub fn new(max_instances: u32, baseline: bool) -> Result<Engines> {
        let optimized = TierEngine::new(max_instances, Tier::Optimized, true)?;
        let classic = TierEngine::new(max_instances, Tier::Optimized, false)?;
        let baseline = if baseline {
            match TierEngine::new(max_instances, Tier::Baseline, true) {
                Ok(winch) => Some(winch),
                Err(e) => {
                    tracing::warn!(
                        "no baseline compiler (Winch), deploys wait for Cranelift: {e:#}"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Engines {
            optimized,
            classic,
            baseline,
            max_instances,
        })
    }

    /// Each engine with its name in metrics (`optimized`, `classic`, `baseline`).
    pub fn all(&self) -> Vec<(&'static str, &TierEngine)> {
        let mut all = vec![("optimized", &self.optimized), ("classic", &self.classic)];
        all.extend(self.baseline.as_ref().map(|b| ("baseline", b)));
        all
    }

    /// The Cranelift engine for `wasm`: [`Engines::classic`] unless the component uses
    /// the component model's async features (which its sections declare: async lifts
    /// and lowers, streams, futures, tasks). Function bodies are not read, so this
    /// costs a small part of a compile.
    pub fn optimized_for(&self, wasm: &[u8]) -> &TierEngine {
        if validates(self.classic.engine.get_wasm_features(), wasm) {
            &self.classic
        } else {
            &self.optimized
        }
    }
}

/// Whether `wasm`'s sections (not its function bodies) are valid with only `features`.
/// Anything the parser refuses counts as not: the engine with every feature then says
/// what is wrong.
fn validates(features: wasmparser::WasmFeatures, wasm: &[u8]) -> bool {
    let mut validator = wasmparser::Validator::new_with_features(features);
    let mut parser = wasmparser::Parser::new(0);
    parser.set_features(features);
    for payload in parser.parse_all(wasm) {
        match payload.map(|p| validator.payload(&p).is_ok()) {
            Ok(true) => {}
            Ok(false) | Err(_) => return false,
        }
    }
    true
}

/// Builds an engine: async, pooling allocator, epoch interruption, the compiler of
/// `tier`, and the component model's async support if `concurrent`.
pub fn build_engine(max_instances: u32, tier: Tier, concurrent: bool) -> Result<Engine> {
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
        // Per-request memory work dominates a fresh instance on VMs, where page-table
        // changes are dear. Keep each slot's memory resident between instances and
        // reset only the pages the last instance dirtied (PAGEMAP_SCAN, Linux 6.7+;
        // elsewhere a memset of the kept range) instead of madvise and fresh faults.
        // weft's wasmtime has two fixes to that scan (vendor/README.md): it also resets
        // pages the kernel swapped out, and it does not stop after 32 dirty regions.
        // Measured with `just bench`: see BENCHMARKS.md.
        .linear_memory_keep_resident(16 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .strategy(match tier {
            Tier::Optimized => Strategy::Cranelift,
            Tier::Baseline => Strategy::Winch,
        })
        .epoch_interruption(true)
        // wasi:http@0.3.0 and the other WASI 0.3 interfaces (Spin 4, wasmCloud v2):
        // async exports and imports, streams and futures (see `Engines`).
        .concurrency_support(concurrent)
        .wasm_component_model_async(concurrent)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Map each memory's initial image copy-on-write. A slot keeps its module's image
        // between instances and the reset above restores only the pages the last
        // instance dirtied. The alternative, copying the data segments in at every
        // instantiation, copies the whole image each time: 11 MB for the Python guest.
        // With the scan fixed (vendor/README.md), copy-on-write gives, fresh instance per
        // request (two hosts alternated, wrk -t1 -c32 -d4s):
        // - Python guest: 455-475 -> 1,130-1,195 req/s;
        // - JavaScript guest: 1,490-1,660 -> 2,880-3,600 req/s;
        // - hello: unchanged.
        .memory_init_cow(true)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    if tier == Tier::Baseline {
        // Winch leaves the trampolines (one per function a guest's tables or exports
        // reach: thousands in a JavaScript or Python runtime) to Cranelift. Compile those
        // quickly too: this halves a large guest's time to first response.
        config
            .cranelift_opt_level(OptLevel::None)
            .cranelift_regalloc_algorithm(RegallocAlgorithm::SinglePass);
    }
    Ok(Engine::new(&config)?)
}

/// Builds the linker with every import a weft host provides (every capability, see
/// `store_data::add_to_linker`); nothing is granted unless the manifest says.
pub fn build_linker(engine: &Engine) -> Result<Linker<StoreData>> {
    let mut linker = Linker::new(engine);
    crate::store_data::add_to_linker(&mut linker)?;
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
