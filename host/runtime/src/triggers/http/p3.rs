//! HTTP flow for `wasi:http@0.3.0` components (the `wasi:http/service` world, export
//! `wasi:http/handler`: Spin 4's SDK, wasmCloud v2). Admission (route, body and
//! concurrency limits) is the same as for 0.2 (`mod.rs`); what differs is the call.
//!
//! A 0.3 call is a component-model async task that runs inside its store's event loop
//! (`Store::run_concurrent`), which must keep turning while the guest streams its body
//! after returning the response. wasmtime-wasi-http's [`ProxyHandler`] runs that loop
//! per instance (a *worker*) and hands it requests; weft supplies the instances and the
//! policy ([`Workers`]):
//!
//! - each worker's instance comes from the deployment's pool (a spare instantiated
//!   ahead of time when instances are fresh, as for 0.2), with its grants and memory cap;
//! - a worker takes up to `limits.max_concurrent_per_instance` requests at once and
//!   `limits.requests_per_instance` in all (both 1 by default: a fresh instance per
//!   request), and is dropped after any trap, with every request it was serving;
//! - each request has the component's deadline for its response head, and the guest's
//!   work after it (body, post-return tasks) the same again; the store's epoch deadline
//!   stops a guest spinning in wasm at the latest request's deadline;
//! - an idle worker ends after [`IDLE_INSTANCE_TTL`] or once its deployment is gone.

use crate::trace::CallTrace;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime::component::{GuestTaskId, InstancePre};
use wasmtime::{Store, StoreContextMut, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, Proxy, ProxyHandler, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use super::{HttpError, LimitedBody};
use crate::deployment::{Deployment, LinkedExport};
use crate::instance::{Entry, IDLE_INSTANCE_TTL, IdleBudget, InstancePool, Pre};
use crate::spec::ValidSpec;
use crate::store_data::{CallContext, StoreData};

/// How often an idle worker checks whether its deployment is still there.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What a deploy shows for a component with this handler.
pub const HANDLER: &str = "wasi:http/handler@0.3.0";

impl Pre for ServicePre<StoreData> {
    type Exports = Service;

    fn instantiate_async<'a>(
        &'a self,
        store: &'a mut Store<StoreData>,
    ) -> BoxFuture<'a, wasmtime::Result<Service>> {
        Box::pin(ServicePre::instantiate_async(self, store))
    }
}

/// A deployment's `wasi:http/handler` export: the pre-instance with its pool (spares,
/// when instances are fresh), and the workers serving requests, started with the
/// first request (they need the deployment, which does not exist yet at link time).
pub struct ServiceExport {
    entry: Entry<ServicePre<StoreData>>,
    workers: OnceLock<ProxyHandler<Workers>>,
}

impl ServiceExport {
    /// The component's `wasi:http/handler`, if it exports it.
    pub fn link(
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        budget: &Arc<IdleBudget>,
    ) -> Option<ServiceExport> {
        let pre = ServicePre::new(pre.clone()).ok()?;
        let limits = &spec.limits;
        let pool = InstancePool::new(
            limits.requests_per_instance,
            limits.max_concurrency,
            budget.clone(),
        );
        Some(ServiceExport {
            entry: Entry { pre, pool },
            workers: OnceLock::new(),
        })
    }
}

impl LinkedExport for ServiceExport {
    fn expire(&self, idle_for: Duration) -> usize {
        self.entry.pool.expire(idle_for)
    }

