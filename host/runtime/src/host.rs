//! A running host: the engines, the backends (bus and key-value store), the live set of
//! deployments with the triggers that call them, the HTTP listener and the admin
//! listener, started together and shut down gracefully together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{AdminAccess, AdminLimits};
use crate::bus::MessageBus;
use crate::bus::nats::{NatsBus, NatsConfig};
use crate::capabilities::Backends;
use crate::capabilities::outbound_http::HostListeners;
use crate::compile::CompileCache;
use crate::deploy::{Deployer, LiveSet};
use crate::engine::Engines;
use crate::events::EventStore;
use crate::events::embedded::OnBus;
use crate::events::nats::NatsEvents;
use crate::kv::KvStore;
use crate::kv::embedded::EmbeddedKv;
use crate::kv::nats::NatsKv;
use crate::lattice::Lattice;
use crate::lattice::member::{Member, MemberConfig};
use crate::listener::{self, ConnectionLimits, Serving};
use crate::metrics::{HostMetrics, Scrape};
use crate::tls::TlsFiles;

/// How to start a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where HTTP routes are served.
    pub listen: SocketAddr,
    /// Where the admin API is served (with `GET /metrics`).
    pub admin_listen: SocketAddr,
    /// A listener of its own for `GET /metrics` alone (same access rules as the admin
    /// API); `None`: only on the admin listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Count and time components' calls and serve `GET /metrics` (default); `false`:
    /// neither (`weft up --no-metrics`).
    pub metrics: bool,
    /// Bearer token for the admin API; required unless it listens on loopback, and the
    /// way to keep other local users out when it does.
    pub admin_token: Option<String>,
    /// Names (besides its address, and `localhost` on loopback) the admin API accepts in
    /// the `Host` header.
    pub admin_hosts: Vec<String>,
    /// Browser origins allowed to call the admin API (none by default).
    pub admin_origins: Vec<String>,
    /// Compiled-code cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may run at once across all components.
    pub max_instances: u32,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// The NATS server to use; `None`: the embedded, in-process bus.
    pub nats: Option<NatsConfig>,
    /// Where the embedded key-value store keeps its file (unused with NATS).
    pub data_dir: PathBuf,
    /// Start components that are not in the compile cache on Winch code, then switch
    /// to Cranelift code in the background (quick deploys of large guests).
    pub baseline_compiler: bool,
    /// How long a kept or spare instance may stay idle before it is dropped.
    pub idle_instance_ttl: Duration,
    /// Bounds of the HTTP listener's connections.
    pub http_connections: ConnectionLimits,
    /// The HTTP listener's certificate and key; `None`: plain TCP (HTTP/1.1 and h2c).
    pub tls: Option<TlsFiles>,
    /// Bounds of the admin listener's connections.
    pub admin_connections: ConnectionLimits,
    /// Bounds of the admin API's deploys (upload size, deploys at once).
    pub admin_limits: AdminLimits,
    /// With NATS: the lattice to join (README, "Running many hosts"); `None`: the host
    /// is operated alone, whatever runs on the same NATS.
    pub lattice: Option<LatticeMembership>,
    /// Where to send traces (OTLP/HTTP) and how many; `None`: no traces, at no cost.
    pub tracing: Option<crate::trace::TraceConfig>,
}

/// Which lattice a host joins, and as whom.
#[derive(Debug, Clone)]
pub struct LatticeMembership {
    /// The lattice's name (default `default`).
    pub name: String,
    /// The host's id in it (default: the machine's name and a random part).
    pub host_id: String,
    /// Labels matched against components' `placement`.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for LatticeMembership {
    fn default() -> Self {
        LatticeMembership {
            name: crate::lattice::DEFAULT_LATTICE.into(),
            host_id: crate::lattice::member::default_host_id(),
            labels: Default::default(),
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            metrics_listen: None,
            metrics: true,
            admin_token: None,
            admin_hosts: Vec::new(),
            admin_origins: Vec::new(),
            cache_dir: CompileCache::default_dir(),
            max_instances: 1000,
            shutdown_grace: Duration::from_secs(10),
            nats: None,
            data_dir: default_data_dir(),
            baseline_compiler: true,
            idle_instance_ttl: crate::instance::IDLE_INSTANCE_TTL,
            http_connections: ConnectionLimits::HTTP,
            tls: None,
            admin_connections: ConnectionLimits::ADMIN,
            admin_limits: AdminLimits::default(),
            lattice: None,
            tracing: None,
        }
    }
}

/// A host serving HTTP and its admin API.
#[derive(Debug)]
pub struct Host {
    deployments: Arc<LiveSet>,
    member: Option<Arc<Member>>,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: Serving,
    admin: Serving,
    metrics: Option<(SocketAddr, Serving)>,
    grace: Duration,
    tracing: Option<Arc<crate::trace::Tracing>>,
}

