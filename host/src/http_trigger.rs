//! HTTP flow, step 1 and 3: where a request enters (the listener), is admitted (route,
//! body and concurrency limits), runs in a fresh instance and becomes a response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::Frame;
use serde_json::json;
use wasmtime::Trap;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::deployment::Deployment;
use crate::deployments::Deployments;
use crate::instance::{deadline_for, with_guest_stderr};
use crate::router::Routed;

/// The axum app that serves every HTTP route of every deployment.
pub fn app(deployments: Arc<Deployments>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(deployments)
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
    /// The component did not answer within its deadline.
    Deadline { component: String },
    /// The component trapped or failed before answering. The cause is logged, and
    /// kept for the test harness; clients only see that it failed.
    GuestFailed { component: String, cause: String },
    /// The request cannot be handed to a component.
    BadRequest(String),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
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
            HttpError::Deadline { component } => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("component `{component}` did not answer in time"),
            ),
            HttpError::GuestFailed { component, .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("component `{component}` failed to handle the request"),
            ),
            HttpError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
        };
        let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
        match self {
            HttpError::Overloaded { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
    State(deployments): State<Arc<Deployments>>,
    request: Request,
) -> Result<Response, HttpError> {
    let snapshot = deployments.snapshot();
    let deployment = match snapshot
        .routes
        .lookup(request.method(), request.uri().path())
    {
        Routed::Found(route) => route.deployment.clone(),
        Routed::MethodNotAllowed(allow) => return Err(HttpError::MethodNotAllowed { allow }),
        Routed::NotFound => {
            return Err(HttpError::NotFound {
                method: request.method().clone(),
                path: request.uri().path().into(),
            });
        }
    };
    drop(snapshot);
    deployment.requests.fetch_add(1, Ordering::Relaxed);
    dispatch(&deployment, request).await
}

/// Runs one request through a fresh instance of `deployment`, applying its limits.
/// Also the in-process entry point of the component test harness.
pub async fn dispatch(
    deployment: &Arc<Deployment>,
    request: Request,
) -> Result<Response, HttpError> {
    let limit = deployment.spec.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
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

    let deadline = deadline_for(deployment);
    let exceeded = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| LimitedBody {
        inner: body,
        remaining: limit,
        exceeded: exceeded.clone(),
    });
    // A kept instance (with reuse) or a spare (without) if one is idle, else a fresh
    // store, instantiated below; then the next spare, if the pool wants one.
    let (mut store, warm) = deployment.instances.take(deployment, deadline, None);
    deployment.prepare_http_spare();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (wasi_request, out) = {
        let mut http = store.data_mut().http();
        let req = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| HttpError::BadRequest(format!("invalid request: {e}")))?;
        let out = http
            .new_response_outparam(sender)
            .map_err(|_| HttpError::BadRequest("invalid request".into()))?;
        (req, out)
    };

    let task_deployment = deployment.clone();
    let failed_midway = Arc::new(AtomicBool::new(false));
    let task_failed = failed_midway.clone();
    let instance = Box::pin(async move {
        let _permit = permit;
        let (proxy, uses) = match warm {
            Some((proxy, uses)) => (Some(proxy), uses),
            None => (None, 0),
        };
        let call = async {
            let proxy = match (proxy, &task_deployment.proxy) {
                (Some(proxy), _) => proxy,
                (None, Some(pre)) => pre.instantiate_async(&mut store).await?,
                (None, None) => anyhow::bail!("the component has no HTTP handler"),
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, wasi_request, out)
                .await?;
            anyhow::Ok(proxy)
        };
        // The deadline covers the whole instance, including a body still streaming
        // after the response head was sent; dropping the store ends the instance.
        let result = match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(result) => result,
            Err(_) => Err(Trap::Interrupt.into()),
        }
        .map_err(|error| with_guest_stderr(&store, error));
        match result {
            Ok(proxy) => {
                // The guest returned, so it has written all of its body: the instance
                // is free for the next request (if the component reuses instances).
                task_deployment.instances.put(store, proxy, uses);
                Ok(())
            }
            Err(error) => {
                // Set before the store (and with it the body's sender) is dropped, so a
                // body cut short reads as an error, not as a complete response.
                task_failed.store(true, Ordering::Release);
                log_failure(&task_deployment, &error);
                Err(error)
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
                log_failure(deployment, &error);
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
            let (head, body) = response.into_parts();
            match gather(body).await {
                Gathered::Complete(bytes) if !failed_midway.load(Ordering::Acquire) => {
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
            log_failure(deployment, &Trap::Interrupt.into());
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
    if is_deadline(error) {
        HttpError::Deadline { component }
    } else {
        HttpError::GuestFailed {
            component,
            cause: one_line(error),
        }
    }
}

fn is_deadline(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// The one log line for a failed instance: component, version and cause.
pub(crate) fn log_failure(deployment: &Deployment, error: &anyhow::Error) {
    deployment.errors.fetch_add(1, Ordering::Relaxed);
    let (name, version) = (&deployment.name, &deployment.version);
    if is_deadline(error) {
        let ms = deployment.spec.limits.timeout_ms;
        tracing::warn!(
            "component {name} {version}: instance stopped: deadline of {ms} ms exceeded"
        );
    } else {
        let cause = one_line(error);
        tracing::warn!("component {name} {version}: instance failed: {cause}");
    }
}

/// An instance failure on one line: wasmtime's messages carry the guest backtrace on
/// several lines. A missed deadline says so plainly.
pub(crate) fn one_line(error: &anyhow::Error) -> String {
    if is_deadline(error) {
        return "deadline exceeded".to_string();
    }
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// How long a response head waits for the rest of its body, and how much body it
/// waits for. A guest sets the head before it writes the body; sending the head at once
/// would cost one write (one packet) for the head and more for the body. Bodies that end
/// within the window go out with the head in one write, with a Content-Length.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);
const GATHER_MAX_BYTES: usize = 256 * 1024;

enum Gathered {
    /// The whole body.
    Complete(Bytes),
    /// Still going after the window or beyond the size: what came so far, and the rest.
    Streaming {
        pending: std::collections::VecDeque<Frame<Bytes>>,
        rest: HyperOutgoingBody,
    },
    /// The body broke off with an error.
    Failed,
}

/// Collects the guest's body for up to [`GATHER_WINDOW`] and [`GATHER_MAX_BYTES`].
async fn gather(mut body: HyperOutgoingBody) -> Gathered {
    use http_body_util::BodyExt;
    let mut pending = std::collections::VecDeque::new();
    let mut size = 0;
    let window = tokio::time::sleep(GATHER_WINDOW);
    tokio::pin!(window);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut window => return Gathered::Streaming { pending, rest: body },
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

/// The response body from the guest, after what [`gather`] collected: if the instance
/// fails before finishing it, the client sees a broken body rather than a clean,
/// truncated one.
struct GuardedBody {
    pending: std::collections::VecDeque<Frame<Bytes>>,
    inner: HyperOutgoingBody,
    failed: Arc<AtomicBool>,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) if this.failed.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the instance stopped before finishing the body".into(),
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
            && self.inner.is_end_stream()
            && !self.failed.load(Ordering::Acquire)
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
