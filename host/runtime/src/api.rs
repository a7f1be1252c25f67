//! The admin API's wire types, shared by the server (`admin`) and the CLI's client, so
//! both sides agree on every field. Plain data, like `spec`.

use std::collections::BTreeMap;

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
    /// The lattice the host is in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice: Option<String>,
    /// The key-value store: the embedded file, or the NATS URL and connection state.
    #[serde(default)]
    pub keyvalue: String,
    /// The durable event streams: embedded, or JetStream and its URL.
    #[serde(default)]
    pub events: String,
}

/// `GET /v1/failures`: one of the latest failed calls (traps, deadlines, instances
/// that could not start) of the live components, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureInfo {
    /// The component.
    pub component: String,
    /// Its version that failed.
    pub version: String,
    /// When (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// The failure on one line, with what the guest last wrote to stderr.
    pub cause: String,
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

/// What one host reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's id (`weft up --host-id`, default the machine's name and a random part).
    pub id: String,
    /// weft's version.
    pub version: String,
    /// Where it serves HTTP routes.
    pub http: String,
    /// Where its admin API listens.
    pub admin: String,
    /// Its labels, matched against components' `placement`.
    pub labels: BTreeMap<String, String>,
    /// When it started (milliseconds since the Unix epoch).
    pub started_at_ms: u64,
    /// When it put this record.
    pub heartbeat_at_ms: u64,
    /// Where each component of the desired state stands on it.
    pub components: BTreeMap<String, MemberState>,
    /// Requests and messages handled since it started, over all components.
    pub requests: u64,
    /// Those of them that failed on the host side.
    pub errors: u64,
}

/// One component on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The version it is converging on, or runs.
    pub version: String,
    /// The desired state's revision this is the answer to.
    pub revision: u64,
    /// Live, failed, being deployed, or not placed here.
    pub state: RolloutState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from seeing the revision to the answer.
    #[serde(default)]
    pub ms: u64,
}

/// Where a component stands on one host of a lattice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Fetching and compiling it.
    Deploying,
    /// Serving that version.
    Live,
    /// The host refused it (the error says why); what ran before still runs.
    Failed,
    /// Its `placement` asks for labels the host does not have.
    NotPlaced,
    /// The host did not answer in time.
    Timeout,
    /// Undeployed from the host.
    Removed,
}

impl RolloutState {
    /// How `weft deploy` and `weft list` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Deploying => "deploying",
            RolloutState::Live => "live",
            RolloutState::Failed => "failed",
            RolloutState::NotPlaced => "not placed (labels)",
            RolloutState::Timeout => "no answer",
            RolloutState::Removed => "removed",
        }
    }
}

/// One host's answer to a deploy or undeploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRollout {
    /// The host's id.
    pub host: String,
    /// Its answer.
    pub state: RolloutState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds the host took.
    pub ms: u64,
}

impl HostRollout {
    /// An answer.
    pub fn of(host: &str, state: RolloutState, error: Option<String>, ms: u64) -> HostRollout {
        HostRollout {
            host: host.to_string(),
            state,
            error,
            ms,
        }
    }
}

/// What a deploy to a lattice did, host by host: the answer of `PUT /v1/components/NAME`
/// on a host in a lattice, and of `weft deploy --nats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    /// The lattice's name.
    pub lattice: String,
    /// The component's name.
    pub name: String,
    /// `sha256:...` of the version rolled out.
    pub version: String,
    /// False when the lattice already wanted that version and spec.
    pub changed: bool,
    /// Each live host's answer, by id.
    pub hosts: Vec<HostRollout>,
    /// Milliseconds from the upload to the last answer.
    pub ms: u64,
}

impl Rollout {
    /// The hosts that refused it or did not answer.
    pub fn failures(&self) -> impl Iterator<Item = &HostRollout> {
        self.hosts
            .iter()
            .filter(|h| matches!(h.state, RolloutState::Failed | RolloutState::Timeout))
    }
}

/// One component of a lattice's desired state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatticeComponent {
    /// Its name.
    pub name: String,
    /// `sha256:...` of the version every host should run.
    pub version: String,
    /// The desired state's revision.
    pub revision: u64,
    /// Labels a host needs to run it.
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
}

/// One host as `weft hosts` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    /// What it last reported.
    #[serde(flatten)]
    pub record: HostRecord,
    /// It stopped heartbeating.
    pub lost: bool,
    /// Seconds it has been up, at its last heartbeat.
    pub uptime_s: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// `GET /v1/lattice`: what a lattice wants and where each host stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatticeView {
    /// The lattice's name.
    pub lattice: String,
    /// The desired state, by name.
    pub components: Vec<LatticeComponent>,
    /// Every host with a record, by id.
    pub hosts: Vec<HostView>,
}
