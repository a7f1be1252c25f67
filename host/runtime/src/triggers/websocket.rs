//! WebSockets: a route with `websocket = true` accepts upgrades. The host owns each
//! connection; the component handles its events through the messaging handler it
//! already exports (`wasmcloud:messaging/handler`), one call per event, in a fresh (or
//! reused) instance like any other call, so no instance is held for a connection's
//! lifetime.
//!
//! Subjects (the one place they are named; the README's *WebSockets* documents them):
//! - every connection has a subject `ws.conn.HOST.N`; its events reach the component
//!   as messages on `ws.conn.HOST.N.open` (body: the request's path and query),
//!   `.text`, `.binary` and `.close`, with the connection's subject as `reply_to`;
//! - a message published to `ws.conn.HOST.N` goes to that client (a text frame if it is
//!   UTF-8, else binary; `ws.conn.HOST.N.binary` always binary); to
//!   `ws.conn.HOST.N.join` or `.leave` (body: a group name) adds it to or removes it
//!   from a group; to `.close` closes it (body: the reason);
//! - a message published to `ws.group.NAME` goes to every member, on every host.
//!
//! A handler may always publish to the connection whose event it handles, and to that
//! connection's `.join`, `.leave`, `.close` and `.binary` (checked in
//! `capabilities::messaging`, named in `spec::subject`);
//! anything else (another connection, a group) needs `allowed_publish`. With NATS,
//! every subject crosses hosts, so fan-out works across the fleet. What a guest sends
//! to one of its own host's connections goes to it directly ([`LocalConnections`]),
//! not through the bus: a subscriber to `ws.conn.>` sees only other hosts' sends.
//!
//! Events of one connection are handled in order, one at a time: the next frame is
//! read once the previous event's call returned. Frames to a client wait in a buffer
//! of [`OUTBOUND_BUFFER`]; a client that lets it fill is closed with 1008.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use wasmtime::component::InstancePre;

use super::http::HttpError;
use super::{Attachment, Trigger};
use crate::bus::{BusError, Message, MessageBus};
use crate::deployment::{DeployError, Deployment, LinkedExport, Snapshot};
use crate::instance::IdleBudget;
use crate::spec::ValidSpec;
use crate::spec::subject::{WS_CONN_PREFIX as CONN_PREFIX, WS_GROUP_PREFIX as GROUP_PREFIX};
use crate::store_data::StoreData;

/// Frames waiting to be written to one client.
pub const OUTBOUND_BUFFER: usize = 256;

/// The writing half of a connection.
type Sink = futures::stream::SplitSink<WebSocket, Frame>;

/// Bytes a connection reads at once (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 8 * 1024;

/// How long a close frame may take to reach a client (behind what it has not read).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Messages waiting in the host's subscription to its connections' subjects.
const INBOX_BUFFER: usize = 4096;

/// Close codes (RFC 6455).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;

/// The WebSocket trigger: the connections this host holds and their groups.
#[derive(Debug)]
pub struct WebSocketTrigger {
    bus: Arc<dyn MessageBus>,
    /// This host's token in connection subjects (random per start).
    host: String,
    /// `ws.conn.HOST.`: the start of this host's connection subjects.
    prefix: String,
    next: AtomicU64,
    live: ArcSwap<HashMap<String, Arc<Deployment>>>,
    state: Mutex<State>,
    /// The subscription to `ws.conn.HOST.>`, made before the first connection's first
    /// event (so no answer to it is lost).
    inbox: tokio::sync::OnceCell<()>,
    /// Itself, for the attachments' detach futures.
    me: std::sync::Weak<WebSocketTrigger>,
}

#[derive(Debug, Default)]
struct State {
    connections: HashMap<u64, Connection>,
    groups: HashMap<String, Group>,
}

#[derive(Debug)]
struct Connection {
    component: String,
    outbound: mpsc::Sender<Frame>,
    close: watch::Sender<Option<(u16, String)>>,
    groups: HashSet<String>,
}

#[derive(Debug)]
struct Group {
    members: HashSet<u64>,
    forward: tokio::task::JoinHandle<()>,
}

