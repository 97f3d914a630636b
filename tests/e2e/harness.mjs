// Starts the real Worker under `wrangler dev` (workerd, local D1, local queues) on ports the
// OS assigns at bind time, with its own throw-away state directory, and always stops it.
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
/** How long one wrangler may take to be ready (a cold wasm build included). */
const READY_TIMEOUT_MS = 180_000;
/** How many wrangler processes one startVault tries when one dies or cannot bind. */
const START_ATTEMPTS = 3;
/** What workerd and wrangler say when a port is taken. */
const BIND_FAILURE = /[^\n]*(?:Address already in use|EADDRINUSE)[^\n]*/;
/** wrangler's line once the Worker is loaded behind its listening port. */
const READY_LINE = /Ready on https?:\/\/127\.0\.0\.1:(\d+)/;

// Every process group this file started, so none outlives the test run: not at a normal
// exit, and not when the run is interrupted (the groups are detached, so a Ctrl-C or the
// runner's SIGTERM does not reach them by itself).
const started = new Set();
const killStarted = () => {
  for (const pid of started) {
    try { process.kill(-pid, 'SIGKILL'); } catch { /* already gone */ }
  }
};
process.on('exit', killStarted);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killStarted();
    started.clear();
    // Then what the signal would have done without this handler.
    process.kill(process.pid, signal);
  });
}

/**
 * A port that was free a moment ago. Racy by nature: anything may take it before the
 * process it is handed to binds it. Do not pass it to another process or bind it later;
 * listen on port 0 and read `server.address().port` instead (startVault never uses this).
 */
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

/**
 * For a burst against the local Rate Limiting binding, which counts in fixed windows aligned
 * to the clock (floor(now / period), as miniflare implements it): waits, if less than
 * `needMs` of the current window is left, until the next one begins, then returns
 * `windows()`, how many windows have begun since (1 while the burst stays in this one).
 * A burst of N calls against a limit L then has at least N - L × windows() refused, an
 * assertion that holds however the burst falls across a window's edge.
 */
export async function rateWindow(needMs, periodMs = 60_000) {
  const left = periodMs - (Date.now() % periodMs);
  if (left < needMs) await new Promise((r) => setTimeout(r, left + 50));
  const first = Math.floor(Date.now() / periodMs);
  return () => Math.floor(Date.now() / periodMs) - first + 1;
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
  // Applying is idempotent (applied migrations are recorded): a run that wrangler's local D1
  // failed now and then under load ("false == true", SQLITE_BUSY) is simply run again.
  for (let attempt = 1; ; attempt++) {
    try {
      await run(WRANGLER, ['d1', 'migrations', 'apply', 'DB', '--local', '--persist-to', state], { cwd: ROOT });
      return;
    } catch (e) {
      const d1Error = /false == true|SQLITE_BUSY|database is locked|internal error/.test(`${e.stdout ?? ''}${e.stderr ?? ''}`);
      if (!d1Error || attempt >= 4) throw e;
      await new Promise((r) => setTimeout(r, 500 * attempt));
    }
  }
}

/**
 * A local state directory with migrations/ applied and nothing else, made once per checkout
 * and per set of inputs (the migrations, wrangler.toml, wrangler's version) under
 * .test-runs/, and kept: applying runs wrangler and a workerd of its own, seconds of a
 * vault's start, the same work for every vault. Made in a folder of its own and renamed
 * into place, so a test process never sees half of one and two that race agree.
 */
