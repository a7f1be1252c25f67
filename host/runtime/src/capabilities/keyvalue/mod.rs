//! Host capability `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`), beside
//! `0.2.0-draft2` with compare-and-swap ([`draft2`]) and Spin's `spin:key-value@3.0.0`
//! ([`spin`]), all three onto the same grant: a guest may
//! open only the buckets its manifest entry lists; anything else is `access-denied`.
//! The data lives in the host's [`KvStore`] backend (`crate::kv`).
//!
//! Every call is bounded here, the same on both backends, so no guest can make the host
//! hold more than it allows: keys of at most [`MAX_KEY_BYTES`], values of at most
//! `limits.kv_max_value_bytes`, batch calls of at most `limits.kv_max_batch_keys` keys
//! and `limits.kv_max_batch_bytes` of values, and `list-keys` pages of [`PAGE`] keys
//! read page by page. Exceeding a bound is an `other` error naming it, never a trap.

mod draft2;
mod spin;

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::kv::{KeyPage, KvError, KvStore};
use crate::metrics::{KvOp, Usage, UseOutcome};
use crate::spec::ValidSpec;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// Longest key, in bytes: escaped for NATS (up to three bytes each) it stays far below
/// the 4 KiB protocol line that would make the server drop the connection.
pub const MAX_KEY_BYTES: usize = 512;

/// Keys per `list-keys` page.
pub const PAGE: usize = 1000;

/// An open bucket, as the guest holds it.
#[derive(Debug)]
pub struct Bucket {
    name: String,
    /// The cursor last handed out by `list-keys`, and the key its page ended with.
    cursor: Option<(u64, String)>,
}

/// What one component may do with key-value: shared by all its instances.
#[derive(Debug, Clone)]
pub struct KvGrant {
    /// The host's store.
    pub store: Arc<dyn KvStore>,
    /// Buckets it may open.
    pub buckets: Arc<[String]>,
    /// Largest value, in bytes.
    pub max_value_bytes: u64,
    /// Keys per batch call.
    pub max_batch_keys: u32,
    /// Bytes of values per batch call.
    pub max_batch_bytes: u64,
    /// Where its operations are counted.
    pub usage: Arc<Usage>,
    /// The span of the call its instance handles, when traces are on: each operation
    /// is a child of it.
    pub trace: Option<crate::trace::CallTrace>,
}

/// A grant's view of the store: every operation counted by its outcome.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn KvStore>,
    usage: Arc<Usage>,
}

impl Counted {
    fn count<'a, T: Send + 'a>(
        &'a self,
        op: KvOp,
        call: BoxFuture<'a, Result<T, KvError>>,
    ) -> BoxFuture<'a, Result<T, KvError>> {
        Box::pin(async move { self.usage.kv_result(op, call.await) })
    }
}

impl KvStore for Counted {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get(&self, bucket: String, key: String) -> BoxFuture<'_, Result<Option<Bytes>, KvError>> {
        self.count(KvOp::Get, self.inner.get(bucket, key))
    }

    fn set(&self, bucket: String, key: String, value: Bytes) -> BoxFuture<'_, Result<(), KvError>> {
        self.count(KvOp::Set, self.inner.set(bucket, key, value))
    }

    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), KvError>> {
        self.count(KvOp::Delete, self.inner.delete(bucket, key))
    }

    fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, KvError>> {
        self.count(KvOp::List, self.inner.keys_after(bucket, after, limit))
    }

    fn increment(
        &self,
        bucket: String,
        key: String,
        delta: u64,
    ) -> BoxFuture<'_, Result<u64, KvError>> {
        self.count(KvOp::Increment, self.inner.increment(bucket, key, delta))
    }

    fn compare_and_swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> BoxFuture<'_, Result<bool, KvError>> {
        let call = self.inner.compare_and_swap(bucket, key, expected, new);
        self.count(KvOp::CompareAndSwap, call)
    }
}

/// The key-value grant of a spec: the host's store (each operation counted in `usage`),
/// the spec's `buckets` and its key-value limits.
pub fn grant(spec: &ValidSpec, store: Arc<dyn KvStore>, usage: Arc<Usage>) -> KvGrant {
    KvGrant {
        store: Arc::new(Counted {
            inner: store,
            usage: usage.clone(),
        }),
        usage,
        buckets: spec.buckets.clone().into(),
        max_value_bytes: spec.limits.kv_max_value_bytes,
        max_batch_keys: spec.limits.kv_max_batch_keys,
        max_batch_bytes: spec.limits.kv_max_batch_bytes,
        trace: None,
    }
}

