//! Host capability: all of WASI 0.2 and 0.3, linked so components from any toolchain load, but
//! granting nothing beyond the manifest's `config` as environment variables: no
//! preopened directories, no sockets, no host environment. stdout and stderr go to the
//! host's log ([`super::guest_log`]).

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiView};

use super::guest_log::{GuestLog, LogBudget, Tail, TraceCell};
use crate::spec::ValidSpec;

/// What a component gets of WASI: its name (for its log lines) and its environment.
#[derive(Debug, Clone)]
pub struct WasiGrant {
    component: Arc<str>,
    log_budget: Arc<LogBudget>,
    env: Arc<[(String, String)]>,
}

/// The WASI grant of component `name`: its spec's `config` as the environment; its
/// stdout and stderr draw on its log `budget`.
pub fn grant(name: &str, spec: &ValidSpec, log_budget: &Arc<LogBudget>) -> WasiGrant {
    WasiGrant {
        component: name.into(),
        log_budget: log_budget.clone(),
        env: spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

impl WasiGrant {
    /// A new instance's WASI context; its last stderr lines are kept in `stderr`.
    pub fn ctx(&self, stderr: Tail, trace: Option<TraceCell>) -> WasiCtx {
        let mut wasi = WasiCtx::builder();
        let log = |stream| {
            GuestLog::new(self.component.clone(), self.log_budget.clone(), stream)
                .tracing(trace.clone())
        };
        wasi.stdout(log("stdout"))
            .stderr(log("stderr").keeping_tail(stderr))
            .envs(&self.env);
        wasi.build()
    }
}

/// Adds all of WASI 0.2 and 0.3 to the linker: both read the same context, so a 0.3
/// guest is granted exactly what a 0.2 guest is. (0.3 only on an engine with the
/// component model's async support: see `engine::Engines`.)
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    if linker.engine().get_concurrency_support() {
        wasmtime_wasi::p3::add_to_linker(linker)?;
    }
    Ok(())
}
