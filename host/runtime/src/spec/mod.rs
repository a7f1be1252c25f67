//! What a deployment asks of the host: routes, subscriptions, limits, grants and config.
//! The same shape is read from a `weft.toml` component entry and from an admin deploy.
//! Plain data: this layer depends on no runtime module. [`ComponentSpec::validate`]
//! checks it once into a [`ValidSpec`], which is what the runtime takes; each problem is
//! a [`SpecError`] naming the key it is about.

pub mod manifest;
pub mod outbound;
pub mod route;
pub mod schedule;
pub mod subject;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything about a component except its code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// HTTP routes served by the component.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Resource limits; any left out take their defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Configuration values, readable by the guest as environment variables.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Where the guest may send outgoing HTTP: `scheme://host[:port]` grants, as in Spin
    /// (see [`outbound`]).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Subjects whose messages the component handles.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSpec>,
    /// Subject patterns (NATS wildcards) the guest may publish and request on.
    #[serde(default)]
    pub allowed_publish: Vec<String>,
    /// Key-value buckets the guest may open.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Browser origins (`https://app.example.com`) besides the page's own that may open
    /// this component's WebSocket routes. A browser's upgrade from any other origin gets
    /// `403` (cross-site WebSocket hijacking); clients that send no `Origin` are not
    /// browsers and are let through.
    #[serde(default)]
    pub websocket_origins: Vec<String>,
    /// Ticks delivered to the component's message handler (README, "Schedules").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<schedule::ScheduleSpec>,
    /// In a lattice, the labels a host needs (every one, with the same value) to run the
    /// component (README, "Running many hosts"); none: every host runs it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placement: BTreeMap<String, String>,
}

/// One subscription: a subject and how its messages are shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Subject, with NATS wildcards (`*` one token, `>` the rest).
    pub subject: String,
    /// Queue group; default: the component's name, so its instances on all hosts share the load.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Every instance on every host gets every message (no queue group).
    #[serde(default)]
    pub broadcast: bool,
    /// Messages handled at once; when reached, the host stops pulling.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// At-least-once delivery (README, "Durable events"): the subject's messages are
    /// kept in a stream and delivered through a durable consumer named after the
    /// component, shared by all its hosts, until the handler returns `ok`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub durable: bool,
    /// Durable: the stream to create when none keeps the subject yet (default
    /// `weft-SUBJECT`, dots as `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Durable: deliveries of one message before it becomes a dead letter.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Durable: how long to wait before redelivering a message whose handling failed,
    /// in milliseconds, by attempt (the last value repeats).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: Vec<u64>,
    /// Durable: how long a delivery may go unsettled before it is redelivered (its host
    /// stopped), in milliseconds. A running handler keeps extending it.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Durable: where a message goes after `max_deliver` failed deliveries (default
    /// `dead.COMPONENT.SUBJECT`, wildcards as `any`/`all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

impl SubscriptionSpec {
    /// A subscription to `subject` with every other key at its default.
    pub fn to(subject: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            subject: subject.to_string(),
            queue_group: None,
            broadcast: false,
            max_in_flight: default_max_in_flight(),
            durable: false,
            stream: None,
            max_deliver: default_max_deliver(),
            backoff_ms: default_backoff_ms(),
            ack_wait_ms: default_ack_wait_ms(),
            dead_letter: None,
        }
    }
}

fn default_max_in_flight() -> u32 {
    64
}

fn default_max_deliver() -> u32 {
    5
}

fn default_backoff_ms() -> Vec<u64> {
    vec![1_000, 5_000, 30_000]
}

fn default_ack_wait_ms() -> u64 {
    30_000
}

/// One HTTP route: a path pattern and, optionally, the methods it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// `/exact`, `/users/:id` or `/static/...` (trailing wildcard).
    pub path: String,
    /// Upper-case method names; empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Accept WebSocket upgrades here: the connection's events go to the component's
    /// `wasmcloud:messaging/handler` (see `triggers::websocket`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}

