//! Deploys: a component version made ready to serve ([`deployment`]: validate, compile,
//! link), and the set of live ones ([`live_set`]), swapped atomically on every deploy and
//! undeploy, that triggers serve from.

pub mod deployment;
pub mod live_set;

pub use deployment::Deployment;
pub use live_set::{Deployed, LiveSet, Snapshot};

use crate::spec::SpecError;

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
