//! HTTP flow, steps 1 and 3: where a request enters (the listener's app), is admitted
//! (route, body and concurrency limits), runs through the call path in a fresh instance
//! and becomes a response. Routing (step 2) is `router.rs`.

pub mod grpc;
pub mod p3;
pub mod router;

use opentelemetry::KeyValue;

use crate::trace::{CallKind, CallTrace};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::Frame;
use serde_json::json;
use wasmtime::component::{InstancePre, Resource};
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use self::router::{RouteTable, Routed};
use super::{Attachment, Trigger};
use crate::call::{Call, Invoke};
use crate::deployment::{DeployError, Deployment, LinkedExport, Snapshot};
use crate::instance::{Entry, IdleBudget, InstancePool, Pre};
use crate::metrics::{self, HostMetrics};
use crate::spec::{ComponentSpec, ValidSpec};
use crate::store_data::StoreData;

impl Pre for ProxyPre<StoreData> {
    type Exports = Proxy;

    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<Proxy>> {
        Box::pin(ProxyPre::instantiate_async(self, store))
    }
}

/// Idle HTTP instances (kept or spare) of `deployment` right now.
pub fn idle_instances(deployment: &Deployment) -> usize {
    match deployment.linked::<p3::ServiceExport>() {
        Some(service) => service.idle(),
        None => deployment
            .export::<ProxyPre<StoreData>>()
            .map_or(0, |e| e.pool.idle()),
    }
}

/// The 0.2 handler, as a deploy shows it.
pub const P2_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// Which HTTP handler `deployment` exports, if any: [`P2_HANDLER`] or [`p3::HANDLER`].
pub fn handler_kind(deployment: &Deployment) -> Option<&'static str> {
    if deployment.export::<ProxyPre<StoreData>>().is_some() {
        Some(P2_HANDLER)
    } else if deployment.linked::<p3::ServiceExport>().is_some() {
        Some(p3::HANDLER)
    } else {
        None
    }
}

/// The HTTP trigger: the route table of every live deployment, rebuilt whenever the live
/// set changes.
#[derive(Debug)]
pub struct HttpTrigger {
    routes: ArcSwap<RouteTable>,
    /// Where upgrades on WebSocket routes go.
    websocket: Arc<super::websocket::WebSocketTrigger>,
    /// Where requests no route matches are counted.
    metrics: Arc<HostMetrics>,
}

impl HttpTrigger {
    /// A trigger with no routes yet, handing WebSocket upgrades to `websocket`.
    pub fn new(
        websocket: Arc<super::websocket::WebSocketTrigger>,
        metrics: Arc<HostMetrics>,
    ) -> HttpTrigger {
        HttpTrigger {
            routes: ArcSwap::default(),
            websocket,
            metrics,
        }
    }

    /// What the HTTP listener serves: every route of every deployment.
    pub fn app(self: &Arc<Self>) -> crate::listener::App {
        let trigger = self.clone();
        crate::listener::App::new(move |request| {
            let trigger = trigger.clone();
            Box::pin(async move { handle_any(&trigger, request).await })
        })
    }
}

