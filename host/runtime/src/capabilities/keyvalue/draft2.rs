//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics` with the `cas` resource, `batch`), the
//! version Spin 4's SDK imports, onto the same buckets, grant and bounds as 0.2.0-draft
//! (`mod.rs`).
//!
//! - `cas.new` reads the key's current value; `swap` writes only if the key still holds
//!   it (the backend's compare-and-swap, atomic on both backends), else `cas-failed`
//!   with a fresh `cas` carrying the value that won, ready for the guest's retry.
//! - `increment` takes a signed delta: a compare-and-swap loop over the decimal value,
//!   so it is atomic against `swap` and other increments on either backend.
//! - `list-keys` cursors are the last key of the previous page.

use wasmtime::component::Resource;

use super::{KeyValue, KvGrant, MAX_KEY_BYTES, PAGE};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/compat/keyvalue-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

pub(super) use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// An open bucket of this version.
#[derive(Debug)]
pub struct Bucket {
    name: String,
}

/// A compare-and-swap in progress: the key and the value it was read with.
#[derive(Debug)]
pub struct Cas {
    bucket: String,
    key: String,
    current: Option<Vec<u8>>,
}

/// Attempts of one `increment` before it reports contention.
const INCREMENT_ATTEMPTS: usize = 1000;

fn error(e: super::Error) -> Error {
    match e {
        super::Error::NoSuchStore => Error::NoSuchStore,
        super::Error::AccessDenied => Error::AccessDenied,
        super::Error::Other(why) => Error::Other(why),
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

impl KeyValue<'_> {
    fn draft2_bucket(&self, bucket: &Resource<Bucket>) -> Result<String, Error> {
        Ok(self.table.get(bucket).map_err(other)?.name.clone())
    }
}

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        if !self.grant.may_open(&identifier) {
            return Err(Error::AccessDenied);
        }
        self.table.push(Bucket { name: identifier }).map_err(other)
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.get(name, key).await.map_err(error)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.set(name, key, value).await.map_err(error)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.delete(name, key).await.map_err(error)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let name = self.draft2_bucket(&bucket)?;
        Ok(self.grant.get(name, key).await.map_err(error)?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<KeyResponse, Error> {
        let name = self.draft2_bucket(&bucket)?;
        if cursor.as_ref().is_some_and(|c| c.len() > MAX_KEY_BYTES) {
            return Err(Error::Other("a cursor is a key: at most 512 bytes".into()));
        }
        let page = self
            .grant
            .keys_after(name, cursor, PAGE)
            .await
            .map_err(error)?;
        let cursor = if page.more {
            page.keys.last().cloned()
        } else {
            None
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

impl KvGrant {
    /// Sets `key` to `new` if it still holds `expected`; whether it did.
    async fn swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, Error> {
        KvGrant::check_key(&key).map_err(error)?;
        self.check_value(&key, new.len()).map_err(error)?;
        let _span = self.span("compare_and_swap", &bucket);
        self.store
            .compare_and_swap(bucket, key, expected.map(Into::into), new.into())
            .await
            .map_err(other)
    }
}

impl atomics::HostCas for KeyValue<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, Error> {
        let name = self.draft2_bucket(&bucket)?;
        let current = self
            .grant
            .get(name.clone(), key.clone())
            .await
            .map_err(error)?;
        self.table
            .push(Cas {
                bucket: name,
                key,
                current,
            })
            .map_err(other)
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.table.get(&cas).map_err(other)?.current.clone())
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, Error> {
        let name = self.draft2_bucket(&bucket)?;
        for _ in 0..INCREMENT_ATTEMPTS {
            let current = self
                .grant
                .get(name.clone(), key.clone())
                .await
                .map_err(error)?;
            let value = match &current {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "the value of `{key}` is not a decimal number, so it cannot be incremented"
                        ))
                    })?,
            };
            let next = value.checked_add(delta).ok_or_else(|| {
                Error::Other(format!(
                    "incrementing `{key}` by {delta} would overflow s64"
                ))
            })?;
            let swapped = self
                .grant
                .swap(
                    name.clone(),
                    key.clone(),
                    current,
                    next.to_string().into_bytes(),
                )
                .await?;
            if swapped {
                return Ok(next);
            }
        }
        Err(Error::Other(format!(
            "`{key}` changed under {INCREMENT_ATTEMPTS} attempts to increment it: too much contention, retry"
        )))
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let Cas {
            bucket,
            key,
            current,
        } = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(other(e)))?;
        let swapped = self
            .grant
            .swap(bucket.clone(), key.clone(), current, value)
            .await
            .map_err(atomics::CasError::StoreError)?;
        if swapped {
            return Ok(());
        }
        // Lost the race: a fresh `cas` with the value that won, for the retry.
        let current = self
            .grant
            .get(bucket.clone(), key.clone())
            .await
            .map_err(|e| atomics::CasError::StoreError(error(e)))?;
        let fresh = self
            .table
            .push(Cas {
                bucket,
                key,
                current,
            })
            .map_err(|e| atomics::CasError::StoreError(other(e)))?;
        Err(atomics::CasError::CasFailed(fresh))
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.get_many(name, keys).await.map_err(error)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.set_many(name, key_values).await.map_err(error)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let name = self.draft2_bucket(&bucket)?;
        self.grant.delete_many(name, keys).await.map_err(error)
    }
}
