//! The admin API's wire types, shared by the server (`admin`) and the CLI's client, so
//! both sides agree on every field. Plain data, like `spec`.

use serde::{Deserialize, Serialize};

use crate::spec::RouteSpec;

/// Header carrying the JSON `ComponentSpec` of a deploy; the body is the wasm.
pub const SPEC_HEADER: &str = "weft-spec";

/// Which compiler made a component's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Winch: a single-pass compiler, several times quicker to compile, slower code.
    /// New deploys serve on it while Cranelift works.
    Baseline,
    /// Cranelift: optimised code.
    Optimized,
}

/// How a component came to be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compiled {
    /// Compiled now, in this many milliseconds.
    Fresh { ms: u64 },
    /// Loaded from the on-disk cache in this many milliseconds.
    Cached { ms: u64 },
}

/// What `GET /v1/components` and `weft list` show of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentInfo {
    /// Component name.
    pub name: String,
    /// `sha256:...` content digest.
    pub version: String,
    /// Route paths with their methods.
    pub routes: Vec<RouteSpec>,
    /// Subscribed subjects.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Its schedules: `NAME every 30s`, `NAME cron 0 3 * * * Europe/Paris`.
    #[serde(default)]
    pub schedules: Vec<String>,
    /// Seconds since the Unix epoch.
    pub deployed_at: u64,
    /// Compiled now or loaded from the cache, with milliseconds.
    pub compiled: Compiled,
    /// `baseline` (Winch, while Cranelift works) or `optimized`.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Requests handled.
    pub requests: u64,
    /// Requests that failed on the host side (trap, deadline, limits).
    pub errors: u64,
    /// Messages dropped because its subscriptions were full (NATS slow consumer).
    #[serde(default)]
    pub dropped_messages: u64,
    /// The HTTP handler it exports: `wasi:http/incoming-handler@0.2` or
    /// `wasi:http/handler@0.3.0`; none if it serves no HTTP.
    #[serde(default)]
    pub http_handler: Option<String>,
}

/// `GET /v1/status`: how the host is connected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The message bus: `embedded (in-process)`, or the NATS URL and connection state.
    pub messaging: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Every error answer of the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
}
