//! The `weft` binary as a user runs it: `up` with a manifest, `deploy`, `list`,
//! `undeploy`, guest output in the log, errors that say what to do, graceful stop.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(WEFT)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running weft")
}

/// `weft up manifest` with `extra` arguments on ephemeral ports, expected to fail at
/// once: its stderr.
fn up_refused(manifest: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec![
        "up",
        manifest.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let out = weft(&args);
    assert!(
        !out.status.success(),
        "weft up {extra:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn up_serves_a_manifest_and_the_cli_manages_it() {
    let dir = tempfile::tempdir().unwrap();
    let (hello, faults) = (
        dir.path().join("hello.wasm"),
        dir.path().join("faults.wasm"),
    );
    std::fs::write(&hello, wasm("hello")).unwrap();
    std::fs::write(&faults, wasm("faults")).unwrap();
    std::fs::write(dir.path().join("responder.wasm"), wasm("responder")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"demo\"\n\
         [components.hello]\nsource = \"hello.wasm\"\nroutes = [{ path = \"/hello/...\" }]\n\
         [components.faults]\nsource = \"faults.wasm\"\nroutes = [{ path = \"/f/...\", methods = [\"GET\"] }]\n\
         [components.clock]\nsource = \"responder.wasm\"\nschedules = [{ name = \"nightly\", cron = \"0 3 * * *\", time_zone = \"Europe/Paris\" }]\n",
    )
    .unwrap();

    let (mut up, http, admin) = weft_up(dir.path(), &manifest);
    let table = up.wait_for("/hello/...");
    assert!(
        table.contains("hello") && table.contains(&format!("http://{http}/hello/...")),
        "{table}"
    );

    let get = |path: &str| reqwest::blocking::get(format!("http://{http}{path}")).unwrap();
    assert!(get("/hello/cli").text().unwrap().contains("/hello/cli"));
    assert_eq!(get("/f/print").status(), 200);
    up.wait_for("[faults] stdout: a line on stdout");
    up.wait_for("[faults] stderr: a line on stderr");
    assert_eq!(get("/f/trap").status(), 500);
    let trap = up.wait_for("instance failed");
    assert!(
        trap.contains("component faults sha256:")
            && trap.contains("deliberate trap")
            && trap.contains("wasm trap"),
        "names component, version and cause: {trap}"
    );

    let listed = weft(&["list", "--admin", &admin]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("hello") && listed.contains("faults"),
        "{listed}"
    );
    let clock = listed.lines().find(|l| l.starts_with("clock")).unwrap();
    assert!(clock.contains("schedules=1"), "{listed}");

    let deployed = weft(&[
        "deploy",
        "extra",
        "--wasm",
        hello.to_str().unwrap(),
        "--route",
        "/extra",
        "--admin",
        &admin,
    ]);
    assert!(
        deployed.status.success(),
        "{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    assert!(String::from_utf8_lossy(&deployed.stdout).contains("extra sha256:"));
    assert_eq!(get("/extra").status(), 200);
    let undeployed = weft(&["undeploy", "extra", "--admin", &admin]);
    assert!(undeployed.status.success());
    assert_eq!(get("/extra").status(), 404);

    let refused = weft(&[
        "deploy",
        "junk",
        "--wasm",
        manifest.to_str().unwrap(),
        "--admin",
        &admin,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a WebAssembly binary"));

    let status = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    up.wait_for("shutting down");
    let exit = wait_with_timeout(&mut up.child, Duration::from_secs(15));
    assert!(exit.success(), "weft up exits cleanly on SIGTERM: {exit}");
}

/// `--workers N` sizes the runtime that runs requests and guests: the host reports that
/// many worker threads and serves on them; 0 is refused by name.
#[test]
fn up_runs_on_the_worker_threads_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.wasm"), wasm("hello")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"one\"\n[components.hello]\nsource = \"hello.wasm\"\nroutes = [{ path = \"/hello/...\" }]\n",
    )
    .unwrap();
    let (mut up, http, _admin) = weft_up_with(dir.path(), &manifest, &["--workers", "1"]);
    up.wait_for("/hello/...");
    let body = reqwest::blocking::get(format!("http://{http}/hello/one"))
        .unwrap()
        .text()
        .unwrap();
    assert!(body.contains("/hello/one"), "{body}");
    // The count the host reads back from its runtime.
    up.wait_for("1 worker thread(s) run requests");

    let err = up_refused(&manifest, &["--workers", "0"]);
    assert!(err.contains("--workers"), "{err}");
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_host_and_bad_manifests_get_errors_that_say_what_to_do() {
    let out = weft(&["list", "--admin", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no weft host answers at http://127.0.0.1:9") && err.contains("weft up"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nroute = \"/a\"\n",
    )
    .unwrap();
    let err = up_refused(&manifest, &[]);
    assert!(
        err.contains("weft.toml:4:1: `components.a.route`: unknown field `route`, expected one of"),
        "{err}"
    );

    std::fs::write(
        &manifest,
        "name = \"x\"\n[components.a]\nsource = \"missing.wasm\"\n",
    )
    .unwrap();
    let err = up_refused(&manifest, &[]);
    assert!(
        err.contains("missing.wasm does not exist") && err.contains("no `build` command"),
        "{err}"
    );
}

/// `wasi:logging` from a real guest: each call is one host log line at its level, with
/// the component's name and version and the guest's context; a newline in the message cannot start
/// a forged line of its own.
#[test]
fn guest_logs_through_wasi_logging_on_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let responder = dir.path().join("responder.wasm");
    std::fs::write(&responder, wasm("responder")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"logs\"\n[components.logs]\nsource = \"responder.wasm\"\nroutes = [{ path = \"/...\" }]\n",
    )
    .unwrap();
    let (mut up, http, _) = weft_up(dir.path(), &manifest);
    let client = reqwest::blocking::Client::new();
    let log = |level: &str, body: &str| {
        client
            .post(format!("http://{http}/log/{level}"))
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(log("warn", "disk almost full"), 204);
    let line = up.wait_for("[logs] log responder: disk almost full");
    assert!(line.contains("WARN"), "logged at its level: {line}");
    assert!(line.contains("version=sha256:"), "with its version: {line}");
    assert_eq!(log("error", "first\n[other] stdout: forged"), 204);
    let line = up.wait_for("[logs] log responder: first");
    assert!(
        line.contains("first [other] stdout: forged") && line.contains("ERROR"),
        "one line, at its level: {line}"
    );
    assert_eq!(log("loud", "x"), 400);
    let _ = up.child.kill();
    let _ = up.child.wait();
}

/// A guest flooding its stdout is cut off at its log budget: the lines past it are
/// dropped and counted, and the count is logged once lines are let through again.
/// `--log-format json`: every log line is one JSON object with its time, level, target
/// and message; guest output and instance failures name their component (and the
/// failure its version), and, with traces on, the trace id of the call that wrote them.
/// The banner for a person (addresses, routes) is not a log line.
#[test]
fn json_logs_are_one_object_per_line_naming_the_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("faults.wasm"), wasm("faults")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"json\"\n[components.faults]\nsource = \"faults.wasm\"\nroutes = [{ path = \"/f/...\" }]\n",
    )
    .unwrap();
    // Traces on (to a receiver that never answers): guest lines carry the trace id.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let args = ["--log-format", "json", "--otlp-endpoint", &endpoint];
    let (mut up, http, _) = weft_up_with(dir.path(), &manifest, &args);
    let get = |path: &str| reqwest::blocking::get(format!("http://{http}{path}")).unwrap();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let print = reqwest::blocking::Client::new()
        .get(format!("http://{http}/f/print"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .unwrap();
    assert_eq!(print.status(), 200);
    assert_eq!(get("/f/trap").status(), 500);
    let object = |line: String| -> serde_json::Value {
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
    };
    let stdout = object(up.wait_for("a line on stdout"));
    assert_eq!(stdout["component"], "faults", "{stdout}");
    assert_eq!(stdout["level"], "info", "{stdout}");
    assert_eq!(stdout["target"], "weft::guest", "{stdout}");
    assert!(
        stdout["message"]
            .as_str()
            .unwrap()
            .contains("a line on stdout"),
        "{stdout}"
    );
    assert_eq!(stdout["trace_id"], trace, "the caller's trace: {stdout}");
    let trap = object(up.wait_for("instance failed"));
    assert_eq!(trap["component"], "faults", "{trap}");
    assert_eq!(trap["level"], "warn", "{trap}");
    assert!(
        trap["version"].as_str().unwrap().starts_with("sha256:"),
        "{trap}"
    );
    assert!(
        trap["message"]
            .as_str()
            .unwrap()
            .contains("instance failed"),
        "{trap}"
    );
    let time = trap["time"].as_str().unwrap();
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {time}");
    let _ = up.child.kill();
    let _ = up.child.wait();
    let logs: Vec<&String> = up.seen.iter().filter(|l| l.starts_with('{')).collect();
    assert!(logs.len() >= 3, "{:?}", up.seen);
    for line in logs {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["time", "level", "target", "message"] {
            assert!(value.get(key).is_some(), "`{key}` in {line}");
        }
    }
}

#[test]
fn a_log_flood_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults.wasm");
    std::fs::write(&faults, wasm("faults")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"flood\"\n[components.flood]\nsource = \"faults.wasm\"\nroutes = [{ path = \"/...\" }]\n",
    )
    .unwrap();
    let (mut up, http, _) = weft_up(dir.path(), &manifest);
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{http}{path}"))
            .send()
            .unwrap()
            .status()
    };
    let flooding = std::time::Instant::now();
    assert_eq!(get("/flood?lines=5000"), 200);
    let flood_secs = flooding.elapsed().as_secs_f64();
    // Dropped lines are reported with the next line let through, at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get("/print"), 200);
    let report = up.wait_for("log lines (");
    let dropped: u64 = report
        .split("[flood] ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of dropped lines: {report}"));
    let logged = up
        .seen
        .iter()
        .filter(|l| l.contains("[flood] stdout: flood line"))
        .count() as u64;
    // The burst, plus what the rate refills while the flood runs (longer on a busy machine).
    use weft_runtime::capabilities::guest_log::{LOG_LINES_BURST, LOG_LINES_PER_SECOND};
    let allowed = (LOG_LINES_BURST + LOG_LINES_PER_SECOND * flood_secs) as u64 + 50;
    assert!(
        logged <= allowed && logged + dropped >= 5000 - 50,
        "{logged} logged (at most {allowed} in {flood_secs:.2} s), {dropped} dropped of 5000: {report}"
    );
    let _ = up.child.kill();
    let _ = up.child.wait();
}

/// `just deploy hello`, the way a service author ships: it rebuilds the component and
/// redeploys it, with its manifest's routes, into the host at `WEFT_ADMIN`; the new
/// version answers from then on.
#[tokio::test(flavor = "multi_thread")]
async fn just_deploy_ships_a_new_version_into_a_running_host() {
    if !tool_available("just", "cargo install just (or pip install rust-just)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path()).await;
    // The version running before: another component on hello's routes.
    deploy(&host, "hello", "faults", routes(&["/hello/..."])).await;
    let before = host.deployments().snapshot().by_name["hello"]
        .version
        .clone();

    let admin = format!("http://{}", host.admin_addr());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("just")
            .current_dir(workspace_root())
            .args(["deploy", "hello"])
            .env("WEFT_ADMIN", admin)
            .output()
            .expect("running just")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "just deploy hello failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("hello sha256:"), "{stdout}");

    let after = host.deployments().snapshot().by_name["hello"]
        .version
        .clone();
    assert_ne!(before, after, "a new version is live");
    let body = reqwest::get(url(&host, "/hello/world"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "Hello from weft! You asked for /hello/world");
    host.shutdown().await;
}

/// SIGTERM while an HTTP response streams for longer than the grace period and messages
/// keep arriving: the host stops taking messages at once, lets the handlers it took in
/// finish next to the HTTP stream (not after it), and flushes what they published before
/// the process exits. Every handler that started (`seen.start.*`, published first
/// thing) also finished (`seen.done.*`), as a plain NATS client sees it.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_http_and_messages_together_and_loses_no_publish() {
    use futures::StreamExt;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("faults.wasm"), wasm("faults")).unwrap();
    std::fs::write(dir.path().join("responder.wasm"), wasm("responder")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"name = "drain"
nats_url = "{}"
[components.web]
source = "faults.wasm"
routes = [{{ path = "/..." }}]
[components.worker]
source = "responder.wasm"
subscriptions = [{{ subject = "work.>", max_in_flight = 64 }}]
allowed_publish = ["seen.>"]
"#,
            nats.url()
        ),
    )
    .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut seen = client.subscribe("seen.>").await.unwrap();
    client.flush().await.unwrap();
    let (mut up, http, _) = tokio::task::block_in_place(|| {
        weft_up_with(
            dir.path(),
            &manifest,
            &["--shutdown-grace", "3", "--cranelift-only"],
        )
    });

    // An HTTP stream of 6 s, twice the grace: it holds the HTTP drain to the end.
    let stream = tokio::spawn(reqwest::get(format!(
        "http://{http}/slow?chunks=60&delay_ms=100"
    )));
    // Messages keep coming for 6 s, each handled for 800 ms, before and after the
    // signal (a host that goes on taking them in is cut off in mid-handler at the end).
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let _ = client.publish(format!("work.{i}.slow"), "800".into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client.flush().await.unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kill = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit =
        tokio::task::block_in_place(|| wait_with_timeout(&mut up.child, Duration::from_secs(20)));
    assert!(exit.success(), "weft up exits cleanly: {exit}");
    publisher.await.unwrap();
    let _ = stream.await;

    let (mut started, mut done) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), seen.next()).await {
        let subject = m.subject.to_string();
        if let Some(work) = subject.strip_prefix("seen.start.") {
            started.insert(work.to_string());
        } else if let Some(work) = subject.strip_prefix("seen.done.") {
            done.insert(work.to_string());
        }
    }
    assert!(!started.is_empty(), "some messages were handled");
    let cut_off: Vec<&String> = started.difference(&done).collect();
    assert!(
        cut_off.is_empty(),
        "{} of {} handlers started but never finished (or their publish was lost): {cut_off:?}",
        cut_off.len(),
        started.len()
    );
    while let Ok(line) = up.lines.recv_timeout(Duration::from_millis(200)) {
        up.seen.push(line);
    }
    let stderr = up.seen.join("\n");
    assert!(
        stderr.contains("HTTP connections with a request in flight"),
        "the warning says what held shutdown up: {stderr}"
    );
}

