//! The host side of a lattice: converge the host's live set on the desired state, and
//! say where it stands (the host's record, put on every change and once a
//! [`HEARTBEAT`]).
//!
//! One worker per component name applies the latest desired entry of that name (a
//! newer revision that arrives while one deploys is applied next; revisions in between
//! are skipped), so a slow compile of one component never holds up another. A deploy
//! goes through [`LiveSet::deploy`], the same zero-failure switch as a local deploy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;

use super::{Desired, HEARTBEAT, Lattice, now_ms, placed};
use crate::api::{HostRecord, MemberState, RolloutState};
use crate::deploy::{DeployError, LiveSet};

/// Who a host is in its lattice.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The lattice's name.
    pub lattice: String,
    /// The host's id, unique in the lattice.
    pub host_id: String,
    /// The host's labels (`zone=a`), matched against components' `placement`.
    pub labels: BTreeMap<String, String>,
    /// Largest component binary the host fetches and compiles.
    pub max_component_bytes: usize,
}

/// A default host id: the machine's name and a random part.
pub fn default_host_id() -> String {
    let machine = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && super::valid_name(s))
        .unwrap_or_else(|| "host".into());
    format!("{machine}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A host's membership: running while the host runs.
pub struct Member {
    lattice: Lattice,
    live: Arc<LiveSet>,
    config: MemberConfig,
    http: String,
    admin: String,
    started_at_ms: u64,
    /// Where each component of the desired state stands here.
    states: Mutex<BTreeMap<String, MemberState>>,
    /// The names this host deployed from the lattice (and so may undeploy).
    managed: Mutex<BTreeSet<String>>,
    /// Bumped on every change of `states`.
    changes: watch::Sender<u64>,
    /// Per name, the latest desired revision and entry (`None`: removed).
    workers: Mutex<HashMap<String, watch::Sender<Latest>>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("lattice", &self.config.lattice)
            .field("host_id", &self.config.host_id)
            .finish()
    }
}

impl Member {
    /// Joins `lattice`: puts the host's first record (so a deploy right after this
    /// returns counts the host), then starts converging `live` on it and heartbeating.
    pub async fn start(
        lattice: Lattice,
        live: Arc<LiveSet>,
        config: MemberConfig,
        http: std::net::SocketAddr,
        admin: std::net::SocketAddr,
    ) -> Arc<Member> {
        let member = Arc::new(Member {
            lattice,
            live,
            config,
            http: http.to_string(),
            admin: admin.to_string(),
            started_at_ms: now_ms(),
            states: Mutex::new(BTreeMap::new()),
            managed: Mutex::new(BTreeSet::new()),
            changes: watch::channel(0).0,
            workers: Mutex::new(HashMap::new()),
        });
        tracing::info!(
            "lattice `{}`: joined as host `{}`{}",
            member.config.lattice,
            member.config.host_id,
            if member.config.labels.is_empty() {
                String::new()
            } else {
                format!(" with labels {:?}", member.config.labels)
            }
        );
        if let Err(e) = member.lattice.put_host(&member.record()).await {
            tracing::warn!("lattice: {e:#} (retrying each heartbeat)");
        }
        tokio::spawn(watch_desired(Arc::downgrade(&member)));
        tokio::spawn(heartbeat(Arc::downgrade(&member)));
        member
    }

    /// The lattice joined.
    pub fn lattice(&self) -> &Lattice {
        &self.lattice
    }

    /// The host's id.
    pub fn host_id(&self) -> &str {
        &self.config.host_id
    }

