//! A fresh instance never sees what an earlier request left in linear memory, even when
//! the kernel swapped that memory out before the host reset it. (wasmtime 48.0.8's
//! pooling allocator skipped swapped-out pages when it reset a used memory; weft builds
//! a patched copy: see vendor/README.md.)
//!
//! Its own test binary: it swaps out this whole process's memory, which would slow the
//! tests beside it. It needs swap: without any it prints a loud SKIPPED line and passes,
//! since a machine may not allow enabling swap at all. `.ci/run` enables a swap file.
#![allow(clippy::unwrap_used)]
// madvise(MADV_PAGEOUT) on this process's own mappings.
#![allow(unsafe_code)]

mod common;

use std::time::Duration;

use common::*;

/// Bytes the component scribbles and then looks for, in KiB.
const KIB: usize = 4096;

#[tokio::test]
async fn a_fresh_instance_never_sees_an_earlier_requests_swapped_out_memory() {
    if !swap_enabled() {
        eprintln!(
            "\n*** SKIPPED: no swap on this machine (/proc/swaps), so nothing can be swapped out; `swapon` a swap file to run this test ***\n"
        );
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    deploy(&host, "faults", "faults", routes(&["/f/..."])).await;
    let peek = || async { text(&url(&host, &format!("/f/peek?kib={KIB}"))).await };
    assert_eq!(peek().await, "0", "a fresh instance's heap starts zeroed");
    let scribble = |hold_ms| {
        text(url(
            &host,
            &format!("/f/scribble?kib={KIB}&hold_ms={hold_ms}"),
        ))
    };
    assert_eq!(scribble(0).await, "scribbled");
    assert_eq!(peek().await, "0", "memory that stayed resident is reset");

    // One request fills its heap with a marker and holds on to its instance while this
    // process's memory is swapped out; its memory is reset once it has answered.
    let scribble = tokio::spawn(scribble(1500));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let swapped_kib = tokio::task::spawn_blocking(swap_out_this_process)
        .await
        .unwrap();
    assert_eq!(scribble.await.unwrap(), "scribbled");
    if swapped_kib < KIB as u64 {
        eprintln!(
            "\n*** SKIPPED: the kernel swapped out only {swapped_kib} KiB of this process (is swap full?) ***\n"
        );
        return;
    }

    // The next instances, in whatever slots the pool hands out, see none of it. (Before
    // the fix, one of the first few read back 4,190,204 of the 4,194,304 bytes.)
    for _ in 0..20 {
        assert_eq!(
            peek().await,
            "0",
            "a fresh instance read bytes an earlier request wrote"
        );
    }
    host.shutdown().await;
}

async fn text(url: impl AsRef<str>) -> String {
    let response = reqwest::get(url.as_ref()).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.unwrap()
}

fn swap_enabled() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|swaps| swaps.lines().count() > 1)
}

/// Asks the kernel to swap out every private writable mapping of this process, and
/// returns how much of it is swapped out now, in KiB.
fn swap_out_this_process() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some("rw-p")) = (fields.next(), fields.next()) else {
            continue;
        };
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        // SAFETY: MADV_PAGEOUT only moves pages to swap; their contents are unchanged.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSwap:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
