//! The NATS bus (async-nats): for many hosts on one NATS cluster. Reconnects with
//! backoff on its own, and restores subscriptions after a reconnect.

use std::path::PathBuf;
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
}

/// A bus over a NATS connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    /// The server URL without credentials ([`redact_url`]).
    url: String,
}

impl NatsBus {
    /// The connection, shared with the NATS key-value store.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Connects to the server (waiting up to 5 s for the first connection).
    pub async fn connect(config: &NatsConfig) -> Result<NatsBus> {
        let mut options = async_nats::ConnectOptions::new()
            .name("weft")
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("nats: disconnected, reconnecting with backoff")
                    }
                    other => tracing::info!("nats: {other}"),
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
        let client = options.connect(config.url.as_str()).await.with_context(|| {
            format!("cannot connect to NATS at {url}: is nats-server running there? (omit --nats to use the embedded bus)")
        })?;
        Ok(NatsBus { client, url })
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

    fn request(
        &self,
        subject: String,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Message, BusError>> {
        async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            let request = async_nats::Request::new()
                .payload(body)
                .timeout(Some(timeout));
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
            let mut subscriber = match queue_group {
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
            let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        stopped = &mut stop_rx => {
                            // Unsubscribe, say so (nothing new arrives after it), then
                            // hand over what the server already sent.
                            let _ = subscriber.drain().await;
                            if let Ok(stopped) = stopped {
                                let _ = stopped.send(());
                            }
                            while let Some(m) = subscriber.next().await {
                                if sender.send(to_message(m)).await.is_err() {
                                    break;
                                }
                            }
                            return;
                        }
                        next = subscriber.next() => match next {
                            Some(m) => {
                                if sender.send(to_message(m)).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        },
                    }
                }
            });
            Ok(Subscription {
                messages,
                stop: Box::new(Drain(std::sync::Mutex::new(Some(stop_tx)))),
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("nats {} ({:?})", self.url, self.client.connection_state()).to_lowercase()
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
