//! The accept loop of the HTTP and admin listeners: where a connection enters the host.
//! Each connection speaks HTTP/1.1 or HTTP/2 (h2c with prior knowledge on plain TCP; by
//! ALPN under TLS, when the listener has a certificate), and components see the same
//! `wasi:http` request either way.
//!
//! Bounded against slow and hostile clients: at most `max_connections` at once (more are
//! closed on accept); a connection's first request (or, under TLS, its handshake) must
//! arrive within `header_timeout`, which also bounds an HTTP/1.1 request's headers and
//! closes a keep-alive connection idle that long; an HTTP/2 connection with no open
//! stream for `idle_timeout` is sent GOAWAY; a connection has at most
//! `max_streams_per_connection` streams and `max_header_bytes` of request head; a request
//! body that sends nothing for `body_idle_timeout` fails, so a trickling client cannot
//! hold a component's concurrency permit for the whole deadline. Shutdown stops
//! accepting, then lets each connection finish its requests in flight.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Bounds of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time for a connection's first request (and TLS handshake) to arrive, and for an
    /// HTTP/1.1 request's headers, counted from the end of its previous request (so
    /// also HTTP/1.1's keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Time a request body may send nothing before the request fails.
    pub body_idle_timeout: Duration,
    /// HTTP/2: how long a connection may have no open stream before it is closed.
    pub idle_timeout: Duration,
    /// HTTP/2: streams (requests) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Size of a request's head (HTTP/1.1 request line and headers, HTTP/2 header
    /// list); larger gets 431.
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    /// The HTTP listener's defaults.
    pub const HTTP: ConnectionLimits = ConnectionLimits {
        max_connections: 4096,
        header_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_streams_per_connection: 128,
        max_header_bytes: 64 * 1024,
    };

    /// The admin listener's: few connections, the same timeouts.
    pub const ADMIN: ConnectionLimits = ConnectionLimits {
        max_connections: 64,
        ..ConnectionLimits::HTTP
    };
}

/// What a listener serves: each request to its response. The HTTP trigger's is a plain
/// function ([`App::new`]), the admin API's an axum router ([`App::from`]).
#[derive(Clone)]
pub struct App(Arc<dyn Fn(axum::extract::Request) -> BoxFuture<'static, Response> + Send + Sync>);

impl App {
    /// An app that answers each request with `handle`.
    pub fn new(
        handle: impl Fn(axum::extract::Request) -> BoxFuture<'static, Response> + Send + Sync + 'static,
    ) -> App {
        App(Arc::new(handle))
    }
}

impl From<axum::Router> for App {
    fn from(router: axum::Router) -> App {
        App::new(move |request| {
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let call = hyper::service::Service::call(&service, request);
            Box::pin(async move {
                match call.await {
                    Ok(response) => response,
                    Err(infallible) => match infallible {},
                }
            })
        })
    }
}

/// Marks a request that arrived over TLS (a request extension), so components see the
/// `https` scheme.
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// A listener being served: its task ends once stopped and its connections closed.
#[derive(Debug)]
pub struct Serving {
    /// Ends when the listener has stopped and every connection is closed.
    pub task: JoinHandle<()>,
    open: Arc<Semaphore>,
    max_connections: usize,
}

impl Serving {
    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.open.available_permits()
    }
}

/// Serves `app` on `listener` within `limits`, over TLS if `tls` is given, until
/// `stopped` turns true, then waits for the requests in flight (the caller bounds how
/// long).
pub fn serve(
    listener: TcpListener,
    app: App,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    stopped: watch::Receiver<bool>,
) -> Serving {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let open_connections = open.clone();
    let task = tokio::spawn(async move {
        let http = Arc::new(protocols(&limits));
        let mut refused: u64 = 0;
        let mut stop = stopped.clone();
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, most likely: let some close.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop_requested(&mut stop) => break,
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        "{refused} connections refused so far: {} are open, the limit",
                        limits.max_connections
                    );
                }
                continue;
            };
            // Responses go out in several writes (head, body chunks from the guest):
            // without TCP_NODELAY, Nagle's algorithm meets the client's delayed ACK and a
            // 16 KiB response waits 40 ms.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
            }
            let connection = Connection {
                http: http.clone(),
                app: app.clone(),
                limits,
                stopped: stopped.clone(),
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => connection.serve(stream, false).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => connection.serve(stream, true).await,
                            Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(
                                "TLS handshake not done within {:?}",
                                limits.header_timeout
                            ),
                        }
                    }
                }
                drop(permit);
            });
        }
        // Every connection holds a permit until it has closed.
        let _all_closed = open.acquire_many(limits.max_connections as u32).await;
    });
    Serving {
        task,
        open: open_connections,
        max_connections: limits.max_connections,
    }
}