let template;
function migratedTemplate() {
  template ??= (async () => {
    const hash = crypto.createHash('sha256');
    hash.update(fs.readFileSync(path.join(ROOT, 'node_modules', 'wrangler', 'package.json')));
    hash.update(fs.readFileSync(path.join(ROOT, 'wrangler.toml')));
    const migrations = path.join(ROOT, 'migrations');
    for (const name of fs.readdirSync(migrations).sort()) {
      hash.update(`\0${name}\0`);
      hash.update(fs.readFileSync(path.join(migrations, name)));
    }
    const runs = path.join(ROOT, '.test-runs');
    const dest = path.join(runs, `d1-migrated-${hash.digest('hex').slice(0, 16)}`);
    if (fs.existsSync(dest)) return dest;
    fs.mkdirSync(runs, { recursive: true });
    const scratch = await mkdtemp(path.join(runs, 'd1-making-'));
    await applyMigrations(path.join(scratch, 'state'));
    try {
      fs.renameSync(path.join(scratch, 'state'), dest);
    } catch (e) {
      // Another process put its own there first: the same thing.
      if (!fs.existsSync(dest)) throw e;
    }
    fs.rmSync(scratch, { recursive: true, force: true });
    return dest;
  })();
  return template;
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
 *
 * wrangler binds port 0 for HTTP and DevTools, so no port is ever chosen here; `base` is
 * the port wrangler reports. The vault is ready when that wrangler's log says so, a
 * process of its own group listens on the port, and /v1/health there answers as the vault
 * (nothing else's answer counts). A wrangler that exits or cannot bind is seen at once and
 * started again, at most START_ATTEMPTS times. Any number of vaults may start at once.
 */
export async function startVault({ secrets = {}, vars = {}, config, front = vars.RATE_LIMITS === 'off', state: reuse, pollMs = 250 } = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'byok-e2e-'));
  // `state` carries an earlier vault's local D1 and queues over (a restart); it is a
  // `vault.state`, so its migrations are applied.
  const state = reuse ?? path.join(dir, 'state');
  const all = {
    ENVIRONMENT: 'development',
    MASTER_KEY: crypto.randomBytes(32).toString('base64'),
    AUTH_JWT_SECRET: crypto.randomBytes(32).toString('hex'),
    ...secrets,
  };
  const envFile = path.join(dir, 'secrets.env');
  await writeFile(envFile, Object.entries(all).filter(([, v]) => v != null).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');

  // A fresh state is a copy of one with migrations/ applied (what applying them here
  // would make, without the wrangler and workerd it takes).
  if (!reuse) fs.cpSync(await migratedTemplate(), state, { recursive: true });

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
  const args = [
    'dev',
    // With the front worker, it comes first (it is what listens) and the vault second.
    ...(front ? ['--config', path.join(ROOT, 'tests/e2e/front/wrangler.toml'), '--config', configFile ?? path.join(ROOT, 'wrangler.toml')] : []),
    ...(!front && configFile ? ['--config', configFile] : []),
    // Port 0 for both: the OS gives wrangler free ports as it binds them, so no number
    // chosen here can be taken (or handed out twice) in between; the ports are read back.
    '--ip', '127.0.0.1', '--port', '0', '--inspector-port', '0',
    '--persist-to', state, '--env-file', envFile, '--show-interactive-dev-session=false', '--test-scheduled',
    ...Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
  ];
  const logPath = path.join(dir, 'wrangler.log');
  const removeFiles = () => {
    if (runDir) fs.rmSync(runDir, { recursive: true, force: true });
    else if (configFile) fs.rmSync(configFile, { force: true });
  };

  let launched;
  try {
    launched = await startWrangler(args, logPath, { pollMs });
  } catch (e) {
    removeFiles();
    throw e;
  }
  const { wrangler, ready } = launched;
  return vaultOf(wrangler, {
    base: `http://127.0.0.1:${ready.port}`, dir, state, logPath, secrets: all, front, removeFiles,
    inspectorPort: await inspectorPortOf(wrangler.pid, ready.port), readyAt: ready.at,
  });
}

/**
 * Runs `bin args` until one process is ready as the vault (see untilReady); a process that
 * exits or cannot bind is stopped and another started, `attempts` in all. Returns the
 * running process and `{ port, at }`; throws with every attempt's reason and log tail.
 */
async function startWrangler(args, logPath, { bin = WRANGLER, attempts = START_ATTEMPTS, timeoutMs = READY_TIMEOUT_MS, pollMs = 250 } = {}) {
  const failures = [];
  for (let attempt = 1; ; attempt++) {
    const wrangler = launchWrangler(bin, args, logPath);
    const ready = await untilReady(wrangler, { timeoutMs, pollMs });
    if (ready.ok) {
      // A test file that forgets stop() still ends; the exit handler above stops wrangler.
      wrangler.child.unref();
      wrangler.child.channel?.unref();
      return { wrangler, ready, attempts: attempt };
    }
    await wrangler.stop();
    failures.push(`attempt ${attempt}: ${ready.why}\n${wrangler.output().slice(-3000)}`);
    if (!ready.retry || attempt >= attempts) {
      throw new Error(`wrangler dev did not start as the vault:\n${failures.join('\n---\n')}`);
    }
  }
}

/** Starts one `wrangler dev` in a process group of its own, its output appended to `logPath`. */
function launchWrangler(bin, args, logPath) {
  const from = fs.existsSync(logPath) ? fs.statSync(logPath).size : 0;
  const out = fs.openSync(logPath, 'a');
  // The IPC channel carries wrangler's own "DEV_SERVER_READY" message with the bound port.
  const child = spawn(bin, args, { cwd: ROOT, detached: true, stdio: ['ignore', out, out, 'ipc'] });
  fs.closeSync(out);
  const pid = child.pid;
  if (pid !== undefined) started.add(pid);
  let exitCode;
  let ipcPort;
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => { exitCode = code ?? signal; resolve(); });
    // Only a failed spawn ends in 'error' without 'exit'.
    child.once('error', (e) => { if (pid === undefined) { exitCode = e.code ?? 'error'; resolve(); } });
  });
  child.on('message', (m) => {
    try {
      const event = typeof m === 'string' ? JSON.parse(m) : m;
      if (event?.event === 'DEV_SERVER_READY') ipcPort = event.port;
    } catch { /* not wrangler's message */ }
  });
  return {
    child,
    pid,
    get exitCode() { return exitCode; },
    get ipcPort() { return ipcPort; },
    /** What this process has written to the log so far. */
    output() {
      try {
        const fd = fs.openSync(logPath, 'r');
        try {
          const size = fs.fstatSync(fd).size;
          const buf = Buffer.alloc(Math.max(0, size - from));
          fs.readSync(fd, buf, 0, buf.length, from);
          return buf.toString('utf8');
        } finally { fs.closeSync(fd); }
      } catch { return ''; }
    },
    /** Stops the process group (SIGTERM, SIGKILL after 5 s) and waits until wrangler is gone. */
    async stop() {
      if (pid === undefined || !started.has(pid)) return;
      if (exitCode === undefined) {
        try { process.kill(-pid, 'SIGTERM'); } catch { /* gone */ }
        const timer = setTimeout(() => { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
        await exited;
        clearTimeout(timer);
      }
      // Until no process of the group is left (workerd may outlive wrangler a moment): a
      // group with a live member keeps its id, so the signal reaches only processes
      // started here. A restart on the same state then finds its files free.
      for (let i = 0; i < 100 && groupMembers(pid).length > 0; i++) {
        if (i > 0) { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } }
        await new Promise((r) => setTimeout(r, 50));
      }
      started.delete(pid);
    },
  };
}

