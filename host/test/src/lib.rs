//! Component unit tests: run one component in-process, with the host's engine settings,
//! limits and permission rules, against a scripted world that records everything the
//! component does. No ports, no NATS server.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use weft_test::{Stub, TestComponent};
//! let hello = TestComponent::from_manifest("examples/hello/weft.toml", "hello").await?;
//! let response = hello.get("/hello/you").await;
//! assert_eq!(response.status, 200);
//! assert!(response.text().contains("/hello/you"));
//! # Ok(()) }
//! ```

pub mod conformance;
pub mod host;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::BodyExt;

pub use weft_runtime::bus::Message;
use weft_runtime::bus::embedded::EmbeddedBus;
use weft_runtime::bus::{BusError, MessageBus, SERVICE_ERROR, Subscription, subject_matches};
use weft_runtime::capabilities::Backends;
use weft_runtime::compile::CompileCache;
use weft_runtime::deploy::{Deployer, Deployment};
use weft_runtime::engine::Engines;
use weft_runtime::kv::embedded::EmbeddedKv;
use weft_runtime::kv::{KeyPage, KvError, KvStore};
pub use weft_runtime::spec;
use weft_runtime::spec::manifest::{ComponentEntry, Manifest};
use weft_runtime::spec::{SpecError, ValidSpec};
use weft_runtime::triggers::http::HttpError;
pub use weft_runtime::triggers::messaging::Outcome;

/// Prefix of the reply subjects the harness gives to [`TestComponent::request`].
const TEST_INBOX: &str = "_INBOX.test.";

/// A stub's answer made from the request body.
pub type Responder = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// How the world answers a component's `consumer.request` on a subject.
pub enum Stub {
    /// Reply with these bytes.
    Reply(Vec<u8>),
    /// Reply with what the closure makes of the request body.
    Respond(Responder),
    /// Reply with NATS service-error headers carrying this text.
    ServiceError(String),
    /// Nobody answers in time.
    Timeout,
    /// Nobody is subscribed.
    NoResponders,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stub::Reply(body) => write!(f, "Reply({})", String::from_utf8_lossy(body)),
            Stub::Respond(_) => write!(f, "Respond(..)"),
            Stub::ServiceError(e) => write!(f, "ServiceError({e})"),
            Stub::Timeout => write!(f, "Timeout"),
            Stub::NoResponders => write!(f, "NoResponders"),
        }
    }
}

/// Something the component did on the bus, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `consumer.publish` to a subject.
    Published { subject: String, body: Vec<u8> },
    /// A publish to the reply subject of the message under test.
    Replied { body: Vec<u8> },
    /// `consumer.request` on a subject.
    Requested { subject: String, body: Vec<u8> },
}

/// One key-value operation the component performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOp {
    /// `get`, `set`, `delete`, `keys` or `increment`.
    pub op: &'static str,
    /// The bucket.
    pub bucket: String,
    /// The key (empty for `keys`).
    pub key: String,
}

/// What an HTTP call returned.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
    /// Why the instance failed, when it trapped or missed its deadline.
    pub failure: Option<String>,
}

impl TestResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A component loaded for unit tests, and the world it sees.
pub struct TestComponent {
    deployment: Arc<Deployment>,
    deployer: Deployer,
    world: Arc<World>,
}

impl std::fmt::Debug for TestComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestComponent")
            .field("name", &self.deployment.name)
            .finish()
    }
}

/// One engine and linker for all tests in a process, configured like a host's. Tests
/// run optimized (Cranelift) code only, as a host does once a component is cached.
fn engines() -> Result<&'static Engines> {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    if let Some(e) = ENGINES.get() {
        return Ok(e);
    }
    let engines = Engines::new(64, false)?;
    Ok(ENGINES.get_or_init(|| engines))
}

impl TestComponent {
    /// Loads the component named `name` in the manifest at `manifest`, with that entry's
    /// routes, limits, config and permissions. A missing or stale `.wasm` is an error
    /// that names the command that builds it.
    pub async fn from_manifest(manifest: impl AsRef<Path>, name: &str) -> Result<TestComponent> {
        let manifest = Manifest::load(manifest.as_ref())?;
        let entry = manifest
            .components
            .into_iter()
            .find(|c| c.name == name)
            .with_context(|| format!("the manifest has no component named `{name}`"))?;
        check_built(&entry)?;
        TestComponent::new(&entry.source, name, entry.spec).await
    }

