//! The `weft` command: parse the arguments, start the async runtime, and hand over to
//! the library (`up` for `weft up`, `commands` for the admin commands).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use weft::admin_client::AdminClient;
use weft::commands;
use weft::logs::{self, LogFormat};
use weft_runtime::bus::nats::NatsConfig;
use weft_runtime::{HostConfig, LatticeMembership};

/// mimalloc, not the system allocator. A fresh instance per call allocates and frees
/// hundreds of small objects (store, instance state, WASI context), and glibc's malloc
/// took about a tenth of the CPU of a fresh-instance message round trip. Measured with
/// `just bench` against glibc: 15-25% more messages per second, compiles about 8%
/// quicker, HTTP unchanged, about 10% more memory per idle component. Built without
/// transparent huge pages (`no_thp`), which took an idle host from 19 to 35 MB of RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weft: serverless WebAssembly microservices on HTTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines read: `text` for a person, `json` for one object per line (time,
    /// level, target, component, version, message).
    #[arg(
        long,
        global = true,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

// Parsed once per run: the size of `Up` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Build (where needed) and serve every component of a manifest until Ctrl-C.
    Up {
        /// The application manifest (default `weft.toml`). With --nats it may be left
        /// out when there is no `weft.toml`: the host then serves what the lattice runs.
        manifest: Option<PathBuf>,
        /// Address for HTTP routes.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
        /// Address for the admin API (it serves `GET /metrics` too).
        #[arg(long, default_value = "127.0.0.1:7070")]
        admin: std::net::SocketAddr,
        /// Also serve `GET /metrics` (Prometheus) on a listener of its own, with the
        /// admin API's access rules (the admin token, when set).
        #[arg(long, env = "WEFT_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Do not count or time components' calls, and serve no `GET /metrics`.
        #[arg(long, conflicts_with = "metrics_listen")]
        no_metrics: bool,
        /// Threads that run requests, messages and guests (default: one per CPU core).
        /// Fewer leaves cores to other processes on the machine.
        #[arg(long, env = "WEFT_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// Bearer token for the admin API (required when it is not on loopback; on
        /// loopback, it keeps other local users out).
        #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// A name the admin API may be reached by (repeatable), besides its address and
        /// `localhost`: requests naming any other host are refused (DNS rebinding).
        #[arg(long = "admin-host")]
        admin_hosts: Vec<String>,
        /// A browser origin allowed to call the admin API (repeatable; default none).
        #[arg(long = "admin-origin")]
        admin_origins: Vec<String>,
        /// Directory for compiled code (default: ~/.cache/weft).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not run build commands; use the `.wasm` files as they are.
        #[arg(long)]
        no_build: bool,
        /// Serve a component not in the compile cache only once Cranelift has compiled
        /// it (default: serve at once on Winch code, switch to Cranelift code when ready).
        #[arg(long)]
        cranelift_only: bool,
        /// NATS server(s) for messaging, e.g. nats://127.0.0.1:4222 (default: the manifest's
        /// `nats_url`, else the embedded in-process bus).
        #[arg(long, env = "WEFT_NATS")]
        nats: Option<String>,
        /// NATS credentials file (.creds).
        #[arg(long, env = "WEFT_NATS_CREDS")]
        nats_creds: Option<PathBuf>,
        /// NATS token.
        #[arg(long, env = "WEFT_NATS_TOKEN", hide_env_values = true)]
        nats_token: Option<String>,
        /// Directory of the embedded key-value store (default: ~/.local/share/weft).
        #[arg(long, env = "WEFT_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Seconds a shutdown (Ctrl-C, SIGTERM) waits for the HTTP requests and messages
        /// in flight before stopping anyway.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        shutdown_grace: u64,
        /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) instead of
        /// plain HTTP (default: the manifest's `[tls]`, else plain TCP).
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<PathBuf>,
        /// With NATS: the lattice to join (hosts of one lattice run one desired state).
        #[arg(long, env = "WEFT_LATTICE", default_value = weft_runtime::lattice::DEFAULT_LATTICE)]
        lattice: String,
        /// With NATS: run this host alone (its own deploys only), not in a lattice.
        #[arg(long, conflicts_with = "host_id")]
        no_lattice: bool,
        /// This host's id in the lattice (default: the machine's name and a random part).
        #[arg(long, env = "WEFT_HOST_ID")]
        host_id: Option<String>,
        /// A label `KEY=VALUE` of this host (repeatable), matched against components'
        /// `placement`.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Largest component the host accepts, in bytes (admin uploads and lattice deploys).
        #[arg(long, value_name = "BYTES", default_value_t = weft_runtime::admin::AdminLimits::default().max_upload_bytes)]
        max_component_bytes: usize,
        /// Send traces (OTLP over HTTP, protobuf) to this collector, e.g.
        /// http://127.0.0.1:4318 (spans go to /v1/traces). Default: no traces.
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// The share of new traces recorded, 0 to 1 (a call that continues a trace
        /// follows its caller's choice).
        #[arg(
            long,
            env = "OTEL_TRACES_SAMPLER_ARG",
            value_name = "RATIO",
            default_value_t = 1.0
        )]
        trace_sample: f64,
        /// The traces' service name.
        #[arg(
            long,
            env = "OTEL_SERVICE_NAME",
            value_name = "NAME",
            default_value = "weft"
        )]
        trace_service: String,
    },
    /// Deploy a component to a running host (the running version serves until it is live).
    Deploy {
        /// The component's name.
        name: String,
        /// The `.wasm`; default: the `source` of the manifest entry named NAME.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Take routes, limits and config from this manifest's entry named NAME.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// A route to serve (repeatable); replaces the manifest's routes.
        #[arg(long = "route")]
        routes: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        lattice: LatticeArgs,
    },
    /// List the components deployed on a running host (in a lattice: on every host).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a component from a running host (in a lattice: from every host).
    Undeploy {
        /// The component's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        lattice: LatticeArgs,
    },
    /// List the hosts of a lattice: id, addresses, labels, version, uptime, components, load.
    Hosts {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        lattice: LatticeArgs,
    },
}

