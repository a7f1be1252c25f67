//! The embedded bus: in-process, NATS subject semantics (wildcards, queue groups,
//! request/reply, no responders). The default when no NATS server is configured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::events::embedded::EmbeddedEvents;
use crate::spec::subject::INBOX_PREFIX;

use super::{
    BusError, Message, MessageBus, StopDelivery, Subscription, check_message, subject_matches,
    valid_pattern, valid_subject,
};

/// An in-process message bus.
#[derive(Debug, Default, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subscriptions: Mutex<Subscriptions>,
    next_id: AtomicU64,
    /// The streams that keep what is published on their subjects (durable events).
    streams: std::sync::OnceLock<EmbeddedEvents>,
}

impl Inner {
    /// The subscription table, locked: the one place the bus takes the lock.
    fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Sub {
    id: u64,
    pattern: String,
    queue_group: Option<String>,
    sender: mpsc::Sender<Message>,
}

/// Every subscription, indexed so that a message finds its subscribers without trying
/// every pattern: a host with many components (and a reply inbox per request in
/// flight) would otherwise match each message against all of them.
#[derive(Debug, Default)]
struct Subscriptions {
    /// Patterns without wildcards, by subject.
    literal: HashMap<String, Vec<Sub>>,
    /// Patterns with `*` or `>`, tried one by one.
    wildcard: Vec<Sub>,
    /// Rotates deliveries among the members of each queue group.
    turns: HashMap<String, usize>,
}

fn has_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|token| token == "*" || token == ">")
}

impl Subscriptions {
    fn add(&mut self, sub: Sub) {
        if has_wildcard(&sub.pattern) {
            self.wildcard.push(sub);
        } else {
            self.literal
                .entry(sub.pattern.clone())
                .or_default()
                .push(sub);
        }
    }

    fn remove(&mut self, pattern: &str, id: u64) {
        if has_wildcard(pattern) {
            self.wildcard.retain(|s| s.id != id);
        } else if let Some(subs) = self.literal.get_mut(pattern) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                self.literal.remove(pattern);
            }
        }
    }

    /// The senders that should receive a message on `subject`: every plain subscriber,
    /// and one member of each queue group (rotating).
    fn recipients(&mut self, subject: &str) -> Vec<mpsc::Sender<Message>> {
        let literal = self.literal.get(subject).into_iter().flatten();
        let wildcard = self
            .wildcard
            .iter()
            .filter(|s| subject_matches(&s.pattern, subject));
        let matching: Vec<&Sub> = literal
            .chain(wildcard)
            .filter(|s| !s.sender.is_closed())
            .collect();
        let mut recipients: Vec<mpsc::Sender<Message>> = matching
            .iter()
            .filter(|s| s.queue_group.is_none())
            .map(|s| s.sender.clone())
            .collect();
        let mut groups: Vec<&str> = matching
            .iter()
            .filter_map(|s| s.queue_group.as_deref())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            let members: Vec<&&Sub> = matching
                .iter()
                .filter(|s| s.queue_group.as_deref() == Some(group))
                .collect();
            let turn = match self.turns.get_mut(group) {
                Some(turn) => turn,
                None => self.turns.entry(group.to_string()).or_default(),
            };
            recipients.push(members[*turn % members.len()].sender.clone());
            *turn = turn.wrapping_add(1);
        }
        recipients
    }
}

impl EmbeddedBus {
    /// A bus with no subscribers.
    pub fn new() -> EmbeddedBus {
        EmbeddedBus::default()
    }

    /// A bus whose messages on subjects a stream of `events` keeps are stored there
    /// before they are delivered (as JetStream captures core publishes).
    pub fn with_streams(events: EmbeddedEvents) -> EmbeddedBus {
        let bus = EmbeddedBus::new();
        bus.inner
            .streams
            .set(events)
            .expect("a new bus has no streams");
        bus
    }

    fn recipients(&self, subject: &str) -> Vec<mpsc::Sender<Message>> {
        self.inner.subscriptions().recipients(subject)
    }

    /// Delivers `message` to its subscribers, without storing it.
    pub async fn deliver(&self, message: Message) {
        // Senders are collected under the lock and used after it: a full
        // subscriber slows the publisher down instead of losing messages.
        for recipient in self.recipients(&message.subject) {
            let _ = recipient.send(message.clone()).await;
        }
    }
}