    /// Like [`TestComponent::from_manifest`], but first runs the entry's build command
    /// when the `.wasm` is missing or stale (as `weft up` does).
    pub async fn build_and_load(manifest: impl AsRef<Path>, name: &str) -> Result<TestComponent> {
        let loaded = Manifest::load(manifest.as_ref())?;
        let entry = loaded
            .components
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("the manifest has no component named `{name}`"))?
            .clone();
        tokio::task::spawn_blocking(move || weft::builder::build_if_stale(&entry)).await??;
        TestComponent::from_manifest(manifest, name).await
    }

    /// Loads the `.wasm` at `path` under `name` with `spec` (a `ComponentSpec`, validated
    /// here, or a `ValidSpec`).
    pub async fn new(
        path: &Path,
        name: &str,
        spec: impl TryInto<ValidSpec, Error: Into<SpecError>>,
    ) -> Result<TestComponent> {
        let spec = spec.try_into().map_err(Into::into)?;
        let wasm = std::fs::read(path).with_context(|| {
            format!(
                "cannot read {}: build the component first (`just build`)",
                path.display()
            )
        })?;
        let world = Arc::new(World::new()?);
        let bus: Arc<dyn MessageBus> = world.clone();
        let events: Arc<dyn weft_runtime::events::EventStore> =
            Arc::new(weft_runtime::events::embedded::EmbeddedEvents::in_memory()?);
        let kv: Arc<dyn weft_runtime::kv::KvStore> = world.clone();
        let metrics = Arc::new(weft_runtime::metrics::HostMetrics::default());
        // A host's triggers link the component's exports, as on a host; the harness
        // calls them directly instead of through listeners and subscriptions.
        let weft_runtime::triggers::Triggers {
            all: triggers,
            guest_bus: bus,
            ..
        } = weft_runtime::triggers::all(&bus, &events, &kv, &metrics);
        let deployer = Deployer {
            engines: engines()?.clone(),
            cache: CompileCache::new(Some(cache_dir())),
            backends: Backends {
                bus,
                kv,
                events,
                listeners: Default::default(),
                tracing: None,
            },
            triggers,
            metrics,
        };
        let (prepare, name) = (deployer.clone(), name.to_string());
        let deployment = tokio::task::spawn_blocking(move || {
            let version = weft_runtime::compile::digest(&wasm);
            prepare.prepare(&name, spec, &wasm, version)
        })
        .await??;
        Ok(TestComponent {
            deployment: Arc::new(deployment),
            deployer,
            world,
        })
    }

    /// The same component with a config value set (as the manifest's `config` would).
    pub fn with_config(self, key: &str, value: &str) -> Result<TestComponent> {
        let mut spec = self.deployment.spec.clone().into_inner();
        spec.config.insert(key.to_string(), value.to_string());
        let spec = spec.validate()?;
        Ok(TestComponent {
            deployment: Arc::new(self.deployer.with_spec(&self.deployment, spec)?),
            deployer: self.deployer,
            world: self.world,
        })
    }

    /// Answers the component's requests on subjects matching `pattern` with `stub`.
    pub fn stub(&self, pattern: &str, stub: Stub) {
        lock(&self.world.stubs).push((pattern.to_string(), stub));
    }

    /// Sends an HTTP request to the component's `incoming-handler`.
    pub async fn http(&self, request: http::Request<Vec<u8>>) -> TestResponse {
        let mut request = request.map(axum::body::Body::from);
        if !request.headers().contains_key(http::header::HOST) {
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("weft.test"),
            );
        }
        match weft_runtime::triggers::http::dispatch(&self.deployment, request).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                match body {
                    Ok(body) => TestResponse {
                        status: parts.status.as_u16(),
                        headers: parts.headers,
                        body,
                        failure: None,
                    },
                    Err(e) => TestResponse {
                        status: parts.status.as_u16(),
                        headers: parts.headers,
                        body: Vec::new(),
                        failure: Some(format!("the response body broke off: {e}")),
                    },
                }
            }
            Err(error) => {
                let failure = match &error {
                    HttpError::GuestFailed { cause, .. } => Some(cause.clone()),
                    HttpError::Deadline { .. } => Some("deadline exceeded".to_string()),
                    _ => None,
                };
                let response = axum::response::IntoResponse::into_response(error);
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                TestResponse {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                    failure,
                }
            }
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> TestResponse {
        self.http(request("GET", path, Vec::new())).await
    }

    /// `method path` with a body.
    pub async fn send(&self, method: &str, path: &str, body: impl Into<Vec<u8>>) -> TestResponse {
        self.http(request(method, path, body.into())).await
    }

    /// Delivers a message (no reply subject) to the component's handler.
    pub async fn message(&self, subject: &str, body: impl Into<Vec<u8>>) -> Outcome {
        let message = Message {
            subject: subject.into(),
            body: Bytes::from(body.into()),
            ..Message::default()
        };
        weft_runtime::triggers::messaging::handle(&self.deployment, self.world.as_ref(), message)
            .await
    }

    /// Delivers a tick of the component's schedule `name`, due now, to its handler, as a
    /// host delivers it the first time (`current-delivery()` gives its id and attempt 1).
    pub async fn tick(&self, name: &str) -> Result<Outcome> {
        let schedule = self
            .deployment
            .spec
            .schedules
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("the component has no schedule named `{name}`"))?;
        let (message, id) = weft_runtime::triggers::schedule::tick(
            &self.deployment.name,
            schedule,
            jiff::Timestamp::now(),
        );
        let delivery = weft_runtime::capabilities::messaging::DeliveryInfo {
            id,
            attempt: 1,
            stream: format!(
                "weft-{}",
                weft_runtime::events::name_token(&message.subject)
            ),
            headers: message.headers.clone(),
        };
        Ok(weft_runtime::triggers::messaging::handle_delivery(
            &self.deployment,
            self.world.as_ref(),
            message,
            Some(delivery),
        )
        .await)
    }

    /// Delivers a request (with a reply subject) and returns the outcome and the reply
    /// the component sent, if any (an error reply when the handler failed).
    pub async fn request(
        &self,
        subject: &str,
        body: impl Into<Vec<u8>>,
    ) -> (Outcome, Option<Message>) {
        let reply_to = format!("{TEST_INBOX}{}", lock(&self.world.replies).len());
        let message = Message {
            subject: subject.into(),
            reply_to: Some(reply_to.clone()),
            body: Bytes::from(body.into()),
            headers: vec![],
        };
        let outcome = weft_runtime::triggers::messaging::handle(
            &self.deployment,
            self.world.as_ref(),
            message,
        )
        .await;
        let reply = lock(&self.world.replies)
            .iter()
            .find(|m| m.subject == reply_to)
            .cloned();
        (outcome, reply)
    }

    /// Whether the component runs on the engine with the component model's async
    /// support, as a host runs only components that use it (`engine::Engines`).
    pub fn concurrent(&self) -> bool {
        self.deployment.component.engine().get_concurrency_support()
    }

    /// Everything the component published, requested and replied, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.world.events).clone()
    }

    /// Sets a key before the call, as if an earlier request had.
    pub async fn seed(&self, bucket: &str, key: &str, value: impl Into<Vec<u8>>) {
        let _ = self
            .world
            .kv
            .set(bucket.into(), key.into(), Bytes::from(value.into()))
            .await;
    }

    /// Reads a key after the call.
    pub async fn kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.world
            .kv
            .get(bucket.into(), key.into())
            .await
            .ok()
            .flatten()
            .map(|v| v.to_vec())
    }

    /// The key-value operations the component performed, in order.
    pub fn kv_ops(&self) -> Vec<KvOp> {
        lock(&self.world.kv_ops).clone()
    }
}