    /// Waits until this host has answered (live, failed or not placed) every entry
    /// of `wanted` (name, revision), or `within` has passed; returns the answers.
    pub async fn answers(
        &self,
        wanted: &[(String, u64)],
        within: Duration,
    ) -> BTreeMap<String, MemberState> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answered: BTreeMap<String, MemberState> = {
                let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
                wanted
                    .iter()
                    .filter_map(|(name, revision)| {
                        let s = states.get(name)?;
                        (s.revision >= *revision && s.state != RolloutState::Deploying)
                            .then(|| (name.clone(), s.clone()))
                    })
                    .collect()
            };
            if answered.len() == wanted.len()
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                return answered;
            }
        }
    }

    /// Leaves the lattice: removes the host's record, so it is not shown as lost.
    pub async fn leave(&self) {
        if let Err(e) = self.lattice.remove_host(&self.config.host_id).await {
            tracing::warn!("lattice: could not remove this host's record: {e:#}");
        }
    }

    fn set_state(&self, name: &str, state: Option<MemberState>) {
        {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            match state {
                Some(s) => states.insert(name.to_string(), s),
                None => states.remove(name),
            };
        }
        self.changes.send_modify(|n| *n += 1);
    }

    fn record(&self) -> HostRecord {
        let (mut requests, mut errors) = (0, 0);
        for d in self.live.list() {
            requests += d.requests;
            errors += d.errors;
        }
        HostRecord {
            id: self.config.host_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: self.http.clone(),
            admin: self.admin.clone(),
            labels: self.config.labels.clone(),
            started_at_ms: self.started_at_ms,
            heartbeat_at_ms: now_ms(),
            components: self
                .states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            requests,
            errors,
        }
    }

    /// Hands the entry of one name to its worker (started on first sight).
    fn dispatch(self: &Arc<Self>, name: String, revision: u64, desired: Option<Desired>) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = workers.get(&name) {
            worker.send_if_modified(|current| {
                if current.0 >= revision {
                    return false;
                }
                *current = (revision, desired);
                true
            });
            return;
        }
        let (tx, rx) = watch::channel((revision, desired));
        workers.insert(name.clone(), tx);
        tokio::spawn(worker(Arc::downgrade(self), name, rx));
    }

    /// Applies one desired entry of `name`.
    async fn apply(&self, name: &str, revision: u64, desired: Option<Desired>) {
        let Some(desired) = desired else {
            let managed = self
                .managed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            if managed {
                match self.live.undeploy(name).await {
                    Ok(info) => tracing::info!(
                        "lattice: undeployed {name} {} (removed from the desired state)",
                        info.version
                    ),
                    Err(DeployError::NotFound(_)) => {}
                    Err(e) => tracing::warn!("lattice: undeploying {name}: {e}"),
                }
            }
            self.set_state(name, None);
            return;
        };
        let start = Instant::now();
        let answer = |state, error: Option<String>| MemberState {
            version: desired.version.clone(),
            revision,
            state,
            error,
            ms: start.elapsed().as_millis() as u64,
        };
        if !placed(&desired.spec.placement, &self.config.labels) {
            if self
                .managed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name)
            {
                let _ = self.live.undeploy(name).await;
                tracing::info!(
                    "lattice: undeployed {name}: its placement no longer matches this host's labels"
                );
            }
            self.set_state(name, Some(answer(RolloutState::NotPlaced, None)));
            return;
        }
        let spec = match desired.spec.clone().validate() {
            Ok(spec) => spec,
            Err(e) => {
                let error = format!("invalid spec: {e}");
                self.set_state(name, Some(answer(RolloutState::Failed, Some(error))));
                return;
            }
        };
        let running = self.live.snapshot().by_name.get(name).cloned();
        if running.is_some_and(|d| d.version == desired.version && d.spec == spec) {
            self.managed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string());
            self.set_state(name, Some(answer(RolloutState::Live, None)));
            return;
        }
        self.set_state(name, Some(answer(RolloutState::Deploying, None)));
        let result = match self.fetch(&desired.version).await {
            Ok(wasm) => self
                .live
                .deploy(name, spec, wasm)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        match result {
            Ok(deployed) => {
                self.managed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string());
                tracing::info!(
                    "lattice: {name} {} live (revision {revision}, {} ms)",
                    deployed.info.version,
                    start.elapsed().as_millis()
                );
                self.set_state(name, Some(answer(RolloutState::Live, None)));
            }
            Err(error) => {
                tracing::warn!(
                    "lattice: {name} {} refused on this host: {error}",
                    desired.version
                );
                self.set_state(name, Some(answer(RolloutState::Failed, Some(error))));
            }
        }
    }

    /// The binary of `version`, retried while NATS is unreachable (not when too large
    /// or corrupt).
    async fn fetch(&self, version: &str) -> anyhow::Result<bytes::Bytes> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .lattice
                .download(version, self.config.max_component_bytes)
                .await
            {
                Ok(wasm) => return Ok(wasm),
                Err(e) if attempt < FETCH_ATTEMPTS && !e.to_string().contains("larger than") => {
                    tracing::warn!("lattice: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The latest desired revision of a name and its entry (`None`: removed).
type Latest = (u64, Option<Desired>);

/// Attempts at fetching a binary before the deploy is reported failed.
const FETCH_ATTEMPTS: u32 = 5;

/// Applies the latest entry of one name whenever it changes, until the member is gone.
async fn worker(member: std::sync::Weak<Member>, name: String, mut rx: watch::Receiver<Latest>) {
    loop {
        let (revision, desired) = rx.borrow_and_update().clone();
        let Some(m) = member.upgrade() else { return };
        m.apply(&name, revision, desired).await;
        drop(m);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Watches the desired state and dispatches each entry; re-watches (from the current
/// state of every key) whenever the watch ends, as after a partition from NATS, and
/// when it has stalled: every [`WATCH_CHECK`] the host asks the server for the latest
/// revision, and a watch still short of what the server had one check earlier is
/// opened afresh (a watch can outlive the server it was on without an error: seen
/// when one server of a cluster stops).
async fn watch_desired(member: std::sync::Weak<Member>) {
    loop {
        let Some(m) = member.upgrade() else { return };
        let watch = m.lattice.watch_desired().await;
        let lattice = m.lattice.clone();
        drop(m);
        match watch {
            Ok(mut watch) => {
                let mut seen = 0u64;
                let mut behind: Option<u64> = None;
                let mut check = tokio::time::interval(WATCH_CHECK);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        next = watch.next() => {
                            let Some(m) = member.upgrade() else { return };
                            match next {
                                Some(Ok(entry)) => {
                                    seen = seen.max(entry.revision);
                                    handle_entry(&m, entry);
                                }
                                Some(Err(e)) => {
                                    tracing::warn!("lattice: watching the desired state: {e}");
                                    break;
                                }
                                None => {
                                    tracing::warn!("lattice: the desired state's watch ended; watching again");
                                    break;
                                }
                            }
                        }
                        _ = check.tick() => {
                            if behind.is_some_and(|last| seen < last) {
                                tracing::warn!("lattice: the desired state's watch stalled (revision {seen}, the server has {}); watching again", behind.unwrap_or_default());
                                break;
                            }
                            // NATS unreachable: nothing to compare with, nothing to do.
                            if let Ok(last) = lattice.last_revision().await {
                                behind = (last > seen).then_some(last);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("lattice: {e:#}; retrying in 1s"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often a host checks that its watch of the desired state keeps up.
const WATCH_CHECK: Duration = Duration::from_secs(2);

fn handle_entry(member: &Arc<Member>, entry: kv::Entry) {
    let name = crate::kv::nats::decode_key(&entry.key);
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<Desired>(&entry.value) {
            Ok(desired) if desired.name == name => {
                member.dispatch(name, entry.revision, Some(desired))
            }
            Ok(desired) => tracing::warn!(
                "lattice: desired entry `{name}` names `{}`; ignored",
                desired.name
            ),
            Err(e) => tracing::warn!("lattice: desired entry `{name}` is not valid: {e}; ignored"),
        },
        kv::Operation::Delete | kv::Operation::Purge => member.dispatch(name, entry.revision, None),
    }
}

/// Puts the host's record once a [`HEARTBEAT`], and at once after every change.
async fn heartbeat(member: std::sync::Weak<Member>) {
    let mut changes = match member.upgrade() {
        Some(m) => m.changes.subscribe(),
        None => return,
    };
    let mut failing = false;
    loop {
        let Some(m) = member.upgrade() else { return };
        let record = m.record();
        match m.lattice.put_host(&record).await {
            Ok(()) if failing => {
                tracing::info!("lattice: heartbeats are getting through again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("lattice: {e:#} (retrying each heartbeat)");
                failing = true;
            }
            Err(_) => {}
        }
        drop(m);
        let _ = tokio::time::timeout(HEARTBEAT, changes.changed()).await;
    }
}
