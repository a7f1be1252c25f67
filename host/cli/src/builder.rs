//! `weft up`'s build step: runs a component's build command when its `.wasm` is missing
//! or older than the sources the manifest lists.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use weft_runtime::spec::manifest::ComponentEntry;

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
    if !needs_build(entry) {
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

/// Whether `entry`'s `.wasm` is missing or older than any of its build sources.
pub fn needs_build(entry: &ComponentEntry) -> bool {
    let sources = entry.build.as_ref().map_or(&[][..], |b| &b.sources[..]);
    match (
        modified(&entry.source),
        sources.iter().filter_map(|s| newest(s)).max(),
    ) {
        (None, _) => true,
        (Some(built), Some(source)) => source > built,
        (Some(_), None) => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_runtime::spec::ValidSpec;
    use weft_runtime::spec::manifest::BuildSpec;

    fn entry(dir: &Path, sources: Vec<std::path::PathBuf>, command: &str) -> ComponentEntry {
        ComponentEntry {
            name: "c".into(),
            source: dir.join("out.wasm"),
            build: Some(BuildSpec {
                command: command.into(),
                workdir: Some(dir.to_path_buf()),
                sources,
            }),
            spec: ValidSpec::default(),
        }
    }

    #[test]
    fn builds_when_missing_or_stale_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("lib.rs"), "v1").unwrap();
        let e = entry(
            dir.path(),
            vec![src.clone()],
            "echo built >> log; touch out.wasm",
        );
        build_if_stale(&e).unwrap();
        build_if_stale(&e).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "built\n",
            "fresh output is not rebuilt"
        );

        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(src.join("lib.rs"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        build_if_stale(&e).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "built\nbuilt\n",
            "a newer source rebuilds"
        );
    }

    #[test]
    fn failures_say_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_if_stale(&entry(dir.path(), vec![], "exit 3"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("building `c` failed") && err.contains("exit 3"),
            "{err}"
        );
        let err = build_if_stale(&entry(dir.path(), vec![], "true"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("still does not exist"), "{err}");
    }
}
