//! Host capability `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`): a guest may
//! open only the buckets its manifest entry lists; anything else is `access-denied`.
//! The data lives in the host's [`KvStore`] backend (`crate::kv`).

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::kv::{KvError, KvStore};
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

/// An open bucket, as the guest holds it.
#[derive(Debug)]
pub struct Bucket {
    name: String,
}

/// What one component may do with key-value: shared by all its instances.
#[derive(Debug, Clone)]
pub struct KvGrant {
    /// The host's store.
    pub store: Arc<dyn KvStore>,
    /// Buckets it may open.
    pub buckets: Arc<[String]>,
}

/// The key-value grant of a spec: the host's store, and the spec's `buckets`.
pub fn grant(spec: &ValidSpec, store: Arc<dyn KvStore>) -> KvGrant {
    KvGrant {
        store,
        buckets: spec.buckets.clone().into(),
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
            .map_err(|e| Error::Other(e.to_string()))
    }
}

struct WasiKeyValue;

impl HasData for WasiKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to the linker; `get` gives the view of a
/// store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    atomics::add_to_linker::<T, WasiKeyValue>(linker, get)?;
    batch::add_to_linker::<T, WasiKeyValue>(linker, get)
}

fn other(e: KvError) -> Error {
    Error::Other(e.0)
}

/// Keys per `list-keys` page.
const PAGE: usize = 1000;

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        if !self.grant.buckets.contains(&identifier) {
            return Err(Error::AccessDenied);
        }
        self.table
            .push(Bucket { name: identifier })
            .map_err(|e| Error::Other(e.to_string()))
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let name = self.bucket(&bucket)?;
        Ok(self
            .grant
            .store
            .get(name, key)
            .await
            .map_err(other)?
            .map(|v| v.to_vec()))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant
            .store
            .set(name, key, value.into())
            .await
            .map_err(other)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        self.grant.store.delete(name, key).await.map_err(other)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let name = self.bucket(&bucket)?;
        Ok(self
            .grant
            .store
            .get(name, key)
            .await
            .map_err(other)?
            .is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<KeyResponse, Error> {
        let name = self.bucket(&bucket)?;
        let keys = self.grant.store.keys(name).await.map_err(other)?;
        let start = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.iter().skip(start).take(PAGE).cloned().collect();
        let next = start + page.len();
        Ok(KeyResponse {
            keys: page,
            cursor: (next < keys.len()).then_some(next as u64),
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
        let name = self.bucket(&bucket)?;
        self.grant
            .store
            .increment(name, key, delta)
            .await
            .map_err(other)
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let name = self.bucket(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = self
                .grant
                .store
                .get(name.clone(), key.clone())
                .await
                .map_err(other)?;
            values.push(value.map(|v| (key, v.to_vec())));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        for (key, value) in key_values {
            self.grant
                .store
                .set(name.clone(), key, value.into())
                .await
                .map_err(other)?;
        }
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), Error> {
        let name = self.bucket(&bucket)?;
        for key in keys {
            self.grant
                .store
                .delete(name.clone(), key)
                .await
                .map_err(other)?;
        }
        Ok(())
    }
}