    fn idle(&self) -> usize {
        self.entry.pool.idle()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Runs one admitted request (its body already limited, its concurrency permit held)
/// through a worker of `deployment`.
pub(super) async fn dispatch(
    deployment: &Arc<Deployment>,
    export: &ServiceExport,
    request: http::Request<LimitedBody>,
    exceeded: Arc<AtomicBool>,
    permit: OwnedSemaphorePermit,
    grpc: Option<String>,
    trace: Option<CallTrace>,
) -> Result<Response, HttpError> {
    let workers = export.workers.get_or_init(|| {
        ProxyHandler::new(Workers {
            deployment: Arc::downgrade(deployment),
        })
    });
    let request = with_absolute_uri(request).map(|body| body.boxed_unsync());
    let (failed_tx, failed_rx) = oneshot::channel();
    let limit = deployment.spec.limits.max_body_bytes;
    let component = || deployment.name.clone();
    let taken = Taken {
        failed: failed_tx,
        trace,
    };
    match workers.handle(taken, request).await {
        Ok(response) => {
            // As for 0.2: a body that ends at once goes out with the head, in one write.
            let (head, body) = response.into_parts();
            match super::gather(body).await {
                super::Gathered::Complete(bytes) => {
                    Ok(Response::from_parts(head, Body::from(bytes)))
                }
                // The head is not sent yet, so the client gets a proper error.
                super::Gathered::Failed => Err(HttpError::GuestFailed {
                    component: component(),
                    cause: "the guest's body broke off".into(),
                }),
                // The permit is held until the guest's body has been sent.
                super::Gathered::Streaming { pending, rest } => Ok(Response::from_parts(
                    head,
                    Body::new(Permitted {
                        pending,
                        inner: rest,
                        grpc,
                        ended: false,
                        _permit: permit,
                    }),
                )),
            }
        }
        Err(error) => {
            if let Some(code) = error.downcast_ref::<ErrorCode>() {
                if exceeded.load(Ordering::Relaxed) {
                    return Err(HttpError::PayloadTooLarge { limit });
                }
                tracing::warn!(component = %deployment.name, version = %deployment.version, "guest answered with error code {code:?}");
                return Err(HttpError::GuestFailed {
                    component: component(),
                    cause: format!("the guest answered with error code {code:?}"),
                });
            }
            if error.is::<ExpirationError>() {
                crate::failure::log(deployment, &Trap::Interrupt.into());
                return Err(HttpError::Deadline {
                    component: component(),
                });
            }
            if let Some(failed) = error.downcast_ref::<InstantiationError<Failed>>() {
                let host_full = failed
                    .error
                    .chain()
                    .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>());
                let error = anyhow::Error::msg(format!("{:#}", failed.error));
                crate::failure::log(deployment, &error);
                return Err(if host_full {
                    HttpError::HostFull
                } else {
                    super::classify(deployment, &error)
                });
            }
            if error.is::<TrapOrPanicError>() {
                // The worker logged the cause and says what it was.
                return Err(failed_rx.await.unwrap_or(HttpError::GuestFailed {
                    component: component(),
                    cause: "the instance failed".into(),
                }));
            }
            let error = anyhow::Error::from(error);
            crate::failure::log(deployment, &error);
            Err(super::classify(deployment, &error))
        }
    }
}

/// The request with `http://HOST` (`https://` over TLS) in front of its path, as 0.3
/// guests read the scheme and authority from the URI (0.2's are set from the
/// connection). HTTP/2 requests have both already.
fn with_absolute_uri<B>(request: http::Request<B>) -> http::Request<B> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.authority().is_none()
        && let Some(host) = parts.headers.get(http::header::HOST)
        && let Ok(host) = host.to_str()
    {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = if parts.extensions.get::<crate::listener::Tls>().is_some() {
            "https"
        } else {
            "http"
        };
        if let Ok(uri) = format!("{scheme}://{host}{path}").parse() {
            parts.uri = uri;
        }
    }
    http::Request::from_parts(parts, body)
}

/// Where a request is told why its worker failed, if it did while serving it.
type Failed = oneshot::Sender<HttpError>;

/// A request a worker takes: how to tell it the worker failed, and its span.
struct Taken {
    failed: Failed,
    trace: Option<CallTrace>,
}

/// The response body from the guest, after what `gather` collected, holding the
/// component's concurrency permit.
struct Permitted {
    pending: std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>,
    inner: wasmtime_wasi_http::WasiBody,
    /// The component's name, on a gRPC call: a failure ends the body with trailers.
    grpc: Option<String>,
    /// Set once the failure's trailers are out.
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(frame) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(_))) if self.grpc.is_some() => {
                self.ended = true;
                let component = self.grpc.take().unwrap_or_default();
                Poll::Ready(Some(Ok(super::grpc::failed_trailers(&component, false))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && (self.ended || self.inner.is_end_stream())
    }
}

/// weft's side of [`ProxyHandler`]: where a worker's instance comes from.
struct Workers {
    deployment: Weak<Deployment>,
}

impl HandlerState for Workers {
    type StoreData = StoreData;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<StoreData, Expiry, Worker>> {
        let deployment = self
            .deployment
            .upgrade()
            .ok_or_else(|| wasmtime::format_err!("the component was undeployed"))?;
        let export = deployment
            .linked::<ServiceExport>()
            .ok_or_else(|| wasmtime::format_err!("the component has no wasi:http/handler"))?;
        let call = CallContext {
            deadline: deployment.deadline(),
            reply_to: None,
            delivery: None,
            // Set per request as the worker takes it (`on_request_start`).
            trace: None,
        };
        let (store, service) = match export.entry.pool.take() {
            Some((mut store, service, _)) => {
                StoreData::rearm(&mut store, call);
                (store, service)
            }
            None => {
                let mut store = deployment.new_store(call);
                let service = export.entry.pre.instantiate_async(&mut store).await?;
                (store, service)
            }
        };
        crate::call::prepare_spare::<ServicePre<StoreData>>(&deployment);
        let limits = &deployment.spec.limits;
        let timeout = Duration::from_millis(limits.timeout_ms);
        let stream = Duration::from_millis(limits.stream_timeout_ms);
        let expired = Arc::new(AtomicBool::new(false));
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: <StoreData as WasiHttpView>::http,
            expiration: Expiry {
                timeout,
                stream,
                deployment: self.deployment.clone(),
                expired: expired.clone(),
                timer: Box::pin(tokio::time::sleep(timeout)),
            },
            state: Worker {
                deployment: self.deployment.clone(),
                timeout,
                stream,
                max_concurrent: limits.max_concurrent_per_instance as usize,
                max_requests: limits.requests_per_instance as usize,
                serving: Mutex::new(Vec::new()),
                expired,
            },
        })
    }
}

