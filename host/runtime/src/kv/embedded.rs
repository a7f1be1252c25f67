//! The embedded key-value store: one redb file, one table per bucket. Data survives a
//! host restart; increment and compare-and-swap run in one write transaction each.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use std::ops::Bound;

use super::{KeyPage, KvError, KvStore, add_counter, parse_counter};

/// A redb-backed store.
#[derive(Debug, Clone)]
pub struct EmbeddedKv {
    store: Arc<Store>,
}

/// The database, and how to open it again: after a failed write (a full or failing
/// disk) redb refuses every later transaction until the database is reopened.
#[derive(Debug)]
struct Store {
    /// The file; `None` for a store in memory (nothing to reopen).
    path: Option<PathBuf>,
    /// The open database; `None` after a disk error, until it is reopened.
    db: RwLock<Option<Arc<Database>>>,
}

fn table(bucket: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(bucket)
}

/// Why a call into redb failed.
enum Failure {
    /// The disk: the database must be reopened before it takes another write.
    Disk(redb::Error),
    /// Anything else (a bad value, a counter that is not a number, ...).
    Other(KvError),
}

impl From<KvError> for Failure {
    fn from(e: KvError) -> Failure {
        Failure::Other(e)
    }
}

fn err(e: impl Into<redb::Error>) -> Failure {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo) => Failure::Disk(e),
        e => Failure::Other(KvError::from_display(e)),
    }
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
        Ok(EmbeddedKv::new(Some(path.to_path_buf()), db))
    }

    /// A store that lives in memory only (for tests and the component test harness).
    pub fn in_memory() -> anyhow::Result<EmbeddedKv> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Ok(EmbeddedKv::new(None, db))
    }

    fn new(path: Option<PathBuf>, db: Database) -> EmbeddedKv {
        EmbeddedKv {
            store: Arc::new(Store {
                path,
                db: RwLock::new(Some(Arc::new(db))),
            }),
        }
    }

    /// Runs `work` on a blocking thread: redb is synchronous.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, Failure> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, KvError>> {
        let store = self.store.clone();
        async move {
            tokio::task::spawn_blocking(move || store.run(work))
                .await
                .map_err(KvError::from_display)?
        }
        .boxed()
    }
}

impl Store {
    /// Runs `work` on the database, reopening it first if a disk error closed it, and
    /// closing it if `work` meets one.
    fn run<T>(&self, work: impl FnOnce(&Database) -> Result<T, Failure>) -> Result<T, KvError> {
        let db = self.database()?;
        match work(&db) {
            Ok(value) => Ok(value),
            Err(Failure::Other(e)) => Err(e),
            Err(Failure::Disk(e)) => {
                if self.path.is_some() {
                    self.close(&db);
                }
                tracing::warn!("key-value: disk error on {}: {e}", self.location());
                Err(KvError(format!(
                    "the key-value store could not write to disk ({e}); it is reopened on the next call once the disk is healthy"
                )))
            }
        }
    }

    /// The open database, reopening it after a disk error.
    fn database(&self) -> Result<Arc<Database>, KvError> {
        let read = |slot: &Option<Arc<Database>>| slot.clone();
        if let Some(db) = read(&self.db.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(db);
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = read(&slot) {
            return Ok(db);
        }
        let Some(path) = &self.path else {
            return Err(KvError("the key-value store is closed".into()));
        };
        // Fails while a call that met the error still holds the old handle (the file
        // is locked), or while the disk is still full: the next call tries again.
        let db = Database::create(path).map_err(|e| {
            KvError(format!(
                "the key-value store is unavailable after a disk error, and reopening {} failed: {e}; it is tried again on the next call",
                path.display()
            ))
        })?;
        tracing::info!("key-value: reopened {} after a disk error", path.display());
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Drops the database after a disk error (if it is still the open one), so the
    /// next call reopens it.
    fn close(&self, failed: &Arc<Database>) {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|db| Arc::ptr_eq(db, failed)) {
            *slot = None;
        }
    }

    fn location(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "memory".to_string(), |p| p.display().to_string())
    }
}

/// Reads `key`, treating a bucket never written as empty.
fn read(db: &Database, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, Failure> {
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
    change: impl FnOnce(&mut redb::Table<&'static str, &'static [u8]>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let txn = db.begin_write().map_err(err)?;
    let result = {
        let mut t = txn.open_table(table(bucket)).map_err(err)?;
        change(&mut t)?
    };
    txn.commit().map_err(err)?;
    Ok(result)
}

impl KvStore for EmbeddedKv {
    fn describe(&self) -> String {
        format!("embedded ({})", self.store.location())
    }

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
