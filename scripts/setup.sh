#!/usr/bin/env bash
# Installs everything byok-vault needs to build, run and test it, and writes
# .toolchain/env.sh for the other scripts. Idempotent: a second run takes seconds.
#
#   - a Rust toolchain with the wasm32-unknown-unknown std: `rustup target add` where the
#     Rust distribution server is reachable, otherwise Debian's rustc-web with a wasm32 std
#     built once from rust-web-src and lld as rust-lld (set BYOK_FORCE_DEBIAN_RUST=1 to
#     take that route on purpose);
#   - worker-build and wasm-bindgen-cli at the versions Cargo.lock needs;
#   - wrangler, esbuild and wasm-opt (and the openai npm package the SDK tests run) from
#     package-lock.json (npm ci);
#   - a Python venv with schemathesis and the providers' official Python SDKs, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORKER_BUILD_VERSION=0.8.7
# Must equal the wasm-bindgen version in Cargo.lock (pinned in Cargo.toml).
WASM_BINDGEN_VERSION=0.2.129
DEBIAN_RUST_PACKAGES="rustc-web cargo-web rust-web-src lld-22"
WASM_TARGET=wasm32-unknown-unknown

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p .toolchain

# --- Node.js (wrangler 4.86 needs >= 20.3) ---------------------------------------------
command -v node >/dev/null || die "Node.js >= 20.3 is required (apt-get install nodejs)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=3)?0:1)' \
  || die "Node.js >= 20.3 is required, found $(node --version)"

# --- Rust with the wasm32 std -----------------------------------------------------------
has_wasm_std() { # $1: rustup toolchain name, or empty for the default
  local libdir
  libdir=$(rustc ${1:++"$1"} --print target-libdir --target "$WASM_TARGET" 2>/dev/null) || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}

debian_rust() {
  local missing=()
  for p in $DEBIAN_RUST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian's Rust for the web: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v rust-lld >/dev/null || as_root ln -sf "$(command -v lld-22 || echo /usr/lib/llvm-22/bin/lld)" /usr/local/bin/rust-lld
  local libdir=/usr/lib/rustlib/$WASM_TARGET/lib
  if ! compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
    log "building the wasm32 std from rust-web-src (about a minute, once)"
    local probe=.toolchain/wasm-std-probe
    rm -rf "$probe" && mkdir -p "$probe/src"
    printf '[package]\nname = "wasm-std-probe"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n' >"$probe/Cargo.toml"
    : >"$probe/src/lib.rs"
    (cd "$probe" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Cembed-bitcode=yes" \
      /usr/bin/cargo build -q --release --target "$WASM_TARGET" -Z build-std=std,panic_abort,panic_unwind)
    as_root mkdir -p "$libdir"
    find "$probe/target/$WASM_TARGET/release/deps" -name 'lib*.rlib' ! -name 'libwasm_std_probe-*' \
      -exec cp {} "$libdir/" \; -print | wc -l | xargs -I{} echo "[setup] installed {} std rlibs" >&2
    rm -rf "$probe"
  fi
  if command -v rustup >/dev/null; then
    rustup toolchain list | grep -q '^system' || rustup toolchain link system /usr
  fi
}

RUST_TOOLCHAIN=""
if [ -z "${BYOK_FORCE_DEBIAN_RUST:-}" ] && command -v rustc >/dev/null && has_wasm_std ""; then
  :
elif command -v rustup >/dev/null && rustup toolchain list | grep -q '^system' && has_wasm_std system; then
  RUST_TOOLCHAIN=system
else
  if [ -z "${BYOK_FORCE_DEBIAN_RUST:-}" ] && command -v rustup >/dev/null; then
    log "rustup target add $WASM_TARGET (gives up after 120 s where the Rust servers are unreachable)"
    timeout -k 5 120 rustup target add "$WASM_TARGET" >/dev/null 2>&1 || true
  fi
  # rustup's exit status is not trusted: only the std files themselves count.
  if [ -z "${BYOK_FORCE_DEBIAN_RUST:-}" ] && command -v rustc >/dev/null && has_wasm_std ""; then
    :
  else
    debian_rust
    if command -v rustup >/dev/null; then RUST_TOOLCHAIN=system; fi
    has_wasm_std "$RUST_TOOLCHAIN" || die "no wasm32 std after the Debian route"
  fi
fi
rustc_cmd() { if [ -n "$RUST_TOOLCHAIN" ]; then rustc +"$RUST_TOOLCHAIN" "$@"; else rustc "$@"; fi; }
log "rust: $(rustc_cmd --version) with $WASM_TARGET${RUST_TOOLCHAIN:+ (toolchain $RUST_TOOLCHAIN)}"

# --- worker-build and wasm-bindgen-cli --------------------------------------------------
installed() { cargo install --list 2>/dev/null | grep -q "^$1 v$2:"; }
for tool in "worker-build $WORKER_BUILD_VERSION" "wasm-bindgen-cli $WASM_BINDGEN_VERSION"; do
  set -- $tool
  if ! installed "$1" "$2"; then
    log "cargo install $1 $2 (a few minutes, once)"
    cargo install -q "$1" --version "$2" --locked
  fi
done
lock_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock 2>/dev/null || true)
if [ -n "$lock_version" ] && [ "$lock_version" != "$WASM_BINDGEN_VERSION" ]; then
  die "Cargo.lock has wasm-bindgen $lock_version but setup installs the CLI $WASM_BINDGEN_VERSION"
fi

# --- npm packages -----------------------------------------------------------------------
stamp=node_modules/.byok-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" >"$stamp"
fi

# --- Chromium for the browser tests (Debian's; Playwright drives it, never downloads one) -
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  log "apt-get install chromium (for the browser tests; once)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# --- Python tools for the contract tests (schemathesis) and the providers' official SDKs
# for the SDK tests, in one venv of their own, resolved together ---------------------------
venv=.toolchain/venv
py_requirements=(tests/contract/requirements.txt tests/sdk/requirements.txt)
stamp_py=$venv/.byok-requirements-sha256
want_py=$(cat "${py_requirements[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp_py" ] || [ "$(cat "$stamp_py")" != "$want_py" ]; then
  command -v python3 >/dev/null || die "python3 is required for the contract and SDK tests"
  log "pip install -r ${py_requirements[*]} (into $venv)"
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    # Debian's python3 makes venvs only with python3-venv installed.
    if ! python3 -m venv "$venv" 2>/dev/null; then
      log "apt-get install python3-venv"
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${py_requirements[@]/#/--requirement=}"
  echo "$want_py" >"$stamp_py"
fi

# --- environment for build, dev and tests -----------------------------------------------
cat >.toolchain/env.sh <<ENV
# Written by scripts/setup.sh; sourced by the other scripts.
export PATH="$HOME/.cargo/bin:$ROOT/node_modules/.bin:\$PATH"
${RUST_TOOLCHAIN:+export RUSTUP_TOOLCHAIN=$RUST_TOOLCHAIN}
export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen"
export ESBUILD_BIN="$ROOT/node_modules/.bin/esbuild"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
export WRANGLER_SEND_METRICS=false
# No internet here: skip the Request.cf download that otherwise delays the first request.
export CLOUDFLARE_CF_FETCH_ENABLED=false
ENV
log "ready"