/// A deploy after which the components may run more instances at once than the host
/// has slots says so: under load, requests beyond the slots would be answered 503 before
/// any component reaches its own `max_concurrency`.
#[test]
fn a_deploy_past_the_hosts_instance_slots_warns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.wasm"), wasm("hello")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"busy\"\n\
         [components.a]\nsource = \"hello.wasm\"\nroutes = [{ path = \"/a\" }]\nlimits = { max_concurrency = 600 }\n\
         [components.b]\nsource = \"hello.wasm\"\nroutes = [{ path = \"/b\" }]\nlimits = { max_concurrency = 600 }\n",
    )
    .unwrap();
    let (mut up, _, _) = weft_up(dir.path(), &manifest);
    // Only the second deploy passes the slots (600 alone fits in 1000).
    let warning = up.wait_for("instance slots");
    assert!(
        warning.contains("1200 instances") && warning.contains("1000 instance slots"),
        "{warning}"
    );
    let _ = up.child.kill();
    let _ = up.child.wait();
}

/// Nobody reads the host's stderr any more (a full pipe, a paused terminal) while a
/// guest floods its log: log lines are dropped, and the host keeps answering, because
/// no worker thread ever waits on a log write.
#[test]
fn a_stalled_stderr_never_blocks_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("faults.wasm"), wasm("faults")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"stall\"\n[components.flood]\nsource = \"faults.wasm\"\nroutes = [{ path = \"/...\" }]\n",
    )
    .unwrap();
    let mut child = Command::new(WEFT)
        .args(["up", manifest.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--no-build"])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the address, then never again: the pipe (64 KiB) fills up.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut http = None;
    for _ in 0..200 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(addr) = line.trim().strip_prefix("stall: serving on http://") {
            http = Some(addr.to_string());
            break;
        }
    }
    let http = http.expect("weft up printed its address");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Each flood logs up to the burst (1,000 lines, about 100 KB) before the budget
    // drops the rest: more than the pipe holds, again and again.
    for round in 0..20 {
        let answer = client
            .get(format!("http://{http}/flood?lines=3000"))
            .send()
            .unwrap_or_else(|e| panic!("round {round}: the host stopped answering: {e}"));
        assert_eq!(answer.status(), 200, "round {round}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
}
