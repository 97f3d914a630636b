#!/usr/bin/env bash
# Builds the Worker (wasm + JS shim) into build/. wrangler runs this as its [build] command.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .toolchain/env.sh ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
. .toolchain/env.sh
exec worker-build --release
