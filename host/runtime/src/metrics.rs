//! What a host counts, and how `GET /metrics` shows it (Prometheus text format 0.0.4;
//! README, "Observing weft").
//!
//! The counting is plain atomics (and one histogram lock per call), kept where the thing
//! counted lives, so the hot path never looks anything up:
//! - [`CallMetrics`], held by each [`Deployment`]: calls by trigger and outcome, their
//!   latency, HTTP body sizes. Each trigger records its own calls ([`CallMetrics::start`]).
//! - [`Usage`], held by each deployment's grants: key-value operations, publishes and
//!   requests by outcome, guest log lines dropped. Each capability records its own.
//! - [`HostMetrics`], one per host: compiles, deploys, requests no route matched.
//! - NATS connections: [`crate::bus::nats::NatsStats`].
//!
//! A scrape ([`Scrape`]) reads them from what is live: a component's series exist while
//! it is deployed, so cardinality is bounded by what runs. Labels are the component,
//! its version (the digest's first 12 hex digits), the trigger, the outcome and fixed
//! operation names; never a path, a subject or a key.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::bus::nats::NatsStats;
use crate::deploy::LiveSet;
use crate::deployment::Deployment;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What called a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP request (gRPC included).
    Http,
    /// A WebSocket event (open, message, close).
    Websocket,
    /// A message on a subscribed subject.
    Messaging,
    /// A durable delivery.
    Durable,
    /// A schedule's tick.
    Schedule,
}

impl Trigger {
    const ALL: [Trigger; 5] = [
        Trigger::Http,
        Trigger::Websocket,
        Trigger::Messaging,
        Trigger::Durable,
        Trigger::Schedule,
    ];

    /// Its name, as labelled.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Websocket => "websocket",
            Trigger::Messaging => "messaging",
            Trigger::Durable => "durable",
            Trigger::Schedule => "schedule",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest answered (an HTTP status below 500, a handled message).
    Ok,
    /// The guest answered with an error (an HTTP 5xx, a handler's `err`).
    GuestError,
    /// The instance trapped or could not start.
    Trap,
    /// The call missed its deadline.
    Deadline,
    /// Refused for load: the component's `max_concurrency` or the host's instance slots.
    Overload,
    /// Refused by a limit or rule before the guest ran (body too large, bad request).
    Denied,
    /// The caller went away first (a client disconnect, a shorter `grpc-timeout`).
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::GuestError,
        Outcome::Trap,
        Outcome::Deadline,
        Outcome::Overload,
        Outcome::Denied,
        Outcome::Cancelled,
    ];

    /// Its name, as labelled.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::GuestError => "guest_error",
            Outcome::Trap => "trap",
            Outcome::Deadline => "deadline",
            Outcome::Overload => "overload",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Call latency buckets, in seconds: 0.5 ms to 30 s.
const SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Body size buckets, in bytes: 64 B to 16 MiB, by fours.
const BYTES: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// One deployment's calls: shared by the versions of it that a tier-up or a spec
/// change makes (so its counts carry over), replaced by a deploy of new code.
#[derive(Debug)]
pub struct CallMetrics {
    /// Whether calls are counted and timed (`HostConfig::metrics`); failures are kept
    /// for the console either way.
    on: bool,
    calls: [[AtomicU64; Outcome::ALL.len()]; Trigger::ALL.len()],
    seconds: [Histogram; Trigger::ALL.len()],
    request_bytes: Histogram,
    response_bytes: Histogram,
    /// The latest failures, newest last, for the console (`GET /v1/failures`).
    failures: Mutex<VecDeque<RecentFailure>>,
}

/// Failures kept per deployment for the console.
pub const RECENT_FAILURES: usize = 20;

/// One failed call, as the console shows it.
#[derive(Debug, Clone)]
pub struct RecentFailure {
    /// The version that failed.
    pub version: String,
    /// When (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// The failure on one line, with what the guest last wrote to stderr.
    pub cause: String,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics::new(true)
    }
}

