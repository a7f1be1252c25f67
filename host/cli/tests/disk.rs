//! A disk that fills up under a running host: key-value calls fail with an error that
//! says so while the host keeps serving, and work again once space is freed (redb
//! refuses every transaction after a failed commit until the database is reopened); a
//! deploy whose compiled code cannot be cached fails clearly and the version before it
//! keeps serving. The disk is a small tmpfs of the test's own.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use weft_runtime::spec::ComponentSpec;

/// A tmpfs of a few MiB mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, or returns `None` (loudly) where this user may not mount; in CI
    /// (`CI` set, run as root) that fails the test.
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "weft-test-disk"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to mount a tmpfs"
            );
            eprintln!(
                "\n*** SKIPPED: cannot mount a tmpfs (run as root to test a full disk) ***\n"
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of the disk with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Retries `call` (bounded) until it gives `status`; the last status and body.
async fn until_status(status: u16, call: impl Fn() -> reqwest::RequestBuilder) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..20 {
        let answer = call().send().await.unwrap();
        last = (answer.status().as_u16(), answer.text().await.unwrap());
        if last.0 == status {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn a_full_disk_fails_key_value_clearly_and_it_works_again_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| {
        config.data_dir = disk.path().join("data");
    })
    .await;
    let store = ComponentSpec {
        buckets: vec!["b".into()],
        ..routes(&["/kv/..."])
    };
    deploy(&host, "store", "responder", store).await;
    deploy(&host, "web", "hello", routes(&["/web/..."])).await;
    let client = reqwest::Client::new();
    let put = |key: &str, body: Vec<u8>| client.put(url(&host, &format!("/kv/b/{key}"))).body(body);
    let get = |key: &str| client.get(url(&host, &format!("/kv/b/{key}")));
    assert_eq!(
        put("before", b"kept".to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    let filler = disk.fill();
    let (status, error) = until_status(500, || put("big", vec![7; 900 << 10])).await;
    assert_eq!(status, 500, "a write on a full disk fails: {error}");
    assert!(
        error.contains("could not write to disk") || error.contains("reopening"),
        "the error says what happened: {error}"
    );
    let hello = reqwest::get(url(&host, "/web/x")).await.unwrap();
    assert_eq!(hello.status(), 200, "other routes keep serving");

    std::fs::remove_file(filler).unwrap();
    let (status, body) = until_status(204, || put("after", b"new".to_vec())).await;
    assert_eq!(
        status, 204,
        "key-value works again once space is freed: {body}"
    );
    for (key, value) in [("before", "kept"), ("after", "new")] {
        let answer = get(key).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), value);
    }
    host.shutdown().await;
}

#[tokio::test]
async fn a_deploy_on_a_full_disk_fails_clearly_and_the_old_version_serves() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let host = start_host_with(disk.path(), |config| {
        config.cache_dir = Some(disk.path().join("cache"));
    })
    .await;
    let spec = routes(&["/svc/..."]);
    deploy(&host, "svc", "hello", spec.clone()).await;
    let filler = disk.fill();

    let admin = weft::admin_client::AdminClient::new(&admin_url(&host, ""), None);
    let error = admin
        .deploy("svc", &spec, wasm("faults"))
        .await
        .expect_err("the deploy cannot cache its code")
        .to_string();
    assert!(
        error.contains("compile cache") && error.contains("free space"),
        "the error says what to do: {error}"
    );
    let body = reqwest::get(url(&host, "/svc/x"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("Hello"), "the old version serves: {body}");
    let leftovers: Vec<_> = std::fs::read_dir(disk.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no half-written files left: {leftovers:?}"
    );

    std::fs::remove_file(filler).unwrap();
    admin.deploy("svc", &spec, wasm("faults")).await.unwrap();
    let status = reqwest::get(url(&host, "/svc/print"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the new version serves once space is freed");
    host.shutdown().await;
}