impl Trigger for HttpTrigger {
    fn export(&self) -> &'static str {
        "wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3.0"
    }

    /// The component's `wasi:http/incoming-handler` (0.2), with a pool of up to one
    /// idle instance per request it may run at once, or its `wasi:http/handler` (0.3).
    fn link(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Result<Option<Box<dyn LinkedExport>>, DeployError> {
        let Ok(pre) = ProxyPre::new(pre.clone()) else {
            if let Some(service) = p3::ServiceExport::link(pre, spec, budget) {
                return Ok(Some(Box::new(service)));
            }
            // WebSocket routes need the messaging handler instead (`websocket.rs`).
            if spec.routes.iter().any(|r| !r.websocket) {
                return Err(DeployError::WrongWorld(format!(
                    "the component exports no HTTP handler, so it cannot serve HTTP routes (weft serves `wasi:http/incoming-handler@0.2.x`, the `wasi:http/proxy` world, and `wasi:http/handler@0.3.0`, the `wasi:http/service` world): {}",
                    crate::deployment::what_it_exports(pre)
                )));
            }
            return Ok(None);
        };
        let limits = &spec.limits;
        let pool = InstancePool::new(
            limits.requests_per_instance,
            limits.max_concurrency,
            budget.clone(),
        );
        Ok(Some(Box::new(Entry { pre, pool })))
    }

    /// Refuses routes that clash with another component's.
    fn check(&self, live: &Snapshot, name: &str, spec: &ValidSpec) -> Result<(), DeployError> {
        let mut specs: Vec<(&str, &ComponentSpec)> = vec![(name, spec)];
        specs.extend(
            live.by_name
                .values()
                .filter(|d| d.name != name)
                .map(|d| (d.name.as_str(), &*d.spec)),
        );
        crate::spec::route::check_conflicts(&specs).map_err(DeployError::RouteConflict)
    }

    fn attach<'a>(
        &'a self,
        _deployment: &'a Arc<Deployment>,
    ) -> BoxFuture<'a, Result<Attachment, DeployError>> {
        // Requests find a deployment through the route table, rebuilt in `went_live`.
        Box::pin(async { Ok(Attachment::none()) })
    }

    fn went_live(&self, live: &Snapshot) {
        self.routes
            .store(Arc::new(RouteTable::build(live.by_name.values())));
    }
}

/// Everything a client can be told instead of the guest's own response.
#[derive(Debug)]
pub enum HttpError {
    /// No route matches the path.
    NotFound { method: Method, path: String },
    /// A route matches the path but not the method.
    MethodNotAllowed { allow: Vec<Method> },
    /// Body larger than the component's limit.
    PayloadTooLarge { limit: u64 },
    /// All of the component's instances are busy.
    Overloaded { component: String },
    /// The host has no free instance slot for any component.
    HostFull,
    /// The component did not answer within its deadline.
    Deadline { component: String },
    /// The component did not answer within the client's `grpc-timeout`.
    ClientDeadline(std::time::Duration),
    /// The component trapped or failed before answering. The cause is logged, and
    /// kept for the test harness; clients only see that it failed.
    GuestFailed { component: String, cause: String },
    /// The request cannot be handed to a component.
    BadRequest(String),
    /// A WebSocket route got a request that is not a valid upgrade.
    UpgradeRequired(String),
    /// The request is not allowed (a WebSocket upgrade from a foreign origin).
    Forbidden(String),
}