/**
 * Waits until the wrangler of `run` is ready as the vault: its log says "Ready on" a port
 * (the port its ready message named, when that came first), a process of its own group
 * listens there, and GET /v1/health on it answers with the vault's own shape. A process
 * that exits or fails to bind is reported at once, as worth another attempt.
 */
async function untilReady(run, { timeoutMs, pollMs }) {
  const deadline = Date.now() + timeoutMs;
  const sleep = () => new Promise((r) => setTimeout(r, pollMs));
  let port;
  for (;;) {
    const out = run.output();
    const bind = BIND_FAILURE.exec(out);
    if (bind) return { retry: true, why: `wrangler could not bind: ${bind[0]}` };
    if (run.exitCode !== undefined) return { retry: true, why: `wrangler exited (${run.exitCode}) before it was ready` };
    const said = READY_LINE.exec(out);
    if (said) {
      port = Number(said[1]);
      if (run.ipcPort !== undefined && run.ipcPort !== port) {
        return { retry: true, why: `wrangler's ready message named port ${run.ipcPort}, its log ${port}` };
      }
      break;
    }
    if (Date.now() > deadline) return { retry: false, why: `wrangler did not say it was ready within ${timeoutMs} ms` };
    await sleep();
  }
  const owners = listeningSockets(run.pid);
  if (owners && !owners.some((s) => s.port === port)) {
    return { retry: true, why: `no process of wrangler's group listens on port ${port}` };
  }
  let why;
  for (;;) {
    if (run.exitCode !== undefined) return { retry: true, why: `wrangler exited (${run.exitCode}) after it said it was ready` };
    try {
      const res = await fetch(`http://127.0.0.1:${port}/v1/health`, { signal: AbortSignal.timeout(Math.max(1000, deadline - Date.now())) });
      const text = await res.text();
      if (answersAsVault(res, text) && run.exitCode === undefined) return { ok: true, port, at: Date.now() };
      why = `GET /v1/health answered ${res.status} without the vault's shape: ${text.slice(0, 200)}`;
    } catch (e) {
      why = `GET /v1/health failed: ${e.message}`;
    }
    if (Date.now() > deadline) return { retry: false, why };
    await sleep();
  }
}

