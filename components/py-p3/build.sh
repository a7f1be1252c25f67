#!/usr/bin/env bash
# Builds app.py into a `wasi:http@0.3.0` service component with componentize-py.
# Usage: build.sh [output.wasm]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/components/py/py-p3.wasm}
mkdir -p "$(dirname "$out")"
if ! command -v componentize-py >/dev/null; then
    echo "componentize-py is missing: pip install componentize-py==0.25.1" >&2
    exit 1
fi
echo "componentize-py: building $out ..." >&2
cd "$here"
componentize-py -d wit -w weft-test:py-p3/service componentize app -o "$out"