impl WebSocketTrigger {
    /// A trigger with no connections, on `bus`.
    pub fn new(bus: Arc<dyn MessageBus>) -> Arc<WebSocketTrigger> {
        use rand::Rng;
        let host: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        Arc::new_cyclic(|me| WebSocketTrigger {
            bus,
            prefix: format!("{CONN_PREFIX}{host}."),
            host,
            next: AtomicU64::new(1),
            live: ArcSwap::default(),
            state: Mutex::default(),
            inbox: tokio::sync::OnceCell::new(),
            me: me.clone(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now (all components).
    pub fn open_connections(&self) -> usize {
        self.state().connections.len()
    }

    /// Accepts an upgrade request for a WebSocket route of `deployment`, or says why not.
    pub async fn upgrade(
        self: &Arc<Self>,
        deployment: &Arc<Deployment>,
        request: axum::extract::Request,
    ) -> Result<Response, HttpError> {
        let limits = deployment.spec.limits;
        let component = deployment.name.clone();
        let open = self
            .state()
            .connections
            .values()
            .filter(|c| c.component == component)
            .count();
        if open >= limits.ws_max_connections as usize {
            return Err(HttpError::Overloaded { component });
        }
        check_origin(deployment, &request)?;
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let (mut parts, _body) = request.into_parts();
        let upgrade =
            <WebSocketUpgrade as axum::extract::FromRequestParts<()>>::from_request_parts(
                &mut parts,
                &(),
            )
            .await
            .map_err(|rejection| HttpError::UpgradeRequired(rejection.body_text()))?;
        let max = limits.ws_max_message_bytes as usize;
        let idle = Duration::from_millis(limits.ws_idle_timeout_ms);
        let this = self.clone();
        Ok(upgrade
            // tungstenite zeroes its read buffer's free space before every read: 128 KiB
            // by default, a tenth of the host's CPU on an echo. Larger messages take
            // several reads.
            .read_buffer_size(READ_BUFFER)
            .max_message_size(max)
            .max_frame_size(max)
            .on_upgrade(move |socket| this.serve(socket, component, target, idle))
            .into_response())
    }

    /// Runs one connection until either side closes it.
    async fn serve(
        self: Arc<Self>,
        socket: WebSocket,
        component: String,
        target: String,
        idle: Duration,
    ) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let subject = format!("{CONN_PREFIX}{}.{id}", self.host);
        let (outbound, mut frames) = mpsc::channel::<Frame>(OUTBOUND_BUFFER);
        let (close, mut closed) = watch::channel(None);
        {
            let mut state = self.state();
            state.connections.insert(
                id,
                Connection {
                    component: component.clone(),
                    outbound,
                    close,
                    groups: HashSet::new(),
                },
            );
        }
        self.inbox
            .get_or_init(|| async {
                let pattern = format!("{CONN_PREFIX}{}.>", self.host);
                match self.bus.subscribe(pattern.clone(), None, INBOX_BUFFER).await {
                    Ok(subscription) => {
                        tokio::spawn(Self::inbox(Arc::downgrade(&self), subscription));
                    }
                    Err(e) => tracing::error!(
                        "websockets: cannot subscribe to `{pattern}`: {e}; no message can reach a connection"
                    ),
                }
            })
            .await;
        let (sink, mut stream) = socket.split();
        // One task reads the client's frames, runs each event's call and writes what is
        // sent to the client, also while a call runs: no wake-up of another task per
        // frame. A write in progress holds the sink; frames sent meanwhile wait in
        // `frames` (a client that lets it fill is closed). A client that sends nothing
        // for `idle` is closed.
        let mut sink = Some(sink);
        let mut writing: Option<BoxFuture<'static, (Sink, bool)>> = None;
        let mut call = Some(self.event(&component, &subject, "open", Bytes::from(target)));
        let mut last_frame = tokio::time::Instant::now();
        let idle_check = tokio::time::sleep(idle);
        tokio::pin!(idle_check);
        let client_gone = loop {
            tokio::select! {
                biased;
                // Closed by the host, the component, or a limit.
                _ = closed.changed() => break false,
                (done, sent) = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    sink = Some(done);
                    if !sent {
                        break true;
                    }
                }
                frame = frames.recv(), if writing.is_none() => match frame {
                    Some(frame) => {
                        let mut out = sink.take().expect("no write in progress");
                        writing = Some(async move {
                            let sent = out.send(frame).await.is_ok();
                            (out, sent)
                        }.boxed());
                    }
                    None => break false,
                },
                deployed = async { call.as_mut().expect("guarded").await }, if call.is_some() => {
                    call = None;
                    last_frame = tokio::time::Instant::now();
                    if !deployed {
                        self.close(id, GOING_AWAY, "the component is not deployed");
                    }
                }
                () = &mut idle_check, if call.is_none() => {
                    let due = last_frame + idle;
                    if tokio::time::Instant::now() >= due {
                        self.close(id, NORMAL, "idle for too long");
                    } else {
                        idle_check.as_mut().reset(due);
                    }
                }
                next = stream.next(), if call.is_none() => {
                    let frame = match next {
                        None => break true,
                        Some(Err(e)) => {
                            let e = e.to_string();
                            if e.contains("Space limit exceeded") || e.contains("too long") || e.contains("too big") {
                                self.close(id, TOO_BIG, "message too big");
                                continue;
                            }
                            tracing::debug!(component = %component, "websocket ended: {e}");
                            break true;
                        }
                        Some(Ok(frame)) => frame,
                    };
                    last_frame = tokio::time::Instant::now();
                    let (kind, body) = match frame {
                        Frame::Text(text) => ("text", Bytes::from(text.as_str().to_owned())),
                        Frame::Binary(bytes) => ("binary", bytes),
                        Frame::Close(_) => break true,
                        // Answered by the library.
                        Frame::Ping(_) | Frame::Pong(_) => continue,
                    };
                    call = Some(self.event(&component, &subject, kind, body));
                }
            }
        };
        // A call in flight finishes before the close event.
        if let Some(call) = call {
            call.await;
        }
        let groups = self
            .state()
            .connections
            .get(&id)
            .map(|c| c.groups.clone())
            .unwrap_or_default();
        for group in groups {
            self.leave(id, &group);
        }
        self.event(&component, &subject, "close", Bytes::new())
            .await;
        if let Some(connection) = self.state().connections.remove(&id) {
            drop(connection.outbound);
        }
        if client_gone {
            return;
        }
        let (code, reason) = closed.borrow().clone().unwrap_or((NORMAL, String::new()));
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Behind a write in progress, if any.
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            let mut sink = match (sink, writing) {
                (Some(sink), _) => sink,
                (None, Some(write)) => write.await.0,
                (None, None) => return,
            };
            let _ = sink.send(Frame::Close(Some(frame))).await;
        })
        .await;
    }