/** Whether a /v1/health answer is the vault's (200 or 503 alike: a misconfigured vault is
 * still a vault): its request id header and a `checks` object naming the database. */
function answersAsVault(res, text) {
  if (!/^req_[0-9a-f]{32}$/.test(res.headers.get('x-request-id') ?? '')) return false;
  try {
    const { checks } = JSON.parse(text);
    return typeof checks === 'object' && checks !== null && 'database' in checks && 'config' in checks;
  } catch {
    return false;
  }
}

/** The pids of the live processes in process group `pgid` (empty where there is no /proc);
 * a zombie (exited, not yet reaped) is not live. */
function groupMembers(pgid) {
  const pids = [];
  let entries;
  try { entries = fs.readdirSync('/proc'); } catch { return pids; }
  for (const p of entries) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      // After the parenthesised command name: field 3 (state), then 4 (ppid), 5 (pgrp).
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[2]) === pgid && f[0] !== 'Z') pids.push(Number(p));
    } catch { /* gone */ }
  }
  return pids;
}

/**
 * The TCP ports that processes of group `pgid` listen on, as `{ pid, port }`, from /proc;
 * null where /proc cannot tell (another OS).
 */
function listeningSockets(pgid) {
  const inodes = new Map();
  for (const pid of groupMembers(pgid)) {
    let fds;
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.set(m[1], pid);
      } catch { /* closed meanwhile */ }
    }
  }
  const out = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let lines;
    try {
      lines = fs.readFileSync(table, 'utf8').split('\n').slice(1);
    } catch {
      if (table === '/proc/net/tcp') return null;
      continue;
    }
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      // local_address is field 1, the state field 3 (0A: LISTEN), the inode field 9.
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9])) continue;
      out.push({ pid: inodes.get(f[9]), port: parseInt(f[1].split(':').pop(), 16) });
    }
  }
  return out;
}

/**
 * The DevTools port of the session (wrangler's inspector proxy, bound to port 0): the other
 * port of the process that listens on `httpPort`, the one that answers /json/version as
 * wrangler. Undefined where /proc cannot tell.
 */
async function inspectorPortOf(pgid, httpPort) {
  const sockets = listeningSockets(pgid) ?? [];
  const owner = sockets.find((s) => s.port === httpPort)?.pid;
  for (const { port } of sockets.filter((s) => s.pid === owner && s.port !== httpPort)) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/json/version`, { signal: AbortSignal.timeout(2000) });
      if (String((await res.json()).Browser).startsWith('wrangler/')) return port;
    } catch { /* not the inspector */ }
  }
  return undefined;
}

/** The handle a test gets for a vault that answered as one. */
function vaultOf(wrangler, { base, dir, state, logPath, secrets: all, front, removeFiles, inspectorPort, readyAt }) {
  const vault = {
    base, dir, state, logPath, secrets: all,
    /** wrangler's process group (the benchmark reads its processes' CPU time). */
    pgid: wrangler.pid,
    /** The DevTools port of the Worker (the benchmark profiles its CPU there). */
    inspectorPort,
    /** When the vault first answered as itself (ms since the epoch). */
    readyAt,

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
      await wrangler.stop();
      removeFiles();
    },
  };
  return vault;
}

/** The pieces of startVault, for the harness's own tests (tests/e2e/harness.test.mjs). */
export const internals = { startWrangler, listeningSockets, groupMembers };
