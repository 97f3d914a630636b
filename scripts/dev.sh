#!/usr/bin/env bash
# Sets up everything needed and starts byok-vault locally: wrangler dev with a local D1
# brought up to date by migrations/, local queues, and a .dev.vars with random secrets made on
# the first run (never committed). Prints a dev token and a curl example.
set -euo pipefail
cd "$(dirname "$0")/.."
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

wrangler d1 migrations apply DB --local >/dev/null
echo "[dev] local D1 migrations applied"

free_port() { node -e '
  const s = require("net").createServer();
  s.listen(Number(process.argv[1]), "127.0.0.1", () => { process.stdout.write(String(s.address().port)); s.close(); })
   .on("error", () => { s.listen(0, "127.0.0.1"); });' "$1"; }
PORT=$(free_port "${PORT:-8787}")
INSPECTOR_PORT=$(free_port "${INSPECTOR_PORT:-9229}")
TOKEN=$(node scripts/dev-token.mjs dev-user 24)

cat <<INFO

byok-vault will listen on http://127.0.0.1:$PORT
A dev token for user "dev-user", valid 24 hours (make more: node scripts/dev-token.mjs <user> <hours>):

  export TOKEN=$TOKEN

  curl -s http://127.0.0.1:$PORT/v1/health
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/v1/providers
  curl -s -X POST -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"provider":"elevenlabs","api_key":"<your ElevenLabs key>","label":"Personal"}' \\
       http://127.0.0.1:$PORT/v1/credentials
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/v1/credentials

INFO
exec wrangler dev --ip 127.0.0.1 --port "$PORT" --inspector-port "$INSPECTOR_PORT" --test-scheduled
