//! Host capabilities: what a guest may import, and what its manifest entry grants it.
//!
//! Each capability is one module here, in the shape of wasmtime's `wasi-keyvalue` crate:
//! its **grant** (what the spec allows, built once per deployment by [`Grants::new`]),
//! its per-instance **view** or state, and a generic
//! `add_to_linker<T>(linker, get: fn(&mut T) -> View)` that never names the host's store
//! type. Everything is denied unless the grant allows it, and each grant is checked in
//! exactly one place: the capability's own module, with unit tests of its rules beside it.
//!
//! | module | imports | grant (spec field) |
//! |---|---|---|
//! | [`wasi`] | all of WASI 0.2 (`wasi:cli`, `wasi:filesystem`, `wasi:sockets`, ...) | `config` (environment); nothing else: no files, no sockets |
//! | [`guest_log`] | stdout and stderr of `wasi:cli` | always: each line is logged |
//! | [`logging`] | `wasi:logging/logging` (0.1.0-draft) | always: each call is one log line at its level |
//! | [`outbound_http`] | `wasi:http/outgoing-handler` | `allowed_outbound_hosts` (`scheme://host[:port]`; never the host's own listeners, internal addresses only when named) |
//! | [`messaging`] | `wasmcloud:messaging/consumer` | `allowed_publish` (never the reserved `$`, `_INBOX.` and `_WEFT.` namespaces) |
//! | [`keyvalue`] | `wasi:keyvalue/{store,atomics,batch}` (0.2.0-draft) | `buckets` |
//! | [`config`] | `wasi:config/store` (0.2.0-draft-2024-09-27, 0.2.0-rc.1) | always: its own `config` table |
//!
//! ## Adding a capability
//! 1. `capabilities/NAME.rs`: the bindings (`bindgen!` on a world under `wit/`), the
//!    grant type with `fn grant(spec, backends) -> Grant`, the view, `add_to_linker<T>`,
//!    and unit tests of the grant's rules.
//! 2. `spec/mod.rs`: the spec field that grants it (default: nothing), and its checks in
//!    `ComponentSpec::validate`. `weft.toml` and the admin API read it from there. (None
//!    for a capability every component has, like `logging`.)
//! 3. Here: a field of [`Grants`] and its line in [`Grants::new`].
//! 4. `store_data.rs`: the per-instance field (built from the grant in
//!    `StoreData::new`) and one line in `store_data::add_to_linker`.
//!
//! Tests: a unit test of the grant's rules in the module, and an end-to-end test through
//! a real guest (a component under `components/`) that is denied without the grant.

pub mod config;
pub mod guest_log;
pub mod keyvalue;
pub mod logging;
pub mod messaging;
pub mod outbound_http;
pub mod wasi;

use std::sync::Arc;

use crate::bus::MessageBus;
use crate::kv::KvStore;
use crate::spec::ValidSpec;

/// The host's shared backends that grants give access to, chosen when the host starts.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The message bus (embedded or NATS).
    pub bus: Arc<dyn MessageBus>,
    /// The key-value store (embedded or NATS).
    pub kv: Arc<dyn KvStore>,
    /// The host's own listening addresses, which no grant reaches.
    pub listeners: outbound_http::HostListeners,
}

/// Everything one deployment is granted, built once from its spec and shared by all of
/// its instances.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The component's name, for logs and error messages.
    pub component: Arc<str>,
    /// WASI: the environment (the spec's `config`), and nothing else.
    pub wasi: wasi::WasiGrant,
    /// Logging: under its own name.
    pub logging: logging::LoggingGrant,
    /// Outgoing HTTP: the hosts it may call.
    pub outbound_http: outbound_http::OutboundPolicy,
    /// Messaging: the bus and the subjects it may publish on.
    pub messaging: messaging::MessagingGrant,
    /// Key-value: the store and the buckets it may open.
    pub keyvalue: keyvalue::KvGrant,
    /// Configuration: its own `config` table.
    pub config: config::ConfigGrant,
}

impl Grants {
    /// The grants of component `name` under `spec`, on the host's `backends`.
    pub fn new(name: &str, spec: &ValidSpec, backends: &Backends) -> Grants {
        let log_budget = guest_log::LogBudget::new(name);
        Grants {
            component: name.into(),
            wasi: wasi::grant(name, spec, &log_budget),
            logging: logging::grant(name, &log_budget),
            outbound_http: outbound_http::grant(spec, &backends.listeners),
            messaging: messaging::grant(name, spec, backends.bus.clone()),
            keyvalue: keyvalue::grant(spec, backends.kv.clone()),
            config: config::grant(spec),
        }
    }
}
