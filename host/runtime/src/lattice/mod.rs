//! Many hosts, one platform (README, "Running many hosts"). Hosts started with NATS join
//! a *lattice*: a name (default `default`), so several can share one NATS. Everything
//! the lattice knows lives in three JetStream buckets named after it:
//!
//! - `_weft_lattice_NAME` (KV): the desired state, one [`Desired`] per component name;
//! - `_weft_wasm_NAME` (object store): the component binaries, keyed by digest;
//! - `_weft_hosts_NAME` (KV, entries expire): one [`HostRecord`] per host, put on every
//!   change and as a heartbeat.
//!
//! Guests can reach none of them: bucket names starting with `_weft` are refused in
//! specs, and `$KV.`/`$O.`/`$JS.` subjects are refused for publish and subscribe.
//!
//! [`Lattice`] is the client side (what `weft deploy`, the admin API and `weft hosts`
//! use); [`member`] is the host side, converging a host on the desired state.

pub mod member;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::api::{HostRecord, HostRollout, HostView, LatticeView, Rollout, RolloutState};
use crate::kv::nats::encode_key;
use crate::spec::{ComponentSpec, ValidSpec};

/// The lattice a host joins when none is named.
pub const DEFAULT_LATTICE: &str = "default";

/// How often a host puts its record when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A host whose last heartbeat is older than this is shown as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(5);

/// A host that stopped heartbeating is dropped from the hosts bucket after this.
pub const DROPPED_AFTER: Duration = Duration::from_secs(60);

/// A host that has not answered a deploy (the error, with how long was waited).
const NO_ANSWER: &str = "no answer (is the host overloaded, or partitioned from NATS?)";

/// How often a deploy waiting for the hosts' answers also reads their records afresh.
const POLL: Duration = Duration::from_secs(1);

/// How long a host starting retries opening its lattice's buckets.
pub const OPEN_PATIENCE: Duration = Duration::from_secs(20);

/// How long `weft deploy` waits, by default, for every host to report.
pub const ROLLOUT_WAIT: Duration = Duration::from_secs(120);

/// What should run under one name: written by deploys, watched by every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The component's name.
    pub name: String,
    /// `sha256:...` of the binary, its key in the object store.
    pub version: String,
    /// Its size in bytes.
    pub size: u64,
    /// Routes, subscriptions, limits, grants, config and placement.
    pub spec: ComponentSpec,
    /// When it was written (milliseconds since the Unix epoch).
    pub deployed_at_ms: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a lattice name is usable in bucket names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a host with `labels` may run a component asking for `placement`: every
/// label the component names, with the same value.
pub fn placed(placement: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    placement.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The buckets of one lattice on one NATS connection.
#[derive(Clone)]
pub struct Lattice {
    name: String,
    js: jetstream::Context,
    desired: kv::Store,
    hosts: kv::Store,
    wasm: object_store::ObjectStore,
}

impl std::fmt::Debug for Lattice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lattice").field("name", &self.name).finish()
    }
}