/// Per-component limits. Every field has a default, so `[limits]` may name only some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline for one request, in milliseconds (exceeded: 504).
    pub timeout_ms: u64,
    /// Cap on the guest's linear memory, in MiB (exceeded: allocation fails or traps, 500).
    pub memory_mb: u64,
    /// Instances running at once (excess requests: 503 with `Retry-After`).
    pub max_concurrency: u32,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: u64,
    /// HTTP requests one instance serves in turn before it is thrown away. The default,
    /// 1, gives every request a fresh instance. More is an opt-in for guests whose
    /// start-up is expensive (JavaScript, Python): an instance is reused only after a
    /// request it completed, never by two requests at once, and never after a trap or
    /// a missed deadline. Guest globals then survive from one request to the next.
    pub requests_per_instance: u32,
    /// Requests one instance of a `wasi:http@0.3.0` component serves at once. The
    /// default, 1, serves one at a time; more lets an async guest overlap requests that
    /// wait on I/O (take `requests_per_instance` above 1 too, or each instance still
    /// serves one request in all). A trap ends the instance and every request it was
    /// serving. 0.2 components cannot serve two requests at once and ignore it.
    pub max_concurrent_per_instance: u32,
    /// Largest value the guest may store in a key-value bucket, in bytes (larger: an
    /// error). The default is NATS's default message size.
    pub kv_max_value_bytes: u64,
    /// Keys one key-value batch call (`get-many`, `set-many`, `delete-many`) may name.
    pub kv_max_batch_keys: u32,
    /// Bytes of values one `get-many` or `set-many` may carry.
    pub kv_max_batch_bytes: u64,
    /// Outgoing HTTP requests the component's instances may have open at once (each
    /// instance also at most 16); more fail with `connection-limit-reached`.
    pub max_outbound_requests: u32,
    /// How long a response body may go on streaming once its head is sent, in
    /// milliseconds, instead of ending at `timeout_ms` from the request's start: for
    /// server-sent events and other long streams. 0 (the default): `timeout_ms` bounds
    /// the whole response. At most [`MAX_STREAM_TIMEOUT_MS`].
    pub stream_timeout_ms: u64,
    /// WebSocket connections open at once on this host (more: 503 before the upgrade).
    pub ws_max_connections: u32,
    /// Largest WebSocket message (and frame) a client may send, in bytes (larger: the
    /// connection is closed with 1009).
    pub ws_max_message_bytes: u32,
    /// How long a WebSocket connection may receive nothing from its client before it
    /// is closed (1000), in milliseconds.
    pub ws_idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            memory_mb: 128,
            max_concurrency: 256,
            max_body_bytes: 10 * 1024 * 1024,
            requests_per_instance: 1,
            max_concurrent_per_instance: 1,
            kv_max_value_bytes: 1024 * 1024,
            kv_max_batch_keys: 1000,
            kv_max_batch_bytes: 16 * 1024 * 1024,
            max_outbound_requests: 64,
            stream_timeout_ms: 0,
            ws_max_connections: 1000,
            ws_max_message_bytes: 64 * 1024,
            ws_idle_timeout_ms: 300_000,
        }
    }
}

/// Upper bound on `stream_timeout_ms`: a day.
pub const MAX_STREAM_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Upper bound on `memory_mb`: the host's pooling allocator reserves this much per slot.
pub const MAX_MEMORY_MB: u64 = 4096;

/// A spec problem: the key it is about (`routes[0].path`, `limits.memory_mb`, ...), and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SpecError {
    /// The key's path within the spec, as it would be written in `weft.toml`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl SpecError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl From<std::convert::Infallible> for SpecError {
    fn from(never: std::convert::Infallible) -> SpecError {
        match never {}
    }
}

/// A spec that passed [`ComponentSpec::validate`]: the only kind the runtime accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidSpec(ComponentSpec);

impl std::ops::Deref for ValidSpec {
    type Target = ComponentSpec;

    fn deref(&self) -> &ComponentSpec {
        &self.0
    }
}