impl KvGrant {
    /// A child span of the call for operation `op` on `bucket`, if traces are on.
    fn span(&self, op: &str, bucket: &str) -> Option<crate::trace::ChildSpan> {
        // Nothing to carry on: in a trace not sampled, no span at all.
        let trace = self.trace.as_ref().filter(|t| t.recording())?;
        Some(trace.child(
            opentelemetry::trace::SpanKind::Client,
            || format!("kv {op} {bucket}"),
            || {
                vec![
                    opentelemetry::KeyValue::new("db.operation.name", op.to_string()),
                    opentelemetry::KeyValue::new("db.namespace", bucket.to_string()),
                ]
            },
        ))
    }

    /// Whether the component may open `bucket`: the one check of every interface's
    /// `open`.
    pub(super) fn may_open(&self, bucket: &str) -> bool {
        let allowed = self.buckets.iter().any(|b| b == bucket);
        let outcome = if allowed {
            UseOutcome::Ok
        } else {
            UseOutcome::Denied
        };
        self.usage.kv(KvOp::Open, outcome);
        allowed
    }

    /// The value of `key` in `bucket`.
    async fn get(&self, bucket: String, key: String) -> Result<Option<Vec<u8>>, Error> {
        let _span = self.span("get", &bucket);
        KvGrant::check_key(&key)?;
        let value = self.store.get(bucket, key).await.map_err(other)?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Sets `key` in `bucket`, within the value limit.
    async fn set(&self, bucket: String, key: String, value: Vec<u8>) -> Result<(), Error> {
        let _span = self.span("set", &bucket);
        KvGrant::check_key(&key)?;
        self.check_value(&key, value.len())?;
        self.store
            .set(bucket, key, value.into())
            .await
            .map_err(other)
    }

    /// Removes `key` from `bucket`.
    async fn delete(&self, bucket: String, key: String) -> Result<(), Error> {
        let _span = self.span("delete", &bucket);
        KvGrant::check_key(&key)?;
        self.store.delete(bucket, key).await.map_err(other)
    }

    /// A page of at most `limit` keys after `after`.
    async fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<KeyPage, Error> {
        let _span = self.span("list", &bucket);
        self.store
            .keys_after(bucket, after, limit)
            .await
            .map_err(other)
    }

    fn check_key(key: &str) -> Result<(), Error> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::Other(format!(
                "key of {} bytes: a key is 1 to {MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, key: &str, len: usize) -> Result<(), Error> {
        if len as u64 > self.max_value_bytes {
            return Err(Error::Other(format!(
                "value for `{key}` is {len} bytes, over this component's limit of {} (`limits.kv_max_value_bytes`)",
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    fn check_batch(&self, keys: usize) -> Result<(), Error> {
        if keys > self.max_batch_keys as usize {
            return Err(Error::Other(format!(
                "a batch of {keys} keys is over this component's limit of {} (`limits.kv_max_batch_keys`)",
                self.max_batch_keys
            )));
        }
        Ok(())
    }

    fn check_batch_bytes(&self, bytes: u64) -> Result<(), Error> {
        if bytes > self.max_batch_bytes {
            return Err(Error::Other(format!(
                "a batch carrying over {} bytes of values is over this component's limit (`limits.kv_max_batch_bytes`)",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }
}

/// The view the store hands to the bindings: the grant and the resource table.
pub struct KeyValue<'a> {
    grant: &'a KvGrant,
    table: &'a mut ResourceTable,
}

impl<'a> KeyValue<'a> {
    /// A view over `grant` and the instance's `table`.
    pub fn new(grant: &'a KvGrant, table: &'a mut ResourceTable) -> KeyValue<'a> {
        KeyValue { grant, table }
    }

    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<String, Error> {
        self.table
            .get(bucket)
            .map(|b| b.name.clone())
            .map_err(table_error)
    }
}

/// What every version's bindings are added to the linker with: the view of `KeyValue`.
struct WasiKeyValue;

impl HasData for WasiKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` (0.2.0-draft and 0.2.0-draft2) and
/// `spin:key-value` to the linker; `get` gives the view of a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    atomics::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    batch::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    draft2::store::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    draft2::atomics::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    draft2::batch::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    // Spin's key-value is async in WIT (see `engine::Engines`).
    if linker.engine().get_concurrency_support() {
        spin::kv::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    }
    Ok(())
}

fn other(e: KvError) -> Error {
    Error::Other(e.0)
}

fn table_error(e: wasmtime::component::ResourceTableError) -> Error {
    Error::Other(e.to_string())
}

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        if !self.grant.may_open(&identifier) {
            return Err(Error::AccessDenied);
        }
        self.table
            .push(Bucket {
                name: identifier,
                cursor: None,
            })
            .map_err(table_error)
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let name = self.bucket(&bucket)?;
        self.grant.get(name, key).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant.set(name, key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant.delete(name, key).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let name = self.bucket(&bucket)?;
        Ok(self.grant.get(name, key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<KeyResponse, Error> {
        let name = self.bucket(&bucket)?;
        // A cursor stands for the last key of the page it came with: the next page starts
        // after that key, read from the store page by page.
        let after = match cursor {
            None => None,
            Some(cursor) => match &self.table.get(&bucket).map_err(table_error)?.cursor {
                Some((issued, last)) if *issued == cursor => Some(last.clone()),
                _ => {
                    return Err(Error::Other(format!(
                        "unknown cursor {cursor}: pass the cursor of the previous page from the same bucket handle"
                    )));
                }
            },
        };
        let page = self.grant.keys_after(name, after, PAGE).await?;
        let open = self.table.get_mut(&bucket).map_err(table_error)?;
        let cursor = match (page.more, page.keys.last()) {
            (true, Some(last)) => {
                let next = open.cursor.as_ref().map_or(1, |(c, _)| c.wrapping_add(1));
                open.cursor = Some((next, last.clone()));
                Some(next)
            }
            _ => {
                open.cursor = None;
                None
            }
        };
        Ok(KeyResponse {
            keys: page.keys,
            cursor,
        })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        KvGrant::check_key(&key)?;
        let name = self.bucket(&bucket)?;
        let _span = self.grant.span("increment", &name);
        self.grant
            .store
            .increment(name, key, delta)
            .await
            .map_err(other)
    }
}

impl KvGrant {
    /// The values of `keys`, in order (`None`: absent), within the batch bounds: it
    /// stops as soon as the values pass the bytes bound, so repeated keys of a large
    /// value cannot make the host hold them all.
    async fn get_many(
        &self,
        bucket: String,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
        let _span = self.span("get_many", &bucket);
        self.check_batch(keys.len())?;
        for key in &keys {
            KvGrant::check_key(key)?;
        }
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0u64;
        for key in keys {
            let value = self
                .store
                .get(bucket.clone(), key.clone())
                .await
                .map_err(other)?;
            bytes += value.as_ref().map_or(0, |v| v.len() as u64);
            self.check_batch_bytes(bytes)?;
            values.push((key, value.map(|v| v.to_vec())));
        }
        Ok(values)
    }

    /// Sets every pair, after checking them all: nothing is stored if one is refused.
    async fn set_many(
        &self,
        bucket: String,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let _span = self.span("set_many", &bucket);
        self.check_batch(key_values.len())?;
        let mut bytes = 0u64;
        for (key, value) in &key_values {
            KvGrant::check_key(key)?;
            self.check_value(key, value.len())?;
            bytes += value.len() as u64;
        }
        self.check_batch_bytes(bytes)?;
        for (key, value) in key_values {
            self.store
                .set(bucket.clone(), key, value.into())
                .await
                .map_err(other)?;
        }
        Ok(())
    }

    /// Removes every key, after checking them all.
    async fn delete_many(&self, bucket: String, keys: Vec<String>) -> Result<(), Error> {
        let _span = self.span("delete_many", &bucket);
        self.check_batch(keys.len())?;
        for key in &keys {
            KvGrant::check_key(key)?;
        }
        for key in keys {
            self.store
                .delete(bucket.clone(), key)
                .await
                .map_err(other)?;
        }
        Ok(())
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let name = self.bucket(&bucket)?;
        let values = self.grant.get_many(name, keys).await?;
        Ok(values
            .into_iter()
            .map(|(key, value)| value.map(|v| (key, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant.set_many(name, key_values).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant.delete_many(name, keys).await
    }
}
