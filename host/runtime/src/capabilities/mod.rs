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
//! | [`wasi`] | all of WASI 0.2 and 0.3 (`wasi:cli`, `wasi:filesystem`, `wasi:sockets`, ...) | `config` (environment); nothing else: no files, no sockets |
//! | [`guest_log`] | stdout and stderr of `wasi:cli` | always: each line is logged |
//! | [`logging`] | `wasi:logging/logging` (0.1.0-draft) | always: each call is one log line at its level |
//! | [`outbound_http`] | `wasi:http/outgoing-handler` (0.2), `wasi:http/client` (0.3) | `allowed_outbound_hosts` (`scheme://host[:port]`; never the host's own listeners, internal addresses only when named) |
//! | [`messaging`] | `wasmcloud:messaging/consumer`, `weft:platform/events` | `allowed_publish` (never the reserved `$`, `_INBOX.` and `_WEFT.` namespaces) |
//! | [`keyvalue`] | `wasi:keyvalue/{store,atomics,batch}` (0.2.0-draft, 0.2.0-draft2), `spin:key-value` (3.0.0) | `buckets` |
//! | [`config`] | `wasi:config/store` (0.2.0-draft, 0.2.0-draft-2024-09-27, 0.2.0-rc.1), `spin:variables` (3.0.0) | always: its own `config` table |
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

/// Every package a guest may import, with the versions this host serves: what a deploy
/// that imports anything else is told (see README, "What a guest gets").
pub const INTERFACES: &[(&str, &str)] = &[
    ("wasi:cli", "0.2.x and 0.3.0"),
    ("wasi:clocks", "0.2.x and 0.3.0"),
    (
        "wasi:filesystem",
        "0.2.x and 0.3.0 (no directory is preopened)",
    ),
    ("wasi:http", "0.2.x and 0.3.0"),
    ("wasi:io", "0.2.x"),
    ("wasi:random", "0.2.x and 0.3.0"),
    ("wasi:sockets", "0.2.x and 0.3.0 (no address is granted)"),
    ("wasi:keyvalue", "0.2.0-draft and 0.2.0-draft2"),
    (
        "wasi:config",
        "0.2.0-draft, 0.2.0-draft-2024-09-27 and 0.2.0-rc.1",
    ),
    ("wasi:logging", "0.1.0-draft"),
    ("wasmcloud:messaging", "0.2.0"),
    ("spin:key-value", "3.0.0"),
    ("spin:variables", "3.0.0"),
];

/// What to tell a deploy whose component imports `name` (`wasi:http/types@0.3.0-rc-...`),
/// which the linker did not find: the versions this host serves of its package, or
/// that it serves no such package.
pub fn explain_unknown_import(name: &str) -> String {
    let package = name.split(['/', '@']).next().unwrap_or(name);
    match INTERFACES.iter().find(|(p, _)| *p == package) {
        Some((_, versions)) => format!(
            "`{name}`: this host serves `{package}` at {versions}; rebuild the component against one of those versions"
        ),
        None => {
            let all: Vec<&str> = INTERFACES.iter().map(|(p, _)| *p).collect();
            format!(
                "`{name}`: this host has no `{package}`; it serves {}",
                all.join(", ")
            )
        }
    }
}
use crate::kv::KvStore;
use crate::spec::ValidSpec;

/// The host's shared backends that grants give access to, chosen when the host starts.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The message bus (embedded or NATS).
    pub bus: Arc<dyn MessageBus>,
    /// The key-value store (embedded or NATS).
    pub kv: Arc<dyn KvStore>,
    /// The streams of durable events (embedded or JetStream).
    pub events: Arc<dyn crate::events::EventStore>,
    /// The host's own listening addresses, which no grant reaches.
    pub listeners: outbound_http::HostListeners,
    /// The tracer, when traces are on (`HostConfig::tracing`).
    pub tracing: Option<Arc<crate::trace::Tracing>>,
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
    /// What its instances did with these grants, for `/metrics`.
    pub usage: Arc<crate::metrics::Usage>,
    /// The host's tracer, when traces are on: its triggers start a span per call.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
}

impl Grants {
    /// The grants of version `version` of component `name` under `spec`, on the host's
    /// `backends`.
    pub fn new(name: &str, version: &str, spec: &ValidSpec, backends: &Backends) -> Grants {
        let usage = Arc::new(crate::metrics::Usage::default());
        let log_budget = guest_log::LogBudget::new(name, usage.clone());
        Grants {
            component: name.into(),
            wasi: wasi::grant(name, spec, &log_budget),
            logging: logging::grant(name, version, &log_budget),
            outbound_http: outbound_http::grant(spec, &backends.listeners),
            messaging: messaging::grant(
                name,
                spec,
                backends.bus.clone(),
                backends.events.clone(),
                usage.clone(),
            ),
            keyvalue: keyvalue::grant(spec, backends.kv.clone(), usage.clone()),
            config: config::grant(spec),
            usage,
            tracing: backends.tracing.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::explain_unknown_import;

    #[test]
    fn an_unknown_import_is_named_with_the_versions_served() {
        let rc = explain_unknown_import("wasi:http/types@0.3.0-rc-2025-09-16");
        assert!(
            rc.contains("`wasi:http/types@0.3.0-rc-2025-09-16`")
                && rc.contains("serves `wasi:http` at 0.2.x and 0.3.0")
                && rc.contains("rebuild"),
            "{rc}"
        );
        let unknown = explain_unknown_import("fermyon:spin/llm@2.0.0");
        assert!(
            unknown.contains("has no `fermyon:spin`") && unknown.contains("spin:key-value"),
            "{unknown}"
        );
    }
}
