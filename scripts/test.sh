#!/usr/bin/env bash
# Sets up everything needed and runs every test: the host unit tests of the pure core,
# then the end-to-end suite against the real Worker under wrangler dev (workerd, local
# D1, local queues) with fake provider servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .toolchain/env.sh

out=$(mktemp -d)
build=
# A run that stops early stops the background build too (its own process group).
trap 'rm -rf "$out"; [ -z "$build" ] || kill -- -"$build" 2>/dev/null || true' EXIT

# The release wasm build runs beside the host tests and the lints: it has long single-
# threaded stretches (the LTO link, two wasm-opt passes) that leave a core idle, and it
# takes cargo locks of its own (wasm32 and host release, not the host debug ones).
echo "== wasm build (in the background, until the end-to-end tests need it)"
setsid bash scripts/build.sh >build.log 2>&1 &
build=$!

echo "== host unit tests (cargo test)"
cargo test --locked 2>&1 | tee "$out/cargo.log"

echo "== module graph (no import cycle, no import above its floor: scripts/modules.py)"
python3 scripts/modules.py

echo "== lints (clippy on the host and wasm32 targets; warnings are errors)"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets -q -- -D warnings
  cargo clippy --locked --target wasm32-unknown-unknown -q -- -D warnings
else
  echo "skipped: this toolchain has no clippy (the Debian route)"
fi

echo "== wasm build (waiting for it)"
status=0
wait "$build" || status=$?
build=
[ "$status" -eq 0 ] || { tail -50 build.log; exit 1; }

echo "== end-to-end tests (wrangler dev + fake providers)"
# Two files at a time: each starts its own Worker on its own port and state, and most of
# their time is spent waiting (timers, windows, polls), so two share the 2 cores well
# (measured: 335 s against 588 s one at a time, all green). A test that hangs fails after
# 10 minutes (the longest takes about 1) and the run goes on.
node --test --test-concurrency=2 --test-timeout=600000 --test-reporter=spec tests/e2e/*.test.mjs 2>&1 | tee "$out/e2e.log"

# One closing line for both runners.
passed=$(( $(grep -oE '[0-9]+ passed' "$out/cargo.log" | awk '{s+=$1} END {print s+0}') + $(grep -oE 'ℹ pass [0-9]+' "$out/e2e.log" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -oE '[0-9]+ failed' "$out/cargo.log" | awk '{s+=$1} END {print s+0}') + $(grep -oE 'ℹ fail [0-9]+' "$out/e2e.log" | awk '{s+=$3} END {print s+0}') ))
echo "total: $passed passed, $failed failed"