impl MessageBus for EmbeddedBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            check_message(&message)?;
            if let Some(streams) = self.inner.streams.get() {
                streams
                    .capture(&message)
                    .await
                    .map_err(|e| BusError::Unavailable(e.to_string()))?;
            }
            self.deliver(message).await;
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
        async move {
            if !valid_subject(&subject) {
                return Err(BusError::InvalidSubject(subject));
            }
            // Unguessable (128 random bits): nobody can answer another's request first.
            let inbox = format!("{INBOX_PREFIX}{:032x}", rand::random::<u128>());
            let mut replies = self.subscribe(inbox.clone(), None, 1).await?;
            let recipients = self.recipients(&subject);
            if recipients.is_empty() {
                return Err(BusError::NoResponders(subject));
            }
            let message = Message {
                subject: subject.clone(),
                reply_to: Some(inbox),
                headers,
                body,
            };
            for recipient in recipients {
                let _ = recipient.send(message.clone()).await;
            }
            match tokio::time::timeout(timeout, replies.messages.recv()).await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) | Err(_) => Err(BusError::Timeout(subject)),
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
            let (sender, messages) = mpsc::channel(buffer.max(1));
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let stop = Box::new(Unsubscribe {
                bus: self.inner.clone(),
                pattern: subject.clone(),
                id,
            });
            self.inner.subscriptions().add(Sub {
                id,
                pattern: subject,
                queue_group,
                sender,
            });
            Ok(Subscription {
                messages,
                stop,
                dropped: Default::default(),
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "embedded (in-process)".to_string()
    }
}

#[derive(Debug)]
struct Unsubscribe {
    bus: Arc<Inner>,
    pattern: String,
    id: u64,
}

impl Unsubscribe {
    fn unsubscribe(&self) {
        self.bus.subscriptions().remove(&self.pattern, self.id);
    }
}

impl StopDelivery for Unsubscribe {
    fn stop(&self) -> BoxFuture<'static, ()> {
        self.unsubscribe();
        async {}.boxed()
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(sub: &mut Subscription) -> Vec<String> {
        let mut subjects = Vec::new();
        while let Ok(message) = sub.messages.try_recv() {
            subjects.push(message.subject);
        }
        subjects
    }

    #[tokio::test]
    async fn literal_and_wildcard_subscribers_both_receive_until_they_stop() {
        let bus = EmbeddedBus::new();
        let mut exact = bus.subscribe("a.b".into(), None, 8).await.unwrap();
        let mut star = bus.subscribe("a.*".into(), None, 8).await.unwrap();
        let mut rest = bus.subscribe("a.>".into(), None, 8).await.unwrap();
        let mut other = bus.subscribe("a.c".into(), None, 8).await.unwrap();
        for subject in ["a.b", "a.c", "a.b.c"] {
            let message = Message {
                subject: subject.into(),
                ..Message::default()
            };
            bus.publish(message).await.unwrap();
        }
        assert_eq!(received(&mut exact), ["a.b"]);
        assert_eq!(received(&mut star), ["a.b", "a.c"]);
        assert_eq!(received(&mut rest), ["a.b", "a.c", "a.b.c"]);
        assert_eq!(received(&mut other), ["a.c"]);

        exact.stop.stop().await;
        star.stop.stop().await;
        let message = Message {
            subject: "a.b".into(),
            ..Message::default()
        };
        bus.publish(message).await.unwrap();
        assert!(received(&mut exact).is_empty());
        assert!(received(&mut star).is_empty());
        assert_eq!(received(&mut rest), ["a.b"]);
        let subscriptions = bus.inner.subscriptions();
        assert!(
            !subscriptions.literal.contains_key("a.b"),
            "emptied entries go"
        );
    }

    #[tokio::test]
    async fn a_queue_group_spans_literal_and_wildcard_members() {
        let bus = EmbeddedBus::new();
        let group = || Some("g".to_string());
        let mut exact = bus.subscribe("q.x".into(), group(), 8).await.unwrap();
        let mut star = bus.subscribe("q.*".into(), group(), 8).await.unwrap();
        for _ in 0..4 {
            let message = Message {
                subject: "q.x".into(),
                ..Message::default()
            };
            bus.publish(message).await.unwrap();
        }
        // One member per message, taking turns.
        assert_eq!(received(&mut exact).len(), 2);
        assert_eq!(received(&mut star).len(), 2);
    }
}
