//! The accept loop of the HTTP and admin listeners: where a connection enters the host.
//! Bounded against slow and hostile clients: at most `max_connections` at once (more are
//! closed on accept), request headers must arrive within `header_timeout` (which also
//! closes a keep-alive connection idle that long), and a request body that sends nothing
//! for `body_idle_timeout` fails, so a trickling client cannot hold a component's
//! concurrency permit for the whole deadline. Shutdown stops accepting, then lets each
//! connection finish its request in flight.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Bounds of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time for a request's headers to arrive, counted from the connection's start or
    /// the end of its previous request (so also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Time a request body may send nothing before the request fails.
    pub body_idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The HTTP listener's defaults.
    pub const HTTP: ConnectionLimits = ConnectionLimits {
        max_connections: 4096,
        header_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(10),
    };

    /// The admin listener's: few connections, the same timeouts.
    pub const ADMIN: ConnectionLimits = ConnectionLimits {
        max_connections: 64,
        ..ConnectionLimits::HTTP
    };
}

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

/// Serves `app` on `listener` within `limits` until `stopped` turns true, then waits for
/// the requests in flight (the caller bounds how long).
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) -> Serving {
    let idle = limits.body_idle_timeout;
    let app = app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let request = request.map(|body| Body::new(IdleTimeoutBody::new(body, idle)));
            next.run(request)
        },
    ));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let open_connections = open.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let mut refused: u64 = 0;
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
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
                () = &mut stop => break,
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
            let connection =
                http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection ended: {e}");
                }
                drop(permit);
            });
        }
        graceful.shutdown().await;
    });
    Serving {
        task,
        open: open_connections,
        max_connections: limits.max_connections,
    }
}

/// A request body that fails when the client sends nothing for the idle timeout.
struct IdleTimeoutBody {
    inner: Body,
    idle: Duration,
    /// Armed while the body waits for the client; reset by every frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    fn new(inner: Body, idle: Duration) -> IdleTimeoutBody {
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