impl CallMetrics {
    /// Counts and times calls when `on`; otherwise only keeps failures.
    pub fn new(on: bool) -> Self {
        CallMetrics {
            on,
            calls: Default::default(),
            seconds: std::array::from_fn(|_| Histogram::new(SECONDS)),
            request_bytes: Histogram::new(BYTES),
            response_bytes: Histogram::new(BYTES),
            failures: Mutex::new(VecDeque::with_capacity(RECENT_FAILURES)),
        }
    }

    /// Starts recording one call by `trigger`; finish it with its outcome.
    pub fn start(&self, trigger: Trigger) -> Recording<'_> {
        Recording {
            metrics: self.on.then(|| (self, Instant::now())),
            trigger,
            done: false,
        }
    }

    /// Counts one call of `trigger` that ended with `outcome` after `took`.
    pub fn record(&self, trigger: Trigger, outcome: Outcome, took: Duration) {
        self.calls[trigger as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.seconds[trigger as usize].observe(took.as_secs_f64());
    }

    /// An HTTP request's body size (as declared) and its response's (when known).
    pub fn body_sizes(&self, request: Option<u64>, response: Option<u64>) {
        if !self.on {
            return;
        }
        if let Some(bytes) = request {
            self.request_bytes.observe(bytes as f64);
        }
        if let Some(bytes) = response {
            self.response_bytes.observe(bytes as f64);
        }
    }

    /// Calls of `trigger` that ended with `outcome` so far.
    pub fn calls(&self, trigger: Trigger, outcome: Outcome) -> u64 {
        self.calls[trigger as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Keeps a failure of `version` for the console (the oldest goes past
    /// [`RECENT_FAILURES`]).
    pub fn failed(&self, version: &str, cause: String) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() == RECENT_FAILURES {
            failures.pop_front();
        }
        failures.push_back(RecentFailure {
            version: version.to_string(),
            at_ms,
            cause,
        });
    }

    /// The latest failures, oldest first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.iter().cloned().collect()
    }

    fn any(&self, trigger: Trigger) -> bool {
        self.calls[trigger as usize]
            .iter()
            .any(|c| c.load(Ordering::Relaxed) > 0)
    }
}

/// One call being recorded. [`Recording::finish`] counts it with its outcome; dropped
/// unfinished (the request's future was dropped), it counts as [`Outcome::Cancelled`].
#[derive(Debug)]
pub struct Recording<'a> {
    /// The metrics and when the call started; `None` when calls are not counted.
    metrics: Option<(&'a CallMetrics, Instant)>,
    trigger: Trigger,
    done: bool,
}

impl Recording<'_> {
    /// Counts the call as ended with `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        if let Some((metrics, started)) = self.metrics {
            metrics.record(self.trigger, outcome, started.elapsed());
        }
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let (false, Some((metrics, started))) = (self.done, self.metrics) {
            metrics.record(self.trigger, Outcome::Cancelled, started.elapsed());
        }
    }
}

/// A key-value operation, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// Opening a bucket (denied when the grant lacks it).
    Open,
    /// Reading one key (or checking it exists); a batch read counts one per key.
    Get,
    /// Writing one key; a batch write counts one per key.
    Set,
    /// Removing one key; a batch removal counts one per key.
    Delete,
    /// A page of keys.
    List,
    /// An atomic increment.
    Increment,
    /// A compare-and-swap.
    CompareAndSwap,
}

impl KvOp {
    const ALL: [KvOp; 7] = [
        KvOp::Open,
        KvOp::Get,
        KvOp::Set,
        KvOp::Delete,
        KvOp::List,
        KvOp::Increment,
        KvOp::CompareAndSwap,
    ];

    fn as_str(self) -> &'static str {
        match self {
            KvOp::Open => "open",
            KvOp::Get => "get",
            KvOp::Set => "set",
            KvOp::Delete => "delete",
            KvOp::List => "list",
            KvOp::Increment => "increment",
            KvOp::CompareAndSwap => "compare_and_swap",
        }
    }
}