impl Lattice {
    /// Opens (creating where missing) the buckets of lattice `name` over `client`.
    pub async fn open(client: async_nats::Client, name: &str) -> Result<Lattice> {
        if !valid_name(name) {
            bail!(
                "`{name}` is not a valid lattice name: use a-z, A-Z, 0-9, `-` and `_` (32 characters at most)"
            );
        }
        let version = client.server_info().version;
        let hint = || {
            format!(
                "(server {version}: JetStream must be enabled, `nats-server -js`, and weft needs nats-server 2.10 or newer)"
            )
        };
        let js = jetstream::new(client);
        let desired = open_kv(&js, format!("_weft_lattice_{name}"), Duration::ZERO, 5)
            .await
            .with_context(hint)?;
        let hosts = open_kv(&js, format!("_weft_hosts_{name}"), DROPPED_AFTER, 1)
            .await
            .with_context(hint)?;
        let bucket = format!("_weft_wasm_{name}");
        let wasm = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                let config = |num_replicas| object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(format!(
                        "weft lattice `{name}`: component binaries by digest"
                    )),
                    num_replicas,
                    ..Default::default()
                };
                match js.create_object_store(config(REPLICAS)).await {
                    Ok(store) => store,
                    Err(e) if too_few_servers(&e) => {
                        js.create_object_store(config(1)).await.with_context(|| {
                            format!("creating JetStream object store `{bucket}` {}", hint())
                        })?
                    }
                    Err(e) => Err(e).with_context(|| {
                        format!("creating JetStream object store `{bucket}` {}", hint())
                    })?,
                }
            }
        };
        Ok(Lattice {
            name: name.to_string(),
            js,
            desired,
            hosts,
            wasm,
        })
    }

    /// [`Lattice::open`], retried for up to [`OPEN_PATIENCE`] while JetStream is not
    /// ready (a NATS cluster still electing its leader answers "temporarily
    /// unavailable" for a few seconds after it starts).
    pub async fn open_patiently(client: async_nats::Client, name: &str) -> Result<Lattice> {
        let deadline = Instant::now() + OPEN_PATIENCE;
        loop {
            match Lattice::open(client.clone(), name).await {
                Ok(lattice) => return Ok(lattice),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("lattice `{name}`: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The lattice's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores `wasm` under its digest unless it is there already; returns the digest.
    pub async fn upload(&self, wasm: &[u8]) -> Result<String> {
        let version = crate::compile::digest(wasm);
        if self.wasm.info(&version).await.is_ok() {
            return Ok(version);
        }
        let mut reader = wasm;
        self.wasm
            .put(version.as_str(), &mut reader)
            .await
            .with_context(|| format!("uploading {version} to the lattice's object store"))?;
        Ok(version)
    }

    /// The binary stored under `version`, checked against its digest.
    pub async fn download(&self, version: &str, max_bytes: usize) -> Result<Bytes> {
        use tokio::io::AsyncReadExt;
        let mut object = self
            .wasm
            .get(version)
            .await
            .with_context(|| format!("fetching {version} from the lattice's object store"))?;
        let size = object.info().size;
        if size > max_bytes {
            bail!(
                "the component is larger than this host accepts ({size} bytes; {max_bytes} at most, `weft up --max-component-bytes`)"
            );
        }
        let mut wasm = Vec::with_capacity(size);
        object
            .read_to_end(&mut wasm)
            .await
            .with_context(|| format!("reading {version} from the lattice's object store"))?;
        let got = crate::compile::digest(&wasm);
        if got != version {
            bail!("the object store's {version} reads back as {got}: corrupt; deploy it again");
        }
        Ok(wasm.into())
    }

    /// Every entry of the desired state, with its revision.
    pub async fn desired(&self) -> Result<Vec<(u64, Desired)>> {
        let mut keys = self
            .desired
            .keys()
            .await
            .context("listing the desired state")?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("listing the desired state")?;
            if let Some(entry) = self
                .desired
                .entry(key)
                .await
                .context("reading the desired state")?
                && entry.operation == kv::Operation::Put
                && let Ok(d) = serde_json::from_slice::<Desired>(&entry.value)
            {
                out.push((entry.revision, d));
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    /// The desired entry for `name`, with its revision.
    pub async fn desired_of(&self, name: &str) -> Result<Option<(u64, Desired)>> {
        let entry = self
            .desired
            .entry(encode_key(name))
            .await
            .context("reading the desired state")?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| Some((e.revision, serde_json::from_slice(&e.value).ok()?))))
    }

    /// Writes `desired` unless the same version and spec are there already; returns
    /// the revision to wait for and whether it changed.
    async fn put_desired(&self, desired: &Desired) -> Result<(u64, bool)> {
        if let Some((revision, current)) = self.desired_of(&desired.name).await?
            && current.version == desired.version
            && current.spec == desired.spec
        {
            return Ok((revision, false));
        }
        let value = serde_json::to_vec(desired)?;
        let revision = self
            .desired
            .put(encode_key(&desired.name), value.into())
            .await
            .context("writing the desired state")?;
        Ok((revision, true))
    }

    /// Seeds `name` from a manifest: writes it only if the lattice has no entry of that
    /// name (the lattice wins: a host restarting with an older manifest never rolls the
    /// fleet back). Returns the entry's revision and the entry the lattice has.
    pub async fn seed(&self, name: &str, spec: ValidSpec, wasm: &[u8]) -> Result<(u64, Desired)> {
        if let Some(current) = self.desired_of(name).await? {
            return Ok(current);
        }
        let version = self.upload(wasm).await?;
        let desired = Desired {
            name: name.to_string(),
            version,
            size: wasm.len() as u64,
            spec: spec.into_inner(),
            deployed_at_ms: now_ms(),
        };
        match self
            .desired
            .create(encode_key(name), serde_json::to_vec(&desired)?.into())
            .await
        {
            Ok(revision) => Ok((revision, desired)),
            // Another host seeded it first.
            Err(_) => match self.desired_of(name).await? {
                Some(current) => Ok(current),
                None => bail!("seeding `{name}` into the lattice failed"),
            },
        }
    }

    /// Every host's last record, with whether it is still heartbeating.
    pub async fn hosts(&self) -> Result<Vec<(HostRecord, bool)>> {
        let mut keys = match self.hosts.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(e).context("listing the lattice's hosts"),
        };
        let mut out = Vec::new();
        let now = now_ms();
        while let Some(key) = keys.next().await {
            let key = key.context("listing the lattice's hosts")?;
            if let Some(entry) = self
                .hosts
                .entry(key)
                .await
                .context("reading a host's record")?
                && entry.operation == kv::Operation::Put
                && let Ok(record) = serde_json::from_slice::<HostRecord>(&entry.value)
            {
                let alive =
                    now.saturating_sub(record.heartbeat_at_ms) < LOST_AFTER.as_millis() as u64;
                out.push((record, alive));
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// Puts a host's record (its heartbeat).
    pub(crate) async fn put_host(&self, record: &HostRecord) -> Result<()> {
        let value = serde_json::to_vec(record)?;
        self.hosts
            .put(encode_key(&record.id), value.into())
            .await
            .context("putting the host's record")?;
        Ok(())
    }

    /// Removes a host's record (on a clean shutdown).
    pub(crate) async fn remove_host(&self, id: &str) -> Result<()> {
        self.hosts
            .purge(encode_key(id))
            .await
            .context("removing the host's record")?;
        Ok(())
    }

    /// The desired state's latest revision, read from the server (not from a watch).
    pub(crate) async fn last_revision(&self) -> Result<u64> {
        let stream = self
            .js
            .get_stream(format!("KV__weft_lattice_{}", self.name))
            .await
            .context("reading the desired state's stream")?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Watches the desired state: every current entry first, then each change.
    pub(crate) async fn watch_desired(&self) -> Result<kv::Watch> {
        self.desired
            .watch_with_history(">")
            .await
            .context("watching the desired state")
    }

    /// Deploys `wasm` as `name` to the lattice: stores the binary, writes the desired
    /// state, and waits (up to `wait`) for every live host it is placed on to report.
    pub async fn deploy(
        &self,
        name: &str,
        spec: ValidSpec,
        wasm: &[u8],
        wait: Duration,
    ) -> Result<Rollout> {
        let start = Instant::now();
        let version = self.upload(wasm).await?;
        let desired = Desired {
            name: name.to_string(),
            version: version.clone(),
            size: wasm.len() as u64,
            spec: spec.into_inner(),
            deployed_at_ms: now_ms(),
        };
        let mut watch = self.hosts.watch_all().await.context("watching the hosts")?;
        let hosts = self.hosts().await?;
        let (revision, changed) = self.put_desired(&desired).await?;
        let mut rollout = Rollout {
            lattice: self.name.clone(),
            name: name.to_string(),
            version,
            changed,
            hosts: Vec::new(),
            ms: 0,
        };
        let placement = &desired.spec.placement;
        let mut waiting = BTreeSet::new();
        for (record, alive) in &hosts {
            if !alive {
                continue;
            }
            if !placed(placement, &record.labels) {
                rollout.hosts.push(HostRollout::of(
                    &record.id,
                    RolloutState::NotPlaced,
                    None,
                    0,
                ));
            } else if let Some(done) = answered(record, name, revision) {
                rollout.hosts.push(done);
            } else {
                waiting.insert(record.id.clone());
            }
        }
        let answers = self
            .collect(&mut watch, waiting, wait, NO_ANSWER, |r| {
                answered(r, name, revision)
            })
            .await;
        rollout.hosts.extend(answers);
        rollout.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        rollout.ms = start.elapsed().as_millis() as u64;
        Ok(rollout)
    }

    /// Removes `name` from the desired state and waits (up to `wait`) until no live
    /// host runs it. Fails if the lattice has no such component.
    pub async fn undeploy(&self, name: &str, wait: Duration) -> Result<Rollout> {
        let start = Instant::now();
        let Some((_, desired)) = self.desired_of(name).await? else {
            bail!(
                "lattice `{}` has no component `{name}` (see `weft list`)",
                self.name
            );
        };
        let mut watch = self.hosts.watch_all().await.context("watching the hosts")?;
        // Who runs it is read before the removal: a quick host may be done before
        // the removal's answer arrives.
        let waiting: BTreeSet<String> = self
            .hosts()
            .await?
            .into_iter()
            .filter(|(r, alive)| *alive && r.components.contains_key(name))
            .map(|(r, _)| r.id)
            .collect();
        self.desired
            .delete(encode_key(name))
            .await
            .context("removing from the desired state")?;
        let mut rollout = Rollout {
            lattice: self.name.clone(),
            name: name.to_string(),
            version: desired.version,
            changed: true,
            hosts: Vec::new(),
            ms: 0,
        };
        let answers = self
            .collect(&mut watch, waiting, wait, "still runs it", |r| {
                (!r.components.contains_key(name)).then(|| {
                    HostRollout::of(
                        &r.id,
                        RolloutState::Removed,
                        None,
                        start.elapsed().as_millis() as u64,
                    )
                })
            })
            .await;
        rollout.hosts.extend(answers);
        rollout.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        rollout.ms = start.elapsed().as_millis() as u64;
        Ok(rollout)
    }

    /// Collects, within `wait`, the answer `answer` finds in the record of each host in
    /// `waiting`: from the hosts bucket's watch, and, in case the watch stalls (as when
    /// its server stops), from a fresh read once every [`POLL`]. A host still silent
    /// then is answered [`RolloutState::Timeout`], with `silent` as the error.
    async fn collect(
        &self,
        watch: &mut kv::Watch,
        mut waiting: BTreeSet<String>,
        wait: Duration,
        silent: &str,
        answer: impl Fn(&HostRecord) -> Option<HostRollout>,
    ) -> Vec<HostRollout> {
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
        let take = |record: &HostRecord,
                    waiting: &mut BTreeSet<String>,
                    answers: &mut Vec<HostRollout>| {
            if waiting.contains(&record.id)
                && let Some(done) = answer(record)
            {
                waiting.remove(&record.id);
                answers.push(done);
            }
        };
        let mut watching = true;
        while !waiting.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                next = watch.next(), if watching => match next {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        if let Ok(record) = serde_json::from_slice::<HostRecord>(&entry.value) {
                            take(&record, &mut waiting, &mut answers);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!("lattice: watching the hosts: {e}"),
                    // Polling alone from here on.
                    None => watching = false,
                },
                _ = poll.tick() => {
                    if let Ok(hosts) = self.hosts().await {
                        for (record, _) in &hosts {
                            take(record, &mut waiting, &mut answers);
                        }
                    }
                }
            }
        }
        for id in &waiting {
            let error = format!("{silent} after {}s", wait.as_secs());
            let ms = wait.as_millis() as u64;
            answers.push(HostRollout::of(id, RolloutState::Timeout, Some(error), ms));
        }
        answers
    }

    /// What the lattice wants and where each host stands: `weft hosts`, `weft list`.
    pub async fn view(&self) -> Result<LatticeView> {
        let desired = self.desired().await?;
        let hosts = self.hosts().await?;
        let now = now_ms();
        Ok(LatticeView {
            lattice: self.name.clone(),
            components: desired
                .iter()
                .map(|(revision, d)| crate::api::LatticeComponent {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    revision: *revision,
                    placement: d.spec.placement.clone(),
                })
                .collect(),
            hosts: hosts
                .into_iter()
                .map(|(r, alive)| HostView {
                    lost: !alive,
                    uptime_s: r.heartbeat_at_ms.saturating_sub(r.started_at_ms) / 1000,
                    last_seen_ms: now.saturating_sub(r.heartbeat_at_ms),
                    record: r,
                })
                .collect(),
        })
    }
}

/// The host's answer to `revision` of `name`, if it has given one.
fn answered(record: &HostRecord, name: &str, revision: u64) -> Option<HostRollout> {
    let state = record.components.get(name)?;
    let done = matches!(
        state.state,
        RolloutState::Live | RolloutState::Failed | RolloutState::NotPlaced
    );
    (done && state.revision >= revision)
        .then(|| HostRollout::of(&record.id, state.state, state.error.clone(), state.ms))
}

async fn open_kv(
    js: &jetstream::Context,
    bucket: String,
    max_age: Duration,
    history: i64,
) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    let config = |num_replicas| kv::Config {
        bucket: bucket.clone(),
        history,
        max_age,
        num_replicas,
        ..Default::default()
    };
    // Kept on three servers where the cluster has them, so losing one loses nothing.
    match js.create_key_value(config(REPLICAS)).await {
        Ok(store) => Ok(store),
        Err(e) if too_few_servers(&e) => js
            .create_key_value(config(1))
            .await
            .with_context(|| format!("creating JetStream KV bucket `{bucket}`")),
        Err(e) => Err(e).with_context(|| format!("creating JetStream KV bucket `{bucket}`")),
    }
}

/// Whether creating a bucket with [`REPLICAS`] copies failed only because the server
/// is alone or its cluster is smaller (then one copy is all there can be).
fn too_few_servers(e: &dyn std::fmt::Display) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("replicas") || text.contains("insufficient resources")
}

/// Copies of each lattice bucket a NATS cluster keeps (one on a single server).
const REPLICAS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_needs_every_label() {
        let labels: BTreeMap<String, String> =
            [("zone".into(), "a".into()), ("gpu".into(), "yes".into())].into();
        assert!(placed(&BTreeMap::new(), &labels));
        assert!(placed(&[("zone".into(), "a".into())].into(), &labels));
        assert!(!placed(&[("zone".into(), "b".into())].into(), &labels));
        assert!(!placed(&[("ssd".into(), "yes".into())].into(), &labels));
        assert!(!placed(
            &[("zone".into(), "a".into())].into(),
            &BTreeMap::new()
        ));
    }

    #[test]
    fn lattice_names() {
        assert!(valid_name("default"));
        assert!(valid_name("prod-eu_1"));
        for bad in ["", "a.b", "a b", "a>", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
