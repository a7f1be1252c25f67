//! weft: a host runtime for WebAssembly components on HTTP routes.
//!
//! An HTTP request enters in [`http_trigger`], is routed by [`router`], runs in a fresh
//! instance made by [`instance`] and answers from the guest. A component is deployed
//! through [`admin`] or `weft up` into [`deployments`], after [`deployment`] validated
//! and [`compile`] compiled it.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod admin_client;
pub mod builder;
pub mod compile;
pub mod deployment;
pub mod deployments;
pub mod engine;
pub mod guest_log;
pub mod host;
pub mod http_trigger;
pub mod instance;
pub mod keyvalue;
pub mod manifest;
pub mod messaging;
pub mod outbound_http;
pub mod router;
pub mod spec;
pub mod testing;
pub mod up;

pub use host::{Host, HostConfig};
