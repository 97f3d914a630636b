#!/usr/bin/env bash
# Builds the Worker (wasm + JS shim) into build/. wrangler runs this as its [build] command.
# Skips the work when build/ is newer than every input, as make would.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .toolchain/env.sh ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
. .toolchain/env.sh
out=build/index_bg.wasm
if [ -f "$out" ] && [ -f build/worker/shim.mjs ] && [ -f build/index.js ] &&
  [ -z "$(find src Cargo.toml Cargo.lock -newer "$out" -print -quit)" ]; then
  echo "[build] build/ is up to date"
  exit 0
fi
exec worker-build --release