/// Talking to a lattice through NATS directly, with no host at hand.
#[derive(Debug, clap::Args)]
struct LatticeArgs {
    /// Change the lattice over NATS directly (no host's admin API needed), e.g.
    /// nats://127.0.0.1:4222.
    #[arg(long = "nats", value_name = "URL")]
    nats: Option<String>,
    /// NATS credentials file (.creds), with --nats.
    #[arg(long, env = "WEFT_NATS_CREDS", requires = "nats")]
    nats_creds: Option<PathBuf>,
    /// NATS token, with --nats.
    #[arg(
        long,
        env = "WEFT_NATS_TOKEN",
        hide_env_values = true,
        requires = "nats"
    )]
    nats_token: Option<String>,
    /// The lattice, with --nats.
    #[arg(long, env = "WEFT_LATTICE", default_value = weft_runtime::lattice::DEFAULT_LATTICE)]
    lattice: String,
    /// Seconds to wait for every host's answer.
    #[arg(long, value_name = "SECONDS", default_value_t = weft_runtime::lattice::ROLLOUT_WAIT.as_secs())]
    wait: u64,
}

impl LatticeArgs {
    fn target(&self) -> Option<commands::LatticeTarget> {
        self.nats.as_ref().map(|url| commands::LatticeTarget {
            nats: NatsConfig {
                url: url.clone(),
                creds: self.nats_creds.clone(),
                token: self.nats_token.clone(),
                ..NatsConfig::default()
            },
            lattice: self.lattice.clone(),
        })
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: a label is KEY=VALUE"))?;
    for part in [key, value] {
        if !weft_runtime::spec::valid_label(part) {
            return Err(format!(
                "`{text}`: labels and values use a-z, A-Z, 0-9, `-`, `_` and `.`"
            ));
        }
    }
    Ok((key.to_string(), value.to_string()))
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The host's admin API.
    #[arg(
        long = "admin",
        env = "WEFT_ADMIN",
        default_value = "http://127.0.0.1:7070"
    )]
    url: String,
    /// Bearer token for the admin API.
    #[arg(long = "admin-token", env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn client(&self) -> AdminClient {
        AdminClient::new(&self.url, self.token.clone())
    }
}

