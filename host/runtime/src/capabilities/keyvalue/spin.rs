//! `spin:key-value/key-value@3.0.0`, the interface Spin 4's SDK (`spin_sdk::key_value`)
//! imports, onto the same buckets, grant and bounds as `wasi:keyvalue`: a store label
//! is a bucket name the manifest's `buckets` must list (Spin's `default` store is the
//! bucket `default`), and every call goes through the checks in `mod.rs`.
//!
//! Its functions are `async` in WIT: each runs as a host task while the guest's other
//! tasks go on. `get-keys` streams the keys page by page as the guest reads them.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, FutureReader, Resource, StreamProducer, StreamReader, StreamResult,
    VecBuffer,
};

use super::{KeyValue, KvGrant, PAGE, WasiKeyValue};
use crate::kv::KeyPage;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin:key-value/imports@3.0.0",
        // Making the stream and future can fail (a full table): a trap, not a guest error.
        imports: { "spin:key-value/key-value.[method]store.get-keys": trappable },
        with: {
            "spin:key-value/key-value.store": super::SpinStore,
        },
    });
}

pub(super) use bindings::spin::key_value::key_value::{self as kv, Error};

/// An open store, as the guest holds it: the bucket it names.
#[derive(Debug)]
pub struct SpinStore {
    bucket: String,
}

fn error(e: super::Error) -> Error {
    match e {
        super::Error::NoSuchStore => Error::NoSuchStore,
        super::Error::AccessDenied => Error::AccessDenied,
        super::Error::Other(why) => Error::Other(why),
    }
}

/// The grant and the bucket of `store`, read in one step of the guest's store.
fn bucket<T>(
    accessor: &Accessor<T, WasiKeyValue>,
    store: &Resource<SpinStore>,
) -> Result<(KvGrant, String), Error> {
    accessor.with(|mut access| {
        let view = access.get();
        let bucket = view
            .table
            .get(store)
            .map_err(|e| Error::Other(e.to_string()))?
            .bucket
            .clone();
        Ok((view.grant.clone(), bucket))
    })
}

impl kv::Host for KeyValue<'_> {}

impl kv::HostStore for KeyValue<'_> {
    fn drop(&mut self, store: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl<T: Send> kv::HostStoreWithStore<T> for WasiKeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<SpinStore>, Error> {
        accessor.with(|mut access| {
            let view = access.get();
            if !view.grant.may_open(&label) {
                return Err(Error::AccessDenied);
            }
            view.table
                .push(SpinStore { bucket: label })
                .map_err(|_| Error::StoreTableFull)
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let (grant, bucket) = bucket(accessor, &store)?;
        grant.get(bucket, key).await.map_err(error)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let (grant, bucket) = bucket(accessor, &store)?;
        grant.set(bucket, key, value).await.map_err(error)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Result<(), Error> {
        let (grant, bucket) = bucket(accessor, &store)?;
        grant.delete(bucket, key).await.map_err(error)
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
        key: String,
    ) -> Result<bool, Error> {
        let (grant, bucket) = bucket(accessor, &store)?;
        Ok(grant.get(bucket, key).await.map_err(error)?.is_some())
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<SpinStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (grant, bucket) =
            match bucket(accessor, &store) {
                Ok(found) => found,
                Err(e) => {
                    return accessor.with(|mut access| {
                        let keys = StreamReader::new(&mut access, Vec::<String>::new())?;
                        let done = FutureReader::new(&mut access, async move {
                            Ok::<_, wasmtime::Error>(Err(e))
                        })?;
                        Ok((keys, done))
                    });
                }
            };
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let keys = Keys {
            grant,
            bucket,
            after: None,
            exhausted: false,
            fetching: None,
            result: Some(result_tx),
        };
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, keys)?;
            let done = FutureReader::new(&mut access, async move {
                Ok::<_, wasmtime::Error>(result_rx.await.unwrap_or(Ok(())))
            })?;
            Ok((keys, done))
        })
    }
}

/// The keys of a bucket as a stream: one page ([`PAGE`] keys) read from the store at a
/// time, as the guest reads them; the outcome goes to the `get-keys` future at the end.
struct Keys {
    grant: KvGrant,
    bucket: String,
    /// The last key handed out.
    after: Option<String>,
    /// Whether the last page has been handed out.
    exhausted: bool,
    fetching: Option<BoxFuture<'static, Result<KeyPage, super::Error>>>,
    result: Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
}

impl Keys {
    fn finish(&mut self, outcome: Result<(), Error>) -> Poll<wasmtime::Result<StreamResult>> {
        if let Some(result) = self.result.take() {
            let _ = result.send(outcome);
        }
        Poll::Ready(Ok(StreamResult::Dropped))
    }
}

impl<D> StreamProducer<D> for Keys {
    type Item = String;
    type Buffer = VecBuffer<String>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, String, VecBuffer<String>>,
        _finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        if this.exhausted {
            return this.finish(Ok(()));
        }
        let fetching = this.fetching.get_or_insert_with(|| {
            let (grant, bucket, after) =
                (this.grant.clone(), this.bucket.clone(), this.after.take());
            Box::pin(async move { grant.keys_after(bucket, after, PAGE).await })
        });
        let page = match fetching.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(page) => page,
        };
        this.fetching = None;
        match page {
            Ok(page) => {
                this.after = page.keys.last().cloned();
                this.exhausted = !page.more;
                destination.set_buffer(page.keys.into());
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Err(e) => this.finish(Err(error(e))),
        }
    }
}