fn request(method: &str, path: &str, body: Vec<u8>) -> http::Request<Vec<u8>> {
    let mut request = http::Request::new(body);
    *request.method_mut() = method.parse().unwrap_or(http::Method::GET);
    *request.uri_mut() = path.parse().unwrap_or_default();
    request
}

fn check_built(entry: &ComponentEntry) -> Result<()> {
    if !weft::builder::needs_build(entry) {
        return Ok(());
    }
    let how = entry
        .build
        .as_ref()
        .map_or("just build".to_string(), |b| b.command.clone());
    if entry.source.exists() {
        bail!(
            "{} is older than its sources: rebuild it with `{how}`",
            entry.source.display()
        )
    }
    bail!(
        "{} does not exist: build it with `{how}`",
        entry.source.display()
    )
}

/// Where the harness keeps compiled code between test runs: `weft-test-cache` in the
/// cargo target directory the test binary runs from (never the user's cache directory),
/// or `WEFT_TEST_CACHE_DIR` if set.
fn cache_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_TEST_CACHE_DIR") {
        return dir.into();
    }
    // A test binary lives in `<target>/<profile>/deps/`.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf));
    match target {
        Some(target) => target.join("weft-test-cache"),
        None => std::env::temp_dir().join("weft-test-cache"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The scripted, recording world a [`TestComponent`] runs in: a message bus and a
/// key-value store that record what the component does. Requests matching a stub get the
/// stub's answer; everything else goes to an embedded bus and store, so the world behaves
/// like any backend (it passes the same [`conformance`] suites).
pub struct World {
    bus: EmbeddedBus,
    stubs: Mutex<Vec<(String, Stub)>>,
    events: Mutex<Vec<Event>>,
    replies: Mutex<Vec<Message>>,
    kv: EmbeddedKv,
    kv_ops: Mutex<Vec<KvOp>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("World")
    }
}

impl World {
    /// An empty world: no stubs, nothing recorded, an empty in-memory store.
    pub fn new() -> Result<World> {
        Ok(World {
            bus: EmbeddedBus::new(),
            stubs: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            replies: Mutex::new(Vec::new()),
            kv: EmbeddedKv::in_memory()?,
            kv_ops: Mutex::new(Vec::new()),
        })
    }

    fn record_kv(&self, op: &'static str, bucket: &str, key: &str) {
        lock(&self.kv_ops).push(KvOp {
            op,
            bucket: bucket.to_string(),
            key: key.to_string(),
        });
    }
}

impl MessageBus for World {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        let event = if message.subject.starts_with(TEST_INBOX) {
            lock(&self.replies).push(message.clone());
            Event::Replied {
                body: message.body.to_vec(),
            }
        } else {
            Event::Published {
                subject: message.subject.clone(),
                body: message.body.to_vec(),
            }
        };
        // The host's own error replies are not something the component did.
        if message.service_error().is_none() {
            lock(&self.events).push(event);
        }
        self.bus.publish(message)
    }

    fn request_with(
        &self,
        subject: String,
        headers: Vec<(String, String)>,
        body: Bytes,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Message, BusError>> {
        lock(&self.events).push(Event::Requested {
            subject: subject.clone(),
            body: body.to_vec(),
        });
        let stubs = lock(&self.stubs);
        let answer = match stubs
            .iter()
            .rev()
            .find(|(pattern, _)| subject_matches(pattern, &subject))
        {
            // Not stubbed: whoever subscribes in the world answers, or nobody does.
            None => {
                drop(stubs);
                return self.bus.request_with(subject, headers, body, timeout);
            }
            Some((_, Stub::NoResponders)) => Err(BusError::NoResponders(subject.clone())),
            Some((_, Stub::Timeout)) => Err(BusError::Timeout(subject.clone())),
            Some((_, Stub::Reply(reply))) => Ok(Message {
                subject: subject.clone(),
                body: reply.clone().into(),
                ..Message::default()
            }),
            Some((_, Stub::Respond(f))) => Ok(Message {
                subject: subject.clone(),
                body: f(&body).into(),
                ..Message::default()
            }),
            Some((_, Stub::ServiceError(e))) => Ok(Message {
                subject: subject.clone(),
                headers: vec![(SERVICE_ERROR.to_string(), e.clone())],
                ..Message::default()
            }),
        };
        async move { answer }.boxed()
    }

    fn subscribe(
        &self,
        subject: String,
        queue_group: Option<String>,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        self.bus.subscribe(subject, queue_group, buffer)
    }

    fn describe(&self) -> String {
        "test world".to_string()
    }
}

impl KvStore for World {
    fn describe(&self) -> String {
        "test world".to_string()
    }

    fn get(&self, bucket: String, key: String) -> BoxFuture<'_, Result<Option<Bytes>, KvError>> {
        self.record_kv("get", &bucket, &key);
        self.kv.get(bucket, key)
    }

    fn set(&self, bucket: String, key: String, value: Bytes) -> BoxFuture<'_, Result<(), KvError>> {
        self.record_kv("set", &bucket, &key);
        self.kv.set(bucket, key, value)
    }

    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), KvError>> {
        self.record_kv("delete", &bucket, &key);
        self.kv.delete(bucket, key)
    }

    fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, KvError>> {
        self.record_kv("keys", &bucket, after.as_deref().unwrap_or_default());
        self.kv.keys_after(bucket, after, limit)
    }

    fn increment(
        &self,
        bucket: String,
        key: String,
        delta: u64,
    ) -> BoxFuture<'_, Result<u64, KvError>> {
        self.record_kv("increment", &bucket, &key);
        self.kv.increment(bucket, key, delta)
    }

    fn compare_and_swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> BoxFuture<'_, Result<bool, KvError>> {
        self.record_kv("compare_and_swap", &bucket, &key);
        self.kv.compare_and_swap(bucket, key, expected, new)
    }
}
