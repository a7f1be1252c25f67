//! The tools and components the suite runs. `host/bench/run.sh` (run by
//! `just bench`) installs and builds them; here they are only found.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::procs::repo_root;

/// The pinned `wasmtime` CLI, installed by run.sh into `target/bench-tools`.
pub fn wasmtime() -> PathBuf {
    repo_root().join("target/bench-tools/bin/wasmtime")
}

/// nats-server from PATH (run.sh makes sure it is 2.10 or newer).
pub fn nats_server() -> PathBuf {
    std::env::var_os("WEFT_BENCH_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// The components under test.
#[derive(Debug, Clone)]
pub struct Wasm {
    /// The Rust hello component (GET greets, POST echoes).
    pub hello: PathBuf,
    /// The same greeting as a `wasi:http@0.3.0` service.
    pub hello_p3: PathBuf,
    /// The gRPC example service (examples/grpc).
    pub calculator: PathBuf,
    /// The WebSocket example (examples/chat): echoes binary messages to their sender.
    pub chat: PathBuf,
    /// The Rust messaging component: answers like the native responder.
    pub echo_responder: PathBuf,
    /// The JavaScript hello component (componentize-js).
    pub js_hello: PathBuf,
    /// The Python hello component (componentize-py).
    pub py_hello: PathBuf,
}

impl Wasm {
    /// Finds the components, or says how to build the missing ones. `wasmtime_serve`:
    /// the sections to run compare against `wasmtime serve` (all but messaging), so
    /// they need it and the large guests too.
    pub fn find(wasmtime_serve: bool) -> Result<Wasm> {
        let root = repo_root().join("target/components");
        let wasm = Wasm {
            hello: root.join("wasm32-wasip2/release/hello.wasm"),
            hello_p3: root.join("wasm32-wasip2/release/hello_p3.wasm"),
            calculator: root.join("wasm32-wasip2/release/calculator.wasm"),
            chat: root.join("wasm32-wasip2/release/chat.wasm"),
            echo_responder: root.join("wasm32-wasip2/release/echo_responder.wasm"),
            js_hello: root.join("js/js-hello.wasm"),
            py_hello: root.join("py/py-hello.wasm"),
        };
        let mut needed = vec![
            &wasm.hello,
            &wasm.echo_responder,
            &wasm.calculator,
            &wasm.chat,
        ];
        if wasmtime_serve {
            needed.extend([&wasm.hello_p3, &wasm.js_hello, &wasm.py_hello]);
        }
        for path in needed {
            if !path.exists() {
                bail!(
                    "{} is missing: run `just bench`, which builds the components first",
                    path.display()
                );
            }
        }
        if wasmtime_serve && !wasmtime().exists() {
            bail!(
                "{} is missing: run `just bench`, which installs wasmtime-cli first",
                wasmtime().display()
            );
        }
        Ok(wasm)
    }
}
