// The load benchmark (bench/run.sh runs it): the release Worker under `wrangler dev`
// (workerd, local D1, local queues) with fake providers that answer at once, seeded data,
// and wrk driving each operation from a second process. Every budget of issue 12 is a
// ratio to floors measured in the same run, so a slow or busy machine moves both sides.
//
//   node bench/bench.mjs [--duration S] [--connections N] [--quick] [--metering-only] [--realtime-only]
//
// Issue 21's budgets (metering's cost, the proxy's D1 round trips with budgets, failover)
// are measured by bench/metering.mjs with two vaults of their own; `--metering-only` runs
// just those and writes bench/results/metering.json. Issue 22's (minting, the WebSocket
// proxy, idle sessions) by bench/realtime.mjs on this run's vault; `--realtime-only` runs
// F1, those, and F1 again, and writes bench/results/realtime.json.
//
// Prints a table and writes bench/results/latest.{json,md}. Exits 1 when a budget is
// missed (the run itself still completes and reports every number).
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { ROOT, localSql, randomKey, serviceTokens, startVault } from '../tests/e2e/harness.mjs';
import { startFakeProviders } from '../tests/e2e/fake-providers.mjs';
import { measureMetering } from './metering.mjs';
import { measureRealtime } from './realtime.mjs';

const run = promisify(execFile);
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const QUICK = args.includes('--quick');
const METERING_ONLY = args.includes('--metering-only');
const REALTIME_ONLY = args.includes('--realtime-only');
const DURATION = option('--duration', QUICK ? 3 : 10);
const CONNECTIONS = option('--connections', 4);
const WARMUP = QUICK ? 1 : 2;
// The table sizes the issue names: growth is measured at 1 000 and 100 000 rows.
const SMALL_TABLE = 1_000;
const LARGE_TABLE = QUICK ? 20_000 : 100_000;
const RESOLVE_USERS = 1_000; // with 5 credentials each
const OUT = path.join(ROOT, 'bench', 'results');
const CLK_TCK = 100; // Linux's USER_HZ: /proc times are in hundredths of a second

const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ms = (us) => Math.round(us / 10) / 100;

// ---------------------------------------------------------------------------------------
// Processes: CPU time of wrangler's process group, from /proc.

function processes(pgid) {
  const out = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat;
    try { stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { continue; }
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): pgrp is field 5, utime 14, stime 15, starttime 22.
    if (Number(f[2]) !== pgid) continue;
    out.push({ pid: Number(pid), comm, ticks: Number(f[11]) + Number(f[12]), start: Number(f[19]) });
  }
  return out;
}

function cpuTicks(pgid) {
  const by = { workerd: 0, other: 0 };
  for (const p of processes(pgid)) by[p.comm.startsWith('workerd') ? 'workerd' : 'other'] += p.ticks;
  return by;
}

const bootTime = Number(/btime (\d+)/.exec(fs.readFileSync('/proc/stat', 'utf8'))[1]);

// ---------------------------------------------------------------------------------------
// Requests: one list per scenario, written for wrk and sent by node for the counts.

const line = ({ method, path: p, headers = {}, body }) =>
  `${method}\t${p}${Object.entries(headers).map(([k, v]) => `\t${k}: ${v}`).join('')}\t\t${body ?? ''}`;

function requestFile(name, requests) {
  const file = path.join(work, `${name.replace(/[^a-z0-9]+/gi, '-')}.requests`);
  fs.writeFileSync(file, requests.map(line).join('\n') + '\n');
  return file;
}

async function send(base, { method, path: p, headers = {}, body }) {
  const started = performance.now();
  const res = await fetch(base + p, { method, headers, body });
  await res.arrayBuffer();
  return {
    status: res.status,
    trips: Number(res.headers.get('x-bench-d1-round-trips') ?? NaN),
    d1ms: Number(res.headers.get('x-bench-d1-ms') ?? NaN),
    ms: performance.now() - started,
  };
}

