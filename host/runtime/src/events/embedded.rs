//! The embedded event store: streams and durable consumers in one local redb file
//! (`events.redb` in the host's data directory), fed by the embedded bus, so durable
//! subscriptions work on one machine with nothing else installed and survive a restart.
//!
//! A stored message is written with an immediate commit (it is on disk when `publish`
//! returns). Consumer state (position, deliveries out, acknowledgements) is committed
//! without a sync: after a crash the last few of those may be lost, which only
//! redelivers messages, never loses them. On open, deliveries that were out are due at
//! once: nothing else holds them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use super::{
    Acknowledge, ConsumerConfig, DEDUP_WINDOW, Deliveries, Delivery, EventError, EventStore,
    MESSAGE_ID, Stop, Stored, StreamConfig, covers, overlaps,
};
use crate::bus::{Message, subject_matches};

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");
/// (consumer, sequence) -> deliveries so far.
const PENDING: TableDefinition<(&str, u64), u32> = TableDefinition::new("pending");
/// (stream, idempotency id) -> (sequence, stored at in ms).
const DEDUP: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("dedup");

/// Streams and durable consumers in a redb file.
#[derive(Debug, Clone)]
pub struct EmbeddedEvents {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    state: Mutex<State>,
    /// Whether any stream exists: the bus asks on every publish.
    any_stream: AtomicBool,
    describe: String,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, StreamState>,
    consumers: HashMap<String, ConsumerState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamRecord {
    subjects: Vec<String>,
    max_age_ms: u64,
    max_bytes: u64,
    max_messages: u64,
}

#[derive(Debug)]
struct StreamState {
    record: StreamRecord,
    /// (sequence, bytes, stored at in ms) of every message kept, oldest first.
    kept: VecDeque<(u64, u64, u64)>,
    bytes: u64,
    last: u64,
    /// Idempotency ids in the dedup window, oldest first.
    ids: VecDeque<(u64, String)>,
    id_seq: HashMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsumerRecord {
    stream: String,
    filter: String,
    ack_wait_ms: u64,
    max_ack_pending: u32,
    /// The next sequence not yet looked at.
    next: u64,
}

#[derive(Debug)]
struct ConsumerState {
    record: ConsumerRecord,
    /// Sequence -> (deliveries so far, due again at in ms).
    pending: BTreeMap<u64, (u32, u64)>,
    notify: Arc<Notify>,
}

/// A claimed delivery (message, sequence, attempt), or none now and the earliest time
/// (ms) one is due, if any.
type Claim = Result<(Message, u64, u32), Option<u64>>;

/// A stored message: a JSON head (subject, headers, time), a line break, the body.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    subject: String,
    headers: Vec<(String, String)>,
    at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn err(e: impl std::fmt::Display) -> EventError {
    EventError(format!("the embedded event store: {e}"))
}

fn encode(message: &Message, at_ms: u64) -> Vec<u8> {
    let head = Head {
        subject: message.subject.clone(),
        headers: message.headers.clone(),
        at_ms,
    };
    let mut bytes = serde_json::to_vec(&head).expect("a head serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(&message.body);
    bytes
}

fn decode(bytes: &[u8]) -> Option<(Message, u64)> {
    let split = bytes.iter().position(|&b| b == b'\n')?;
    let head: Head = serde_json::from_slice(&bytes[..split]).ok()?;
    let message = Message {
        subject: head.subject,
        reply_to: None,
        headers: head.headers,
        body: bytes::Bytes::copy_from_slice(&bytes[split + 1..]),
    };
    Some((message, head.at_ms))
}

fn message_id(message: &Message) -> Option<&str> {
    message
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(MESSAGE_ID))
        .map(|(_, v)| v.as_str())
}

impl EmbeddedEvents {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<EmbeddedEvents> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).map_err(|e| {
            anyhow::anyhow!("cannot open the event store {}: {e} (is another host using it? give each host its own --data-dir)", path.display())
        })?;
        EmbeddedEvents::load(db, format!("embedded ({})", path.display()))
    }

