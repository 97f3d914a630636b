#!/usr/bin/env bash
# Builds the Worker (wasm + JS shim) into build/. wrangler runs this as its [build] command.
# Skips the work when build/ is newer than every input, as make would.
#
# The deployed wasm carries no "name" section (function names: about 50 KB gzipped, an
# eighth of the size budget). The same module with its names is kept beside it as
# build/index_bg.names.wasm: a trace's `wasm-function[N]` is looked up there
# (`twiggy paths`, `wasm-objdump -x`), so nothing is lost for debugging.
#
# worker-build's wasm-opt keeps the names (-g), and with them binaryen leaves out its
# Stack IR optimisations (local.set/get pairs become stack operands), which it runs only
# when it writes no debug info. They are run here, on the stripped module: only function
# bodies change (no function is added, removed or moved), so the names file still maps
# every `wasm-function[N]`. About 1.8 KB gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .toolchain/env.sh ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
. .toolchain/env.sh
# One build at a time per checkout: wrangler dev runs this script for every vault a test
# starts, and vaults may start at once; the others then find build/ up to date.
mkdir -p build
exec 9>build/.lock
flock 9
# The API description, served as a static asset (not wasm).
node scripts/openapi-json.mjs
out=build/index_bg.wasm
if [ -f "$out" ] && [ -f build/index_bg.names.wasm ] && [ -f build/worker/shim.mjs ] && [ -f build/index.js ] &&
  [ -z "$(find src Cargo.toml Cargo.lock -newer "$out" -print -quit)" ]; then
  echo "[build] build/ is up to date"
  exit 0
fi
worker-build --release
cp "$out" build/index_bg.names.wasm
# The feature list is worker-build's own: newer binaryen encodings that workerd cannot
# read are never emitted.
features=(mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue reference-types exception-handling)
"$WASM_OPT_BIN" "${features[@]/#/--enable-}" --strip-debug --strip-producers \
  --optimize-level=2 --shrink-level=1 --generate-stack-ir --optimize-stack-ir \
  build/index_bg.names.wasm -o "$out"
echo "[build] $(wc -c <"$out") bytes, $(gzip -c "$out" | wc -c) gzipped (names kept in build/index_bg.names.wasm)"
