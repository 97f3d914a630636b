#!/usr/bin/env bash
# The load benchmark, in one command (not part of the tests): sets up the toolchain,
# installs wrk, builds the release Worker, and runs bench/bench.mjs, which starts it under
# wrangler dev with instant fake providers, seeds data, drives every operation with wrk and
# checks the budgets against floors measured in the same run: issue 12's, issue 21's
# (bench/metering.mjs) and issue 22's realtime ones (bench/realtime.mjs: minting, the
# WebSocket proxy's round trip, idle sessions' CPU).
#
#   bash bench/run.sh [--quick] [--duration S] [--connections N] [--metering-only] [--realtime-only]
#
# Results: bench/results/latest.md and latest.json (metering.json, realtime.json for the
# --…-only runs). Exit status 1 when a budget is missed.
# The native micro-benchmarks are separate: cargo bench --bench core.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "[bench] installing wrk"
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ apt-get install -y wrk >/dev/null 2>&1 || { sudo_ apt-get update >/dev/null 2>&1; sudo_ apt-get install -y wrk >/dev/null; }
fi
. .toolchain/env.sh
bash scripts/build.sh
exec node bench/bench.mjs "$@"