/// How a capability call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseOutcome {
    /// It did what was asked.
    Ok,
    /// The grant does not allow it.
    Denied,
    /// A request nobody answered in time.
    Timeout,
    /// A request to a subject nobody subscribes to.
    NoResponders,
    /// Anything else: a limit, a backend error, a service error reply.
    Error,
}

impl UseOutcome {
    /// [`UseOutcome::Ok`] or [`UseOutcome::Error`], by `result`.
    pub fn of<T, E>(result: &Result<T, E>) -> UseOutcome {
        if result.is_ok() {
            UseOutcome::Ok
        } else {
            UseOutcome::Error
        }
    }

    const ALL: [UseOutcome; 5] = [
        UseOutcome::Ok,
        UseOutcome::Denied,
        UseOutcome::Timeout,
        UseOutcome::NoResponders,
        UseOutcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UseOutcome::Ok => "ok",
            UseOutcome::Denied => "denied",
            UseOutcome::Timeout => "timeout",
            UseOutcome::NoResponders => "no_responders",
            UseOutcome::Error => "error",
        }
    }
}

/// What kind of publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// A message on the bus (`wasmcloud:messaging/consumer.publish`).
    Message,
    /// A durable event (`weft:platform/events.publish`).
    Event,
}

/// What one deployment's instances did with their grants.
#[derive(Debug, Default)]
pub struct Usage {
    kv: [[AtomicU64; UseOutcome::ALL.len()]; KvOp::ALL.len()],
    publishes: [[AtomicU64; UseOutcome::ALL.len()]; 2],
    requests: [AtomicU64; UseOutcome::ALL.len()],
    log_lines_dropped: AtomicU64,
}

