//! The key-value store behind the `wasi:keyvalue` capability: buckets of bytes, with two
//! backends behind one trait (embedded: a local redb file that survives restarts; NATS:
//! JetStream KV buckets shared by many hosts).

pub mod embedded;
pub mod nats;

use bytes::Bytes;
use futures::future::BoxFuture;

/// A key-value operation that failed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

impl KvError {
    /// An error from any displayable cause.
    pub fn from_display(e: impl std::fmt::Display) -> KvError {
        KvError(e.to_string())
    }
}

/// One page of a bucket's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, sorted.
    pub keys: Vec<String>,
    /// Whether keys after the last one follow.
    pub more: bool,
}

/// A key-value backend. Both backends pass the same conformance tests.
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// A short description of the store, for listings (the console, `GET /v1/status`).
    fn describe(&self) -> String;

    /// The value of `key`, if any.
    fn get(&self, bucket: String, key: String) -> BoxFuture<'_, Result<Option<Bytes>, KvError>>;
    /// Sets `key` to `value`.
    fn set(&self, bucket: String, key: String, value: Bytes) -> BoxFuture<'_, Result<(), KvError>>;
    /// Removes `key` (no error if absent).
    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), KvError>>;
    /// Up to `limit` keys of the bucket that sort after `after` (from the first if
    /// `None`), in order, and whether more follow. Never holds more than a page of keys,
    /// however large the bucket.
    fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, KvError>>;
    /// Atomically adds `delta` to the decimal number stored at `key` (absent: 0) and
    /// returns the new value.
    fn increment(
        &self,
        bucket: String,
        key: String,
        delta: u64,
    ) -> BoxFuture<'_, Result<u64, KvError>>;
    /// Atomically sets `key` to `new` if its value is `expected` (`None`: absent).
    /// Returns whether it did.
    fn compare_and_swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> BoxFuture<'_, Result<bool, KvError>>;
}

/// Parses a counter value (a decimal number).
fn parse_counter(key: &str, value: Option<&[u8]>) -> Result<u64, KvError> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                KvError(format!(
                    "the value of `{key}` is not a decimal number, so it cannot be incremented"
                ))
            }),
    }
}

/// Adds with an error on overflow.
fn add_counter(key: &str, current: u64, delta: u64) -> Result<u64, KvError> {
    current
        .checked_add(delta)
        .ok_or_else(|| KvError(format!("incrementing `{key}` would overflow u64")))
}
