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
use tokio::task::JoinHandle;

use crate::admin::AdminAccess;
use crate::bus::MessageBus;
use crate::bus::embedded::EmbeddedBus;
use crate::bus::nats::{NatsBus, NatsConfig};
use crate::capabilities::Backends;
use crate::capabilities::outbound_http::HostListeners;
use crate::compile::CompileCache;
use crate::deploy::{Deployer, LiveSet};
use crate::engine::Engines;
use crate::kv::KvStore;
use crate::kv::embedded::EmbeddedKv;
use crate::kv::nats::NatsKv;
use crate::listener::{self, ConnectionLimits};

/// How to start a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where HTTP routes are served.
    pub listen: SocketAddr,
    /// Where the admin API is served.
    pub admin_listen: SocketAddr,
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
    /// Bounds of the admin listener's connections.
    pub admin_connections: ConnectionLimits,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
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
            admin_connections: ConnectionLimits::ADMIN,
        }
    }
}

/// A host serving HTTP and its admin API.
#[derive(Debug)]
pub struct Host {
    deployments: Arc<LiveSet>,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    grace: Duration,
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
        let engines = Engines::new(config.max_instances, config.baseline_compiler)
            .context("configuring the wasmtime engines")?;
        let (bus, kv): (Arc<dyn MessageBus>, Arc<dyn KvStore>) = match &config.nats {
            Some(nats) => {
                let bus = NatsBus::connect(nats).await?;
                let kv = NatsKv::new(bus.client().clone());
                (Arc::new(bus), Arc::new(kv))
            }
            None => {
                let path = config.data_dir.join("kv.redb");
                let kv = EmbeddedKv::open(&path)?;
                tracing::info!("key-value: embedded store {}", path.display());
                (Arc::new(EmbeddedBus::new()), Arc::new(kv))
            }
        };
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
        let (http_addr, admin_addr) = (http.local_addr()?, admin.local_addr()?);
        let (http_trigger, triggers) = crate::triggers::all(&bus);
        let deployments = Arc::new(LiveSet::new(Deployer {
            engines,
            cache: CompileCache::new(config.cache_dir),
            backends: Backends {
                bus,
                kv,
                listeners: HostListeners::new([http_addr, admin_addr]),
            },
            triggers,
        }));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(expire_idle_instances(
            Arc::downgrade(&deployments),
            config.idle_instance_ttl,
        ));
        let servers = vec![
            listener::serve(
                http,
                http_trigger.app(),
                config.http_connections,
                stopped.clone(),
            ),
            listener::serve(
                admin,
                crate::admin::app(
                    deployments.clone(),
                    AdminAccess {
                        listen: admin_addr,
                        token: config.admin_token,
                        hosts: config.admin_hosts,
                        origins: config.admin_origins,
                    },
                ),
                config.admin_connections,
                stopped,
            ),
        ];
        Ok(Host {
            deployments,
            http_addr,
            admin_addr,
            stop,
            servers,
            grace: config.shutdown_grace,
        })
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

    /// Stops accepting connections, lets requests in flight finish within the grace
    /// period, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let all = async {
            futures::future::join_all(self.servers).await;
            self.deployments.shutdown().await;
        };
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(
                "requests still in flight after {:?}; stopping anyway",
                self.grace
            );
        }
    }
}

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