/** D1 round trips per request, counted by bench/entry.mjs over `n` requests sent one by one. */
async function roundTrips(base, requests, n = 20) {
  const trips = [];
  const d1 = [];
  for (let i = 0; i < n; i++) {
    const r = await send(base, requests[i % requests.length]);
    if (r.status >= 400) throw new Error(`${requests[0].method} ${requests[0].path} answered ${r.status}`);
    trips.push(r.trips);
    d1.push(r.d1ms);
  }
  return { min: Math.min(...trips), max: Math.max(...trips), d1_ms_mean: d1.reduce((a, b) => a + b, 0) / n };
}

async function wrk(base, file, { duration = DURATION, connections = CONNECTIONS } = {}) {
  const { stdout } = await run('wrk', [
    '-t1', `-c${connections}`, `-d${duration}s`, '--timeout', '10s', '-s', path.join(ROOT, 'bench', 'load.lua'), base,
  ], { env: { ...process.env, BENCH_REQUESTS: file }, maxBuffer: 1 << 20 });
  const found = /^BENCH (.*)$/m.exec(stdout);
  if (!found) throw new Error(`wrk printed no result:\n${stdout}`);
  return JSON.parse(found[1]);
}

/**
 * One measured operation: a warm-up, the D1 round trips counted one request at a time,
 * then wrk for DURATION seconds with the CPU time of workerd read before and after.
 */
async function measure(vault, name, requests, { base = vault.base, counts = true, unique = false } = {}) {
  // A request that may be sent once only (a new key) is used by one of the three steps.
  const [probe, warm, main] = unique
    ? [requests.slice(0, 20), requests.slice(20, requests.length / 4), requests.slice(requests.length / 4)]
    : [requests, requests, requests];
  const trips = counts ? await roundTrips(base, probe) : null;
  await wrk(base, requestFile(`${name}-warm`, warm), { duration: WARMUP });
  const file = requestFile(name, main);
  const before = cpuTicks(vault.pgid);
  const r = await wrk(base, file);
  const after = cpuTicks(vault.pgid);
  const seconds = r.duration_us / 1e6;
  const result = {
    name,
    p50_ms: ms(r.p50_us),
    p90_ms: ms(r.p90_us),
    p99_ms: ms(r.p99_us),
    rps: Math.round(r.requests / seconds),
    requests: r.requests,
    errors: r.status_errors + r.socket_errors,
    d1_round_trips: trips && (trips.min === trips.max ? trips.min : `${trips.min}-${trips.max}`),
    d1_wait_ms: trips && Math.round(trips.d1_ms_mean * 10) / 10,
    workerd_cpu_ms: Math.round(((after.workerd - before.workerd) * 1000 / CLK_TCK / r.requests) * 1000) / 1000,
    other_cpu_ms: Math.round(((after.other - before.other) * 1000 / CLK_TCK / r.requests) * 1000) / 1000,
  };
  log(`${name}: p50 ${result.p50_ms} ms, p99 ${result.p99_ms} ms, ${result.rps}/s, D1 ${result.d1_round_trips ?? '-'}, workerd CPU ${result.workerd_cpu_ms} ms/req${result.errors ? `, ${result.errors} ERRORS` : ''}`);
  return result;
}

// ---------------------------------------------------------------------------------------
// Seeding through the vault's own import (200 entries a request, no live checks).

async function importAll(vault, token, entries) {
  for (let i = 0; i < entries.length; i += 200) {
    const r = await vault.request('POST', '/v1/admin/import', {
      token, body: { dry_run: false, validate: false, entries: entries.slice(i, i + 200) },
    });
    if (r.status !== 200 || r.json.summary.created !== Math.min(200, entries.length - i)) {
      throw new Error(`import answered ${r.status}: ${r.text.slice(0, 500)}`);
    }
  }
}

const RESOLVE_PROVIDERS = ['openai', 'anthropic', 'gemini', 'elevenlabs', 'deepgram'];
const userEntries = (user, n, providers = ['openai']) => Array.from({ length: n }, (_, i) => ({
  user_id: user, provider: providers[i % providers.length], api_key: randomKey('valid'), label: `bench ${i}`,
}));

