//! The operator console (`/console` on the admin listener) in a real headless Chromium
//! (Debian's `chromium`, driven by Playwright from npm): a `weft up` with an admin token
//! serving hello and faults; the page asks for the token, shows both components and the
//! backends, counts requests, lists a trap with its message, and drops an undeployed
//! component (host/cli/tests/console/console.mjs).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const TOKEN: &str = "console-test-token";

#[test]
fn the_console_shows_counts_failures_and_undeploys_in_a_browser() {
    if !npm_available() || !tool_available("chromium", "apt-get install chromium") {
        return;
    }
    let browser_dir = workspace_root().join("host/cli/tests/console");
    install_playwright(&browser_dir);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.wasm"), wasm("hello")).unwrap();
    std::fs::write(dir.path().join("faults.wasm"), wasm("faults")).unwrap();
    let manifest = dir.path().join("weft.toml");
    std::fs::write(
        &manifest,
        "name = \"console\"\n\
         [components.hello]\nsource = \"hello.wasm\"\nroutes = [{ path = \"/hello/...\" }]\n\
         [components.faults]\nsource = \"faults.wasm\"\nroutes = [{ path = \"/f/...\" }]\n",
    )
    .unwrap();
    let (mut up, http, admin) = weft_up_with(dir.path(), &manifest, &["--admin-token", TOKEN]);

    // The page itself is served without the token (it holds no data); what it reads is not.
    let page = reqwest::blocking::get(format!("{admin}/console")).unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("weft console"));
    let data = reqwest::blocking::get(format!("{admin}/v1/failures")).unwrap();
    assert_eq!(data.status(), 401, "the console's data needs the token");
    // The console's own origin passes the admin API's Origin check; another page's does not.
    let from = |origin: &str| {
        reqwest::blocking::Client::new()
            .get(format!("{admin}/v1/components"))
            .bearer_auth(TOKEN)
            .header("origin", origin)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(from(&admin), 200, "the console's own origin");
    assert_eq!(from("http://evil.example"), 403, "a foreign page");

    let screenshot = std::env::var_os("WEFT_CONSOLE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("console.png"));
    let output = std::process::Command::new("node")
        .arg("console.mjs")
        .args([&admin, &format!("http://{http}"), TOKEN])
        .arg(&screenshot)
        .current_dir(&browser_dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.contains("ok: the console"),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(screenshot.exists(), "a screenshot of the console");
    let _ = up.child.kill();
    let _ = up.child.wait();
}
