//! The NATS bus (async-nats): for many hosts on one NATS cluster. Reconnects with
//! backoff on its own, and restores subscriptions after a reconnect.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{
    BusError, Message, MessageBus, StopDelivery, Subscription, check_message, header_value,
    valid_pattern, valid_subject,
};

/// How to reach a NATS server.
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// `nats://host:port`, or several separated by commas.
    pub url: String,
    /// A `.creds` file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A token, for servers configured with one.
    pub token: Option<String>,
    /// Where the connections made with these settings report their state, for
    /// `/metrics` (shared by clones: one per host).
    pub stats: Arc<NatsStats>,
}

/// The state of a host's NATS connections, by role.
#[derive(Debug, Default)]
pub struct NatsStats {
    roles: std::sync::Mutex<std::collections::BTreeMap<&'static str, Connection>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Connection {
    connected: bool,
    lost: bool,
    reconnects: u64,
    slow_consumer_drops: u64,
}

impl NatsStats {
    fn update(&self, role: &'static str, change: impl FnOnce(&mut Connection)) {
        let mut roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        change(roles.entry(role).or_default());
    }

    fn connected(&self, role: &'static str) {
        self.update(role, |c| {
            if c.lost {
                c.reconnects += 1;
            }
            (c.connected, c.lost) = (true, false);
        });
    }

    fn disconnected(&self, role: &'static str) {
        self.update(role, |c| (c.connected, c.lost) = (false, true));
    }

    /// Writes the connections' states as metric families.
    pub(crate) fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        let roles: Vec<(&'static str, bool, u64, u64)> = {
            let roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
            roles
                .iter()
                .map(|(role, c)| (*role, c.connected, c.reconnects, c.slow_consumer_drops))
                .collect()
        };
        crate::metrics::encode_nats(encoder, &roles)
    }
}

/// A bus over a NATS connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    /// The server URL without credentials ([`redact_url`]).
    url: String,
}

impl NatsBus {
    /// Connects to the server (waiting up to 5 s for the first connection).
    pub async fn connect(config: &NatsConfig) -> Result<NatsBus> {
        // Each subscription's task takes messages out of the client as they come
        // (`forward`), so the client's buffer is a hand-off, not a backlog.
        let client = connect_client(config, "messaging", CLIENT_BUFFER).await?;
        Ok(NatsBus {
            client,
            url: redact_url(&config.url),
        })
    }
}

/// A connection to the server for one `role` (`messaging`, `key-value`: each has its
/// own, so a long key listing never competes with message delivery), whose client holds
/// up to `subscription_capacity` messages per subscription before it drops (and counts)
/// them. Waits up to 5 s for the first connection.
pub async fn connect_client(
    config: &NatsConfig,
    role: &'static str,
    subscription_capacity: usize,
) -> Result<async_nats::Client> {
    let slow = Arc::new(SlowConsumers::default());
    let stats = config.stats.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("weft {role}"))
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(subscription_capacity)
        .event_callback(move |event| {
            let (slow, stats) = (slow.clone(), stats.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected(role);
                        tracing::info!("nats ({role}): connected")
                    }
                    async_nats::Event::Disconnected => {
                        stats.disconnected(role);
                        tracing::warn!("nats ({role}): disconnected, reconnecting with backoff")
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        stats.update(role, |c| c.slow_consumer_drops += 1);
                        slow.dropped(role, subscription_capacity)
                    }
                    other => tracing::info!("nats ({role}): {other}"),
                }
            }
        });
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    } else if let Some((user, password)) = url_credentials(&config.url) {
        // async-nats does not use credentials written in the URL itself.
        options = match password {
            Some(password) => options.user_and_password(user, password),
            None => options.token(user),
        };
    }
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
    }
    let url = redact_url(&config.url);
    // `nats://a:4222,nats://b:4222`: the servers of a cluster, tried in turn.
    let servers: Vec<&str> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client = options.connect(servers).await.with_context(|| {
        format!("cannot connect to NATS at {url}: is nats-server running there? (omit --nats to use the embedded bus)")
    })?;
    config.stats.connected(role);
    Ok(client)
}

/// Messages the messaging connection's client buffers per subscription before it drops
/// them (slow consumer).
const CLIENT_BUFFER: usize = 256;

