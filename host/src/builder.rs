//! `weft up`'s build step: runs a component's build command when its `.wasm` is missing
//! or older than the sources the manifest lists.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::manifest::ComponentEntry;

/// Builds `entry` if it needs it; says what it does on stderr.
pub fn build_if_stale(entry: &ComponentEntry) -> Result<()> {
    let Some(build) = &entry.build else {
        if !entry.source.exists() {
            bail!(
                "component `{}`: {} does not exist and the manifest gives no `build` command for it",
                entry.name,
                entry.source.display()
            );
        }
        return Ok(());
    };
    let built = modified(&entry.source);
    let newest_source = build.sources.iter().filter_map(|s| newest(s)).max();
    let stale = match (built, newest_source) {
        (None, _) => true,
        (Some(built), Some(source)) => source > built,
        (Some(_), None) => false,
    };
    if !stale {
        return Ok(());
    }
    eprintln!("building {}: {}", entry.name, build.command);
    let workdir = build.workdir.as_deref().unwrap_or(Path::new("."));
    let status = Command::new("sh")
        .arg("-c")
        .arg(&build.command)
        .current_dir(workdir)
        .status()
        .with_context(|| format!("running the build command of `{}`", entry.name))?;
    if !status.success() {
        bail!(
            "building `{}` failed ({status}): fix the error above, or run `{}` yourself",
            entry.name,
            build.command
        );
    }
    if !entry.source.exists() {
        bail!(
            "building `{}` succeeded but {} still does not exist: check `source` in the manifest",
            entry.name,
            entry.source.display()
        );
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file, or of any file below a directory.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}