/// One worker's policy: how many requests it takes, each request's deadline, and what
/// happens when it ends.
struct Worker {
    deployment: Weak<Deployment>,
    timeout: Duration,
    /// `stream_timeout_ms`: how much longer a response body may stream after its head.
    stream: Duration,
    max_concurrent: usize,
    max_requests: usize,
    /// The requests it took, to tell them why if it fails (answered ones are closed).
    serving: Mutex<Vec<Failed>>,
    /// Whether [`Expiry`] ended it (a missed deadline) rather than a trap.
    expired: Arc<AtomicBool>,
}

impl WorkerState for Worker {
    type StoreData = StoreData;
    type RequestData = Taken;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, StoreData>,
        taken: Taken,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let deadline = Instant::now() + self.timeout;
        // The epoch deadline also covers the body streaming after the head.
        store.data_mut().extend_deadline(deadline + self.stream);
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving.retain(|tx| !tx.is_closed());
        serving.push(taken.failed);
        // What the guest sends out belongs to this request's span only while it is the
        // one request in the instance (`max_concurrent_per_instance` 1, the default):
        // with several at once, a host call cannot tell whose it is.
        let alone = serving.len() == 1;
        store.data_mut().set_trace(taken.trace.filter(|_| alone));
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn drop(&self, store: Store<StoreData>, result: wasmtime::Result<()>) {
        let Err(error) = result else { return };
        let Some(deployment) = self.deployment.upgrade() else {
            return;
        };
        if !std::thread::panicking() && error.to_string() == "worker panicked" {
            // Not a panic: its task was dropped, as the runtime is when the host stops.
            tracing::debug!(component = %deployment.name, "instance stopped with the host");
            return;
        }
        let error = if self.expired.load(Ordering::Acquire) {
            // Each request it was serving has been told and counted (ExpirationError).
            tracing::debug!(component = %deployment.name, "instance stopped after a missed deadline");
            Trap::Interrupt.into()
        } else {
            let error = crate::failure::with_guest_stderr(store.data(), error.into());
            crate::failure::log(&deployment, &error);
            error
        };
        let serving = std::mem::take(&mut *self.serving.lock().unwrap_or_else(|e| e.into_inner()));
        for failed in serving {
            let _ = failed.send(super::classify(&deployment, &error));
        }
    }
}

/// When a worker must end, checked from outside its event loop (which a guest spinning
/// in wasm, or a blocking host call, keeps from turning): `timeout` after the latest
/// request it took (or after its last response, for the guest's work after it), or,
/// idle, after [`IDLE_INSTANCE_TTL`] or once its deployment is gone.
struct Expiry {
    timeout: Duration,
    stream: Duration,
    deployment: Weak<Deployment>,
    expired: Arc<AtomicBool>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let until = match status {
            WorkerStatus::Idle if self.deployment.strong_count() == 0 => return Poll::Ready(()),
            // Looked at again every second, so an undeployed version's idle instances
            // give their slots back soon.
            WorkerStatus::Idle => (start + IDLE_INSTANCE_TTL).min(Instant::now() + IDLE_CHECK),
            WorkerStatus::Requests => start + self.timeout,
            WorkerStatus::PostReturn => start + self.timeout + self.stream,
        };
        if self.timer.deadline() != until.into() {
            self.timer.as_mut().reset(until.into());
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) if status == WorkerStatus::Idle => {
                if Instant::now() >= start + IDLE_INSTANCE_TTL
                    || self.deployment.strong_count() == 0
                {
                    return Poll::Ready(());
                }
                // Not yet: wait for the next check.
                let next = (start + IDLE_INSTANCE_TTL).min(Instant::now() + IDLE_CHECK);
                self.timer.as_mut().reset(next.into());
                let _ = self.timer.as_mut().poll(cx);
                Poll::Pending
            }
            Poll::Ready(()) => {
                self.expired.store(true, Ordering::Release);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