impl HttpError {
    /// The HTTP status and the message a client is told.
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            HttpError::NotFound { method, path } => (
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
            ),
            HttpError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this route".to_string(),
            ),
            HttpError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {limit} bytes"),
            ),
            HttpError::Overloaded { component } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("component `{component}` is at its concurrency limit, retry later"),
            ),
            HttpError::HostFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the host is running as many instances as it may, retry later".to_string(),
            ),
            HttpError::Deadline { component } => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("component `{component}` did not answer in time"),
            ),
            HttpError::ClientDeadline(timeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer within the client's grpc-timeout of {timeout:?}"),
            ),
            HttpError::GuestFailed { component, .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("component `{component}` failed to handle the request"),
            ),
            HttpError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
            HttpError::Forbidden(why) => (StatusCode::FORBIDDEN, why.clone()),
            HttpError::UpgradeRequired(why) => (
                StatusCode::UPGRADE_REQUIRED,
                format!("this is a WebSocket route: {why}"),
            ),
        }
    }

    /// What a client is told.
    pub fn message(&self) -> String {
        self.status_and_message().1
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
        match self {
            HttpError::Overloaded { .. } | HttpError::HostFull => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            HttpError::UpgradeRequired(_) => {
                response
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            HttpError::MethodNotAllowed { allow } => {
                let allow = allow
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }
}

async fn handle(
    trigger: &HttpTrigger,
    request: Request,
    grpc: bool,
) -> Result<Response, HttpError> {
    let routes = trigger.routes.load();
    let (deployment, websocket, route) = match routes.lookup(request.method(), request.uri().path())
    {
        Routed::Found(route) => {
            // The route names the request's span: copied only while traces are on.
            let path = if route.deployment.grants.tracing.is_some() {
                route.path.clone()
            } else {
                String::new()
            };
            (route.deployment.clone(), route.websocket, path)
        }
        Routed::MethodNotAllowed(allow) => {
            trigger.metrics.unrouted();
            return Err(HttpError::MethodNotAllowed { allow });
        }
        Routed::NotFound => {
            trigger.metrics.unrouted();
            return Err(HttpError::NotFound {
                method: request.method().clone(),
                path: request.uri().path().into(),
            });
        }
    };
    drop(routes);
    if websocket {
        return trigger.websocket.upgrade(&deployment, request).await;
    }
    deployment.requests.fetch_add(1, Ordering::Relaxed);
    let recording = deployment.calls.start(metrics::Trigger::Http);
    let declared = content_length(&request);
    let trace = deployment.grants.tracing.as_ref().and_then(|tracing| {
        let method = request.method().as_str();
        let headers = request.headers().iter();
        let trace = tracing.call(
            CallKind::Http,
            || format!("{method} {route}"),
            &deployment.name,
            &deployment.version,
            headers.filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        )?;
        trace.set(|| KeyValue::new("http.request.method", method.to_string()));
        trace.set(|| KeyValue::new("http.route", route));
        Some(trace)
    });
    let result = dispatch_traced(&deployment, request, grpc, trace.clone()).await;
    let counted = outcome(&result);
    recording.finish(counted);
    if let Some(trace) = trace {
        let error = result.as_ref().err().map(|e| format!("{e:?}"));
        if let Ok(response) = &result {
            let status = i64::from(response.status().as_u16());
            trace.set(|| KeyValue::new("http.response.status_code", status));
        }
        trace.finish(counted.as_str(), error.as_deref());
    }
    let sent = result
        .as_ref()
        .ok()
        .and_then(|r| hyper::body::Body::size_hint(r.body()).exact());
    deployment.calls.body_sizes(declared, sent);
    result
}

/// A request's declared body length.
fn content_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// How a request ended, as `/metrics` counts it.
fn outcome(result: &Result<Response, HttpError>) -> metrics::Outcome {
    use metrics::Outcome;
    match result {
        Ok(response) if response.status().is_server_error() => Outcome::GuestError,
        Ok(_) => Outcome::Ok,
        Err(HttpError::Deadline { .. } | HttpError::ClientDeadline(_)) => Outcome::Deadline,
        Err(HttpError::GuestFailed { .. }) => Outcome::Trap,
        Err(HttpError::Overloaded { .. } | HttpError::HostFull) => Outcome::Overload,
        Err(
            HttpError::PayloadTooLarge { .. }
            | HttpError::BadRequest(_)
            | HttpError::Forbidden(_)
            | HttpError::UpgradeRequired(_)
            | HttpError::NotFound { .. }
            | HttpError::MethodNotAllowed { .. },
        ) => Outcome::Denied,
    }
}

/// Where every request to the HTTP listener enters. gRPC calls get the host's errors as
/// gRPC statuses.
async fn handle_any(trigger: &HttpTrigger, request: Request) -> Response {
    if !grpc::is_grpc(request.headers()) {
        return handle(trigger, request, false)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let timeout = grpc::timeout(request.headers());
    let call = handle(trigger, request, true);
    let result = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::ClientDeadline(timeout)),
        },
        None => call.await,
    };
    result.unwrap_or_else(HttpError::into_grpc_response)
}

