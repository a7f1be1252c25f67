//! The `weft` CLI as a library: `weft up` ([`up`]), the admin commands ([`commands`])
//! over the admin API's client ([`admin_client`]), and the build runner ([`builder`])
//! that rebuilds a manifest's stale components. The runtime itself is `weft-runtime`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin_client;
pub mod builder;
pub mod commands;
pub mod up;