    /// Hands one event to the live version of `component`; false if it is not deployed.
    fn event<'a>(
        &'a self,
        component: &'a str,
        subject: &'a str,
        kind: &'a str,
        body: Bytes,
    ) -> BoxFuture<'a, bool> {
        self.event_call(component, subject, kind, body).boxed()
    }

    async fn event_call(&self, component: &str, subject: &str, kind: &str, body: Bytes) -> bool {
        let Some(deployment) = self.live.load().get(component).cloned() else {
            return false;
        };
        // Waits for a slot rather than failing: backpressure on the client.
        let Ok(_permit) = deployment.concurrency.clone().acquire_owned().await else {
            return false;
        };
        let message = Message {
            subject: format!("{subject}.{kind}"),
            reply_to: Some(subject.to_string()),
            headers: Vec::new(),
            body,
        };
        let websocket = crate::metrics::Trigger::Websocket;
        super::messaging::handle_as(websocket, &deployment, &*self.bus, message, None).await;
        true
    }

    /// Closes connection `id` with `code` and `reason` (the first reason given wins).
    fn close(&self, id: u64, code: u16, reason: &str) {
        if let Some(c) = self.state().connections.get(&id) {
            signal_close(&c.close, code, reason);
        }
    }

    /// Queues `frame` for connection `id`; a full buffer closes it (a slow client).
    fn send(&self, id: u64, frame: Frame) {
        let state = self.state();
        let Some(c) = state.connections.get(&id) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.outbound.try_send(frame) {
            tracing::info!(component = %c.component, "closing a websocket whose client reads too slowly");
            signal_close(&c.close, POLICY, "the client reads too slowly");
        }
    }

    /// Delivers what is published to this host's connection subjects.
    async fn inbox(this: std::sync::Weak<Self>, mut subscription: crate::bus::Subscription) {
        while let Some(message) = subscription.messages.recv().await {
            let Some(this) = this.upgrade() else { return };
            this.deliver(message).await;
        }
    }

    /// One message to a connection subject of this host: a frame or a control.
    async fn deliver(self: Arc<Self>, message: Message) {
        // The error reply of a failed event handler: logged already.
        if message.service_error().is_some() {
            return;
        }
        let Some(rest) = message.subject.strip_prefix(&self.prefix) else {
            return;
        };
        let (id, control) = rest.split_once('.').unwrap_or((rest, ""));
        let Ok(id) = id.parse::<u64>() else { return };
        let text = || String::from_utf8_lossy(&message.body).into_owned();
        match control {
            "" => self.send(id, frame_for(message.body.clone())),
            "binary" => self.send(id, Frame::Binary(message.body.clone())),
            "join" => self.join(id, &text()).await,
            "leave" => self.leave(id, &text()),
            "close" => self.close(id, NORMAL, &text()),
            other => tracing::debug!("websockets: unknown control `{other}`"),
        }
    }

    /// Adds connection `id` to `group`, subscribing to the group on first use.
    async fn join(self: &Arc<Self>, id: u64, group: &str) {
        let subject = format!("{GROUP_PREFIX}{group}");
        if !crate::spec::subject::valid_subject(&subject) || group.contains(['*', '>']) {
            tracing::info!("websockets: `{group}` is not a valid group name");
            return;
        }
        let subscribed = {
            let mut state = self.state();
            let Some(c) = state.connections.get_mut(&id) else {
                return;
            };
            c.groups.insert(group.to_string());
            match state.groups.get_mut(group) {
                Some(g) => {
                    g.members.insert(id);
                    true
                }
                None => false,
            }
        };
        if subscribed {
            return;
        }
        let subscription = match self
            .bus
            .subscribe(subject.clone(), None, INBOX_BUFFER)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("websockets: cannot subscribe to `{subject}`: {e}");
                return;
            }
        };
        let this = Arc::downgrade(self);
        let name = group.to_string();
        let forward = tokio::spawn(async move {
            let mut subscription = subscription;
            while let Some(message) = subscription.messages.recv().await {
                let Some(this) = this.upgrade() else { return };
                let members: Vec<u64> = this
                    .state()
                    .groups
                    .get(&name)
                    .map(|g| g.members.iter().copied().collect())
                    .unwrap_or_default();
                for member in members {
                    this.send(member, frame_for(message.body.clone()));
                }
            }
        });
        let mut state = self.state();
        let still_open = state.connections.contains_key(&id);
        match state.groups.get_mut(group) {
            // Another join subscribed meanwhile.
            Some(g) => {
                forward.abort();
                if still_open {
                    g.members.insert(id);
                }
            }
            None if still_open => {
                state.groups.insert(
                    group.to_string(),
                    Group {
                        members: HashSet::from([id]),
                        forward,
                    },
                );
            }
            None => forward.abort(),
        }
    }

    /// Removes connection `id` from `group`; the last member unsubscribes.
    fn leave(&self, id: u64, group: &str) {
        let mut state = self.state();
        if let Some(c) = state.connections.get_mut(&id) {
            c.groups.remove(group);
        }
        let empty = state.groups.get_mut(group).is_some_and(|g| {
            g.members.remove(&id);
            g.members.is_empty()
        });
        if empty && let Some(g) = state.groups.remove(group) {
            g.forward.abort();
        }
    }

    /// Closes every connection of `component` and waits (a little) until they are gone.
    async fn close_all(&self, component: &str, reason: &str) {
        {
            let state = self.state();
            for c in state
                .connections
                .values()
                .filter(|c| c.component == component)
            {
                signal_close(&c.close, GOING_AWAY, reason);
            }
        }
        for _ in 0..200 {
            let open = self
                .state()
                .connections
                .values()
                .any(|c| c.component == component);
            if !open {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The bus guests publish on: a message to one of this host's connection subjects
/// (`ws.conn.HOST.N`, and its controls) goes straight to the connection instead of
/// through the bus and back: an echo or a reply to the client costs no bus round trip
/// (and, with NATS, no trip to the server). Everything else goes to the bus. The
/// permission check has been made already (`capabilities::messaging`).
#[derive(Debug)]
pub struct LocalConnections {
    bus: Arc<dyn MessageBus>,
    /// Weak: deployments hold this bus in their grants and the trigger holds the live
    /// deployments, so a strong reference would keep a stopped host (and its key-value
    /// store) alive.
    websocket: std::sync::Weak<WebSocketTrigger>,
    /// `ws.conn.HOST.`, the trigger's connection subjects.
    prefix: String,
}

impl LocalConnections {
    /// `bus`, with `websocket`'s connections delivered directly.
    pub fn over(bus: Arc<dyn MessageBus>, websocket: Arc<WebSocketTrigger>) -> Arc<dyn MessageBus> {
        Arc::new(LocalConnections {
            bus,
            prefix: websocket.prefix.clone(),
            websocket: Arc::downgrade(&websocket),
        })
    }
}

impl MessageBus for LocalConnections {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        let websocket = match self.websocket.upgrade() {
            Some(websocket) if message.subject.starts_with(&self.prefix) => websocket,
            _ => return self.bus.publish(message),
        };
        async move {
            crate::bus::check_message(&message)?;
            websocket.deliver(message).await;
            Ok(())
        }
        .boxed()
    }

    fn request_with(
        &self,
        subject: String,
        headers: Vec<(String, String)>,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Message, BusError>> {
        self.bus.request_with(subject, headers, body, timeout)
    }

    fn subscribe(
        &self,
        subject: String,
        queue_group: Option<String>,
        buffer: usize,
    ) -> BoxFuture<'_, Result<crate::bus::Subscription, BusError>> {
        self.bus.subscribe(subject, queue_group, buffer)
    }

    fn describe(&self) -> String {
        self.bus.describe()
    }

    fn flush(&self, within: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        self.bus.flush(within)
    }
}

/// A browser's upgrade must come from the page's own origin (its authority is the
/// request's `Host`) or one the component lists in `websocket_origins`.
fn check_origin(
    deployment: &Deployment,
    request: &axum::extract::Request,
) -> Result<(), HttpError> {
    let Some(origin) = request.headers().get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host);
    let listed = deployment
        .spec
        .websocket_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin));
    if own || listed {
        Ok(())
    } else {
        Err(HttpError::Forbidden(format!(
            "origin `{origin}` may not open this WebSocket (add it to `websocket_origins` in the manifest)"
        )))
    }
}