/** Resolves for the sentinel user and waits until that use's event is chained; returns
 * when the answer came and when the chained row was seen (ms since the epoch). */
async function sentinel(vault, resolveToken, timeoutMs = 180_000) {
  const sent = await vault.request('POST', '/v1/resolve', {
    token: resolveToken, body: { user_id: 'u_sentinel', capability: 'llm' },
  });
  if (sent.status !== 200) throw new Error(`sentinel resolve answered ${sent.status}`);
  const answered = Date.now();
  const id = sent.headers.get('x-request-id');
  while (Date.now() - answered < timeoutMs) {
    const r = await vault.request('GET', '/v1/audit?limit=5', { user: 'u_sentinel' });
    if (r.json?.events?.some((e) => e.request_id === id)) return { answered, chained: Date.now() };
    await sleep(20);
  }
  throw new Error('a sentinel event was not chained in time: the audit queue did not drain');
}

/** Waits until the audit consumer has chained everything sent so far: a sentinel event
 * sent now is chained (one consumer at a time, in order). Returns when it was. */
async function drained(vault, resolveToken) {
  return (await sentinel(vault, resolveToken)).chained;
}

/** Lag from a resolve's answer to its event's chained row, sampled while wrk runs. */
async function lagSamples(vault, resolveToken, until) {
  const lags = [];
  while (Date.now() < until) {
    const { answered, chained } = await sentinel(vault, resolveToken, 120_000);
    lags.push(chained - answered);
    await sleep(200);
  }
  return lags;
}

const percentile = (values, p) => {
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};

// ---------------------------------------------------------------------------------------

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'byok-bench-'));
fs.mkdirSync(OUT, { recursive: true });
const startedAt = new Date();
const results = {};
const fake = await startFakeProviders();
const { tokens, SERVICE_TOKENS } = serviceTokens({ resolver: ['resolve'], operator: ['admin'] });
const vars = {
  ...fake.vars(),
  ALLOW_PRIVATE_BASE_URLS: 'true',
  RATE_LIMITS: 'off',
  MAX_CREDENTIALS_PER_USER: '1000',
};
const secrets = { SERVICE_TOKENS };
const config = (toml) => toml.replace('main = "build/worker/shim.mjs"', 'main = "bench/entry.mjs"');
let vault;

async function start(state) {
  const spawned = Date.now();
  // A restart keeps the first run's master key and token secret: the same deployment.
  const kept = vault ? { MASTER_KEY: vault.secrets.MASTER_KEY, AUTH_JWT_SECRET: vault.secrets.AUTH_JWT_SECRET } : {};
  vault = await startVault({ secrets: { ...secrets, ...kept }, vars, config, front: false, state, pollMs: 5 });
  return spawned;
}

if (METERING_ONLY) {
  try {
    results.metering = await measureMetering({ fake, secrets, vars, config, adminToken: tokens.operator, quick: QUICK });
  } finally {
    await fake.close();
  }
  const { meteringBudgets } = await import('./report.mjs');
  const lines = meteringBudgets(results.metering);
  fs.writeFileSync(path.join(OUT, 'metering.json'), JSON.stringify({ at: startedAt.toISOString(), results }, null, 2) + '\n');
  process.stdout.write(lines.report);
  process.exit(lines.missed ? 1 : 0);
}

