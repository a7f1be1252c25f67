//! The embedded bus: in-process, NATS subject semantics (wildcards, queue groups,
//! request/reply, no responders). The default when no NATS server is configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{
    BusError, Message, MessageBus, StopDelivery, Subscription, subject_matches, valid_pattern,
    valid_subject,
};

/// An in-process message bus.
#[derive(Debug, Default, Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subscriptions: Mutex<Vec<Sub>>,
    next_id: AtomicU64,
    /// Rotates deliveries among the members of a queue group.
    turns: Mutex<std::collections::HashMap<String, usize>>,
}

#[derive(Debug)]
struct Sub {
    id: u64,
    pattern: String,
    queue_group: Option<String>,
    sender: mpsc::Sender<Message>,
}

impl EmbeddedBus {
    /// A bus with no subscribers.
    pub fn new() -> EmbeddedBus {
        EmbeddedBus::default()
    }

    /// The senders that should receive a message on `subject`: every plain subscriber,
    /// and one member of each queue group (rotating).
    fn recipients(&self, subject: &str) -> Vec<mpsc::Sender<Message>> {
        let subs = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let matching: Vec<&Sub> = subs
            .iter()
            .filter(|s| !s.sender.is_closed() && subject_matches(&s.pattern, subject))
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
        let mut turns = self.inner.turns.lock().unwrap_or_else(|e| e.into_inner());
        for group in groups {
            let members: Vec<&&Sub> = matching
                .iter()
                .filter(|s| s.queue_group.as_deref() == Some(group))
                .collect();
            let turn = turns.entry(group.to_string()).or_default();
            recipients.push(members[*turn % members.len()].sender.clone());
            *turn = turn.wrapping_add(1);
        }
        recipients
    }
}

impl MessageBus for EmbeddedBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            if !valid_subject(&message.subject) {
                return Err(BusError::InvalidSubject(message.subject));
            }
            // Senders are collected under the lock and used after it: a full
            // subscriber slows the publisher down instead of losing messages.
            for recipient in self.recipients(&message.subject) {
                let _ = recipient.send(message.clone()).await;
            }
            Ok(())
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
            let inbox = format!(
                "_INBOX.{}",
                self.inner.next_id.fetch_add(1, Ordering::Relaxed)
            );
            let mut replies = self.subscribe(inbox.clone(), None, 1).await?;
            let recipients = self.recipients(&subject);
            if recipients.is_empty() {
                return Err(BusError::NoResponders(subject));
            }
            let message = Message {
                subject: subject.clone(),
                reply_to: Some(inbox),
                headers: vec![],
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
            let sub = Sub {
                id,
                pattern: subject,
                queue_group,
                sender,
            };
            self.inner
                .subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sub);
            Ok(Subscription {
                messages,
                stop: Box::new(Unsubscribe {
                    bus: self.inner.clone(),
                    id,
                }),
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
    id: u64,
}

impl StopDelivery for Unsubscribe {
    fn stop(&self) -> BoxFuture<'static, ()> {
        self.bus
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != self.id);
        async {}.boxed()
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.bus
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != self.id);
    }
}