impl Usage {
    /// Counts a key-value operation.
    pub fn kv(&self, op: KvOp, outcome: UseOutcome) {
        self.kv[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the key-value operation `op` by the result it returns.
    pub fn kv_result<T, E>(&self, op: KvOp, result: Result<T, E>) -> Result<T, E> {
        self.kv(op, UseOutcome::of(&result));
        result
    }

    /// Counts a publish.
    pub fn published(&self, kind: PublishKind, outcome: UseOutcome) {
        self.publishes[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request (request/reply).
    pub fn requested(&self, outcome: UseOutcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a guest log line dropped for being over the rate limit.
    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Deploys, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOutcome {
    /// A new version or spec went live.
    Changed,
    /// The same code and spec were already live.
    Unchanged,
    /// Refused (it says why).
    Refused,
}

/// What one host counts besides its components.
#[derive(Debug)]
pub struct HostMetrics {
    /// Whether components' calls are counted and timed (`HostConfig::metrics`).
    pub(crate) count_calls: bool,
    /// By tier (baseline, optimized) and source (fresh, cache).
    compiles: [[AtomicU64; 2]; 2],
    compile_seconds: [[Histogram; 2]; 2],
    deploys: [AtomicU64; 3],
    deploy_seconds: Histogram,
    unrouted: AtomicU64,
}

impl Default for HostMetrics {
    fn default() -> Self {
        HostMetrics::new(true)
    }
}

impl HostMetrics {
    /// The host's counters; components' calls are counted and timed when `count_calls`.
    pub fn new(count_calls: bool) -> Self {
        HostMetrics {
            count_calls,
            compiles: Default::default(),
            compile_seconds: std::array::from_fn(|_| {
                std::array::from_fn(|_| Histogram::new(SECONDS))
            }),
            deploys: Default::default(),
            deploy_seconds: Histogram::new(SECONDS),
            unrouted: AtomicU64::new(0),
        }
    }

    /// Counts code obtained for `tier`, how, and how long it took.
    pub fn compiled(&self, tier: crate::api::Tier, how: crate::api::Compiled) {
        let (source, ms) = match how {
            crate::api::Compiled::Fresh { ms } => (0, ms),
            crate::api::Compiled::Cached { ms } => (1, ms),
        };
        let tier = tier as usize;
        self.compiles[tier][source].fetch_add(1, Ordering::Relaxed);
        self.compile_seconds[tier][source].observe(ms as f64 / 1000.0);
    }

    /// Counts a deploy that ended with `outcome` after `took`.
    pub fn deployed(&self, outcome: DeployOutcome, took: Duration) {
        self.deploys[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.deploy_seconds.observe(took.as_secs_f64());
    }

    /// Counts an HTTP request that no route matched.
    pub fn unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }
}

/// The registry `GET /metrics` encodes: one [`Scrape`] of the host.
pub fn registry(scrape: Scrape) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    registry
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

/// Reads a host's metrics at scrape time.
#[derive(Debug)]
pub struct Scrape {
    /// The live set (weak: the admin API holds the registry for the host's lifetime).
    pub live: Weak<LiveSet>,
    /// The host's own counts.
    pub host: std::sync::Arc<HostMetrics>,
    /// The NATS connections' states, with NATS.
    pub nats: Option<std::sync::Arc<NatsStats>>,
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// One metric family being written: its descriptor, then one series per label set.
struct Family<'e> {
    encoder: prometheus_client::encoding::MetricEncoder<'e>,
}

impl<'e> Family<'e> {
    fn new(
        encoder: &'e mut DescriptorEncoder,
        name: &'e str,
        help: &str,
        unit: Option<&'e Unit>,
        kind: MetricType,
    ) -> Result<Family<'e>, std::fmt::Error> {
        Ok(Family {
            encoder: encoder.encode_descriptor(name, help, unit, kind)?,
        })
    }

    fn series(
        &mut self,
        labels: &impl EncodeLabelSet,
        metric: &impl EncodeMetric,
    ) -> Result<(), std::fmt::Error> {
        metric.encode(self.encoder.encode_family(labels)?)
    }

    fn counter(&mut self, labels: &impl EncodeLabelSet, value: u64) -> std::fmt::Result {
        self.series(labels, &ConstCounter::new(value))
    }

    fn gauge(&mut self, labels: &impl EncodeLabelSet, value: i64) -> std::fmt::Result {
        self.series(labels, &ConstGauge::new(value))
    }
}

/// One family with a series per deployment of `of` (labels: component, version), each
/// valued `value` of it.
fn per_component(
    encoder: &mut DescriptorEncoder,
    of: &[(&Deployment, &str)],
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&Deployment) -> u64,
) -> std::fmt::Result {
    let mut f = Family::new(encoder, name, help, None, kind)?;
    for &(d, version) in of {
        let labels: Labels<2> = [("component", &d.name), ("version", version)];
        match kind {
            MetricType::Counter => f.counter(&labels, value(d))?,
            _ => f.gauge(&labels, i64::try_from(value(d)).unwrap_or(i64::MAX))?,
        }
    }
    Ok(())
}

/// A deployment's version as a label: `sha256:` and the first 12 hex digits.
fn short_version(version: &str) -> &str {
    &version[..version.len().min("sha256:".len() + 12)]
}

/// Whether `deployment`'s spec gives it calls from `trigger` (its series show from the
/// deploy on, at zero) or it had some.
fn serves(deployment: &Deployment, trigger: Trigger) -> bool {
    let spec = &deployment.spec;
    let declared = match trigger {
        Trigger::Http => spec.routes.iter().any(|r| !r.websocket),
        Trigger::Websocket => spec.routes.iter().any(|r| r.websocket),
        Trigger::Messaging => spec.subscriptions.iter().any(|s| !s.durable),
        Trigger::Durable => spec.subscriptions.iter().any(|s| s.durable),
        Trigger::Schedule => !spec.schedules.is_empty(),
    };
    declared || deployment.calls.any(trigger)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.upgrade();
        let snapshot = live.as_ref().map(|l| l.snapshot()).unwrap_or_default();
        let deployments: Vec<(&Deployment, &str)> = snapshot
            .by_name
            .values()
            .map(|d| (&**d, short_version(&d.version)))
            .collect();
        let seconds = Unit::Seconds;
        let bytes = Unit::Bytes;

        {
            let mut f = Family::new(
                &mut encoder,
                "weft_calls",
                "Calls into components, by trigger and outcome.",
                None,
                MetricType::Counter,
            )?;
            for &(d, version) in &deployments {
                for trigger in Trigger::ALL.into_iter().filter(|&t| serves(d, t)) {
                    for outcome in Outcome::ALL {
                        let labels: Labels<4> = [
                            ("component", &d.name),
                            ("version", version),
                            ("trigger", trigger.as_str()),
                            ("outcome", outcome.as_str()),
                        ];
                        f.counter(&labels, d.calls.calls(trigger, outcome))?;
                    }
                }
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_call_duration",
                "How long calls into components took, from the trigger's start to the guest's answer (an HTTP response's head).",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            for &(d, version) in &deployments {
                for trigger in Trigger::ALL.into_iter().filter(|&t| serves(d, t)) {
                    let labels: Labels<3> = [
                        ("component", &d.name),
                        ("version", version),
                        ("trigger", trigger.as_str()),
                    ];
                    f.series(&labels, &d.calls.seconds[trigger as usize])?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "weft_http_request_body",
                "HTTP request body sizes, as declared by Content-Length.",
                (|c: &CallMetrics| &c.request_bytes) as fn(&CallMetrics) -> &Histogram,
            ),
            (
                "weft_http_response_body",
                "HTTP response body sizes, when known when the head is sent.",
                |c: &CallMetrics| &c.response_bytes,
            ),
        ] {
            let mut f = Family::new(
                &mut encoder,
                name,
                help,
                Some(&bytes),
                MetricType::Histogram,
            )?;
            for &(d, version) in deployments.iter().filter(|(d, _)| serves(d, Trigger::Http)) {
                let labels: Labels<2> = [("component", &d.name), ("version", version)];
                f.series(&labels, pick(&d.calls))?;
            }
        }

        per_component(
            &mut encoder,
            &deployments,
            "weft_calls_in_flight",
            "Calls running now (permits of max_concurrency taken).",
            MetricType::Gauge,
            |d| {
                let max = d.spec.limits.max_concurrency as usize;
                max.saturating_sub(d.concurrency.available_permits()) as u64
            },
        )?;
        per_component(
            &mut encoder,
            &deployments,
            "weft_max_concurrency",
            "The component's max_concurrency: calls it may run at once.",
            MetricType::Gauge,
            |d| u64::from(d.spec.limits.max_concurrency),
        )?;
        per_component(
            &mut encoder,
            &deployments,
            "weft_idle_instances",
            "Instances kept or prepared as spares, waiting for a call.",
            MetricType::Gauge,
            |d| d.exports.idle() as u64,
        )?;
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_component_info",
                "One series per live component, valued 1: its tier (baseline: Winch code, optimized: Cranelift code).",
                None,
                MetricType::Gauge,
            )?;
            for &(d, version) in &deployments {
                let tier = match d.tier {
                    crate::api::Tier::Baseline => "baseline",
                    crate::api::Tier::Optimized => "optimized",
                };
                let labels: Labels<3> =
                    [("component", &d.name), ("version", version), ("tier", tier)];
                f.gauge(&labels, 1)?;
            }
        }

        {
            let mut f = Family::new(
                &mut encoder,
                "weft_kv_operations",
                "Key-value operations by components, by operation and outcome.",
                None,
                MetricType::Counter,
            )?;
            for &(d, version) in deployments
                .iter()
                .filter(|(d, _)| !d.spec.buckets.is_empty())
            {
                let usage = &d.grants.usage;
                for op in KvOp::ALL {
                    for outcome in [UseOutcome::Ok, UseOutcome::Denied, UseOutcome::Error] {
                        let labels: Labels<4> = [
                            ("component", &d.name),
                            ("version", version),
                            ("operation", op.as_str()),
                            ("outcome", outcome.as_str()),
                        ];
                        let n = usage.kv[op as usize][outcome as usize].load(Ordering::Relaxed);
                        f.counter(&labels, n)?;
                    }
                }
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_publishes",
                "Publishes by components (kind: message or durable event), by outcome.",
                None,
                MetricType::Counter,
            )?;
            for &(d, version) in &deployments {
                for (kind, name) in [
                    (PublishKind::Message, "message"),
                    (PublishKind::Event, "event"),
                ] {
                    for outcome in [UseOutcome::Ok, UseOutcome::Denied, UseOutcome::Error] {
                        let labels: Labels<4> = [
                            ("component", &d.name),
                            ("version", version),
                            ("kind", name),
                            ("outcome", outcome.as_str()),
                        ];
                        let n = d.grants.usage.publishes[kind as usize][outcome as usize]
                            .load(Ordering::Relaxed);
                        f.counter(&labels, n)?;
                    }
                }
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_requests",
                "Requests (request/reply) by components, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for &(d, version) in &deployments {
                for outcome in UseOutcome::ALL {
                    let labels: Labels<3> = [
                        ("component", &d.name),
                        ("version", version),
                        ("outcome", outcome.as_str()),
                    ];
                    let n = d.grants.usage.requests[outcome as usize].load(Ordering::Relaxed);
                    f.counter(&labels, n)?;
                }
            }
        }
        per_component(
            &mut encoder,
            &deployments,
            "weft_guest_log_lines_dropped",
            "Guest log lines dropped for being over the rate limit.",
            MetricType::Counter,
            |d| d.grants.usage.log_lines_dropped.load(Ordering::Relaxed),
        )?;
        let subscribers: Vec<_> = deployments
            .iter()
            .copied()
            .filter(|(d, _)| !d.spec.subscriptions.is_empty())
            .collect();
        per_component(
            &mut encoder,
            &subscribers,
            "weft_messages_dropped",
            "Messages dropped before reaching a component because its subscriptions were full.",
            MetricType::Counter,
            |d| d.dropped_messages.load(Ordering::Relaxed),
        )?;

        // The host.
        let host = &self.host;
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_deployed_components",
                "Components live on this host.",
                None,
                MetricType::Gauge,
            )?;
            f.gauge(&[] as &Labels<0>, deployments.len() as i64)?;
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_deploys",
                "Deploys received, by outcome (changed, unchanged, refused).",
                None,
                MetricType::Counter,
            )?;
            for (i, outcome) in ["changed", "unchanged", "refused"].into_iter().enumerate() {
                let labels: Labels<1> = [("outcome", outcome)];
                f.counter(&labels, host.deploys[i].load(Ordering::Relaxed))?;
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_deploy_duration",
                "How long deploys took, from receiving the component to live (or refused).",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            f.series(&[] as &Labels<0>, &host.deploy_seconds)?;
        }
        const TIERS: [&str; 2] = ["baseline", "optimized"];
        const SOURCES: [&str; 2] = ["fresh", "cache"];
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_compiles",
                "Component code obtained, by tier (baseline: Winch, optimized: Cranelift) and source (fresh compile, compile cache).",
                None,
                MetricType::Counter,
            )?;
            for (t, tier) in TIERS.into_iter().enumerate() {
                for (s, source) in SOURCES.into_iter().enumerate() {
                    let labels: Labels<2> = [("tier", tier), ("source", source)];
                    f.counter(&labels, host.compiles[t][s].load(Ordering::Relaxed))?;
                }
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_compile_duration",
                "How long compiling (or loading cached code) took, by tier and source.",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            for (t, tier) in TIERS.into_iter().enumerate() {
                for (s, source) in SOURCES.into_iter().enumerate() {
                    let labels: Labels<2> = [("tier", tier), ("source", source)];
                    f.series(&labels, &host.compile_seconds[t][s])?;
                }
            }
        }
        {
            let mut f = Family::new(
                &mut encoder,
                "weft_http_unrouted",
                "HTTP requests no route matched (answered 404 or 405).",
                None,
                MetricType::Counter,
            )?;
            f.counter(&[] as &Labels<0>, host.unrouted.load(Ordering::Relaxed))?;
        }
        if let Some(live) = &live {
            let engines = live.engines();
            {
                let mut slots = Family::new(
                    &mut encoder,
                    "weft_instance_slots",
                    "Instance slots of each engine's pooling allocator (HostConfig::max_instances).",
                    None,
                    MetricType::Gauge,
                )?;
                for (name, _) in engines.all() {
                    slots.gauge(&[("engine", name)], i64::from(engines.max_instances))?;
                }
            }
            {
                let mut used = Family::new(
                    &mut encoder,
                    "weft_instance_slots_used",
                    "Instance slots in use (running or idle instances), by engine.",
                    None,
                    MetricType::Gauge,
                )?;
                for (name, engine) in engines.all() {
                    let n = engine
                        .engine
                        .pooling_allocator_metrics()
                        .map_or(0, |m| m.component_instances());
                    used.gauge(&[("engine", name)], n as i64)?;
                }
            }
            let mut budget = Family::new(
                &mut encoder,
                "weft_idle_budget",
                "Idle instances each engine may keep across components (a quarter of its slots), and how many it keeps now.",
                None,
                MetricType::Gauge,
            )?;
            for (name, engine) in engines.all() {
                let (held, max) = engine.idle_budget.usage();
                budget.gauge(&[("engine", name), ("of", "max")], max as i64)?;
                budget.gauge(&[("engine", name), ("of", "held")], held as i64)?;
            }
        }
        if let Some(nats) = &self.nats {
            nats.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Writes one gauge series and one counter family: how [`NatsStats`] shows itself.
pub(crate) fn encode_nats(
    encoder: &mut DescriptorEncoder,
    roles: &[(&'static str, bool, u64, u64)],
) -> std::fmt::Result {
    {
        let mut f = Family::new(
            encoder,
            "weft_nats_connected",
            "Whether each of the host's NATS connections (by role) is connected.",
            None,
            MetricType::Gauge,
        )?;
        for &(role, connected, _, _) in roles {
            f.gauge(&[("role", role)], i64::from(connected))?;
        }
    }
    {
        let mut f = Family::new(
            encoder,
            "weft_nats_reconnects",
            "Times each NATS connection (by role) came back after being lost.",
            None,
            MetricType::Counter,
        )?;
        for &(role, _, reconnects, _) in roles {
            f.counter(&[("role", role)], reconnects)?;
        }
    }
    let mut f = Family::new(
        encoder,
        "weft_nats_slow_consumer_drops",
        "Messages the NATS client dropped because a subscription's buffer was full.",
        None,
        MetricType::Counter,
    )?;
    for &(role, _, _, dropped) in roles {
        f.counter(&[("role", role)], dropped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_recording_counts_as_cancelled() {
        let calls = CallMetrics::default();
        calls.start(Trigger::Http).finish(Outcome::Ok);
        drop(calls.start(Trigger::Http));
        calls.start(Trigger::Messaging).finish(Outcome::Deadline);
        assert_eq!(calls.calls(Trigger::Http, Outcome::Ok), 1);
        assert_eq!(calls.calls(Trigger::Http, Outcome::Cancelled), 1);
        assert_eq!(calls.calls(Trigger::Messaging, Outcome::Deadline), 1);
        assert_eq!(calls.calls(Trigger::Messaging, Outcome::Ok), 0);
        assert!(calls.any(Trigger::Http) && !calls.any(Trigger::Durable));
    }

    #[test]
    fn versions_are_shortened_to_twelve_hex_digits() {
        let full = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_version(&full), "sha256:abababababab");
        assert_eq!(short_version("v1"), "v1");
    }
}
