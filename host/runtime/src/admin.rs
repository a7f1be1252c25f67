//! The admin API: deploy, list and undeploy components on a running host, and its
//! metrics (`GET /metrics`, [`crate::metrics`]).
//! Loopback by default; any other bind address requires a bearer token.
//!
//! Every request passes [`authorize`] first, the one place access is decided:
//! - its `Host` must be the listener's own address (any IP address if it listens on
//!   `0.0.0.0`), `localhost` (on loopback), or a name the operator configured: a web
//!   page cannot reach the API by pointing its own domain at 127.0.0.1 (DNS rebinding);
//! - a request from a browser (with an `Origin` header) is refused unless the origin is
//!   configured;
//! - with a token configured (always, off loopback), the bearer token must match,
//!   compared in constant time. On loopback the token is how to keep other local users
//!   (and local guests' neighbours) out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use prometheus_client::registry::Registry;

pub use crate::api::SPEC_HEADER;
use crate::api::{DeploymentInfo, ErrorBody, FailureInfo, Health, LatticeView, Rollout, Status};
use crate::deploy::{DeployError, LiveSet};
use crate::lattice::{Lattice, ROLLOUT_WAIT};
use crate::spec::ComponentSpec;

/// What the admin API takes in at once: each deploy's upload is held in memory whole
/// (to digest and compile it), so both its size and how many run together are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Largest component accepted, in bytes (larger: 413).
    pub max_upload_bytes: usize,
    /// Deploys received or compiling at once (more: 503 with `Retry-After`).
    pub max_concurrent_deploys: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_upload_bytes: 256 << 20,
            max_concurrent_deploys: 4,
        }
    }
}

/// Who may use the admin API.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    /// The address the admin API listens on.
    pub listen: SocketAddr,
    /// Bearer token every request must carry, if set.
    pub token: Option<String>,
    /// Further names accepted in the `Host` header (the names operators reach it by).
    pub hosts: Vec<String>,
    /// Browser origins allowed to call it (`https://console.example.com`); none by default.
    pub origins: Vec<String>,
}

impl AdminAccess {
    /// Whether a request's `Host` header names this listener.
    fn host_allowed(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return false;
        };
        let name = authority.host().trim_end_matches('.').to_ascii_lowercase();
        let listen = self.listen.ip();
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => listen.is_unspecified() || ip == listen,
            Err(_) => {
                (name == "localhost" && listen.is_loopback())
                    || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&name))
            }
        }
    }

    /// Whether `given` is the token, in time independent of where they differ.
    fn token_matches(&self, given: Option<&str>) -> bool {
        match (&self.token, given) {
            (None, _) => true,
            (Some(token), Some(given)) => same_secret(token, given),
            (Some(_), None) => false,
        }
    }
}

/// Compares two secrets in constant time (over their SHA-256 digests, so the length
/// does not leak either).
fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[derive(Clone)]
struct AdminState {
    deployments: Arc<LiveSet>,
    /// The lattice the host is in: deploys and undeploys change its desired state.
    lattice: Option<Lattice>,
    access: Arc<AdminAccess>,
    limits: AdminLimits,
    /// One permit per deploy being received or compiled.
    deploys: Arc<tokio::sync::Semaphore>,
    /// What `GET /metrics` encodes; `None`: metrics are off.
    metrics: Option<Arc<Registry>>,
}

/// The admin API's routes.
pub fn app(
    deployments: Arc<LiveSet>,
    lattice: Option<Lattice>,
    access: AdminAccess,
    limits: AdminLimits,
    metrics: Option<Arc<Registry>>,
) -> Router {
    let state = AdminState {
        deployments,
        lattice,
        access: Arc::new(access),
        limits,
        deploys: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_deploys)),
        metrics,
    };
    Router::new()
        .route(
            "/v1/health",
            get(|| async {
                Json(Health {
                    status: "ok".into(),
                })
            }),
        )
        .route("/v1/status", get(status))
        .route(
            "/metrics",
            get(|State(state): State<AdminState>| async move {
                match &state.metrics {
                    Some(registry) => exposition(registry),
                    None => AdminError::MetricsOff.into_response(),
                }
            }),
        )
        .route("/v1/components", get(list))
        .route("/v1/failures", get(failures))
        .route(CONSOLE, get(console))
        .route("/v1/lattice", get(lattice_view))
        .route(
            "/v1/components/{name}",
            get(show).put(deploy).delete(undeploy),
        )
        // Deploys read their body themselves, within `max_upload_bytes`.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            authorize,
        ))
        .with_state(state)
}

/// `GET /metrics` alone, for a listener of its own (`--metrics-listen`), behind the
/// same access check as the admin API (its own address, and the token if one is set).
pub fn metrics_app(metrics: Arc<Registry>, access: AdminAccess) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(metrics): State<Arc<Registry>>| async move { exposition(&metrics) }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            authorize,
        ))
        .with_state(metrics)
}

