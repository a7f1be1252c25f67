//! The `weft` CLI as a library: `weft up` ([`up`]), the admin commands ([`commands`])
//! over the admin API's client ([`admin_client`]), and the build runner ([`builder`])
//! that rebuilds a manifest's stale components, and how the log reads ([`logs`]). The
//! runtime itself is `weft-runtime`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin_client;
pub mod builder;
pub mod commands;
pub mod logs;
pub mod up;