/// Runs one request through a fresh instance of `deployment`, applying its limits.
/// Also the in-process entry point of the component test harness.
pub async fn dispatch(
    deployment: &Arc<Deployment>,
    request: Request,
) -> Result<Response, HttpError> {
    let grpc = grpc::is_grpc(request.headers());
    dispatch_traced(deployment, request, grpc, None).await
}

/// [`dispatch`] as a call of the span `trace`, when traces are on; `grpc` if the
/// request is a gRPC call.
async fn dispatch_traced(
    deployment: &Arc<Deployment>,
    request: Request,
    grpc: bool,
    trace: Option<CallTrace>,
) -> Result<Response, HttpError> {
    let limit = deployment.spec.limits.max_body_bytes;
    let declared = content_length(&request);
    if declared.is_some_and(|len| len > limit) {
        return Err(HttpError::PayloadTooLarge { limit });
    }
    let permit = deployment
        .concurrency
        .clone()
        .try_acquire_owned()
        .map_err(|_| HttpError::Overloaded {
            component: deployment.name.clone(),
        })?;

    // A gRPC response that fails midway ends with an INTERNAL status in its trailers.
    let grpc = grpc.then(|| deployment.name.clone());
    let exceeded = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| LimitedBody {
        inner: body,
        remaining: limit,
        exceeded: exceeded.clone(),
    });
    if let Some(service) = deployment.linked::<p3::ServiceExport>() {
        if let Some(trace) = &trace {
            trace.set(|| KeyValue::new("weft.http.handler", "wasi:http@0.3.0"));
        }
        return p3::dispatch(deployment, service, request, exceeded, permit, grpc, trace).await;
    }
    // A kept instance (with reuse) or a spare (without) if one is idle, else a fresh
    // store, instantiated in `run`; then the next spare, if the pool wants one.
    let Some(mut call) = Call::<ProxyPre<StoreData>>::begin(deployment, None, trace.clone()) else {
        return Err(HttpError::GuestFailed {
            component: deployment.name.clone(),
            cause: "the component has no HTTP handler".into(),
        });
    };
    if let Some(trace) = &trace {
        trace.instance(call.is_warm());
    }
    let deadline = call.deadline();
    let shared_deadline = call.store_mut().data().deadline();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let scheme = if request.extensions().get::<crate::listener::Tls>().is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let (wasi_request, out) = {
        let mut http = call.store_mut().data_mut().http();
        let req = http
            .new_incoming_request(scheme, request)
            .map_err(|e| HttpError::BadRequest(format!("invalid request: {e}")))?;
        let out = http
            .new_response_outparam(sender)
            .map_err(|_| HttpError::BadRequest("invalid request".into()))?;
        (req, out)
    };

    let failed_midway = Arc::new(AtomicU8::new(RUNNING));
    let task_failed = failed_midway.clone();
    let instance = Box::pin(async move {
        let _permit = permit;
        match call
            .run(HandleRequest {
                request: wasi_request,
                out,
            })
            .await
        {
            // The guest returned, so it has written all of its body; the call path has
            // put the instance back for the next request (if the component reuses them).
            Ok(()) => Ok(()),
            Err(failure) => {
                // Set before the store (and with it the body's sender) is dropped, so a
                // body cut short reads as an error, not as a complete response.
                let how = if crate::failure::is_deadline(&failure.error) {
                    MISSED_DEADLINE
                } else {
                    FAILED
                };
                task_failed.store(how, Ordering::Release);
                Err(failure.error)
            }
        }
    });

    // Run the instance right here until it sets its response: most guests finish the
    // whole body before this returns, and no task, no wake-up of another thread is
    // needed. One still writing its body then gets a task of its own.
    let (outcome, task) = {
        let mut instance = RunToCompletion(Some(instance));
        let mut finished = None;
        let receive = tokio::time::timeout_at(deadline.into(), receiver);
        tokio::pin!(receive);
        let outcome = loop {
            tokio::select! {
                biased;
                result = instance.running(), if finished.is_none() => {
                    instance.0 = None;
                    finished = Some(result);
                }
                outcome = &mut receive => break outcome,
            }
        };
        let task = match (finished, instance.0.take()) {
            (Some(result), _) => Instance::Finished(result),
            (None, Some(running)) => Instance::Running(tokio::spawn(running)),
            (None, None) => Instance::Finished(Err(anyhow::anyhow!("the instance vanished"))),
        };
        (outcome, task)
    };
    let failed = |task: Instance| async move {
        let result = match task {
            Instance::Finished(result) => result,
            Instance::Running(task) => task
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the instance task failed: {e}"))),
        };
        let error = match result {
            Ok(()) => {
                let error = anyhow::anyhow!("the guest returned without setting a response");
                crate::failure::log(deployment, &error);
                error
            }
            Err(e) => e,
        };
        Err(classify(deployment, &error))
    };
    match outcome {
        Ok(Ok(Ok(response))) => {
            if exceeded.load(Ordering::Relaxed) {
                return Err(HttpError::PayloadTooLarge { limit });
            }
            // The head is out: a streaming component's body may go on for longer.
            let stream = deployment.spec.limits.stream_timeout_ms;
            if stream > 0 {
                shared_deadline.extend_to(
                    std::time::Instant::now() + std::time::Duration::from_millis(stream),
                );
            }
            let (head, body) = response.into_parts();
            match gather(body).await {
                Gathered::Complete(bytes) if failed_midway.load(Ordering::Acquire) == RUNNING => {
                    Ok(Response::from_parts(head, Body::from(bytes)))
                }
                // The instance failed before finishing: the head is not sent yet, so
                // the client gets a proper error instead of a broken body.
                Gathered::Complete(_) | Gathered::Failed => failed(task).await,
                Gathered::Streaming { pending, rest } => Ok(Response::from_parts(
                    head,
                    Body::new(GuardedBody {
                        pending,
                        inner: rest,
                        failed: failed_midway,
                        grpc,
                        ended: false,
                    }),
                )),
            }
        }
        Ok(Ok(Err(code))) => {
            tracing::warn!(component = %deployment.name, version = %deployment.version, "guest answered with error code {code:?}");
            if exceeded.load(Ordering::Relaxed) {
                return Err(HttpError::PayloadTooLarge { limit });
            }
            Err(HttpError::GuestFailed {
                component: deployment.name.clone(),
                cause: format!("the guest answered with error code {code:?}"),
            })
        }
        Ok(Err(_dropped)) => failed(task).await,
        Err(_elapsed) => {
            if let Instance::Running(task) = task {
                task.abort();
            }
            crate::failure::log(deployment, &Trap::Interrupt.into());
            Err(HttpError::Deadline {
                component: deployment.name.clone(),
            })
        }
    }
}