/// The Prometheus text exposition of `registry`.
fn exposition(registry: &Registry) -> Response {
    let text = crate::metrics::encode(registry);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// Errors at the admin API's edge.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token.
    #[error(
        "missing or wrong bearer token: pass the host's admin token (`--admin-token` or WEFT_ADMIN_TOKEN)"
    )]
    Unauthorized,
    /// The `Host` header names something other than this listener.
    #[error(
        "refused: Host `{0}` is not this admin API's address; reach it by its address, or start the host with `--admin-host NAME` to accept that name"
    )]
    ForeignHost(String),
    /// A browser sent the request from a page not allowed to.
    #[error(
        "refused: requests from browser origin `{0}` are not allowed; start the host with `--admin-origin ORIGIN` to allow one"
    )]
    ForeignOrigin(String),
    /// The `weft-spec` header is not a valid spec.
    #[error("invalid `{SPEC_HEADER}` header: {0}")]
    BadSpec(String),
    /// The upload is larger than the host takes.
    #[error(
        "the component is larger than this host accepts ({0} bytes at most): build it smaller (release profile, strip debug info)"
    )]
    TooLarge(usize),
    /// As many deploys as the host takes at once are under way.
    #[error(
        "{0} deploys are already under way, the most this host takes at once; retry when one has finished"
    )]
    Busy(usize),
    /// The upload broke off.
    #[error("reading the upload failed: {0}")]
    Upload(String),
    /// The deploy or undeploy was refused.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The host is not in a lattice.
    #[error("this host is not in a lattice: start hosts with `--nats URL` to run them as one")]
    NoLattice,
    /// The host was started with metrics off.
    #[error("metrics are off on this host: it was started with --no-metrics")]
    MetricsOff,
    /// The lattice's buckets could not be read or written.
    #[error("lattice: {0}")]
    Lattice(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::ForeignHost(_) | AdminError::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            AdminError::BadSpec(_) | AdminError::Upload(_) => StatusCode::BAD_REQUEST,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Deploy(DeployError::NotFound(_)) => StatusCode::NOT_FOUND,
            AdminError::Deploy(DeployError::RouteConflict(_)) => StatusCode::CONFLICT,
            AdminError::Deploy(DeployError::Storage(_)) => StatusCode::INSUFFICIENT_STORAGE,
            AdminError::Deploy(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::NoLattice | AdminError::MetricsOff => StatusCode::NOT_FOUND,
            AdminError::Lattice(_) => StatusCode::BAD_GATEWAY,
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A busy host: the deploy may simply be sent again.
            let retry = http::HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

/// The one access check of the admin API: `Host`, `Origin`, then the token.
async fn authorize(
    State(access): State<Arc<AdminAccess>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host = text(header::HOST).unwrap_or_default();
    if !access.host_allowed(&host) {
        tracing::warn!("admin API: refused a request with Host `{host}`");
        return AdminError::ForeignHost(host).into_response();
    }
    // A page of this listener's own origin (the console) is not a foreign page.
    let own_origin = |origin: &str| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| authority.eq_ignore_ascii_case(&host))
    };
    if let Some(origin) = text(header::ORIGIN)
        && !access.origins.contains(&origin)
        && !own_origin(&origin)
    {
        tracing::warn!("admin API: refused a request from browser origin `{origin}`");
        return AdminError::ForeignOrigin(origin).into_response();
    }
    // The console's page holds no data: what it shows, it reads with the token.
    if request.uri().path() == CONSOLE {
        return next.run(request).await;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !access.token_matches(given) {
        return AdminError::Unauthorized.into_response();
    }
    next.run(request).await
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    let backends = state.deployments.backends();
    Json(Status {
        messaging: backends.bus.describe(),
        lattice: state.lattice.as_ref().map(|l| l.name().to_string()),
        keyvalue: backends.kv.describe(),
        events: backends.events.describe(),
    })
}

/// The latest failures of every live component, newest first.
async fn failures(State(state): State<AdminState>) -> Json<Vec<FailureInfo>> {
    let mut all: Vec<FailureInfo> = state
        .deployments
        .snapshot()
        .by_name
        .values()
        .flat_map(|d| {
            d.calls.recent_failures().into_iter().map(|f| FailureInfo {
                component: d.name.clone(),
                version: f.version,
                at_ms: f.at_ms,
                cause: f.cause,
            })
        })
        .collect();
    all.sort_by_key(|f| std::cmp::Reverse(f.at_ms));
    Json(all)
}

/// Where the operator console is served.
pub const CONSOLE: &str = "/console";

/// The operator console: one static page (embedded in the binary), which reads the
/// admin API with the token the operator gives it. The page holds no data, so
/// [`authorize`] serves it without the token (the `Host` check still applies).
async fn console() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
            ),
        ],
        include_str!("console.html"),
    )
        .into_response()
}