if (REALTIME_ONLY) {
  try {
    await start();
    const f1 = [{ method: 'GET', path: '/v1/health' }];
    results.f1 = await measure(vault, 'F1 GET /v1/health (one D1 query)', f1);
    Object.assign(results, await measureRealtime({ vault, fake, measure, processes, adminToken: tokens.operator, resolveToken: tokens.resolver, quick: QUICK }));
    results.f1_end = await measure(vault, 'F1 again, at the end', f1);
  } finally {
    await vault?.stop();
    await fake.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const { realtimeBudgets } = await import('./report.mjs');
  const f1p50 = (results.f1.p50_ms + results.f1_end.p50_ms) / 2;
  const rows = Object.values(results).filter((x) => x && x.p50_ms !== undefined);
  const lines = realtimeBudgets(results, f1p50);
  const errors = rows.filter((x) => x.errors > 0).map((x) => x.name);
  const table = [
    '| operation | p50 ms | p90 ms | p99 ms | req/s | D1 round trips | workerd CPU ms/req | errors |',
    '|---|---|---|---|---|---|---|---|',
    ...rows.map((x) => `| ${x.name} | ${x.p50_ms} | ${x.p90_ms} | ${x.p99_ms} | ${x.rps} | ${x.d1_round_trips ?? '–'} | ${x.workerd_cpu_ms} | ${x.errors} |`),
    '',
    ...(errors.length ? [`**Requests failed in:** ${errors.join(', ')}`, ''] : []),
  ].join('\n');
  fs.writeFileSync(path.join(OUT, 'realtime.json'), JSON.stringify({ at: startedAt.toISOString(), duration_s: DURATION, connections: CONNECTIONS, results }, null, 2) + '\n');
  process.stdout.write(`${table}\n${lines.report}`);
  process.exit(lines.missed || errors.length ? 1 : 0);
}

try {
  await start();
  const jwt = (user) => vault.token(user, { exp: Math.floor(Date.now() / 1000) + 6 * 3600 });
  const svc = { authorization: `Bearer ${tokens.resolver}`, 'content-type': 'application/json' };
  const user = (u) => ({ authorization: `Bearer ${jwt(u)}` });
  const resolveFor = (users) => users.map((u) => ({
    method: 'POST', path: '/v1/resolve', headers: svc, body: JSON.stringify({ user_id: u, capability: 'llm' }),
  }));
  const resolveUsers = Array.from({ length: RESOLVE_USERS }, (_, i) => `u_r${i}`);
  const firstUsers = resolveUsers.slice(0, SMALL_TABLE / 5);

  // Phase 1: 1 000 rows in the table.
  log(`seeding ${SMALL_TABLE} credentials (${firstUsers.length} users with 5 each)`);
  await importAll(vault, tokens.operator, [
    ...firstUsers.flatMap((u) => userEntries(u, 5, RESOLVE_PROVIDERS)),
  ]);
  await importAll(vault, tokens.operator, userEntries('u_sentinel', 1));
  await drained(vault, tokens.resolver);
  results.resolve_1k = await measure(vault, 'resolve (1 000 rows)', resolveFor(firstUsers));

  // Phase 2: the issue's seed: 1 user with 50 credentials, 1 000 users with 5 each (and
  // users with 5 and 500 for the growth of a list).
  log('seeding 1 user × 50, 1 user × 5, 1 user × 500, 1 000 users × 5');
  const seedStart = Date.now();
  const seeded = 5 + 50 + 500 + (resolveUsers.length - firstUsers.length) * 5;
  await importAll(vault, tokens.operator, [
    ...userEntries('u_list5', 5, ['openai', 'anthropic', 'elevenlabs']),
    ...userEntries('u_list50', 50, ['openai', 'anthropic', 'elevenlabs', 'deepgram', 'gemini']),
    ...userEntries('u_list500', 500, ['openai', 'anthropic', 'elevenlabs', 'deepgram', 'gemini']),
    ...resolveUsers.slice(firstUsers.length).flatMap((u) => userEntries(u, 5, RESOLVE_PROVIDERS)),
  ]);
  const imported = Date.now();
  const seedDrained = await drained(vault, tokens.resolver);
  // One consumer at a time against a backlog: the rate the chain tops out at.
  results.audit_backlog = {
    events: seeded,
    import_ms: imported - seedStart,
    chained_per_s: Math.round(seeded / ((seedDrained - seedStart) / 1000)),
    drained_ms_after_import: seedDrained - imported,
  };
  log(`audit backlog: ${JSON.stringify(results.audit_backlog)}`);
  const list50 = (await vault.request('GET', '/v1/credentials', { user: 'u_list50' })).json.credentials;
  if (list50.length !== 50) throw new Error(`u_list50 holds ${list50.length} credentials`);

  results.f0 = await measure(vault, 'F0 GET /v1/providers (no I/O)', [{ method: 'GET', path: '/v1/providers', headers: user('u_list5') }]);
  results.f1 = await measure(vault, 'F1 GET /v1/health (one D1 query)', [{ method: 'GET', path: '/v1/health' }]);
  results.f1q = await measure(vault, 'one trivial query and one queue message, plain JS', [{ method: 'GET', path: '/__bench/f1q' }], { counts: false });
  // The same rows a listing reads, asked and answered by plain JS in the same isolate.
  for (const n of [50, 500]) {
    results[`rows_js_${n}`] = await measure(vault, `the listing's query in plain JS (${n} rows)`, [{ method: 'GET', path: `/__bench/rows?user=u_list${n}` }], { counts: false });
  }
  for (const n of [5, 50, 500]) {
    results[`list_${n}`] = await measure(vault, `GET /v1/credentials (${n})`, [{ method: 'GET', path: '/v1/credentials', headers: user(`u_list${n}`) }]);
  }
  results.get = await measure(vault, 'GET /v1/credentials/{id}', list50.slice(0, 10).map((c) => ({
    method: 'GET', path: `/v1/credentials/${c.id}`, headers: user('u_list50'),
  })));
  results.resolve = await measure(vault, `POST /v1/resolve (${RESOLVE_USERS} users)`, resolveFor(resolveUsers));

  // Writes: a new key each time, for 100 users (the live check answers at once).
  const createRequests = Array.from({ length: Math.max(12_000, DURATION * 1_200) }, (_, i) => ({
    method: 'POST', path: '/v1/credentials', headers: { ...user(`u_w${i % 100}`), 'content-type': 'application/json' },
    body: JSON.stringify({ provider: 'openai', api_key: randomKey('valid') }),
  }));
  results.create = await measure(vault, 'POST /v1/credentials', createRequests, { unique: true });
  const llm = list50.filter((c) => ['openai', 'anthropic', 'gemini'].includes(c.provider)).slice(0, 6);
  results.preferences = await measure(vault, 'PUT /v1/preferences/llm', llm.map((c) => ({
    method: 'PUT', path: '/v1/preferences/llm', headers: { ...user('u_list50'), 'content-type': 'application/json' },
    body: JSON.stringify({ credential_id: c.id }),
  })));

  // The proxy: the same call straight to the fake, then through the vault.
  const chat = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }] });
  const direct = fake.vars().OPENAI_BASE_URL;
  const directBase = new URL(direct).origin;
  results.proxy_direct = await measure(vault, 'direct call to the fake provider', [{
    method: 'POST', path: `${new URL(direct).pathname}/v1/chat/completions`,
    headers: { authorization: `Bearer ${randomKey('valid')}`, 'content-type': 'application/json' }, body: chat,
  }], { base: directBase, counts: false });
  results.forward_js = await measure(vault, 'the same call forwarded by plain JS in the Worker', [{
    method: 'POST', path: `/__bench/forward?to=${encodeURIComponent(`${direct}/v1/chat/completions`)}`,
    headers: { authorization: `Bearer ${randomKey('valid')}`, 'content-type': 'application/json' }, body: chat,
  }], { counts: false });
  results.proxy = await measure(vault, 'the same call through /v1/proxy', [{
    method: 'POST', path: '/v1/proxy/openai/v1/chat/completions',
    headers: { ...user('u_list5'), 'content-type': 'application/json' }, body: chat,
  }]);
  // Time to first byte of a streamed answer (the fake sends its first chunk at once).
  const ttfb = async (url, headers) => {
    const times = [];
    for (let i = 0; i < (QUICK ? 5 : 20); i++) {
      const started = performance.now();
      const res = await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [] }) });
      const reader = res.body.getReader();
      await reader.read();
      times.push(performance.now() - started);
      await reader.cancel();
    }
    return Math.round(percentile(times, 50) * 100) / 100;
  };
  results.stream_ttfb = {
    direct_p50_ms: await ttfb(`${direct}/v1/chat/completions`, { authorization: `Bearer ${randomKey('valid')}` }),
    proxy_p50_ms: await ttfb(`${vault.base}/v1/proxy/openai/v1/chat/completions`, user('u_list5')),
  };
  log(`streamed answer, first byte: direct ${results.stream_ttfb.direct_p50_ms} ms, proxied ${results.stream_ttfb.proxy_p50_ms} ms`);

  // Issue 22: minting against the fake's token endpoint, the WebSocket proxy, idle sessions.
  Object.assign(results, await measureRealtime({ vault, fake, measure, processes, adminToken: tokens.operator, resolveToken: tokens.resolver, quick: QUICK }));

  // Issue 21: metering on against off, the proxy's D1 round trips with budgets, failover.
  results.metering = await measureMetering({ fake, secrets, vars, config, adminToken: tokens.operator, quick: QUICK });

  // The audit pipeline: resolves at full load, each a credential.used event on the queue.
  await drained(vault, tokens.resolver);
  const chainedBefore = (await vault.sql("SELECT COUNT(*) AS n FROM audit_events WHERE action = 'credential.used'"))[0].n;
  const loadStart = Date.now();
  const file = requestFile('audit', resolveFor(resolveUsers));
  const [load, lags] = await Promise.all([
    wrk(vault.base, file, { duration: DURATION * 2 }),
    lagSamples(vault, tokens.resolver, Date.now() + DURATION * 2000),
  ]);
  const loadEnd = Date.now();
  const drainedAt = await drained(vault, tokens.resolver);
  const chained = (await vault.sql("SELECT COUNT(*) AS n FROM audit_events WHERE action = 'credential.used'"))[0].n - chainedBefore;
  results.audit = {
    events_offered_per_s: Math.round((load.requests + lags.length) / ((loadEnd - loadStart) / 1000)),
    events_chained: chained,
    resolves_answered: load.requests - load.status_errors + lags.length,
    events_chained_per_s: Math.round(chained / ((drainedAt - loadStart) / 1000)),
    backlog_drained_ms_after_load: drainedAt - loadEnd,
    lag_p50_ms: percentile(lags, 50),
    lag_p99_ms: percentile(lags, 99),
    lag_max_ms: Math.max(...lags),
    lag_samples: lags.length,
  };
  log(`audit: ${JSON.stringify(results.audit)}`);

  // Bytes per row, from the database file itself (SQLite's dbstat, pages per table and index).
  await vault.stop();
  const dbFile = fs.readdirSync(path.join(vault.state, 'v3', 'd1', 'miniflare-D1DatabaseObject'))
    .filter((f) => f.endsWith('.sqlite')).map((f) => path.join(vault.state, 'v3', 'd1', 'miniflare-D1DatabaseObject', f))[0];
  const { stdout: sizes } = await run('python3', [path.join(ROOT, 'bench', 'sizes.py'), dbFile]);
  results.storage = JSON.parse(sizes);
  log(`storage: ${sizes.trim()}`);

  // Phase 3: the table grown to LARGE_TABLE rows (rows of other users, written straight
  // into the database while the vault is down), then a cold start and resolve again.
  const rows = (await localSql(vault.state, { command: 'SELECT COUNT(*) AS n FROM credentials' }))[0].n;
  const filler = LARGE_TABLE - rows;
  log(`growing the table from ${rows} to ${LARGE_TABLE} rows`);
  await localSql(vault.state, {
    command: `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${filler})
      INSERT INTO credentials (id, user_id, provider, label, key_hint, key_version, nonce, ciphertext, fingerprint,
        params, model, status, warnings, created_at, updated_at, version)
      SELECT printf('c_%032x', i), printf('u_fill_%06d', i / 5), t.provider, t.label, t.key_hint, t.key_version,
        t.nonce, t.ciphertext, printf('v1:fill%07d', i), t.params, t.model, t.status, t.warnings,
        t.created_at + i, t.updated_at + i, 0
      FROM n, (SELECT * FROM credentials WHERE user_id = 'u_list500' LIMIT 1) AS t`,
  });
  const state = vault.state;
  const spawned = await start(state);
  const workerd = processes(vault.pgid).filter((p) => p.comm.startsWith('workerd'));
  const workerdStart = Math.min(...workerd.map((p) => (bootTime + p.start / CLK_TCK) * 1000));
  results.cold_start = {
    wrangler_spawn_to_first_answer_ms: vault.readyAt - spawned,
    workerd_start_to_first_answer_ms: vault.readyAt - workerdStart,
    workerd_processes: workerd.length,
    note: 'workerd start times have 10 ms resolution (/proc)',
  };
  const first = await send(vault.base, resolveFor(['u_r0'])[0]);
  if (first.status !== 200) throw new Error(`the first resolve after the restart answered ${first.status}`);
  results.cold_start.first_resolve_ms = Math.round(first.ms * 10) / 10;
  log(`cold start: ${JSON.stringify(results.cold_start)}`);
  results.resolve_100k = await measure(vault, `resolve (${LARGE_TABLE.toLocaleString('en')} rows)`, resolveFor(firstUsers));
  results.f1_end = await measure(vault, 'F1 again, at the end', [{ method: 'GET', path: '/v1/health' }]);
  results.f0_end = await measure(vault, 'F0 again, at the end', [{ method: 'GET', path: '/v1/providers', headers: user('u_list5') }]);
} finally {
  await vault?.stop();
  await fake.close();
  fs.rmSync(work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------
// Startup profile (wrangler's own, local) and the bundle's size.

const wasm = fs.readFileSync(path.join(ROOT, 'build', 'index_bg.wasm'));
results.bundle = { wasm_bytes: wasm.length, wasm_gzip_bytes: gzipSync(wasm, { level: 9 }).length };
{
  const profile = path.join(work + '-startup.cpuprofile');
  await run(path.join(ROOT, 'node_modules', '.bin', 'wrangler'), ['check', 'startup', '--outfile', profile], { cwd: ROOT });
  const p = JSON.parse(fs.readFileSync(profile, 'utf8'));
  fs.rmSync(profile, { force: true });
  // The Worker's cold start as Cloudflare counts it: evaluating the module (instantiating
  // the wasm) before the first request, profiled by wrangler in a local workerd.
  const idle = new Set(p.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id));
  results.bundle.startup_profile_ms = Math.round((p.endTime - p.startTime) / 100) / 10;
  results.bundle.startup_busy_ms = Math.round(p.timeDeltas.reduce((a, d, i) => a + (idle.has(p.samples[i]) ? 0 : d), 0) / 100) / 10;
  // What wrangler itself counts for an upload: every module, as deployed.
  const outdir = `${work}-bundle`;
  const { stdout, stderr } = await run(path.join(ROOT, 'node_modules', '.bin', 'wrangler'), ['deploy', '--dry-run', '--outdir', outdir], { cwd: ROOT });
  fs.rmSync(outdir, { recursive: true, force: true });
  const upload = /Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/.exec(stdout + stderr);
  if (!upload) throw new Error(`wrangler deploy --dry-run printed no upload size:\n${stdout}${stderr}`);
  results.bundle.upload_kib = Number(upload[1]);
  results.bundle.upload_gzip_kib = Number(upload[2]);
}

fs.writeFileSync(path.join(OUT, 'latest.json'), JSON.stringify({
  at: startedAt.toISOString(), machine: `${os.cpus().length} × ${os.cpus()[0].model}`, duration_s: DURATION, connections: CONNECTIONS, results,
}, null, 2) + '\n');
const { report, missed } = await import('./report.mjs').then((m) => m.render(results, { at: startedAt, duration: DURATION, connections: CONNECTIONS }));
fs.writeFileSync(path.join(OUT, 'latest.md'), report);
process.stdout.write(report);
process.exitCode = missed ? 1 : 0;
