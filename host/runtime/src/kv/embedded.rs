//! The embedded key-value store: one redb file, one table per bucket. Data survives a
//! host restart; increment and compare-and-swap run in one write transaction each.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use std::ops::Bound;

use super::{KeyPage, KvError, KvStore, add_counter, parse_counter};

/// A redb-backed store.
#[derive(Debug, Clone)]
pub struct EmbeddedKv {
    db: Arc<Database>,
}

fn table(bucket: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(bucket)
}

fn err(e: impl std::fmt::Display) -> KvError {
    KvError::from_display(e)
}

impl EmbeddedKv {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<EmbeddedKv> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).map_err(|e| {
            anyhow::anyhow!("cannot open the key-value store {}: {e} (is another host using it? give each host its own --data-dir)", path.display())
        })?;
        Ok(EmbeddedKv { db: Arc::new(db) })
    }

    /// A store that lives in memory only (for tests and the component test harness).
    pub fn in_memory() -> anyhow::Result<EmbeddedKv> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Ok(EmbeddedKv { db: Arc::new(db) })
    }

    /// Runs `work` on a blocking thread: redb is synchronous.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, KvError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, KvError>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || work(&db))
                .await
                .map_err(err)?
        }
        .boxed()
    }
}

/// Reads `key`, treating a bucket never written as empty.
fn read(db: &Database, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    let txn = db.begin_read().map_err(err)?;
    match txn.open_table(table(bucket)) {
        Ok(t) => Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Runs `change` on the bucket's table in one write transaction.
fn write<T>(
    db: &Database,
    bucket: &str,
    change: impl FnOnce(&mut redb::Table<&'static str, &'static [u8]>) -> Result<T, KvError>,
) -> Result<T, KvError> {
    let txn = db.begin_write().map_err(err)?;
    let result = {
        let mut t = txn.open_table(table(bucket)).map_err(err)?;
        change(&mut t)?
    };
    txn.commit().map_err(err)?;
    Ok(result)
}

impl KvStore for EmbeddedKv {
    fn get(&self, bucket: String, key: String) -> BoxFuture<'_, Result<Option<Bytes>, KvError>> {
        self.run(move |db| Ok(read(db, &bucket, &key)?.map(Bytes::from)))
    }

    fn set(&self, bucket: String, key: String, value: Bytes) -> BoxFuture<'_, Result<(), KvError>> {
        self.run(move |db| {
            write(db, &bucket, |t| {
                t.insert(key.as_str(), &value[..]).map_err(err)?;
                Ok(())
            })
        })
    }

    fn delete(&self, bucket: String, key: String) -> BoxFuture<'_, Result<(), KvError>> {
        self.run(move |db| {
            write(db, &bucket, |t| {
                t.remove(key.as_str()).map_err(err)?;
                Ok(())
            })
        })
    }

    fn keys_after(
        &self,
        bucket: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, KvError>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = match txn.open_table(table(&bucket)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(KeyPage::default()),
                Err(e) => return Err(err(e)),
            };
            let range = match &after {
                Some(after) => t.range::<&str>((Bound::Excluded(after.as_str()), Bound::Unbounded)),
                None => t.range::<&str>(..),
            };
            let mut keys = Vec::new();
            for entry in range.map_err(err)? {
                if keys.len() == limit {
                    return Ok(KeyPage { keys, more: true });
                }
                keys.push(entry.map_err(err)?.0.value().to_string());
            }
            Ok(KeyPage { keys, more: false })
        })
    }

    fn increment(
        &self,
        bucket: String,
        key: String,
        delta: u64,
    ) -> BoxFuture<'_, Result<u64, KvError>> {
        self.run(move |db| {
            write(db, &bucket, |t| {
                let current = t
                    .get(key.as_str())
                    .map_err(err)?
                    .map(|v| v.value().to_vec());
                let next = add_counter(&key, parse_counter(&key, current.as_deref())?, delta)?;
                t.insert(key.as_str(), next.to_string().as_bytes())
                    .map_err(err)?;
                Ok(next)
            })
        })
    }

    fn compare_and_swap(
        &self,
        bucket: String,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> BoxFuture<'_, Result<bool, KvError>> {
        self.run(move |db| {
            write(db, &bucket, |t| {
                let current = t
                    .get(key.as_str())
                    .map_err(err)?
                    .map(|v| v.value().to_vec());
                if current.as_deref() != expected.as_deref() {
                    return Ok(false);
                }
                t.insert(key.as_str(), &new[..]).map_err(err)?;
                Ok(true)
            })
        })
    }
}
