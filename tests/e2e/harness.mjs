// Starts the real Worker under `wrangler dev` (workerd, local D1, local queues) on free
// loopback ports with its own throw-away state directory, and always stops it.
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WRANGLER = path.join(ROOT, 'node_modules', '.bin', 'wrangler');
const READY_TIMEOUT_MS = 180_000;

// Every process group this file started, so none outlives the test run.
const started = new Set();
process.on('exit', () => {
  for (const pid of started) {
    try { process.kill(-pid, 'SIGKILL'); } catch { /* already gone */ }
  }
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const randomKey = (kind) => `sk_${kind}_${crypto.randomBytes(20).toString('hex')}`;

/**
 * Backend services for a vault: `{ name: [scopes] }` → a random token per name and the
 * `SERVICE_TOKENS` secret that lists them (by SHA-256 only, as the vault takes them).
 */
export function serviceTokens(services) {
  const tokens = {};
  const entries = Object.entries(services).map(([name, scopes]) => {
    tokens[name] = `svc_${crypto.randomBytes(16).toString('hex')}`;
    return { name, sha256: crypto.createHash('sha256').update(tokens[name]).digest('hex'), scopes };
  });
  return { tokens, SERVICE_TOKENS: JSON.stringify(entries) };
}

/**
 * Adds a valid key for each `{ user, provider }` of `todo`, `parallel` at a time; returns
 * `{ user, provider, key, id }` for each, in the order they were stored.
 */
export async function addMany(vault, todo, parallel) {
  const creds = [];
  for (let i = 0; i < todo.length; i += parallel) {
    await Promise.all(todo.slice(i, i + parallel).map(async ({ user, provider }) => {
      const key = randomKey('valid');
      const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
      assert.equal(r.status, 201, r.text);
      creds.push({ user, provider, key, id: r.json.credential.id });
    }));
  }
  return creds;
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function signJwt(claims, secret, header = { alg: 'HS256', typ: 'JWT' }) {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  if (header.alg === 'none') return `${input}.`;
  const sig = crypto.createHmac('sha256', secret).update(input).digest();
  return `${input}.${b64url(sig)}`;
}

async function filesUnder(dir) {
  const out = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...await filesUnder(p));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

/**
 * Waits until `user` has at least `n` chained audit events (the queue consumer runs about a
 * second after a nudge) and returns them oldest first.
 */
export async function eventsOf(vault, user, n, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await vault.request('GET', '/v1/audit?limit=200', { user });
    if (r.status !== 200) throw new Error(`GET /v1/audit answered ${r.status}: ${r.text}`);
    if (r.json.events.length >= n || Date.now() > deadline) return r.json.events.slice().reverse();
    await new Promise((res) => setTimeout(res, 250));
  }
}

/** A resolve answer's text for an assertion message: its `api_key` left out, so a failing
 * test never prints a key. */
export const withoutKey = (text) => text.replace(/"api_key":"[^"]*"/g, '"api_key":"…"');

/** Asserts `actual` is the key `expected` without printing either when it is not. */
export function assertSameKey(actual, expected, what = 'the key') {
  assert.ok(actual === expected, `${what} is not the expected one`);
}

/** Applies migrations/ to the local D1 under `state`, as `scripts/dev.sh` does. */
export async function applyMigrations(state) {
  await run(WRANGLER, ['d1', 'migrations', 'apply', 'DB', '--local', '--persist-to', state], { cwd: ROOT });
}

/**
 * Runs SQL (a `--command` or a `--file`) on the local D1 under `state`; returns the rows of
 * the first statement, or with `all` the rows of every statement.
 */
export async function localSql(state, { command, file, all = false }) {
  const args = ['d1', 'execute', 'DB', '--local', '--persist-to', state, '--json', ...(file ? ['--file', file] : ['--command', command])];
  const { stdout } = await run(WRANGLER, args, { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 });
  const results = JSON.parse(stdout).map((r) => r.results ?? []);
  return all ? results : results[0] ?? [];
}

/** wrangler.toml with the AUDIT_QUEUE producer binding removed: the audit path is down. */
export function withoutAuditQueueProducer(toml) {
  const block = /\[\[queues\.producers\]\]\nbinding = "AUDIT_QUEUE"\nqueue = "[^"]+"\n/;
  if (!block.test(toml)) throw new Error('wrangler.toml has no top-level AUDIT_QUEUE producer block');
  return toml.replace(block, '');
}

/**
 * Starts a vault. `secrets` are merged over generated MASTER_KEY/AUTH_JWT_SECRET (a
 * null value leaves that secret out); `vars` are its vars; `config` rewrites the text of
 * wrangler.toml for this run (the copy sits beside it, so its paths still hold).
 *
 * `front` puts tests/e2e/front before the vault in one multi-config session: the tests
 * then read and write the local D1 through the running instance (`vault.sql`) and can put
 * messages on the audit queue by hand. wrangler dev binds no [[ratelimits]] to the second
 * worker of such a session, so it is the default exactly when RATE_LIMITS is off; a vault
 * with its live-check limits on runs alone, and `vault.sql` then asks wrangler itself.
 */
export async function startVault({ secrets = {}, vars = {}, config, front = vars.RATE_LIMITS === 'off', state: reuse, pollMs = 250 } = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'byok-e2e-'));
  // `state` carries an earlier vault's local D1 and queues over (a restart).
  const state = reuse ?? path.join(dir, 'state');
  const all = {
    ENVIRONMENT: 'development',
    MASTER_KEY: crypto.randomBytes(32).toString('base64'),
    AUTH_JWT_SECRET: crypto.randomBytes(32).toString('hex'),
    ...secrets,
  };
  const envFile = path.join(dir, 'secrets.env');
  await writeFile(envFile, Object.entries(all).filter(([, v]) => v != null).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');

  await applyMigrations(state);

  let configFile;
  let runDir;
  if (front) {
    // In a multi-config session only the first worker gets --env-file and --var; the vault
    // reads .dev.vars beside its own config, so it gets a folder of its own.
    runDir = path.join(ROOT, '.test-runs', path.basename(dir));
    fs.mkdirSync(runDir, { recursive: true });
    const toml = (config ?? ((t) => t))(await readFile(path.join(ROOT, 'wrangler.toml'), 'utf8'))
      .replace('main = "build/worker/shim.mjs"', 'main = "../../build/worker/shim.mjs"')
      .replace('directory = "public"', 'directory = "../../public"')
      // Builds run from the first config's folder in a multi-config session.
      .replace('command = "bash scripts/build.sh"', `command = "bash ${path.join(ROOT, 'scripts', 'build.sh')}"\nwatch_dir = "../../src"`);
    const devVars = { ...Object.fromEntries(Object.entries(all).filter(([, v]) => v != null)), ...vars };
    configFile = path.join(runDir, 'wrangler.toml');
    await writeFile(configFile, toml);
    await writeFile(path.join(runDir, '.dev.vars'), Object.entries(devVars).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
  } else if (config) {
    configFile = path.join(ROOT, `.test-wrangler-${process.pid}-${path.basename(dir)}.toml`);
    await writeFile(configFile, config(await readFile(path.join(ROOT, 'wrangler.toml'), 'utf8')));
  }
  const port = await freePort();
  const inspector = await freePort();
  const args = [
    'dev',
    // With the front worker, it comes first (it is what listens) and the vault second.
    ...(front ? ['--config', path.join(ROOT, 'tests/e2e/front/wrangler.toml'), '--config', configFile ?? path.join(ROOT, 'wrangler.toml')] : []),
    ...(!front && configFile ? ['--config', configFile] : []), '--ip', '127.0.0.1', '--port', String(port), '--inspector-port', String(inspector),
    '--persist-to', state, '--env-file', envFile, '--show-interactive-dev-session=false', '--test-scheduled',
    ...Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
  ];
  const logPath = path.join(dir, 'wrangler.log');
  const out = fs.openSync(logPath, 'a');
  const child = spawn(WRANGLER, args, { cwd: ROOT, detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  started.add(child.pid);
  const exited = new Promise((resolve) => child.once('exit', resolve));

  const base = `http://127.0.0.1:${port}`;
  const vault = {
    base, dir, state, logPath, secrets: all,
    /** wrangler's process group (the benchmark reads its processes' CPU time). */
    pgid: child.pid,
    /** The DevTools port of the Worker (the benchmark profiles its CPU there). */
    inspectorPort: inspector,
    /** When the first answer came (ms since the epoch). */
    readyAt: undefined,

    token(sub, claims = {}, { secret = all.AUTH_JWT_SECRET, header } = {}) {
      return signJwt({ sub, exp: Math.floor(Date.now() / 1000) + 600, ...claims }, secret, header);
    },

    async request(method, urlPath, { user, token, body, headers = {} } = {}) {
      const h = { ...headers };
      if (user) h.authorization = `Bearer ${vault.token(user)}`;
      if (token) h.authorization = `Bearer ${token}`;
      let payload;
      if (body !== undefined) {
        payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
        h['content-type'] ??= 'application/json';
      }
      const res = await fetch(base + urlPath, { method, headers: h, body: payload });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, headers: res.headers, text, json };
    },

    /**
     * Runs one SQL statement on the vault's local D1 and returns its rows: through the
     * front worker when there is one (the same running instance), else with wrangler
     * itself, a second process on the same SQLite file. When the two collide wrangler
     * answers with a D1 error ("internal error", "false == true") and the statement is
     * repeated; reads and the tests' own idempotent writes are safe to repeat.
     */
    async sql(query) {
      if (front) {
        const res = await fetch(`${base}/__test/sql`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sql: query }),
        });
        const body = await res.json();
        if (!res.ok) throw new Error(`SQL failed: ${body.error}`);
        return body.results;
      }
      const args = ['d1', 'execute', 'DB', '--local', '--persist-to', state, '--json', '--command', query];
      for (let attempt = 1; ; attempt++) {
        try {
          const { stdout } = await run(WRANGLER, args, { cwd: ROOT });
          return JSON.parse(stdout)[0].results;
        } catch (e) {
          const d1Error = /"error"|SQLITE_BUSY|database is locked/.test(`${e.stdout ?? ''}${e.stderr ?? ''}`);
          if (!d1Error || attempt >= 8) throw e;
          await new Promise((r) => setTimeout(r, 250 * attempt));
        }
      }
    },

    /** Files of the local state (D1 database, WAL, queues) that contain `needle`. */
    async stateFilesContaining(needle) {
      const hits = [];
      for (const file of await filesUnder(state)) {
        const bytes = await readFile(file);
        if (bytes.includes(Buffer.from(needle))) hits.push(path.relative(state, file));
      }
      return hits;
    },

    log: () => fs.readFileSync(logPath, 'utf8'),

    async stop() {
      if (!started.has(child.pid)) return;
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
      const timer = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
      await exited;
      clearTimeout(timer);
      started.delete(child.pid);
      if (runDir) fs.rmSync(runDir, { recursive: true, force: true });
      else if (configFile) fs.rmSync(configFile, { force: true });
    },
  };

  const deadline = Date.now() + READY_TIMEOUT_MS;
  let exitCode;
  exited.then((code) => { exitCode = code ?? 'signal'; });
  while (Date.now() < deadline) {
    if (exitCode !== undefined) {
      await vault.stop();
      throw new Error(`wrangler dev exited (${exitCode}) before it was ready:\n${vault.log().slice(-3000)}`);
    }
    try {
      const res = await fetch(`${base}/v1/health`);
      await res.arrayBuffer();
      vault.readyAt = Date.now();
      return vault;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, pollMs));
  }
  await vault.stop();
  throw new Error(`wrangler dev was not ready within ${READY_TIMEOUT_MS} ms:\n${vault.log().slice(-3000)}`);
}
