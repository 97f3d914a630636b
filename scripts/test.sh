#!/usr/bin/env bash
# Sets up everything needed and runs every test: the host unit tests of the pure core,
# then the end-to-end suite against the real Worker under wrangler dev (workerd, local
# D1, local queues) with fake provider servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .toolchain/env.sh

echo "== host unit tests (cargo test)"
cargo test --locked

echo "== wasm build"
bash scripts/build.sh >build.log 2>&1 || { tail -50 build.log; exit 1; }

echo "== end-to-end tests (wrangler dev + fake providers)"
node --test --test-concurrency=1 --test-reporter=spec tests/e2e/*.test.mjs
