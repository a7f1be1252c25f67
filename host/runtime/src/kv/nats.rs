//! The NATS key-value store: one JetStream KV bucket per weft bucket, created on first
//! use. Increment and compare-and-swap use the entry revision, so they are atomic
//! across hosts.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};

use super::{KeyPage, KvError, KvStore, add_counter, parse_counter};

/// Attempts at an optimistic update before giving up under contention.
const MAX_ATTEMPTS: usize = 100;

/// JetStream KV buckets on a NATS connection.
#[derive(Debug)]
pub struct NatsKv {
    js: jetstream::Context,
    buckets: Mutex<HashMap<String, kv::Store>>,
    server_version: String,
}

fn err(e: impl std::fmt::Display) -> KvError {
    KvError::from_display(e)
}

/// Messages the key-value connection's client buffers per subscription: a key listing
/// streams every key of the bucket through one (async-nats's default).
const CLIENT_BUFFER: usize = 65_536;

impl NatsKv {
    /// Key-value on a connection of its own to the server `config` names.
    pub async fn connect(config: &crate::bus::nats::NatsConfig) -> anyhow::Result<NatsKv> {
        let client = crate::bus::nats::connect_client(config, "key-value", CLIENT_BUFFER).await?;
        Ok(NatsKv::new(client))
    }

    /// Key-value over `client`'s JetStream.
    pub fn new(client: async_nats::Client) -> NatsKv {
        let server_version = client.server_info().version;
        NatsKv {
            js: jetstream::new(client),
            buckets: Mutex::new(HashMap::new()),
            server_version,
        }
    }

    async fn bucket(&self, name: &str) -> Result<kv::Store, KvError> {
        if let Some(store) = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(store.clone());
        }
        let store = match self.js.get_key_value(name).await {
            Ok(store) => store,
            Err(_) => self
                .js
                .create_key_value(kv::Config { bucket: name.to_string(), history: 1, ..Default::default() })
                .await
                .map_err(|e| {
                    let version = &self.server_version;
                    KvError(format!(
                        "creating JetStream KV bucket `{name}`: {e} (server {version}: JetStream must be enabled, `nats-server -js`, and KV needs nats-server 2.10 or newer)"
                    ))
                })?,
        };
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), store.clone());
        Ok(store)
    }

    /// The current value and the revision to update it from (`None`: create).
    async fn current(
        store: &kv::Store,
        key: &str,
    ) -> Result<(Option<Bytes>, Option<u64>), KvError> {
        match store.entry(encode_key(key)).await.map_err(err)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok((Some(entry.value), Some(entry.revision)))
            }
            Some(entry) => Ok((None, Some(entry.revision))),
            None => Ok((None, None)),
        }
    }

    /// Writes `value` if the key is still at `revision`; false when someone else won.
    async fn write_if(store: &kv::Store, key: &str, revision: Option<u64>, value: Bytes) -> bool {
        match revision {
            Some(revision) => store.update(encode_key(key), value, revision).await.is_ok(),
            None => store.create(encode_key(key), value).await.is_ok(),
        }
    }
}

/// JetStream KV keys allow only `-/_=.a-zA-Z0-9`, with no `.` at either end and no two
/// in a row (the key is part of a subject, whose tokens cannot be empty). Any other byte
/// (and `=` itself, and such a `.`) is written `=XX`, so every key the embedded store
/// accepts works here too, and `keys()` gives back the original names.
pub(crate) fn encode_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let last = bytes.len().saturating_sub(1);
    let mut out = String::with_capacity(key.len());
    for (i, &b) in bytes.iter().enumerate() {
        let dot_ok = i != 0 && i != last && bytes[i - 1] != b'.' && bytes[i + 1] != b'.';
        let plain =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_') || (b == b'.' && dot_ok);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

pub(crate) fn decode_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'=').then(|| key.get(i + 1..i + 3)).flatten();
        match escaped.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl KvStore for NatsKv {
    fn describe(&self) -> String {
        let state = self.js.client().connection_state();
        format!(
            "JetStream KV, nats-server {} ({state:?})",
            self.server_version
        )
        .to_lowercase()
    }

    fn get(&self, bucket: String, key: String) -> BoxFuture<'_, Result<Option<Bytes>, KvError>> {
        async move {
            self.bucket(&bucket)
                .await?
                .get(encode_key(&key))
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn set(&self, bucket: String, key: String, value: Bytes) -> BoxFuture<'_, Result<(), KvError>> {
        async move {
            self.bucket(&bucket)
                .await?
                .put(encode_key(&key), value)
                .await
                .map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), KvError>> {
        async move {
            self.bucket(&bucket)
                .await?
                .delete(encode_key(&key))
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, KvError>> {
        async move {
            let store = self.bucket(&bucket).await?;
            // JetStream lists keys unsorted: keep the `limit + 1` smallest after `after`
            // in a bounded heap while they stream past.
            let mut smallest = std::collections::BinaryHeap::with_capacity(limit + 1);
            let mut keys = store.keys().await.map_err(err)?;
            while let Some(key) = keys.try_next().await.map_err(err)? {
                let key = decode_key(&key);
                if after.as_ref().is_some_and(|after| key <= *after) {
                    continue;
                }
                smallest.push(key);
                if smallest.len() > limit + 1 {
                    smallest.pop();
                }
            }
            let mut keys = smallest.into_sorted_vec();
            let more = keys.len() > limit;
            keys.truncate(limit);
            Ok(KeyPage { keys, more })
        }
        .boxed()
    }

    fn increment(
        &self,
        bucket: String,
        key: String,
        delta: u64,
    ) -> BoxFuture<'_, Result<u64, KvError>> {
        async move {
            let store = self.bucket(&bucket).await?;
            for _ in 0..MAX_ATTEMPTS {
                let (value, revision) = Self::current(&store, &key).await?;
                let next = add_counter(&key, parse_counter(&key, value.as_deref())?, delta)?;
                if Self::write_if(&store, &key, revision, next.to_string().into()).await {
                    return Ok(next);
                }
            }
            Err(KvError(format!(
                "incrementing `{key}`: too much contention, gave up after {MAX_ATTEMPTS} attempts"
            )))
        }
        .boxed()
    }

    fn compare_and_swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> BoxFuture<'_, Result<bool, KvError>> {
        async move {
            let store = self.bucket(&bucket).await?;
            let (value, revision) = Self::current(&store, &key).await?;
            if value != expected {
                return Ok(false);
            }
            Ok(Self::write_if(&store, &key, revision, new).await)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_fit_jetstream() {
        for key in [
            "stock:apple",
            "plain-key_1/x.y",
            ".dot.",
            "a=b",
            "ünï cödé",
            "order:o-000001",
        ] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{key} -> {encoded}"
            );
            assert!(
                !encoded.starts_with('.') && !encoded.ends_with('.'),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded), key);
        }
        assert_eq!(
            encode_key("plain.key"),
            "plain.key",
            "valid keys are unchanged"
        );
    }
}