    /// A store in memory only (for tests and the component test harness).
    pub fn in_memory() -> anyhow::Result<EmbeddedEvents> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        EmbeddedEvents::load(db, "embedded (in memory)".into())
    }

    fn load(db: Database, describe: String) -> anyhow::Result<EmbeddedEvents> {
        let txn = db.begin_write()?;
        {
            // Make every table, so reads never meet a missing one.
            txn.open_table(STREAMS)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(CONSUMERS)?;
            txn.open_table(PENDING)?;
            txn.open_table(DEDUP)?;
        }
        txn.commit()?;
        let mut state = State::default();
        let now = now_ms();
        let txn = db.begin_read()?;
        let streams = txn.open_table(STREAMS)?;
        let messages = txn.open_table(MESSAGES)?;
        for entry in streams.iter()? {
            let (name, record) = entry?;
            let name = name.value().to_string();
            let record: StreamRecord = serde_json::from_slice(record.value())?;
            let mut stream = StreamState::new(record);
            for entry in messages.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                let (key, value) = entry?;
                let at = decode(value.value()).map_or(now, |(_, at)| at);
                let len = value.value().len() as u64;
                stream.kept.push_back((key.value().1, len, at));
                stream.bytes += len;
                stream.last = key.value().1;
            }
            state.streams.insert(name, stream);
        }
        for entry in txn.open_table(DEDUP)?.iter()? {
            let (key, value) = entry?;
            let (stream, id) = key.value();
            let (seq, at) = value.value();
            if let Some(s) = state.streams.get_mut(stream) {
                s.ids.push_back((at, id.to_string()));
                s.id_seq.insert(id.to_string(), seq);
            }
        }
        let pending = txn.open_table(PENDING)?;
        for entry in txn.open_table(CONSUMERS)?.iter()? {
            let (key, record) = entry?;
            let key = key.value().to_string();
            let record: ConsumerRecord = serde_json::from_slice(record.value())?;
            let mut out = BTreeMap::new();
            for entry in pending.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))? {
                let (k, count) = entry?;
                // Nothing holds a delivery of the last run: due at once.
                out.insert(k.value().1, (count.value(), now));
            }
            state.consumers.insert(
                key,
                ConsumerState {
                    record,
                    pending: out,
                    notify: Arc::new(Notify::new()),
                },
            );
        }
        drop((streams, messages, pending, txn));
        for s in state.streams.values_mut() {
            s.ids.make_contiguous().sort();
        }
        let any_stream = AtomicBool::new(!state.streams.is_empty());
        Ok(EmbeddedEvents {
            inner: Arc::new(Inner {
                db,
                state: Mutex::new(state),
                any_stream,
                describe,
            }),
        })
    }

    /// Whether a stream keeps messages on `subject`: what the embedded bus asks before
    /// [`EmbeddedEvents::capture`] on every publish (one atomic load while there are none).
    pub fn captures(&self, subject: &str) -> bool {
        self.inner.any_stream.load(Ordering::Relaxed)
            && self.inner.lock().stream_for(subject).is_some()
    }

    /// Stores a message published on the bus, if a stream captures its subject.
    pub async fn capture(&self, message: &Message) -> Result<Option<Stored>, EventError> {
        if !self.captures(&message.subject) {
            return Ok(None);
        }
        let id = message_id(message).map(str::to_string);
        self.run({
            let message = message.clone();
            move |inner| inner.append(&message, id)
        })
        .await
        .map(Some)
    }

    /// Runs `work` on a blocking thread: redb is synchronous.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, EventError> + Send + 'static,
    ) -> Result<T, EventError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(err)?
    }
}

impl StreamState {
    fn new(record: StreamRecord) -> StreamState {
        StreamState {
            record,
            kept: VecDeque::new(),
            bytes: 0,
            last: 0,
            ids: VecDeque::new(),
            id_seq: HashMap::new(),
        }
    }

    fn first(&self) -> u64 {
        self.kept.front().map_or(self.last + 1, |k| k.0)
    }
}