impl ValidSpec {
    /// The spec, to change and validate again.
    pub fn into_inner(self) -> ComponentSpec {
        self.0
    }
}

impl TryFrom<ComponentSpec> for ValidSpec {
    type Error = SpecError;

    fn try_from(spec: ComponentSpec) -> Result<ValidSpec, SpecError> {
        spec.validate()
    }
}

impl ComponentSpec {
    /// Checks what serde cannot (value ranges, route and subject syntax, method and bucket
    /// names), once: the result is a [`ValidSpec`].
    pub fn validate(self) -> Result<ValidSpec, SpecError> {
        let l = &self.limits;
        if l.timeout_ms == 0 {
            return Err(SpecError::new("limits.timeout_ms", "must be at least 1"));
        }
        if l.memory_mb == 0 || l.memory_mb > MAX_MEMORY_MB {
            return Err(SpecError::new(
                "limits.memory_mb",
                format!("must be between 1 and {MAX_MEMORY_MB}"),
            ));
        }
        if l.stream_timeout_ms > MAX_STREAM_TIMEOUT_MS {
            return Err(SpecError::new(
                "limits.stream_timeout_ms",
                format!("must be at most {MAX_STREAM_TIMEOUT_MS} (a day)"),
            ));
        }
        if l.max_concurrency == 0 {
            return Err(SpecError::new(
                "limits.max_concurrency",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("limits.kv_max_value_bytes", l.kv_max_value_bytes),
            ("limits.kv_max_batch_keys", u64::from(l.kv_max_batch_keys)),
            ("limits.kv_max_batch_bytes", l.kv_max_batch_bytes),
            (
                "limits.max_outbound_requests",
                u64::from(l.max_outbound_requests),
            ),
            (
                "limits.max_concurrent_per_instance",
                u64::from(l.max_concurrent_per_instance),
            ),
            ("limits.ws_max_connections", u64::from(l.ws_max_connections)),
            (
                "limits.ws_max_message_bytes",
                u64::from(l.ws_max_message_bytes),
            ),
            ("limits.ws_idle_timeout_ms", l.ws_idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(SpecError::new(key, "must be at least 1"));
            }
        }
        if l.requests_per_instance == 0 {
            return Err(SpecError::new(
                "limits.requests_per_instance",
                "must be at least 1 (1: a fresh instance per request)",
            ));
        }
        for (label, value) in &self.placement {
            if !valid_label(label) || !valid_label(value) {
                return Err(SpecError::new(
                    format!("placement.{label}"),
                    format!(
                        "`{label} = {value}`: labels and their values use a-z, A-Z, 0-9, `-`, `_` and `.` (64 characters at most)"
                    ),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.websocket && route.methods.iter().any(|m| m != "GET") {
                return Err(SpecError::new(
                    format!("routes[{i}].methods"),
                    format!(
                        "route `{}`: a WebSocket route takes only GET (the upgrade); leave `methods` out",
                        route.path
                    ),
                ));
            }
            route::Pattern::parse(&route.path).map_err(|e| {
                SpecError::new(
                    format!("routes[{i}].path"),
                    format!("route `{}`: {e}", route.path),
                )
            })?;
            for (j, method) in route.methods.iter().enumerate() {
                http::Method::from_bytes(method.as_bytes())
                    .ok()
                    .filter(|_| method.chars().all(|c| c.is_ascii_uppercase()))
                    .ok_or_else(|| {
                        SpecError::new(
                            format!("routes[{i}].methods[{j}]"),
                            format!(
                                "route `{}`: `{method}` is not an upper-case HTTP method",
                                route.path
                            ),
                        )
                    })?;
            }
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            if !subject::valid_pattern(&sub.subject) {
                return Err(SpecError::new(
                    format!("subscriptions[{i}].subject"),
                    format!("`{}` is not a valid NATS subject", sub.subject),
                ));
            }
            if let Some(why) = subject::reserved(&sub.subject) {
                return Err(SpecError::new(
                    format!("subscriptions[{i}].subject"),
                    format!(
                        "`{}` is reserved and cannot be subscribed to: {why}",
                        sub.subject
                    ),
                ));
            }
            if sub.max_in_flight == 0 {
                return Err(SpecError::new(
                    format!("subscriptions[{i}].max_in_flight"),
                    format!("subscription `{}`: must be at least 1", sub.subject),
                ));
            }
            let key = |name: &str| format!("subscriptions[{i}].{name}");
            let durable_only = [
                ("stream", sub.stream.is_some()),
                ("max_deliver", sub.max_deliver != default_max_deliver()),
                ("backoff_ms", sub.backoff_ms != default_backoff_ms()),
                ("ack_wait_ms", sub.ack_wait_ms != default_ack_wait_ms()),
                ("dead_letter", sub.dead_letter.is_some()),
            ];
            if let Some((name, _)) = durable_only.iter().find(|(_, set)| *set && !sub.durable) {
                return Err(SpecError::new(
                    key(name),
                    format!(
                        "subscription `{}`: `{name}` applies to durable subscriptions only; add `durable = true`",
                        sub.subject
                    ),
                ));
            }
            if sub.durable {
                if sub.broadcast || sub.queue_group.is_some() {
                    return Err(SpecError::new(
                        key(if sub.broadcast {
                            "broadcast"
                        } else {
                            "queue_group"
                        }),
                        format!(
                            "subscription `{}`: a durable subscription has one durable consumer for all hosts, named after the component; leave out `broadcast` and `queue_group`",
                            sub.subject
                        ),
                    ));
                }
                check_retries(sub.max_deliver, sub.ack_wait_ms, &sub.backoff_ms, key)?;
                if let Some(stream) = sub.stream.as_ref().filter(|s| !valid_bucket(s)) {
                    return Err(SpecError::new(
                        key("stream"),
                        format!(
                            "`{stream}` is not a valid stream name (use a-z, A-Z, 0-9, `-` and `_`)"
                        ),
                    ));
                }
                if let Some(stream) = sub.stream.as_ref().filter(|s| reserved_stream(s)) {
                    return Err(SpecError::new(
                        key("stream"),
                        format!(
                            "`{stream}`: streams named `KV_...` and `OBJ_...` hold JetStream's key-value buckets and object stores, and `_weft...` the host's own; name another"
                        ),
                    ));
                }
                if let Some(dead) = sub
                    .dead_letter
                    .as_ref()
                    .filter(|d| !subject::valid_subject(d) || subject::reserved(d).is_some())
                {
                    return Err(SpecError::new(
                        key("dead_letter"),
                        format!(
                            "`{dead}` is not a subject a dead letter can go to (no wildcards, not reserved)"
                        ),
                    ));
                }
            }
            if sub.broadcast && sub.queue_group.is_some() {
                return Err(SpecError::new(
                    format!("subscriptions[{i}].queue_group"),
                    format!(
                        "subscription `{}`: `broadcast` and `queue_group` exclude each other",
                        sub.subject
                    ),
                ));
            }
        }
        for (i, subject) in self.allowed_publish.iter().enumerate() {
            if !subject::valid_pattern(subject) {
                return Err(SpecError::new(
                    format!("allowed_publish[{i}]"),
                    format!("`{subject}` is not a valid NATS subject"),
                ));
            }
            if let Some(why) = subject::reserved(subject) {
                return Err(SpecError::new(
                    format!("allowed_publish[{i}]"),
                    format!("`{subject}` is reserved and cannot be granted: {why}"),
                ));
            }
        }
        for (i, origin) in self.websocket_origins.iter().enumerate() {
            let uri: Option<http::Uri> = origin.parse().ok();
            let valid = uri.is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path_and_query()
                        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
            }) && !origin.ends_with('/');
            if !valid {
                return Err(SpecError::new(
                    format!("websocket_origins[{i}]"),
                    format!(
                        "`{origin}` is not an origin: write `https://host` or `http://host:port`, no path"
                    ),
                ));
            }
        }
        schedule::validate(&self.schedules)?;
        for (i, bucket) in self.buckets.iter().enumerate() {
            if bucket.starts_with(HOST_BUCKET) {
                return Err(SpecError::new(
                    format!("buckets[{i}]"),
                    format!(
                        "`{bucket}`: bucket names starting with `{HOST_BUCKET}` are the host's own"
                    ),
                ));
            }
            if !valid_bucket(bucket) {
                return Err(SpecError::new(
                    format!("buckets[{i}]"),
                    format!(
                        "`{bucket}` is not a valid bucket name (use a-z, A-Z, 0-9, `-` and `_`)"
                    ),
                ));
            }
        }
        for (i, grant) in self.allowed_outbound_hosts.iter().enumerate() {
            outbound::OutboundGrant::parse(grant)
                .map_err(|e| SpecError::new(format!("allowed_outbound_hosts[{i}]"), e))?;
        }
        Ok(ValidSpec(self))
    }
}

/// The retry settings of a durable subscription or a schedule (`key` names a field).
fn check_retries(
    max_deliver: u32,
    ack_wait_ms: u64,
    backoff_ms: &[u64],
    key: impl Fn(&str) -> String,
) -> Result<(), SpecError> {
    if max_deliver == 0 {
        return Err(SpecError::new(key("max_deliver"), "must be at least 1"));
    }
    if ack_wait_ms < 100 {
        return Err(SpecError::new(key("ack_wait_ms"), "must be at least 100"));
    }
    if backoff_ms.is_empty() || backoff_ms.iter().any(|&b| b > MAX_STREAM_TIMEOUT_MS) {
        return Err(SpecError::new(
            key("backoff_ms"),
            "give at least one delay, each at most a day (86400000)",
        ));
    }
    Ok(())
}

/// The key-value bucket the host keeps its own state in (schedules' last ticks); no
/// component may open it.
pub const HOST_BUCKET: &str = "_weft";

/// Whether `name` is usable as a key-value bucket name on every backend.
pub fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether a stream name is JetStream's (buckets, object stores) or the host's own.
fn reserved_stream(name: &str) -> bool {
    name.starts_with("KV_") || name.starts_with("OBJ_") || name.starts_with(HOST_BUCKET)
}

/// Whether a host label (or its value) is usable: `zone`, `eu-west-1`, `gpu.model`.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks that a component name is usable in URLs, logs and file names.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!(
                "component name `{name}` must start with a-z and use only a-z, 0-9, `-` and `_` (64 characters at most)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_limits_and_routes() {
        let check = |spec: &ComponentSpec| spec.clone().validate().map(|_| ());
        let mut spec = ComponentSpec::default();
        assert!(check(&spec).is_ok());
        spec.limits.memory_mb = 0;
        assert_eq!(check(&spec).unwrap_err().key, "limits.memory_mb");
        spec.limits.memory_mb = 16;
        spec.routes.push(RouteSpec {
            path: "no-slash".into(),
            methods: vec![],
            websocket: false,
        });
        let err = check(&spec).unwrap_err();
        assert!(err.to_string().contains("no-slash"), "{err}");
        assert_eq!(err.key, "routes[0].path");
        spec.routes[0] = RouteSpec {
            path: "/ok".into(),
            methods: vec!["get".into()],
            websocket: false,
        };
        let err = check(&spec).unwrap_err();
        assert!(err.to_string().contains("upper-case"), "{err}");
        assert_eq!(err.key, "routes[0].methods[0]");
    }

    #[test]
    fn websocket_origins_are_origins() {
        let with = |origin: &str| ComponentSpec {
            websocket_origins: vec![origin.to_string()],
            ..ComponentSpec::default()
        };
        for good in ["https://app.example.com", "http://localhost:8080"] {
            assert!(with(good).validate().is_ok(), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a.com/x",
            "ftp://a.com",
            "*",
        ] {
            let error = with(bad).validate().unwrap_err();
            assert_eq!(error.key, "websocket_origins[0]", "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("orders-v2").is_ok());
        assert!(validate_name("Orders").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("../x").is_err());
    }
}
