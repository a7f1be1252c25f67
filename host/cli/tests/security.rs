//! Guests reach only what they were granted, and the admin API only its operator: real
//! guests on a real host, over real HTTP. The messaging side (forged `reply_to`, reserved
//! namespaces, inboxes) is in `messaging.rs`, on both buses.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use weft_runtime::Host;
use weft_runtime::capabilities::outbound_http::is_internal;
use weft_runtime::spec::ComponentSpec;

const PROHIBITED: &str = "error: ErrorCode::DestinationIpProhibited";
const DENIED: &str = "error: ErrorCode::HttpRequestDenied";

/// A `faults` guest under `/PREFIX/...` with these outgoing-HTTP grants.
fn fetcher(prefix: &str, grants: &[&str]) -> ComponentSpec {
    ComponentSpec {
        allowed_outbound_hosts: grants.iter().map(|g| g.to_string()).collect(),
        ..routes(&[&format!("/{prefix}/...")])
    }
}

/// What the guest under `/PREFIX` reports after a GET to `target`.
async fn fetch(host: &Host, prefix: &str, target: &str) -> String {
    reqwest::get(url(host, &format!("/{prefix}/fetch?url={target}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn no_grant_reaches_the_hosts_own_listeners_or_unnamed_loopback() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let target = http_target().await;
    deploy(&host, "wide", "faults", fetcher("wide", &["*://*:*"])).await;
    deploy(
        &host,
        "local",
        "faults",
        fetcher("local", &["http://localhost:*", "http://127.0.0.1:*"]),
    )
    .await;

    let admin_port = host.admin_addr().port();
    let http_port = host.http_addr().port();
    // Each of the host's listeners, by address and by name, and what `local` (which
    // names loopback but not `0.0.0.0`) gets: refused by address, or not granted at all.
    let own = [
        (
            format!("http://{}/v1/components", host.admin_addr()),
            PROHIBITED,
        ),
        (
            format!("http://localhost:{admin_port}/v1/components"),
            PROHIBITED,
        ),
        (format!("http://0.0.0.0:{admin_port}/v1/components"), DENIED),
        (
            format!("http://{}/wide/count", host.http_addr()),
            PROHIBITED,
        ),
        (
            format!("http://localhost:{http_port}/wide/count"),
            PROHIBITED,
        ),
    ];
    for (target, local) in &own {
        assert_eq!(
            fetch(&host, "wide", target).await,
            PROHIBITED,
            "wide -> {target}"
        );
        assert_eq!(
            fetch(&host, "local", target).await,
            *local,
            "local -> {target}"
        );
    }
    // `*` names no address: loopback stays out of reach...
    assert_eq!(
        fetch(&host, "wide", &format!("http://{target}/")).await,
        PROHIBITED
    );
    assert_eq!(
        fetch(&host, "wide", "http://169.254.169.254/latest/meta-data/").await,
        PROHIBITED
    );
    // ...while grants naming `localhost` or the address reach a local service.
    assert_eq!(
        fetch(&host, "local", &format!("http://{target}/")).await,
        "status: 200"
    );
    assert_eq!(
        fetch(
            &host,
            "local",
            &format!("http://localhost:{}/", target.port())
        )
        .await,
        "status: 200"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_grant_without_a_port_means_the_default_port_and_schemes_are_kept_apart() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let target = http_target().await;
    deploy(
        &host,
        "exact",
        "faults",
        fetcher(
            "exact",
            &[
                "http://127.0.0.1",
                &format!("https://127.0.0.1:{}", target.port()),
            ],
        ),
    )
    .await;
    // Neither the port-less grant (port 80) nor the https one covers http on this port.
    assert_eq!(
        fetch(&host, "exact", &format!("http://{target}/")).await,
        DENIED
    );
    host.shutdown().await;
}

/// This machine's host name, if it resolves to an internal address (as it does on
/// Debian and in containers: `/etc/hosts` maps it to 127.0.x.1 or a private address).
async fn name_resolving_to_an_internal_address() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addrs: Vec<_> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .ok()?
        .collect();
    (!addrs.is_empty() && addrs.iter().all(|a| is_internal(a.ip()))).then_some(name)
}

#[tokio::test]
async fn a_granted_name_that_resolves_to_loopback_is_refused_after_resolution() {
    let Some(name) = name_resolving_to_an_internal_address().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI machines resolve their host name to an internal address"
        );
        eprintln!(
            "\n*** SKIPPED: this machine's host name does not resolve to an internal address ***\n"
        );
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let target = http_target().await;
    let port = target.port();
    deploy(
        &host,
        "byname",
        "faults",
        fetcher("byname", &[&format!("http://{name}:{port}")]),
    )
    .await;
    deploy(
        &host,
        "byaddr",
        "faults",
        fetcher("byaddr", &[&format!("http://127.0.0.1:{port}")]),
    )
    .await;
    // The grant matches by name, but the name leads to loopback: refused.
    assert_eq!(
        fetch(&host, "byname", &format!("http://{name}:{port}/")).await,
        PROHIBITED
    );
    // The same service, by the address the grant names: reached.
    assert_eq!(
        fetch(&host, "byaddr", &format!("http://127.0.0.1:{port}/")).await,
        "status: 200"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn old_style_outbound_grants_are_refused_with_the_way_to_write_them() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host(cache.path()).await;
    let refused = reqwest::Client::new()
        .put(admin_url(&host, "/v1/components/old"))
        .header(
            weft_runtime::admin::SPEC_HEADER,
            r#"{"allowed_outbound_hosts":["api.example.com"]}"#,
        )
        .body(wasm("faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = refused.text().await.unwrap();
    assert!(
        error.contains("allowed_outbound_hosts[0]") && error.contains("`https://api.example.com`"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"x\"\n[components.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"localhost:8080\"]\n",
    )
    .unwrap();
    let error = weft_runtime::spec::manifest::Manifest::load(&manifest)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("weft.toml:4:") && error.contains("`http://localhost:8080`"),
        "{error}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_refuses_foreign_hosts_and_browser_origins() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| {
        config.admin_hosts = vec!["weft-admin.internal".into()];
    })
    .await;
    let client = reqwest::Client::new();
    let port = host.admin_addr().port();

    // A page whose own name now resolves to 127.0.0.1 (DNS rebinding) sends its name.
    let rebound = client
        .put(admin_url(&host, "/v1/components/evil"))
        .header("host", format!("rebind.example:{port}"))
        .body(wasm("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let error = rebound.text().await.unwrap();
    assert!(
        error.contains("`rebind.example:") && error.contains("--admin-host"),
        "{error}"
    );
    // A page on any origin, with the right Host (a form post or fetch from a browser).
    let browser = client
        .get(admin_url(&host, "/v1/components"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::FORBIDDEN);
    assert!(browser.text().await.unwrap().contains("--admin-origin"));
    assert!(host.deployments().list().is_empty(), "nothing was deployed");

    // Its own address, `localhost` and the configured name are served.
    for name in [
        host.admin_addr().to_string(),
        format!("localhost:{port}"),
        format!("weft-admin.internal:{port}"),
    ] {
        let ok = client
            .get(admin_url(&host, "/v1/components"))
            .header("host", &name)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "Host: {name}");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn an_admin_token_is_honoured_on_loopback() {
    let cache = tempfile::tempdir().unwrap();
    let host = start_host_with(cache.path(), |config| {
        config.admin_token = Some("local-secret".into());
    })
    .await;
    assert!(host.admin_addr().ip().is_loopback());
    let client = reqwest::Client::new();
    let list = admin_url(&host, "/v1/components");
    let none = client.get(&list).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .get(&list)
        .bearer_auth("local-secre")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client
        .get(&list)
        .bearer_auth("local-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);

    // The CLI passes it the same way.
    // The CLI passes it the same way (a child process, awaited: the host serves on this
    // test's runtime).
    let weft = |token: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["list", "--admin", &format!("http://{}", host.admin_addr())])
            .env("WEFT_ADMIN_TOKEN", token)
            .output()
    };
    let refused = weft("nope").await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bearer token"));
    assert!(weft("local-secret").await.unwrap().status.success());
    host.shutdown().await;
}

#[tokio::test]
async fn nats_credentials_never_appear_in_status_or_listings() {
    let secret = "hunter2-nats-password";
    let Some(server) = NatsServer::start_with(&["--user", "weft", "--pass", secret]) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let nats_url = format!("nats://weft:{secret}@127.0.0.1:{}", server.port);
    let host = start_host_with(cache.path(), |config| {
        config.nats = Some(nats_config(nats_url.clone()));
    })
    .await;
    let status = reqwest::get(admin_url(&host, "/v1/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.contains("nats://***@127.0.0.1") && !status.contains(secret),
        "{status}"
    );
    let listing = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["list", "--admin", &format!("http://{}", host.admin_addr())])
        .output()
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("***@") && !listing.contains(secret),
        "{listing}"
    );
    host.shutdown().await;

    // Nor in the error when the server cannot be reached.
    drop(server);
    let error = weft_runtime::Host::start(weft_runtime::HostConfig {
        nats: Some(nats_config(nats_url)),
        ..host_config(cache.path())
    })
    .await
    .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("***@127.0.0.1") && !error.contains(secret),
        "{error}"
    );
}