/// Returns once `stopped` is true (or its sender is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// HTTP/1.1 and HTTP/2 with the listener's bounds.
fn protocols(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's smallest buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // WebSockets over HTTP/2 (RFC 8441): a CONNECT with `:protocol = websocket`.
        .enable_connect_protocol()
        // Pings find a peer that vanished without closing; an idle one is closed below.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One accepted connection, before it is served.
struct Connection {
    http: Arc<auto::Builder<TokioExecutor>>,
    app: App,
    limits: ConnectionLimits,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection until it closes: by the client, on shutdown (gracefully),
    /// or when it has been idle too long.
    async fn serve<I>(mut self, io: I, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = ConnectionService {
            app: self.app,
            activity: activity.clone(),
            body_idle: self.limits.body_idle_timeout,
            tls,
        };
        let connection = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(Coalesce::new(io)), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                    break;
                }
                () = stop_requested(&mut self.stopped), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle_for(self.limits.header_timeout, self.limits.idle_timeout), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// What a connection is doing: requests open, and since when it has had none.
struct Activity {
    start: Instant,
    /// Requests whose response is not yet sent in full.
    open: AtomicUsize,
    /// Whether a request has arrived yet.
    seen: AtomicBool,
    /// When the last request ended, in milliseconds after `start`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Open {
        self.seen.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Returns once the connection has had no open request for `first` (before its
    /// first request) or `then` (after it).
    async fn idle_for(&self, first: Duration, then: Duration) {
        loop {
            let limit = if self.seen.load(Ordering::Relaxed) {
                then
            } else {
                first
            };
            if self.open.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let due = self.start + since + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A request of a connection, open until its response body is dropped.
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The app as one connection's hyper service: bounds each request body's idleness,
/// marks TLS, and counts the request open until its response is sent.
#[derive(Clone)]
struct ConnectionService {
    app: App,
    activity: Arc<Activity>,
    body_idle: Duration,
    tls: bool,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let open = self.activity.begin();
        let idle = self.body_idle;
        let mut request = request.map(|body| Body::new(IdleTimeoutBody::new(body, idle)));
        if self.tls {
            request.extensions_mut().insert(Tls);
        }
        let call = (self.app.0)(request);
        Box::pin(async move {
            let response = call.await;
            Ok(response.map(|body| Body::new(OpenBody { body, _open: open })))
        })
    }
}

/// A response body that keeps its request counted as open until it is sent.
struct OpenBody {
    body: Body,
    _open: Open,
}

impl http_body::Body for OpenBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails when the client sends nothing for the idle timeout.
struct IdleTimeoutBody {
    inner: Incoming,
    idle: Duration,
    /// Armed while the body waits for the client; reset by every frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, idle: Duration) -> IdleTimeoutBody {
        IdleTimeoutBody {
            inner,
            idle,
            timer: None,
        }
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyStalled(Duration);

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(idle).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 client preface, which opens every HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes an HTTP/2 connection holds back before writing without waiting.
const COALESCE_MAX: usize = 64 * 1024;

/// A connection's socket that, on HTTP/2, holds its writes back for one turn of the
/// scheduler: the responses of the connection's other streams finishing in that turn
/// go out in the same write. Without it every response of a busy HTTP/2 connection
/// costs a `writev` of its own, and the client a read of its own (gRPC unary calls
/// measured about 0.9 writes per call against 0.2 for native tonic, whose shorter
/// handlers finish in the same turn). HTTP/1.1 (one response at a time) is untouched.
struct Coalesce<I> {
    io: I,
    /// How much of the HTTP/2 preface the client has sent, until it is known.
    protocol: Protocol,
    /// Written by the connection, not yet by the socket; `sent` of it is out.
    pending: Vec<u8>,
    sent: usize,
    /// Whether a flush has already waited its turn.
    waited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The first `n` bytes read match the HTTP/2 preface.
    Unknown(usize),
    Http2,
    Other,
}

impl<I> Coalesce<I> {
    fn new(io: I) -> Coalesce<I> {
        Coalesce {
            io,
            protocol: Protocol::Unknown(0),
            pending: Vec::new(),
            sent: 0,
            waited: false,
        }
    }

    /// Follows the preface through bytes the client sent.
    fn sniff(&mut self, read: &[u8]) {
        let Protocol::Unknown(matched) = self.protocol else {
            return;
        };
        let expected = &H2_PREFACE[matched..];
        let n = read.len().min(expected.len());
        self.protocol = if read[..n] != expected[..n] {
            Protocol::Other
        } else if matched + n == H2_PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Unknown(matched + n)
        };
    }
}

impl<I: AsyncWrite + Unpin> Coalesce<I> {
    /// Writes out what is held back.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        if self.pending.capacity() > 2 * COALESCE_MAX {
            self.pending = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Room for more, writing out what is held back when it is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.len() >= COALESCE_MAX {
            std::task::ready!(self.drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(this.protocol, Protocol::Unknown(_)) {
            let read = buf.filled()[before..].to_vec();
            if !read.is_empty() {
                this.sniff(&read);
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.protocol != Protocol::Http2 {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        std::task::ready!(this.poll_room(cx))?;
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.protocol != Protocol::Http2 {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        std::task::ready!(this.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            this.pending.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.protocol == Protocol::Http2 || self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pending.len() > this.sent {
            if !this.waited {
                // Woken by itself, the task goes to the back of the scheduler's queue:
                // the streams ready to run now add their frames first.
                this.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(this.drain(cx))?;
        }
        this.waited = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