impl State {
    fn stream_for(&self, subject: &str) -> Option<&str> {
        self.streams
            .iter()
            .find(|(_, s)| {
                s.record
                    .subjects
                    .iter()
                    .any(|p| subject_matches(p, subject))
            })
            .map(|(name, _)| name.as_str())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bind(&self, subject: &str, create: StreamConfig) -> Result<String, EventError> {
        let mut state = self.lock();
        for (name, s) in &state.streams {
            if s.record.subjects.iter().any(|p| covers(p, subject)) {
                return Ok(name.clone());
            }
        }
        for (name, s) in &state.streams {
            if let Some(p) = s.record.subjects.iter().find(|p| overlaps(p, subject)) {
                return Err(EventError(format!(
                    "stream `{name}` keeps `{p}`, which overlaps `{subject}` without covering it; subscribe to subjects within `{p}`, or to ones it does not touch"
                )));
            }
        }
        if state.streams.contains_key(&create.name) {
            return Err(EventError(format!(
                "stream `{}` exists and keeps other subjects; name another `stream`",
                create.name
            )));
        }
        let record = StreamRecord {
            subjects: create.subjects,
            max_age_ms: ms(create.max_age),
            max_bytes: create.max_bytes,
            max_messages: create.max_messages,
        };
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(STREAMS)
            .map_err(err)?
            .insert(
                create.name.as_str(),
                serde_json::to_vec(&record).map_err(err)?.as_slice(),
            )
            .map_err(err)?;
        txn.commit().map_err(err)?;
        state
            .streams
            .insert(create.name.clone(), StreamState::new(record));
        self.any_stream.store(true, Ordering::Relaxed);
        Ok(create.name)
    }

    /// Stores `message` (durably), dedup'd by `id`, drops what the stream's limits no
    /// longer allow, and wakes the stream's consumers.
    fn append(&self, message: &Message, id: Option<String>) -> Result<Stored, EventError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(name) = state.stream_for(&message.subject).map(str::to_string) else {
            return Err(EventError(format!(
                "no stream keeps `{}`: subscribe a component to it durably (`durable = true`) first",
                message.subject
            )));
        };
        let stream = state.streams.get_mut(&name).expect("found above");
        let now = now_ms();
        let window = ms(DEDUP_WINDOW);
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut dedup = txn.open_table(DEDUP).map_err(err)?;
            while stream
                .ids
                .front()
                .is_some_and(|(at, _)| now.saturating_sub(*at) > window)
            {
                let (_, old) = stream.ids.pop_front().expect("checked");
                stream.id_seq.remove(&old);
                dedup.remove((name.as_str(), old.as_str())).map_err(err)?;
            }
            if let Some(&sequence) = id.as_ref().and_then(|id| stream.id_seq.get(id)) {
                return Ok(Stored {
                    stream: name,
                    sequence,
                    duplicate: true,
                });
            }
            let sequence = stream.last + 1;
            let mut message = message.clone();
            message.reply_to = None;
            if let Some(id) = &id {
                message
                    .headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case(MESSAGE_ID));
                message.headers.push((MESSAGE_ID.into(), id.clone()));
                dedup
                    .insert((name.as_str(), id.as_str()), (sequence, now))
                    .map_err(err)?;
            }
            let bytes = encode(&message, now);
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            messages
                .insert((name.as_str(), sequence), bytes.as_slice())
                .map_err(err)?;
            stream.kept.push_back((sequence, bytes.len() as u64, now));
            stream.bytes += bytes.len() as u64;
            stream.last = sequence;
            if let Some(id) = id {
                stream.ids.push_back((now, id.clone()));
                stream.id_seq.insert(id, sequence);
            }
            let r = &stream.record;
            while let Some(&(seq, len, at)) = stream.kept.front() {
                let over = stream.kept.len() as u64 > r.max_messages
                    || stream.bytes > r.max_bytes
                    || now.saturating_sub(at) > r.max_age_ms;
                if !over || seq == sequence {
                    break;
                }
                messages.remove((name.as_str(), seq)).map_err(err)?;
                stream.kept.pop_front();
                stream.bytes -= len;
            }
        }
        txn.commit().map_err(err)?;
        for c in state.consumers.values() {
            if c.record.stream == name {
                c.notify.notify_waiters();
            }
        }
        Ok(Stored {
            stream: name,
            sequence: stream.last,
            duplicate: false,
        })
    }

    /// Creates `config`'s consumer or updates it (keeping its position and what it has
    /// out); returns its key and its wake-up.
    fn open_consumer(&self, config: &ConsumerConfig) -> Result<(String, Arc<Notify>), EventError> {
        let mut state = self.lock();
        let Some(stream) = state.streams.get(&config.stream) else {
            return Err(EventError(format!("no stream `{}`", config.stream)));
        };
        let first = stream.first();
        let key = format!("{}/{}", config.stream, config.name);
        let state = &mut *state;
        let consumer = state
            .consumers
            .entry(key.clone())
            .or_insert_with(|| ConsumerState {
                record: ConsumerRecord {
                    stream: config.stream.clone(),
                    filter: config.filter.clone(),
                    ack_wait_ms: 0,
                    max_ack_pending: 0,
                    next: first,
                },
                pending: BTreeMap::new(),
                notify: Arc::new(Notify::new()),
            });
        consumer.record.filter = config.filter.clone();
        consumer.record.ack_wait_ms = ms(config.ack_wait).max(1);
        consumer.record.max_ack_pending = config.max_ack_pending.max(1);
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(CONSUMERS)
            .map_err(err)?
            .insert(
                key.as_str(),
                serde_json::to_vec(&consumer.record)
                    .map_err(err)?
                    .as_slice(),
            )
            .map_err(err)?;
        txn.commit().map_err(err)?;
        Ok((key, consumer.notify.clone()))
    }

    /// The next delivery for consumer `key`: a redelivery that is due, else the next
    /// new message its filter takes. `Err(at)`: none now; the earliest due time, if any.
    fn claim(&self, key: &str) -> Result<Claim, EventError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(consumer) = state.consumers.get_mut(key) else {
            return Err(EventError(format!("no consumer `{key}`")));
        };
        let Some(stream) = state.streams.get(&consumer.record.stream) else {
            return Err(EventError(format!(
                "no stream `{}`",
                consumer.record.stream
            )));
        };
        let now = now_ms();
        let first = stream.first();
        let name = consumer.record.stream.clone();
        let name = name.as_str();
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::None).map_err(err)?;
        let claimed = {
            let messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut pending = txn.open_table(PENDING).map_err(err)?;
            let mut claimed = None;
            // Due redeliveries first, oldest first.
            let due: Vec<u64> = consumer
                .pending
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in due {
                let found = if seq < first {
                    None
                } else {
                    messages
                        .get((name, seq))
                        .map_err(err)?
                        .and_then(|v| decode(v.value()))
                };
                let Some((message, _)) = found else {
                    tracing::warn!(
                        "events: message {seq} of stream `{name}` was removed by the stream's limits before consumer `{key}` handled it"
                    );
                    consumer.pending.remove(&seq);
                    pending.remove((key, seq)).map_err(err)?;
                    continue;
                };
                let entry = consumer.pending.get_mut(&seq).expect("listed above");
                entry.0 += 1;
                entry.1 = now + consumer.record.ack_wait_ms;
                pending.insert((key, seq), entry.0).map_err(err)?;
                claimed = Some((message, seq, entry.0));
                break;
            }
            if claimed.is_none()
                && (consumer.pending.len() as u64) < u64::from(consumer.record.max_ack_pending)
            {
                let start = consumer.record.next.max(first);
                for entry in messages
                    .range((name, start)..=(name, u64::MAX))
                    .map_err(err)?
                {
                    let (k, v) = entry.map_err(err)?;
                    let seq = k.value().1;
                    consumer.record.next = seq + 1;
                    let Some((message, _)) = decode(v.value()) else {
                        continue;
                    };
                    if subject_matches(&consumer.record.filter, &message.subject) {
                        consumer
                            .pending
                            .insert(seq, (1, now + consumer.record.ack_wait_ms));
                        pending.insert((key, seq), 1).map_err(err)?;
                        claimed = Some((message, seq, 1));
                        break;
                    }
                }
                if claimed.is_none() {
                    consumer.record.next = consumer.record.next.max(stream.last + 1);
                }
                let record = serde_json::to_vec(&consumer.record).map_err(err)?;
                txn.open_table(CONSUMERS)
                    .map_err(err)?
                    .insert(key, record.as_slice())
                    .map_err(err)?;
            }
            claimed
        };
        txn.commit().map_err(err)?;
        Ok(match claimed {
            Some(c) => Ok(c),
            None => Err(consumer.pending.values().map(|(_, at)| *at).min()),
        })
    }

    /// Settles delivery `seq` of consumer `key`: `None` acknowledges it, `Some(at)`
    /// makes it due again at `at` (ms).
    fn settle(&self, key: &str, seq: u64, due: Option<u64>) -> Result<(), EventError> {
        let mut state = self.lock();
        let Some(consumer) = state.consumers.get_mut(key) else {
            return Ok(());
        };
        match due {
            None => {
                if consumer.pending.remove(&seq).is_none() {
                    return Ok(());
                }
                let mut txn = self.db.begin_write().map_err(err)?;
                txn.set_durability(Durability::None).map_err(err)?;
                txn.open_table(PENDING)
                    .map_err(err)?
                    .remove((key, seq))
                    .map_err(err)?;
                txn.commit().map_err(err)?;
            }
            Some(at) => {
                if let Some(entry) = consumer.pending.get_mut(&seq) {
                    entry.1 = at;
                }
            }
        }
        consumer.notify.notify_waiters();
        Ok(())
    }
}