/// The call into an instance while it runs on the request's own task. If the request
/// is dropped (the client went away), the instance still runs to completion, on a task
/// of its own, as it would had it been spawned from the start.
struct RunToCompletion(Option<Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>>);

impl RunToCompletion {
    async fn running(&mut self) -> anyhow::Result<()> {
        match self.0.as_mut() {
            Some(call) => call.await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for RunToCompletion {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            tokio::spawn(call);
        }
    }
}

/// An instance after its response head: done, or still writing its body in a task.
enum Instance {
    Finished(anyhow::Result<()>),
    Running(tokio::task::JoinHandle<anyhow::Result<()>>),
}

/// What the client is told about a failed instance.
fn classify(deployment: &Deployment, error: &anyhow::Error) -> HttpError {
    let component = deployment.name.clone();
    if crate::failure::is_host_full(error) {
        HttpError::HostFull
    } else if crate::failure::is_deadline(error) {
        HttpError::Deadline { component }
    } else {
        HttpError::GuestFailed {
            component,
            cause: crate::failure::one_line(error),
        }
    }
}

/// A call of `incoming-handler.handle`.
struct HandleRequest {
    request: Resource<HostIncomingRequest>,
    out: Resource<HostResponseOutparam>,
}

impl Invoke<Proxy> for HandleRequest {
    type Output = ();

