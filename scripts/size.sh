#!/usr/bin/env bash
# Benchmark: the size of the deployable Worker (wasm and JS shim), raw and gzipped.
# Budget: the wasm under 400 KB gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null 2>&1
bash scripts/build.sh >build.log 2>&1 || { tail -50 build.log; exit 1; }
for f in build/index_bg.wasm build/index.js; do
  raw=$(wc -c <"$f")
  gz=$(gzip -9c "$f" | wc -c)
  printf '%-22s %9d bytes raw  %9d bytes gzipped (%d KB)\n' "$f" "$raw" "$gz" $((gz / 1024))
done