impl Host {
    /// Builds the engine, binds both listeners and starts serving.
    pub async fn start(config: HostConfig) -> Result<Host> {
        if !config.admin_listen.ip().is_loopback() && config.admin_token.is_none() {
            bail!(
                "the admin API would listen on {} without a token: pass --admin-token (or set WEFT_ADMIN_TOKEN), or bind it to 127.0.0.1",
                config.admin_listen
            );
        }
        if let (Some(listen), false) = (config.metrics_listen, config.metrics) {
            bail!(
                "--metrics-listen {listen} asks for a metrics listener, but metrics are off (--no-metrics): leave one of the two out"
            );
        }
        if let Some(listen) = config.metrics_listen
            && !listen.ip().is_loopback()
            && config.admin_token.is_none()
        {
            bail!(
                "the metrics listener would listen on {listen} without a token: pass --admin-token (Prometheus sends it as `authorization: {{ credentials: TOKEN }}`), or bind it to 127.0.0.1"
            );
        }
        let tls = match &config.tls {
            Some(files) => Some(files.acceptor()?),
            None => None,
        };
        let engines = Engines::new(config.max_instances, config.baseline_compiler)
            .context("configuring the wasmtime engines")?;
        type Chosen = (Arc<dyn MessageBus>, Arc<dyn KvStore>, Arc<dyn EventStore>);
        let (bus, kv, events): Chosen = match &config.nats {
            Some(nats) => {
                let bus = NatsBus::connect(nats).await?;
                let kv = NatsKv::connect(nats).await?;
                let events = NatsEvents::connect(nats).await?;
                (Arc::new(bus), Arc::new(kv), Arc::new(events))
            }
            None => {
                let path = config.data_dir.join("kv.redb");
                let kv = EmbeddedKv::open(&path)?;
                tracing::info!("key-value: embedded store {}", path.display());
                let events = OnBus::open(&config.data_dir.join("events.redb"))?;
                (Arc::new(events.bus.clone()), Arc::new(kv), Arc::new(events))
            }
        };
        // The exporter's HTTP client blocks: made off the async workers.
        let tracer = match config.tracing.clone() {
            Some(trace) => Some(
                tokio::task::spawn_blocking(move || crate::trace::Tracing::start(&trace))
                    .await
                    .context("starting the tracer")??,
            ),
            None => None,
        };
        tracing::info!("events: {}", events.describe());
        tracing::info!("messaging: {}", bus.describe());
        let http = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen for HTTP on {}: is another host running there?",
                config.listen
            )
        })?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for the admin API on {}: is another host running there?",
                    config.admin_listen
                )
            })?;
        let metrics_listener = match config.metrics_listen {
            Some(listen) => Some(TcpListener::bind(listen).await.with_context(|| {
                format!("cannot listen for metrics on {listen}: is another host running there?")
            })?),
            None => None,
        };
        let (http_addr, admin_addr) = (http.local_addr()?, admin.local_addr()?);
        let mut own = vec![http_addr, admin_addr];
        if let Some(listener) = &metrics_listener {
            own.push(listener.local_addr()?);
        }
        let host_metrics = Arc::new(HostMetrics::new(config.metrics));
        let crate::triggers::Triggers {
            http: http_trigger,
            all: triggers,
            guest_bus: bus,
        } = crate::triggers::all(&bus, &events, &kv, &host_metrics);
        let deployments = Arc::new(LiveSet::new(Deployer {
            engines,
            cache: CompileCache::new(config.cache_dir),
            backends: Backends {
                bus,
                kv,
                events,
                listeners: HostListeners::new(own),
                tracing: tracer.clone(),
            },
            triggers,
            metrics: host_metrics.clone(),
        }));
        let registry = Arc::new(crate::metrics::registry(Scrape {
            live: Arc::downgrade(&deployments),
            host: host_metrics,
            nats: config.nats.as_ref().map(|n| n.stats.clone()),
        }));
        let member = match (&config.nats, config.lattice) {
            (Some(nats), Some(membership)) => {
                let client = crate::bus::nats::connect_client(nats, "lattice", 65_536).await?;
                let lattice = Lattice::open_patiently(client, &membership.name).await?;
                Some(
                    Member::start(
                        lattice,
                        deployments.clone(),
                        MemberConfig {
                            lattice: membership.name,
                            host_id: membership.host_id,
                            labels: membership.labels,
                            max_component_bytes: config.admin_limits.max_upload_bytes,
                        },
                        http_addr,
                        admin_addr,
                    )
                    .await,
                )
            }
            (None, Some(_)) => bail!(
                "joining a lattice needs NATS: pass --nats URL (the lattice's desired state lives in JetStream)"
            ),
            _ => None,
        };
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(expire_idle_instances(
            Arc::downgrade(&deployments),
            config.idle_instance_ttl,
        ));
        let http = listener::serve(
            http,
            http_trigger.app(),
            config.http_connections,
            tls,
            stopped.clone(),
        );
        let access = AdminAccess {
            listen: admin_addr,
            token: config.admin_token,
            hosts: config.admin_hosts,
            origins: config.admin_origins,
        };
        let metrics = match metrics_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let access = AdminAccess {
                    listen: addr,
                    ..access.clone()
                };
                let app = crate::admin::metrics_app(registry.clone(), access).into();
                let serving = listener::serve(
                    listener,
                    app,
                    config.admin_connections,
                    None,
                    stopped.clone(),
                );
                Some((addr, serving))
            }
            None => None,
        };
        let admin = listener::serve(
            admin,
            crate::admin::app(
                deployments.clone(),
                member.as_ref().map(|m| m.lattice().clone()),
                access,
                config.admin_limits,
                config.metrics.then_some(registry),
            )
            .into(),
            config.admin_connections,
            None,
            stopped,
        );
        Ok(Host {
            deployments,
            member,
            http_addr,
            admin_addr,
            stop,
            http,
            admin,
            metrics,
            grace: config.shutdown_grace,
            tracing: tracer,
        })
    }

    /// The address of the metrics listener, if the host has one of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The address HTTP routes are served on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the admin API.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The host's live set of deployments, to deploy into directly.
    pub fn deployments(&self) -> &Arc<LiveSet> {
        &self.deployments
    }

    /// The host's membership of a lattice, if it joined one.
    pub fn member(&self) -> Option<&Arc<Member>> {
        self.member.as_ref()
    }

    /// Stops accepting connections and messages, lets the HTTP requests and the messages
    /// in flight finish together within the grace period, then makes sure what the
    /// components published has left the host (flushes the NATS connection). Says what
    /// held it up if the grace ran out; never waits on a NATS server that is gone.
    pub async fn shutdown(mut self) {
        if let Some(member) = &self.member {
            // First, so no deploy waits for a host on its way out.
            let _ = tokio::time::timeout(FLUSH_AT_LEAST, member.leave()).await;
        }
        let _ = self.stop.send(true);
        let draining = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let deadline = tokio::time::Instant::now() + self.grace;
        let servers = futures::future::join(&mut self.http.task, &mut self.admin.task);
        let messaging = self.deployments.shutdown(&draining);
        let both = futures::future::join(servers, messaging);
        if tokio::time::timeout_at(deadline, both).await.is_err() {
            let mut held = Vec::new();
            let open = self.http.open_connections() + self.admin.open_connections();
            if open > 0 {
                held.push(format!("{open} HTTP connections with a request in flight"));
            }
            let draining = draining.lock().unwrap_or_else(|e| e.into_inner());
            if !draining.is_empty() {
                let names: Vec<&str> = draining.iter().map(String::as_str).collect();
                held.push(format!(
                    "messages still being handled by {}",
                    names.join(", ")
                ));
            }
            tracing::warn!(
                "shutdown: still waiting after {:?} for {}; stopping anyway",
                self.grace,
                if held.is_empty() {
                    "nothing known".to_string()
                } else {
                    held.join(" and ")
                }
            );
        }
        // Publishes already acknowledged to guests may still sit in the client's buffer.
        let within = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(FLUSH_AT_LEAST);
        if let Err(e) = self.deployments.backends().bus.flush(within).await {
            tracing::warn!("shutdown: could not flush the message bus: {e}");
        }
        // The spans of what just finished, sent before the host goes.
        if let Some(tracer) = self.tracing.take() {
            let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        }
    }
}

/// How long shutdown waits for the message bus to flush, even after the grace ran out.
const FLUSH_AT_LEAST: Duration = Duration::from_secs(1);

/// Six times per `ttl`, drops the kept and spare instances idle for `ttl` or longer,
/// until the host is gone.
async fn expire_idle_instances(deployments: std::sync::Weak<LiveSet>, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 6);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(deployments) = deployments.upgrade() else {
            return;
        };
        let expired = deployments.expire_idle_instances(ttl);
        if expired > 0 {
            tracing::debug!("dropped {expired} idle instances");
        }
    }
}

/// `$XDG_DATA_HOME/weft` or `~/.local/share/weft` (`.weft` if neither is known).
fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map_or_else(|| PathBuf::from(".weft"), |d| d.join("weft"))
}