fn main() -> ExitCode {
    quiet_error_backtraces();
    let cli = Cli::parse();
    // Log lines go to stderr from a thread of their own; the guard writes out what is
    // queued when `main` returns.
    let _flush_logs_on_exit = logs::init(cli.log_format);
    let workers = match &cli.command {
        Command::Up { workers, .. } => *workers,
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Requests and messages were drained by then. What may still run is a background
    // compile (a tier-up): not worth waiting for, the next start redoes it, and cache
    // files are renamed into place whole or not at all.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// wasmtime makes error values on the request path; with `RUST_BACKTRACE=1` each would
/// capture a backtrace. Keep panic backtraces, skip error ones, unless the user chose.
#[allow(unsafe_code)]
fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            manifest,
            listen,
            admin,
            metrics_listen,
            no_metrics,
            workers: _,
            admin_token,
            admin_hosts,
            admin_origins,
            cache_dir,
            no_build,
            cranelift_only,
            nats,
            nats_creds,
            nats_token,
            data_dir,
            shutdown_grace,
            tls_cert,
            tls_key,
            lattice,
            no_lattice,
            host_id,
            labels,
            max_component_bytes,
            otlp_endpoint,
            trace_sample,
            trace_service,
        } => {
            if !(0.0..=1.0).contains(&trace_sample) {
                anyhow::bail!(
                    "--trace-sample {trace_sample}: give a share from 0 (none) to 1 (every trace)"
                );
            }
            let nats = nats.map(|url| NatsConfig {
                url,
                creds: nats_creds,
                token: nats_token,
                ..NatsConfig::default()
            });
            let mut config = HostConfig {
                listen,
                admin_listen: admin,
                metrics_listen,
                metrics: !no_metrics,
                admin_token,
                admin_hosts,
                admin_origins,
                nats,
                baseline_compiler: !cranelift_only,
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| weft_runtime::tls::TlsFiles { cert, key }),
                lattice: (!no_lattice).then(|| LatticeMembership {
                    name: lattice,
                    host_id: host_id.unwrap_or_else(|| LatticeMembership::default().host_id),
                    labels: labels.into_iter().collect(),
                }),
                tracing: otlp_endpoint.map(|endpoint| weft_runtime::trace::TraceConfig {
                    endpoint,
                    sample: trace_sample,
                    service: trace_service,
                }),
                ..HostConfig::default()
            };
            config.admin_limits.max_upload_bytes = max_component_bytes;
            if cache_dir.is_some() {
                config.cache_dir = cache_dir;
            }
            if let Some(data_dir) = data_dir {
                config.data_dir = data_dir;
            }
            // No manifest named and no weft.toml: a lattice host, serving what it runs.
            let manifest = match manifest {
                Some(path) => Some(path),
                None if config.nats.is_some() && !std::path::Path::new("weft.toml").exists() => {
                    None
                }
                None => Some(PathBuf::from("weft.toml")),
            };
            let host = weft::up::start(manifest.as_deref(), config, !no_build).await?;
            weft::up::wait_for_signal().await;
            eprintln!("shutting down: finishing the requests and messages in flight...");
            host.shutdown().await;
            Ok(())
        }
        Command::Deploy {
            name,
            wasm,
            manifest,
            routes,
            admin,
            lattice,
        } => {
            let request = commands::DeployRequest {
                name,
                wasm,
                manifest,
                routes,
            };
            let wait = std::time::Duration::from_secs(lattice.wait);
            match lattice.target() {
                Some(target) => commands::deploy_to_lattice(&target, request, wait).await,
                None => commands::deploy(&admin.client(), &admin.url, request, wait).await,
            }
        }
        Command::List { admin } => commands::list(&admin.client()).await,
        Command::Undeploy {
            name,
            admin,
            lattice,
        } => {
            let wait = std::time::Duration::from_secs(lattice.wait);
            match lattice.target() {
                Some(target) => commands::undeploy_from_lattice(&target, &name, wait).await,
                None => commands::undeploy(&admin.client(), &name, wait).await,
            }
        }
        Command::Hosts { admin, lattice } => match lattice.target() {
            Some(target) => commands::hosts_of_lattice(&target).await,
            None => commands::hosts(&admin.client()).await,
        },
    }
}