/// Asks a connection's writer to close it, unless it was asked already.
fn signal_close(signal: &watch::Sender<Option<(u16, String)>>, code: u16, reason: &str) {
    signal.send_if_modified(|state| {
        if state.is_some() {
            return false;
        }
        *state = Some((code, reason.to_string()));
        true
    });
}

/// A text frame if `body` is UTF-8, else a binary one.
fn frame_for(body: Bytes) -> Frame {
    match std::str::from_utf8(&body) {
        Ok(text) => Frame::Text(text.into()),
        Err(_) => Frame::Binary(body),
    }
}

impl Trigger for WebSocketTrigger {
    fn export(&self) -> &'static str {
        "wasmcloud:messaging/handler (for WebSocket events)"
    }

    /// Checks that a component with WebSocket routes can take their events; the
    /// messaging trigger links the handler itself.
    fn link(
        &self,
        pre: &InstancePre<StoreData>,
        spec: &ValidSpec,
        _budget: &Arc<IdleBudget>,
    ) -> Result<Option<Box<dyn LinkedExport>>, DeployError> {
        super::messaging::require_handler(
            pre,
            spec.routes.iter().any(|r| r.websocket),
            "which takes the events of its WebSocket routes' connections",
        )
    }

    fn attach<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
    ) -> BoxFuture<'a, Result<Attachment, DeployError>> {
        let weak = self.me.clone();
        let deployment = deployment.clone();
        async move {
            Ok(Attachment::new(
                async move {
                    // Replaced by a newer version: its connections stay open and go on
                    // with it. Undeployed, or the host shutting down: they close.
                    let Some(this) = weak.upgrade() else { return };
                    let current = this.live.load().get(&deployment.name).cloned();
                    let replaced = current.is_some_and(|c| !Arc::ptr_eq(&c, &deployment));
                    if !replaced {
                        this.close_all(&deployment.name, "the component is going away")
                            .await;
                    }
                }
                .boxed(),
            ))
        }
        .boxed()
    }

    fn went_live(&self, live: &Snapshot) {
        self.live
            .store(Arc::new(live.by_name.clone().into_iter().collect()));
    }
}