    fn invoke<'a>(
        self,
        proxy: &'a Proxy,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<()>> {
        Box::pin(
            proxy
                .wasi_http_incoming_handler()
                .call_handle(store, self.request, self.out),
        )
    }
}

/// How long a response head waits for the rest of its body, and how much body it
/// waits for. A guest sets the head before it writes the body; sending the head at once
/// would cost one write (one packet) for the head and more for the body. Bodies that end
/// within the window go out with the head in one write, with a Content-Length.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);
const GATHER_MAX_BYTES: usize = 256 * 1024;

enum Gathered<B> {
    /// The whole body.
    Complete(Bytes),
    /// Still going after the window or beyond the size: what came so far, and the rest.
    Streaming {
        pending: std::collections::VecDeque<Frame<Bytes>>,
        rest: B,
    },
    /// The body broke off with an error.
    Failed,
}

/// Collects the guest's body (0.2 or 0.3) for up to [`GATHER_WINDOW`] and
/// [`GATHER_MAX_BYTES`].
async fn gather<B>(mut body: B) -> Gathered<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    use futures::FutureExt;
    use http_body_util::BodyExt;
    let mut pending = std::collections::VecDeque::new();
    let mut size = 0;
    // Made only once the body has to be waited for: most guests have written it all.
    let mut window = None;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                let window = window
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(GATHER_WINDOW)))
                    .as_mut();
                tokio::select! {
                    biased;
                    frame = body.frame() => frame,
                    () = window => return Gathered::Streaming { pending, rest: body },
                }
            }
        };
        match frame {
            None => {
                let mut all = bytes::BytesMut::with_capacity(size);
                for frame in pending {
                    if let Ok(data) = frame.into_data() {
                        all.extend_from_slice(&data);
                    }
                }
                return Gathered::Complete(all.freeze());
            }
            Some(Ok(frame)) => {
                let trailers = frame.is_trailers();
                size += frame.data_ref().map_or(0, Bytes::len);
                pending.push_back(frame);
                if trailers || size > GATHER_MAX_BYTES {
                    return Gathered::Streaming {
                        pending,
                        rest: body,
                    };
                }
            }
            Some(Err(_)) => return Gathered::Failed,
        }
    }
}

/// How an instance writing a response body is doing (in [`GuardedBody`]'s `failed`).
const RUNNING: u8 = 0;
const FAILED: u8 = 1;
const MISSED_DEADLINE: u8 = 2;

/// The response body from the guest, after what [`gather`] collected: if the instance
/// fails before finishing it, the client sees a broken body rather than a clean,
/// truncated one.
struct GuardedBody {
    pending: std::collections::VecDeque<Frame<Bytes>>,
    inner: HyperOutgoingBody,
    failed: Arc<AtomicU8>,
    /// The component's name, on a gRPC call: a failure ends the body with trailers.
    grpc: Option<String>,
    /// Set once the failure is reported.
    ended: bool,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        // The instance failed before finishing the body.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) if this.failed.load(Ordering::Acquire) != RUNNING => {}
            Poll::Ready(Some(Err(_))) if this.grpc.is_some() => {}
            other => return other,
        }
        this.ended = true;
        Poll::Ready(Some(match this.grpc.take() {
            Some(component) => Ok(grpc::failed_trailers(
                &component,
                this.failed.load(Ordering::Acquire) == MISSED_DEADLINE,
            )),
            None => Err(wasmtime_wasi_http::Error::InternalError(Some(
                "the instance stopped before finishing the body".into(),
            ))),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
            && (self.ended
                || (self.inner.is_end_stream() && self.failed.load(Ordering::Acquire) == RUNNING))
    }
}

/// The request body handed to the guest, cut off after the component's byte limit.
struct LimitedBody {
    inner: Body,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl hyper::body::Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    this.exceeded.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                        None,
                    ))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(
                wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
