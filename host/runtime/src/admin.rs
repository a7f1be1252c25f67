//! The admin API: deploy, list and undeploy components on a running host.
//! Loopback by default; any other bind address requires a bearer token.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;

pub use crate::api::SPEC_HEADER;
use crate::api::{DeploymentInfo, ErrorBody, Health, Status};
use crate::deploy::{DeployError, LiveSet};
use crate::spec::ComponentSpec;

/// Largest component accepted by the admin API.
const MAX_UPLOAD: usize = 512 << 20;

#[derive(Clone)]
struct AdminState {
    deployments: Arc<LiveSet>,
    token: Option<Arc<str>>,
}

/// The admin API's routes.
pub fn app(deployments: Arc<LiveSet>, token: Option<String>) -> Router {
    let state = AdminState {
        deployments,
        token: token.map(Into::into),
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
        .route("/v1/components", get(list))
        .route(
            "/v1/components/{name}",
            get(show).put(deploy).delete(undeploy),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// Errors at the admin API's edge.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token.
    #[error(
        "missing or wrong bearer token: pass the host's admin token (`--admin-token` or WEFT_ADMIN_TOKEN)"
    )]
    Unauthorized,
    /// The `weft-spec` header is not a valid spec.
    #[error("invalid `{SPEC_HEADER}` header: {0}")]
    BadSpec(String),
    /// The deploy or undeploy was refused.
    #[error(transparent)]
    Deploy(#[from] DeployError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadSpec(_) => StatusCode::BAD_REQUEST,
            AdminError::Deploy(DeployError::NotFound(_)) => StatusCode::NOT_FOUND,
            AdminError::Deploy(DeployError::RouteConflict(_)) => StatusCode::CONFLICT,
            AdminError::Deploy(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

async fn authorize(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(&**token) {
            return AdminError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(Status {
        messaging: state.deployments.backends().bus.describe(),
    })
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

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    wasm: Bytes,
) -> Result<Response, AdminError> {
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
) -> Result<Json<DeploymentInfo>, AdminError> {
    Ok(Json(state.deployments.undeploy(&name).await?))
}
