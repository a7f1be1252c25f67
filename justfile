# weft's everyday commands. `just --list` shows them.

# Guest components are built into their own target directory, so building them never
# waits on (or invalidates) the host's build.
components_target := "target/components"
wasm_dir := components_target / "wasm32-wasip2/release"
admin := env_var_or_default("WEFT_ADMIN", "http://127.0.0.1:7070")

# List the recipes.
default:
    @just --list

# Build every guest component for wasm32-wasip2.
build:
    cargo build --release --target wasm32-wasip2 --target-dir {{components_target}} -p hello -p hello-p3 -p faults -p bad-import -p cli-app -p responder -p spin-app -p wstd-app -p echo-responder -p orders -p inventory -p gateway -p calculator -p calculator-p3 -p chat

# Start a host serving the hello example (builds what is missing).
up manifest="examples/hello/weft.toml":
    cargo run -p weft -- up {{manifest}}

# Start a host serving the shop example (embedded bus and store; add `--nats URL` to use NATS).
shop *args:
    cargo run -p weft -- up examples/shop/weft.toml {{args}}

# Rebuild one component and redeploy it into the running host, with its manifest's routes and permissions.
deploy component manifest="":
    #!/usr/bin/env bash
    set -euo pipefail
    manifest="{{manifest}}"
    if [ -z "$manifest" ]; then
        manifest=$(grep -l '^\[components\.{{component}}\]' examples/*/weft.toml components/weft.toml | head -n 1 || true)
    fi
    if [ -z "$manifest" ]; then
        echo "no manifest declares [components.{{component}}]: pass one, e.g. just deploy {{component}} path/to/weft.toml" >&2
        exit 1
    fi
    cargo build --release --target wasm32-wasip2 --target-dir {{components_target}} -p {{component}}
    cargo run -q -p weft -- deploy {{component}} --manifest "$manifest" --wasm {{wasm_dir}}/{{replace(component, "-", "_")}}.wasm --admin {{admin}}

# What the running host serves.
list:
    cargo run -q -p weft -- list --admin {{admin}}

# Run every test (the tests build the components they need).
test:
    cargo test

# Run one component's unit tests (components/unit-tests/tests/<component>.rs).
test-component component:
    cargo test -p unit-tests --test {{component}}

# Benchmarks side by side with native axum, `wasmtime serve` and a native NATS responder; writes BENCHMARKS.md (`--quick` for a short run).
bench *args:
    bash host/bench/run.sh {{args}}

# Formatting and lints, as CI would judge them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy --release --target wasm32-wasip2 --target-dir {{components_target}} -p weft-sdk -p hello -p hello-p3 -p faults -p bad-import -p cli-app -p responder -p spin-app -p wstd-app -p echo-responder -p orders -p inventory -p gateway -p calculator -p calculator-p3 -p chat -- -D warnings
