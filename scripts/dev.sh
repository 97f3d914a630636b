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

free_port() { node -e '
  const s = require("net").createServer();
  s.listen(Number(process.argv[1]), "127.0.0.1", () => { process.stdout.write(String(s.address().port)); s.close(); })
   .on("error", () => { s.listen(0, "127.0.0.1"); });' "$1"; }
PORT=$(free_port "${PORT:-8787}")
INSPECTOR_PORT=$(free_port "${INSPECTOR_PORT:-9229}")
TOKEN=$(node scripts/dev-token.mjs dev-user 24)

# The sandbox: the fake providers the tests use, on a free port, stopped with the vault.
SANDBOX_VARS=()
if [ -n "$SANDBOX" ]; then
  vars_file=$(mktemp)
  node scripts/sandbox-providers.mjs >"$vars_file" &
  sandbox_pid=$!
  wrangler_pid=""
  # Whatever ends this script (Ctrl-C, a signal, an error) ends wrangler and the stand-ins.
  cleanup() {
    [ -n "$wrangler_pid" ] && kill "$wrangler_pid" 2>/dev/null
    kill "$sandbox_pid" 2>/dev/null
    rm -f "$vars_file"
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP
  for _ in $(seq 50); do [ -s "$vars_file" ] && break; sleep 0.1; done
  [ -s "$vars_file" ] || { echo "[dev] the sandbox providers did not start" >&2; exit 1; }
  while IFS= read -r pair; do SANDBOX_VARS+=(--var "$pair"); done < <(node -e '
    const vars = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const [k, v] of Object.entries(vars)) console.log(`${k}:${v}`);' "$vars_file")
  SANDBOX_VARS+=(--var "SANDBOX:on" --var "ENVIRONMENT:development")
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

byok-vault will listen on http://127.0.0.1:$PORT
The settings page, signed in as "dev-user" (the token stays in the page):

  http://127.0.0.1:$PORT/#token=$TOKEN

A dev token for user "dev-user", valid 24 hours (make more: node scripts/dev-token.mjs <user> <hours>):

  export TOKEN=$TOKEN

  curl -s http://127.0.0.1:$PORT/v1/health
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/v1/providers
  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"provider":"elevenlabs","api_key":"<your ElevenLabs key>","label":"Personal"}' \\
       http://127.0.0.1:$PORT/v1/credentials
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/v1/credentials

A backend service resolves the key for a user's call (service token from .dev.vars):

  export SERVICE_TOKEN=$SERVICE_TOKEN
  curl -s -X POST -H "Authorization: Bearer \$SERVICE_TOKEN" -H 'Content-Type: application/json' \\
       -d '{"user_id":"dev-user","capability":"tts"}' http://127.0.0.1:$PORT/v1/resolve

and a frontend calls the provider through the proxy, the key never leaving the vault:

  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"text":"Hello","model_id":"eleven_multilingual_v2"}' -o hello.mp3 \\
       http://127.0.0.1:$PORT/v1/proxy/elevenlabs/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM

INFO
if [ -n "$SANDBOX" ]; then
  # Not exec: the stand-in providers stop with wrangler, and wrangler with this script.
  wrangler dev --ip 127.0.0.1 --port "$PORT" --inspector-port "$INSPECTOR_PORT" --test-scheduled "${SANDBOX_VARS[@]}" &
  wrangler_pid=$!
  wait "$wrangler_pid"
else
  exec wrangler dev --ip 127.0.0.1 --port "$PORT" --inspector-port "$INSPECTOR_PORT" --test-scheduled
fi
