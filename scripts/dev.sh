#!/usr/bin/env bash
# Sets up everything needed and starts byok-vault locally: wrangler dev with a local D1
# brought up to date by migrations/, local queues, and a .dev.vars with random secrets made on
# the first run (never committed). Prints a dev token and a curl example.
#
#   bash scripts/dev.sh             the vault, with the real providers
#   bash scripts/dev.sh --sandbox   the vault with stand-in providers (no internet, test keys)
set -euo pipefail
cd "$(dirname "$0")/.."
SANDBOX=""
for arg in "$@"; do
  case "$arg" in
    --sandbox) SANDBOX=1 ;;
    *) echo "usage: bash scripts/dev.sh [--sandbox]" >&2; exit 2 ;;
  esac
done
if [ -n "$SANDBOX" ]; then
  echo "[dev] --sandbox: stand-in providers answer instead of the real ones (keys below)"
else
  echo "[dev] real providers; add --sandbox for stand-ins that need no internet and no real keys"
fi
bash scripts/setup.sh
. .toolchain/env.sh

if [ ! -f .dev.vars ]; then
  (
    umask 077
    cat >.dev.vars <<VARS
# Local secrets for wrangler dev, made by scripts/dev.sh. Never commit this file.
ENVIRONMENT=development
MASTER_KEY=$(node -e 'process.stdout.write(require("crypto").randomBytes(32).toString("base64"))')
AUTH_JWT_SECRET=$(node -e 'process.stdout.write(require("crypto").randomBytes(32).toString("hex"))')
ALLOW_PRIVATE_BASE_URLS=true
CORS_ALLOWED_ORIGINS=http://localhost:3000,http://localhost:5173
VARS
  )
  echo "[dev] wrote .dev.vars with a random MASTER_KEY and AUTH_JWT_SECRET"
fi

# A local service token for POST /v1/resolve (only its SHA-256 goes into SERVICE_TOKENS;
# the token itself is kept in a comment of the same untracked file, for the example below).
if ! grep -q '^SERVICE_TOKENS=' .dev.vars; then
  svc=$(node -e 'process.stdout.write("svc_" + require("crypto").randomBytes(24).toString("hex"))')
  sha=$(node -e 'process.stdout.write(require("crypto").createHash("sha256").update(process.argv[1]).digest("hex"))' "$svc")
  printf '# dev service token (scopes resolve, admin): %s\nSERVICE_TOKENS=[{"name":"dev-service","sha256":"%s","scopes":["resolve","admin"]}]\n' "$svc" "$sha" >>.dev.vars
  echo "[dev] added a dev service token to .dev.vars"
fi
SERVICE_TOKEN=$(sed -n 's/^# dev service token (scopes resolve, admin): //p' .dev.vars)

wrangler d1 migrations apply DB --local >/dev/null
echo "[dev] local D1 migrations applied"

# Ports: PORT and INSPECTOR_PORT when set (0: any free port, assigned as wrangler binds it);
# otherwise wrangler's own choice, 8787 and 9229 or the next free ones. No port is picked
# here and handed over later, so none can be taken in between; the links below are
# printed once wrangler says which port it serves on.
PORT_ARGS=()
[ -n "${PORT:-}" ] && PORT_ARGS+=(--port "$PORT")
[ -n "${INSPECTOR_PORT:-}" ] && PORT_ARGS+=(--inspector-port "$INSPECTOR_PORT")
TOKEN=$(node scripts/dev-token.mjs dev-user 24)

url_file=$(mktemp)
sandbox_pid=""
wrangler_pid=""
# Whatever ends this script (Ctrl-C, a signal, an error) ends wrangler and the stand-ins.
cleanup() {
  [ -n "$wrangler_pid" ] && kill "$wrangler_pid" 2>/dev/null
  [ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null
  rm -f "$url_file" "$url_file.tmp" "${vars_file:-}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# The sandbox: the fake providers the tests use, on a port the OS assigns, stopped with the vault.
SANDBOX_VARS=()
if [ -n "$SANDBOX" ]; then
  vars_file=$(mktemp)
  node scripts/sandbox-providers.mjs >"$vars_file" &
  sandbox_pid=$!
  # Their one line of vars, once complete (a newline ends it), unless they exit first.
  line_done() { [ "$(wc -l <"$vars_file")" -ge 1 ]; }
  for _ in $(seq 300); do
    line_done || ! kill -0 "$sandbox_pid" 2>/dev/null && break
    sleep 0.1
  done
  line_done || { echo "[dev] the sandbox providers did not start" >&2; exit 1; }
  while IFS= read -r pair; do SANDBOX_VARS+=(--var "$pair"); done < <(node -e '
    const vars = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const [k, v] of Object.entries(vars)) console.log(`${k}:${v}`);' "$vars_file")
  SANDBOX_VARS+=(--var "SANDBOX:on" --var "ENVIRONMENT:development")
fi

# wrangler on this terminal (stdin kept: its hotkeys work), through scripts/wrangler-dev.mjs,
# which writes the URL wrangler serves on once it says.
node scripts/wrangler-dev.mjs "$url_file" --ip 127.0.0.1 "${PORT_ARGS[@]}" --test-scheduled "${SANDBOX_VARS[@]}" <&0 &
wrangler_pid=$!
while [ ! -s "$url_file" ] && kill -0 "$wrangler_pid" 2>/dev/null; do sleep 0.2; done
if [ ! -s "$url_file" ]; then
  wait "$wrangler_pid"
  exit $?
fi
BASE=$(cat "$url_file")

if [ -n "$SANDBOX" ]; then
  rnd() { node -e 'process.stdout.write(require("crypto").randomBytes(8).toString("hex"))'; }
  cat <<KEYS

Sandbox keys (any provider but Ollama, which takes your own base_url; what a key does is in its name):
  works:         sk_valid_$(rnd)
  refused:       sk_invalid_$(rnd)
  rate limited:  sk_longwait_$(rnd)
  quota used up: sk_quota_$(rnd)
KEYS
fi

cat <<INFO

byok-vault is listening on $BASE
The settings page, signed in as "dev-user" (the token stays in the page):

  $BASE/#token=$TOKEN

A dev token for user "dev-user", valid 24 hours (make more: node scripts/dev-token.mjs <user> <hours>):

  export TOKEN=$TOKEN

  curl -s $BASE/v1/health
  curl -s -H "Authorization: Bearer \$TOKEN" $BASE/v1/providers
  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"provider":"elevenlabs","api_key":"<your ElevenLabs key>","label":"Personal"}' \\
       $BASE/v1/credentials
  curl -s -H "Authorization: Bearer \$TOKEN" $BASE/v1/credentials

A backend service resolves the key for a user's call (service token from .dev.vars):

  export SERVICE_TOKEN=$SERVICE_TOKEN
  curl -s -X POST -H "Authorization: Bearer \$SERVICE_TOKEN" -H 'Content-Type: application/json' \\
       -d '{"user_id":"dev-user","capability":"tts"}' $BASE/v1/resolve

and a frontend calls the provider through the proxy, the key never leaving the vault:

  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"text":"Hello","model_id":"eleven_multilingual_v2"}' -o hello.mp3 \\
       $BASE/v1/proxy/elevenlabs/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM

INFO
wait "$wrangler_pid"