/// Counts the client's slow-consumer drops and reports them at warn, at most once a
/// second, with how many there were.
#[derive(Debug, Default)]
struct SlowConsumers {
    since_report: AtomicU64,
    last_report: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SlowConsumers {
    fn dropped(&self, role: &str, capacity: usize) {
        self.since_report.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let count = self.since_report.swap(0, Ordering::Relaxed);
        tracing::warn!(
            "nats ({role}): the client dropped {count} messages (slow consumer: a subscription's buffer of {capacity} was full; the host is short of CPU)"
        );
    }
}

/// The first `user:password@` (or `token@`) written in `urls`.
fn url_credentials(urls: &str) -> Option<(String, Option<String>)> {
    urls.split(',').find_map(|url| {
        let addr: async_nats::ServerAddr = url.trim().parse().ok()?;
        let user = addr.username()?.to_string();
        Some((user, addr.password().map(str::to_string)))
    })
}

/// `urls` (comma-separated NATS URLs) with any `user:password@` or `token@` replaced by
/// `***@`: what may appear in status, listings and logs.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let scheme = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn to_message(m: async_nats::Message) -> Message {
    let headers = m
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.to_string()))
        })
        .collect();
    Message {
        subject: m.subject.to_string(),
        reply_to: m.reply.map(|r| r.to_string()),
        headers,
        body: m.payload,
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl MessageBus for NatsBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            check_message(&message)?;
            let mut headers = async_nats::HeaderMap::new();
            // A line break in a header value would trip an assertion in async-nats.
            for (name, value) in &message.headers {
                headers.insert(name.as_str(), header_value(value).as_str());
            }
            let result = match message.reply_to {
                Some(reply) => {
                    self.client
                        .publish_with_reply_and_headers(
                            message.subject,
                            reply,
                            headers,
                            message.body,
                        )
                        .await
                }
                None => {
                    self.client
                        .publish_with_headers(message.subject, headers, message.body)
                        .await
                }
            };
            result.map_err(unavailable)
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
        async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            let mut request = async_nats::Request::new()
                .payload(body)
                .timeout(Some(timeout));
            if !headers.is_empty() {
                let mut map = async_nats::HeaderMap::new();
                for (k, v) in &headers {
                    map.append(k.as_str(), v.as_str());
                }
                request = request.headers(map);
            }
            match self.client.send_request(subject.clone(), request).await {
                Ok(reply) => Ok(to_message(reply)),
                Err(e) => Err(match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => BusError::Timeout(subject),
                    async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                    async_nats::RequestErrorKind::InvalidSubject => {
                        BusError::InvalidSubject(subject)
                    }
                    _ => unavailable(e),
                }),
            }
        }
        .boxed()
    }

    fn subscribe(
        &self,
        subject: String,
        queue_group: Option<String>,
        buffer: usize,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        async move {
            if !valid_pattern(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            let subscriber = match queue_group {
                Some(group) => self.client.queue_subscribe(subject, group).await,
                None => self.client.subscribe(subject).await,
            }
            .map_err(unavailable)?;
            // Make sure the server has the subscription before we report it live.
            // Bounded: a deploy must fail clearly, not hang, while the server is away.
            match tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await {
                Ok(flushed) => flushed.map_err(unavailable)?,
                Err(_) => {
                    return Err(BusError::Unavailable(
                        "no answer from the NATS server within 5 s".into(),
                    ));
                }
            }
            let (sender, messages) = mpsc::channel(buffer.max(1));
            let dropped = Arc::new(AtomicU64::new(0));
            let (stop_tx, stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
            tokio::spawn(forward(
                self.client.clone(),
                subscriber,
                sender,
                stop_rx,
                dropped.clone(),
            ));
            Ok(Subscription {
                messages,
                stop: Box::new(Drain(std::sync::Mutex::new(Some(stop_tx)))),
                dropped,
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("nats {} ({:?})", self.url, self.client.connection_state()).to_lowercase()
    }

    fn flush(&self, within: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(BusError::Unavailable(format!(
                    "not connected to {}: messages published since the connection was lost are not delivered",
                    self.url
                )));
            }
            match tokio::time::timeout(within, self.client.flush()).await {
                Ok(flushed) => flushed.map_err(unavailable),
                Err(_) => Err(BusError::Unavailable(format!(
                    "{} did not confirm the flush within {within:?}",
                    self.url
                ))),
            }
        }
        .boxed()
    }
}

/// Moves a subscription's messages from the client into the trigger's queue, without
/// ever waiting on the queue: a full queue (the component's `max_in_flight` handlers
/// busy and as many messages waiting) drops the message and counts it, so the client's
/// own buffer stays empty and never hides an unbounded backlog. On stop, unsubscribes
/// and hands over what the server had already sent, not waiting at all for a server
/// that is gone and at most [`STOP_WAIT`] at a time for one that may be.
async fn forward(
    client: async_nats::Client,
    mut subscriber: async_nats::Subscriber,
    queue: mpsc::Sender<Message>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    dropped: Arc<AtomicU64>,
) {
    let hand_over = |m: async_nats::Message| match queue.try_send(to_message(m)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    loop {
        tokio::select! {
            stopped = &mut stop => {
                // Unsubscribe, say so (nothing new arrives after it), then hand over
                // what the server had already sent, waiting for the handlers if need
                // be: those messages were taken in and are not dropped. The client ends
                // the stream once the unsubscribe is through; with the server away it
                // never does, so each wait for the server is bounded.
                let _ = subscriber.drain().await;
                if let Ok(stopped) = stopped {
                    let _ = stopped.send(());
                }
                // Disconnected: the server already forgot the subscription, and nothing
                // more will come.
                if client.connection_state() != async_nats::connection::State::Connected {
                    return;
                }
                loop {
                    match tokio::time::timeout(STOP_WAIT, subscriber.next()).await {
                        Ok(Some(m)) => {
                            if queue.send(to_message(m)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(_) => {
                            tracing::warn!(
                                "nats: the server did not confirm an unsubscribe within {STOP_WAIT:?} (is it reachable?); stopped waiting for it"
                            );
                            return;
                        }
                    }
                }
            }
            next = subscriber.next() => match next {
                Some(m) => {
                    if !hand_over(m) {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

/// Stops a NATS subscription: its task unsubscribes and acknowledges once the server
/// has the unsubscribe, so nothing published after `stop` returns is delivered.
#[derive(Debug)]
struct Drain(std::sync::Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>);

/// How long `stop` waits for the unsubscribe to reach the server (it may be away).
const STOP_WAIT: Duration = Duration::from_secs(5);

impl StopDelivery for Drain {
    fn stop(&self) -> BoxFuture<'static, ()> {
        let Some(stop) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return async {}.boxed();
        };
        let (stopped, acknowledged) = oneshot::channel();
        let _ = stop.send(stopped);
        async move {
            let _ = tokio::time::timeout(STOP_WAIT, acknowledged).await;
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_never_leave_the_url() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("nats://alice:pw@a:4222,tls://tok@b:4222"),
            "nats://***@a:4222,tls://***@b:4222"
        );
        assert_eq!(redact_url("u:p@host:4222"), "***@host:4222");
        assert_eq!(redact_url("nats://a:p@ss@h:1"), "nats://***@h:1");
    }
}