async fn list(State(state): State<AdminState>) -> Json<Vec<DeploymentInfo>> {
    Json(state.deployments.list())
}

async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<DeploymentInfo>, AdminError> {
    let snapshot = state.deployments.snapshot();
    let deployment = snapshot
        .by_name
        .get(&name)
        .ok_or(DeployError::NotFound(name))?;
    Ok(Json(deployment.info()))
}

/// `?wait=SECONDS`: how long a deploy to a lattice waits for every host's answer.
#[derive(Debug, serde::Deserialize)]
struct Wait {
    #[serde(rename = "wait")]
    seconds: Option<u64>,
}

/// A rollout's answer: `201` when every host took it, `200` when nothing changed,
/// `422` when a host refused it or did not answer (the body says which and why).
fn rollout_response(rollout: Rollout) -> Response {
    let status = if rollout.failures().next().is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if rollout.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(rollout)).into_response()
}

async fn lattice_view(State(state): State<AdminState>) -> Result<Json<LatticeView>, AdminError> {
    let lattice = state.lattice.as_ref().ok_or(AdminError::NoLattice)?;
    let view = lattice
        .view()
        .await
        .map_err(|e| AdminError::Lattice(format!("{e:#}")))?;
    Ok(Json(view))
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(wait): Query<Wait>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, AdminError> {
    // The permit is taken before the body is read, so waiting uploads hold no memory.
    let Ok(_permit) = state.deploys.clone().try_acquire_owned() else {
        return Err(AdminError::Busy(state.limits.max_concurrent_deploys));
    };
    let max = state.limits.max_upload_bytes;
    let wasm: Bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            AdminError::TooLarge(max)
        } else {
            AdminError::Upload(e.to_string())
        }
    })?;
    let spec: ComponentSpec = match headers.get(SPEC_HEADER) {
        None => ComponentSpec::default(),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|e| AdminError::BadSpec(e.to_string()))?;
            serde_json::from_str(text).map_err(|e| AdminError::BadSpec(e.to_string()))?
        }
    };
    let spec = spec.validate().map_err(DeployError::from)?;
    if let Some(lattice) = &state.lattice {
        crate::spec::validate_name(&name).map_err(DeployError::from)?;
        let wait = wait
            .seconds
            .map_or(ROLLOUT_WAIT, std::time::Duration::from_secs);
        let rollout = lattice
            .deploy(&name, spec, &wasm, wait)
            .await
            .map_err(|e| AdminError::Lattice(format!("{e:#}")))?;
        return Ok(rollout_response(rollout));
    }
    let deployed = state.deployments.deploy(&name, spec, wasm).await?;
    let status = if deployed.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployed.info)).into_response())
}

async fn undeploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(wait): Query<Wait>,
) -> Result<Response, AdminError> {
    if let Some(lattice) = &state.lattice {
        let wait = wait
            .seconds
            .map_or(ROLLOUT_WAIT, std::time::Duration::from_secs);
        if lattice
            .desired_of(&name)
            .await
            .map_err(|e| AdminError::Lattice(format!("{e:#}")))?
            .is_none()
        {
            return Err(DeployError::NotFound(name).into());
        }
        let rollout = lattice
            .undeploy(&name, wait)
            .await
            .map_err(|e| AdminError::Lattice(format!("{e:#}")))?;
        return Ok(rollout_response(rollout));
    }
    Ok(Json(state.deployments.undeploy(&name).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, hosts: &[&str]) -> AdminAccess {
        AdminAccess {
            listen: listen.parse().unwrap(),
            token: Some("s3cret".into()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            origins: vec![],
        }
    }

    #[test]
    fn host_must_name_the_listener() {
        let a = access("127.0.0.1:7070", &["admin.internal"]);
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "LOCALHOST",
            "admin.internal:7070",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "attacker.test",
            "10.0.0.1:7070",
            "",
            "a b",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let any = access("0.0.0.0:7070", &[]);
        assert!(any.host_allowed("10.0.0.1:7070"));
        assert!(
            !any.host_allowed("localhost:7070"),
            "localhost is for a loopback listener"
        );
        assert!(!any.host_allowed("rebind.example:7070"));
    }

    #[test]
    fn token_comparison() {
        let a = access("127.0.0.1:7070", &[]);
        assert!(a.token_matches(Some("s3cret")));
        assert!(!a.token_matches(Some("s3cre")));
        assert!(!a.token_matches(Some("s3cret ")));
        assert!(!a.token_matches(None));
        assert!(same_secret("", ""));
        let open = AdminAccess { token: None, ..a };
        assert!(open.token_matches(None));
    }
}
