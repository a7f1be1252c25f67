//! weft-runtime: the host that runs WebAssembly components on HTTP routes and message
//! subjects. Layers point one way, each depending only on those above it:
//!
//! - [`spec`] and [`api`]: plain data (what a deployment asks for; the admin API's wire
//!   types), with `weft.toml` parsing in [`spec::manifest`].
//! - [`bus`] and [`kv`]: the backends (embedded or NATS) behind one trait each.
//! - [`capabilities`]: what a guest may import, each checked against its grant.
//! - [`store_data`], [`instance`]: where a component is instantiated, and its idle
//!   instances.
//! - [`deployment`]: one linked component version, what the call path and triggers use.
//! - [`call`], [`failure`]: the one call path every trigger takes, and how a failure
//!   reads and is logged.
//! - [`triggers`]: what calls a component: an HTTP request enters in [`triggers::http`],
//!   a message in [`triggers::messaging`].
//! - [`deploy`], [`engine`], [`compile`]: checking, compiling, linking and swapping in
//!   versions.
//! - [`lattice`]: many hosts as one platform over NATS (desired state, heartbeats).
//! - [`host`] (the running host), [`listener`] (where a connection enters, bounded
//!   against slow clients) and [`admin`] (its API, with `/metrics` from [`metrics`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod api;
pub mod bus;
pub mod call;
pub mod capabilities;
pub mod compile;
pub mod deploy;
pub mod deployment;
pub mod engine;
pub mod events;
pub mod failure;
pub mod host;
pub mod instance;
pub mod kv;
pub mod lattice;
pub mod listener;
pub mod metrics;
pub mod spec;
pub mod store_data;
pub mod tls;
pub mod trace;
pub mod triggers;

#[cfg(test)]
mod properties;

pub use host::{Host, HostConfig, LatticeMembership};
