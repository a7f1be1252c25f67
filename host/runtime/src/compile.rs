//! Deploy flow, step 2: wasm bytes to a compiled `Component`, through an on-disk cache
//! keyed by the wasm's digest and the engine's settings.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub use crate::api::Compiled;

/// The `sha256:...` content digest used as a component's version.
pub fn digest(wasm: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(wasm)))
}

/// Runs `compile` (a Cranelift compile nobody waits for: a tier-up) on the host's
/// background compile threads. They run at a lower CPU priority, and apart from the
/// threads deploys compile on: a deploy, or a request, never queues behind the minutes
/// of CPU that recompiling a few large guests can take.
pub fn in_background<R: Send>(compile: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("weft-background-compile-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .inspect_err(|e| {
                tracing::warn!("no background compile threads, compiling in the foreground: {e}")
            })
            .ok()
    });
    let compiled = match pool {
        Some(pool) => pool.install(compile),
        None => compile(),
    };
    release_freed_memory();
    compiled
}

/// Gives the memory a compile freed back to the system. A compile allocates hundreds of
/// MB on the compiling threads; glibc keeps what they free in per-thread arenas, which
/// would otherwise show as resident memory of an idle host.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the calling thread's CPU priority (its nice value) by 10.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread; on Linux a nice value is per thread.
    #[cfg(target_os = "linux")]
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + 10);
    }
}

/// Compiled code on disk, one `.cwasm` per (wasm digest, engine settings).
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// A cache in `dir`, or none at all.
    pub fn new(dir: Option<PathBuf>) -> CompileCache {
        CompileCache { dir }
    }

    /// The default location: `$XDG_CACHE_HOME/weft` or `~/.cache/weft`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|d| d.join("weft"))
    }

    /// Compiles `wasm`, or loads the result of an earlier compile. A new result is
    /// written to the cache before this returns, or on a thread of its own with
    /// [`Write::InBackground`] (for code a caller must not wait tens of MB of writing for).
    pub fn compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
        write: Write,
    ) -> Result<(Component, Compiled)> {
        if let Some(hit) = self.cached(engine, digest) {
            return Ok(hit);
        }
        let start = Instant::now();
        let component = Component::new(engine, wasm)?;
        let compiled = Compiled::Fresh {
            ms: start.elapsed().as_millis() as u64,
        };
        if let Some(path) = self.path(engine, digest) {
            match write {
                // A deploy that waits for its code to be cached fails if it cannot be
                // (a full disk, say), so the version before it keeps serving.
                Write::Now => write_cache_file(&component, &path)
                    .map_err(|e| CacheWriteFailed(format!("{}: {e:#}", path.display())))?,
                Write::InBackground => {
                    let component = component.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = write_cache_file(&component, &path) {
                            tracing::warn!(path = %path.display(), "could not write compile cache (a restart compiles this component again): {e:#}");
                        }
                    });
                }
            }
        }
        Ok((component, compiled))
    }

    /// The result of an earlier compile of `digest` on `engine`, if the cache has one.
    pub fn cached(&self, engine: &Engine, digest: &str) -> Option<(Component, Compiled)> {
        let start = Instant::now();
        let path = self.path(engine, digest).filter(|p| p.exists())?;
        match load(engine, &path) {
            Ok(component) => Some((
                component,
                Compiled::Cached {
                    ms: start.elapsed().as_millis() as u64,
                },
            )),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compile cache entry: {e:#}");
                None
            }
        }
    }

    fn path(&self, engine: &Engine, digest: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(cache_file_name(engine, digest)))
    }
}

/// The compiled code could not be written to the cache (a full disk, say).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write the compiled code to the compile cache {0}; free space there (or start the host with another --cache-dir), then deploy again"
)]
pub struct CacheWriteFailed(String);

/// When [`CompileCache::compile`] writes a new result to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Before returning: the next lookup finds it.
    Now,
    /// On a thread of its own.
    InBackground,
}

fn cache_file_name(engine: &Engine, digest: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = digest.trim_start_matches("sha256:");
    format!("{digest}-{:016x}.cwasm", hasher.finish())
}

/// Marks the end of a cache file: this tag, then the SHA-256 of everything before it.
const CHECKSUM_TAG: &[u8; 8] = b"weftsum1";
const TRAILER: usize = CHECKSUM_TAG.len() + 32;

/// Loads a cache file, after checking its checksum: a torn or corrupted file is native
/// code that would crash the host on its first call. A file that fails the check is
/// deleted, so the caller compiles afresh and writes a good one.
#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> Result<Component> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let intact = bytes.len() > TRAILER && {
        let (code, trailer) = bytes.split_at(bytes.len() - TRAILER);
        trailer[..CHECKSUM_TAG.len()] == CHECKSUM_TAG[..]
            && Sha256::digest(code)[..] == trailer[CHECKSUM_TAG.len()..]
    };
    if !intact {
        let _ = std::fs::remove_file(path);
        anyhow::bail!(
            "its checksum does not match (a torn write or a corrupted disk); deleted it, compiling afresh"
        );
    }
    // SAFETY: the bytes are what `write_cache_file` below wrote from `Component::serialize`
    // (the checksum says so) for an engine with the same compatibility hash (part of the
    // file name), in a directory this host owns; wasmtime also checks the header.
    Ok(unsafe { Component::deserialize(engine, &bytes[..bytes.len() - TRAILER]) }?)
}

/// Writes a cache file with its checksum, durably: file data synced before the rename
/// makes it visible, and the directory synced after, so a crash leaves either no file or
/// a whole one.
fn write_cache_file(component: &Component, path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::Write as _;
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bytes = component.serialize()?;
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(CHECKSUM_TAG);
    bytes.extend_from_slice(&checksum);
    // Write then rename, so a concurrent reader never sees half a file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A half-written file on a full disk would only keep it full.
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn background_compiles_run_on_their_own_lower_priority_threads() {
        // SAFETY: reads the calling thread's nice value.
        let nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let (here, name, there) = (
            nice(),
            std::thread::current().name().map(str::to_string),
            super::in_background(|| (std::thread::current().name().map(str::to_string), nice())),
        );
        assert!(
            there.0.unwrap().starts_with("weft-background-compile"),
            "{name:?}"
        );
        assert_eq!(there.1, (here + 10).min(19));
    }
}
