//! Many hosts, one platform: real `weft up` processes joined in a lattice on a real
//! nats-server, deployed to once with `weft deploy`, under real HTTP load.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{NatsServer, Running, WEFT, weft_join, workspace_root};

/// A built test component, written where `weft deploy --wasm` can read it.
fn wasm_file(dir: &std::path::Path, component: &str) -> String {
    let path = dir.join(format!("{component}.wasm"));
    std::fs::write(&path, common::wasm(component)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs the `weft` CLI; returns whether it succeeded, its stdout and its stderr.
fn weft(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(WEFT)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("running weft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weft deploy hello --wasm FILE --route /hello/... --nats URL`.
fn deploy_hello(file: &str, nats: &str) -> (bool, String, String) {
    weft(&[
        "deploy",
        "hello",
        "--wasm",
        file,
        "--route",
        "/hello/...",
        "--nats",
        nats,
    ])
}

/// `weft hosts --nats URL`'s output.
fn hosts(nats: &str) -> String {
    let (ok, out, err) = weft(&["hosts", "--nats", nats]);
    assert!(ok, "weft hosts failed: {err}");
    out
}

/// Waits (bounded) until `weft hosts` shows `want` hosts up.
fn wait_for_hosts(nats: &str, want: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = hosts(nats);
        if out.lines().filter(|l| l.contains(" up ")).count() == want {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "not {want} hosts up within 30 s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Per target: (ok, failed).
    counts: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

/// Four clients per URL, each sending requests one after another until stopped
/// (bounded: 50,000 each).
fn load(urls: &[String]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut counts = Vec::new();
    for url in urls {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        counts.push((ok.clone(), failed.clone()));
        for _ in 0..4 {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for _ in 0..50_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let success = match client.get(&url).send().await {
                        Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if success { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    Load {
        stop,
        tasks,
        counts,
    }
}

impl Load {
    /// Stops the load; returns (ok, failed) per URL.
    async fn finish(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.counts
            .iter()
            .map(|(ok, failed)| (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
            .collect()
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Stops a host with SIGTERM (a clean shutdown: it leaves the lattice), bounded.
fn stop(mut host: Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &host.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = host.child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_once_and_every_host_serves_it_through_redeploys_new_hosts_and_a_killed_host() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nats = nats.url();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts_up: Vec<(Running, String)> = Vec::new();
    for (i, id) in ["host-a", "host-b", "host-c"].iter().enumerate() {
        let (up, http, _) = weft_join(dirs[i].path(), &nats, &["--host-id", id]);
        hosts_up.push((up, http));
    }
    wait_for_hosts(&nats, 3);
    let hello = wasm_file(dirs[0].path(), "hello");

    // One deploy; every host serves it when it returns.
    let start = Instant::now();
    let (ok, out, err) = deploy_hello(&hello, &nats);
    let took = start.elapsed();
    assert!(ok, "weft deploy failed:\n{out}\n{err}");
    assert!(out.contains("live on 3 of 3 hosts"), "{out}");
    eprintln!(
        "deploy to 3 hosts returned in {} ms:\n{out}",
        took.as_millis()
    );
    for (_, http) in &hosts_up {
        let (status, body) = get(&format!("http://{http}/hello/x")).await;
        assert_eq!(status, 200, "{http}: {body}");
    }
    // The same deploy again changes nothing.
    let (ok, out, _) = deploy_hello(&hello, &nats);
    assert!(ok && out.contains("already the lattice's version"), "{out}");

    // Redeploy across the fleet under load spread over all hosts: no request fails.
    let urls: Vec<String> = hosts_up
        .iter()
        .map(|(_, http)| format!("http://{http}/hello/load"))
        .collect();
    let running = load(&urls);
    let p3 = wasm_file(dirs[0].path(), "hello-p3");
    for (round, file) in [&p3, &hello, &p3].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (ok, out, err) = tokio::task::block_in_place(|| deploy_hello(file, &nats));
        assert!(ok, "redeploy {round} failed:\n{out}\n{err}");
        assert!(out.contains("live on 3 of 3 hosts"), "{out}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = running.finish().await;
    let (total_ok, total_failed) = counts
        .iter()
        .fold((0, 0), |(a, b), (ok, failed)| (a + ok, b + failed));
    eprintln!("redeploys under load: {counts:?}");
    assert!(
        counts.iter().all(|(ok, _)| *ok > 20),
        "the load must reach every host: {counts:?}"
    );
    assert_eq!(
        total_failed,
        0,
        "{total_failed} of {} requests failed",
        total_ok + total_failed
    );

    // A fourth host, started later, serves what the lattice runs without any deploy.
    let (late, late_http, _) = weft_join(dirs[3].path(), &nats, &["--host-id", "host-d"]);
    let (status, body) = get(&format!("http://{late_http}/hello/late")).await;
    assert_eq!(status, 200, "{body}");
    hosts_up.push((late, late_http));
    let listed = wait_for_hosts(&nats, 4);
    assert!(listed.contains("components=1/1"), "{listed}");

    // `weft list` through any host shows every host converged.
    let (ok, out, err) = weft(&[
        "list",
        "--admin",
        &format!("http://{}", admin_of(&mut hosts_up[0].0)),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("lattice `default`"), "{out}");
    assert_eq!(out.matches("live sha256:").count(), 4, "{out}");
    assert!(!out.contains("NOT CONVERGED"), "{out}");

    // SIGKILL one host under load: only requests to it fail; the others keep serving,
    // and `weft hosts` shows it lost.
    let urls: Vec<String> = hosts_up
        .iter()
        .map(|(_, http)| format!("http://{http}/hello/kill"))
        .collect();
    let running = load(&urls);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut victim, _) = hosts_up.remove(2);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let counts = running.finish().await;
    eprintln!("SIGKILL of host-c under load (a, b, c, d): {counts:?}");
    for (i, (ok, failed)) in counts.iter().enumerate() {
        if i == 2 {
            assert!(
                *failed > 0,
                "requests to the killed host must fail: {counts:?}"
            );
        } else {
            assert_eq!(*failed, 0, "host {i} failed requests: {counts:?}");
            assert!(*ok > 20, "{counts:?}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = hosts(&nats);
        let line = out
            .lines()
            .find(|l| l.starts_with("host-c"))
            .unwrap_or_default()
            .to_string();
        if line.contains("LOST") {
            break;
        }
        assert!(Instant::now() < deadline, "host-c not shown lost:\n{out}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // Undeploy once: gone from every host that is up.
    let (ok, out, err) = weft(&["undeploy", "hello", "--nats", &nats]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("removed from 3 of 3 hosts"), "{out}");
    for (_, http) in &hosts_up {
        let (status, _) = get(&format!("http://{http}/hello/x")).await;
        assert_eq!(status, 404, "{http}");
    }
    for (host, _) in hosts_up {
        stop(host);
    }
}

fn admin_of(host: &mut Running) -> String {
    host.wait_for("admin API on http://")
        .rsplit("http://")
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_refuses_a_version_is_reported_by_name_and_placement_picks_hosts() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nats = nats.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_http, a_admin) = weft_join(
        a_dir.path(),
        &nats,
        &["--host-id", "big", "--label", "zone=a"],
    );
    // This host takes components of 1,000 bytes at most.
    let (b, b_http, _) = weft_join(
        b_dir.path(),
        &nats,
        &["--host-id", "small", "--max-component-bytes", "1000"],
    );
    wait_for_hosts(&nats, 2);
    let hello = wasm_file(a_dir.path(), "hello");

    // Through a host's admin API: one host takes it, the other says why not.
    let (ok, out, err) = weft(&[
        "deploy", "hello", "--wasm", &hello, "--route", "/hello", "--admin", &a_admin,
    ]);
    assert!(!ok, "a deploy refused by one host must fail:\n{out}\n{err}");
    let big = out.lines().find(|l| l.contains("big")).unwrap_or_default();
    let small = out
        .lines()
        .find(|l| l.contains("small"))
        .unwrap_or_default();
    assert!(big.contains("live"), "{out}\n{err}");
    assert!(
        small.contains("failed") && small.contains("larger than this host accepts"),
        "{out}"
    );
    assert!(
        err.contains("1 of 2 hosts did not take the deploy"),
        "{err}"
    );
    assert_eq!(get(&format!("http://{a_http}/hello")).await.0, 200);
    assert_eq!(get(&format!("http://{b_http}/hello")).await.0, 404);

    // Placed on zone=a only: the small host is skipped, and the deploy succeeds.
    let manifest = a_dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"placed\"\n[components.hello]\nsource = \"{hello}\"\nroutes = [{{ path = \"/hello\" }}]\nplacement = {{ zone = \"a\" }}\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = weft(&[
        "deploy",
        "hello",
        "--manifest",
        manifest.to_str().unwrap(),
        "--nats",
        &nats,
    ]);
    assert!(ok, "{out}\n{err}");
    let small = out
        .lines()
        .find(|l| l.contains("small"))
        .unwrap_or_default();
    assert!(small.contains("not placed"), "{out}");
    assert!(out.contains("live on 1 of 2 hosts"), "{out}");

    // No grant reaches the lattice's own buckets and subjects: refused before any host
    // sees the deploy, naming the reason.
    for (grant, why) in [
        ("buckets = [\"_weft_lattice_default\"]", "the host's own"),
        (
            "allowed_publish = [\"$KV._weft_lattice_default.>\"]",
            "broker's own API",
        ),
        (
            "allowed_publish = [\"$O._weft_wasm_default.>\"]",
            "broker's own API",
        ),
        (
            "subscriptions = [{ subject = \"$KV._weft_hosts_default.>\" }]",
            "broker's own API",
        ),
        (
            "subscriptions = [{ subject = \"orders\", durable = true, stream = \"KV__weft_lattice_default\" }]",
            "key-value buckets",
        ),
    ] {
        std::fs::write(
            &manifest,
            format!("name = \"grab\"\n[components.hello]\nsource = \"{hello}\"\n{grant}\n"),
        )
        .unwrap();
        let (ok, out, err) = weft(&[
            "deploy",
            "hello",
            "--manifest",
            manifest.to_str().unwrap(),
            "--nats",
            &nats,
        ]);
        assert!(!ok && err.contains(why), "{grant}: {out}\n{err}");
    }
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_on_a_nats_cluster_keep_serving_and_converging_when_a_server_stops() {
    // Three servers routed to each other on loopback, JetStream clustered.
    let cluster: Vec<u16> = (0..3).map(|_| NatsServer::free_port()).collect();
    let routes = cluster
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Vec::new();
    for (i, port) in cluster.iter().enumerate() {
        let (listen, name) = (format!("nats://127.0.0.1:{port}"), format!("n{i}"));
        let args = [
            "--cluster_name",
            "weft-test",
            "--server_name",
            &name,
            "--cluster",
            &listen,
            "--routes",
            &routes,
        ];
        let Some(server) = NatsServer::start_with(&args) else {
            return;
        };
        servers.push(server);
    }
    let urls = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    // JetStream is usable once the cluster has elected its leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !weft(&["hosts", "--nats", &urls]).0 {
        assert!(
            Instant::now() < deadline,
            "the NATS cluster's JetStream never became ready"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut up = Vec::new();
    for (i, id) in ["east", "west"].iter().enumerate() {
        let (host, http, _) = weft_join(dirs[i].path(), &urls, &["--host-id", id]);
        up.push((host, http));
    }
    wait_for_hosts(&urls, 2);
    let hello = wasm_file(dirs[0].path(), "hello");
    let (ok, out, err) = deploy_hello(&hello, &urls);
    assert!(ok && out.contains("live on 2 of 2 hosts"), "{out}\n{err}");

    // Stop one server under load: both hosts keep serving.
    let targets: Vec<String> = up
        .iter()
        .map(|(_, http)| format!("http://{http}/hello/cluster"))
        .collect();
    let running = load(&targets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(servers.remove(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = running.finish().await;
    eprintln!("one NATS server of three stopped under load: {counts:?}");
    for (ok, failed) in &counts {
        assert_eq!(*failed, 0, "{counts:?}");
        assert!(*ok > 20, "{counts:?}");
    }

    // ...and keep converging: a new spec, deployed through the servers left, reaches both.
    let left = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let manifest = dirs[0].path().join("weft.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"cluster\"\n[components.hello]\nsource = \"{hello}\"\nroutes = [{{ path = \"/hello/...\" }}]\nconfig = {{ GREETING = \"Hallo\" }}\n"
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = tokio::task::block_in_place(|| {
            weft(&[
                "deploy",
                "hello",
                "--manifest",
                manifest.to_str().unwrap(),
                "--nats",
                &left,
                "--wait",
                "20",
            ])
        });
        if ok && out.contains("live on 2 of 2 hosts") {
            break;
        }
        // The cluster may still be moving the buckets' leaders off the stopped server.
        assert!(
            Instant::now() < deadline,
            "no rollout after a server stopped:\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (_, http) in &up {
        let (status, body) = get(&format!("http://{http}/hello/x")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("Hallo from weft"), "{http}: {body}");
    }
    for (host, _) in up {
        stop(host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_seeds_the_lattice_and_an_older_manifest_never_rolls_it_back() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let nats = nats.url();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let write = |dir: &std::path::Path, greeting: &str| {
        let hello = wasm_file(dir, "hello");
        let manifest = dir.join("weft.toml");
        std::fs::write(
            &manifest,
            format!(
                "name = \"seeded\"\n[components.hello]\nsource = \"{hello}\"\nroutes = [{{ path = \"/hello\" }}]\nconfig = {{ GREETING = \"{greeting}\" }}\n"
            ),
        )
        .unwrap();
        manifest
    };
    // The first host seeds the lattice from its manifest.
    let manifest_a = write(a_dir.path(), "Hallo");
    let (a, a_http, _) = common::weft_up_with(
        a_dir.path(),
        &manifest_a,
        &["--nats", &nats, "--host-id", "a"],
    );
    assert!(
        get(&format!("http://{a_http}/hello"))
            .await
            .1
            .starts_with("Hallo")
    );
    // A second host with another manifest for the same component: the lattice wins,
    // and it says so.
    let manifest_b = write(b_dir.path(), "Hej");
    let (mut b, b_http, _) = common::weft_up_with(
        b_dir.path(),
        &manifest_b,
        &["--nats", &nats, "--host-id", "b"],
    );
    let (_, body) = get(&format!("http://{b_http}/hello")).await;
    assert!(
        body.starts_with("Hallo"),
        "the lattice's version serves on b: {body}"
    );
    assert!(
        get(&format!("http://{a_http}/hello"))
            .await
            .1
            .starts_with("Hallo")
    );
    let note = b.wait_for("the lattice wins");
    assert!(note.contains("weft deploy hello"), "{note}");
    // Rolling b's manifest out is one deploy.
    let (ok, out, err) = weft(&[
        "deploy",
        "hello",
        "--manifest",
        manifest_b.to_str().unwrap(),
        "--nats",
        &nats,
    ]);
    assert!(ok && out.contains("live on 2 of 2 hosts"), "{out}\n{err}");
    for http in [&a_http, &b_http] {
        assert!(
            get(&format!("http://{http}/hello"))
                .await
                .1
                .starts_with("Hej")
        );
    }
    stop(a);
    stop(b);
}