impl EventStore for EmbeddedEvents {
    fn bind_stream(
        &self,
        subject: String,
        create: StreamConfig,
    ) -> BoxFuture<'_, Result<String, EventError>> {
        self.run(move |inner| inner.bind(&subject, create)).boxed()
    }

    fn publish(
        &self,
        message: Message,
        id: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, EventError>> {
        self.run(move |inner| inner.append(&message, id)).boxed()
    }

    fn consume(
        &self,
        consumer: ConsumerConfig,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Deliveries, EventError>> {
        async move {
            let ack_wait = consumer.ack_wait;
            let (key, notify) = {
                let consumer = consumer.clone();
                self.run(move |inner| inner.open_consumer(&consumer))
                    .await?
            };
            let (sender, deliveries) = mpsc::channel(buffer.max(1));
            let (stopped, stop) = Stop::signal();
            tokio::spawn(deliver(
                self.clone(),
                key,
                notify,
                sender,
                stopped.clone(),
                ack_wait,
            ));
            Ok(Deliveries { deliveries, stop })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.inner.describe.clone()
    }
}

/// Hands consumer `key`'s deliveries to `sender` while there is room, until stopped.
async fn deliver(
    events: EmbeddedEvents,
    key: String,
    notify: Arc<Notify>,
    sender: mpsc::Sender<Delivery>,
    stop: Arc<Stop>,
    ack_wait: Duration,
) {
    let stream = key.split('/').next().unwrap_or_default().to_string();
    while !stop.stopped.load(Ordering::Relaxed) {
        let Ok(permit) = sender.reserve().await else {
            return;
        };
        let woken = notify.notified();
        let stopping = stop.wake.notified();
        tokio::pin!(woken, stopping);
        woken.as_mut().enable();
        stopping.as_mut().enable();
        if stop.stopped.load(Ordering::Relaxed) {
            return;
        }
        let claim = {
            let key = key.clone();
            events.run(move |inner| inner.claim(&key)).await
        };
        match claim {
            Ok(Ok((message, seq, attempt))) => {
                let id = message_id(&message)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{stream}:{seq}"));
                permit.send(Delivery {
                    message,
                    id,
                    stream: stream.clone(),
                    attempt,
                    ack: Box::new(Ack {
                        events: events.clone(),
                        key: key.clone(),
                        seq,
                        ack_wait,
                    }),
                });
            }
            Ok(Err(due)) => {
                drop(permit);
                let wait = due.map_or(Duration::from_secs(3600), |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()).max(1))
                });
                tokio::select! {
                    () = &mut woken => {}
                    () = &mut stopping => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!("events: consumer `{key}`: {e}; retrying in 1 s");
                tokio::select! {
                    () = &mut stopping => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

struct Ack {
    events: EmbeddedEvents,
    key: String,
    seq: u64,
    ack_wait: Duration,
}

impl Ack {
    fn settle(&self, due: Option<u64>) -> BoxFuture<'_, Result<(), EventError>> {
        let (key, seq) = (self.key.clone(), self.seq);
        self.events
            .run(move |inner| inner.settle(&key, seq, due))
            .boxed()
    }
}

impl Acknowledge for Ack {
    fn ack(&self) -> BoxFuture<'_, Result<(), EventError>> {
        self.settle(None)
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), EventError>> {
        self.settle(Some(now_ms() + ms(delay)))
    }

    fn working(&self) -> BoxFuture<'_, Result<(), EventError>> {
        self.settle(Some(now_ms() + ms(self.ack_wait)))
    }
}

/// The embedded store as the host uses it: durable publishing also delivers the message
/// to the bus's subscribers, as a JetStream publish reaches core subscribers too.
#[derive(Debug, Clone)]
pub struct OnBus {
    /// The streams.
    pub events: EmbeddedEvents,
    /// The bus that stores into them.
    pub bus: crate::bus::embedded::EmbeddedBus,
}

impl OnBus {
    /// Opens the store at `path` and a bus that feeds it.
    pub fn open(path: &Path) -> anyhow::Result<OnBus> {
        let events = EmbeddedEvents::open(path)?;
        let bus = crate::bus::embedded::EmbeddedBus::with_streams(events.clone());
        Ok(OnBus { events, bus })
    }
}

impl EventStore for OnBus {
    fn bind_stream(
        &self,
        subject: String,
        create: StreamConfig,
    ) -> BoxFuture<'_, Result<String, EventError>> {
        self.events.bind_stream(subject, create)
    }

    fn publish(
        &self,
        message: Message,
        id: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, EventError>> {
        async move {
            crate::bus::check_message(&message).map_err(EventError::from_display)?;
            let stored = self.events.publish(message.clone(), id).await?;
            if !stored.duplicate {
                self.bus.deliver(message).await;
            }
            Ok(stored)
        }
        .boxed()
    }

    fn consume(
        &self,
        consumer: ConsumerConfig,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Deliveries, EventError>> {
        self.events.consume(consumer, buffer)
    }

    fn describe(&self) -> String {
        self.events.describe()
    }
}
