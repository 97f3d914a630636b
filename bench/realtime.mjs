// Issue 22's speed budgets (bench/bench.mjs calls this; also `node bench/bench.mjs
// --realtime-only`), on the bench's vault and fake providers:
//   - minting: `POST /v1/realtime/deepgram/sessions` (kind stt) under wrk, against the
//     fake's `POST /v1/auth/grant` called directly and the same call forwarded by plain JS
//     in the Worker (bench/entry.mjs), so its added latency is read against F1; and the
//     same one request at a time, interleaved with F0, F1 and a resolve of the same key, as
//     a second reading without load and to show what minting is made of;
//   - the WebSocket proxy: one binary frame (100 ms of 16 kHz linear16 audio) sent and the
//     fake's answer awaited, in turn through `/v1/realtime/deepgram/ws/v1/listen`, straight
//     to the fake's socket, and through a plain-JS pipe in the Worker (`/__bench/ws`); the
//     order rotates every round so the machine's drift falls on all three; every answer is
//     checked byte for byte;
//   - idle sessions: workerd's CPU time over the same idle span with none open, with N
//     sessions open through the vault, and with none again; read from each thread's
//     /proc/<pid>/task/<tid>/schedstat (nanoseconds on the CPU), not /proc's 10 ms ticks.
// The upstream is the fake providers' own Deepgram listen socket (tests/e2e/fake-providers.mjs):
// the key in Deepgram's header; each binary frame answered with a Results message (text,
// carrying the SHA-256 of the audio it got) and then the audio's bytes reversed (binary).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { randomKey } from '../tests/e2e/harness.mjs';
import { connect } from '../tests/e2e/websocket.mjs';

const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const r3 = (x) => Math.round(x * 1000) / 1000;
const pct = (v, p) => {
  const s = v.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const FRAME_BYTES = 3200;
const USER = 'u_rt';
const LISTEN = '/v1/listen?encoding=linear16&sample_rate=16000';

/** CPU time (ns) of every thread of `pids` so far, from the scheduler's own count. */
function cpuNs(pids) {
  let ns = 0;
  for (const pid of pids) {
    let tasks;
    try { tasks = fs.readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const tid of tasks) {
      try { ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]); } catch { /* gone */ }
    }
  }
  return ns;
}

/** One HTTP request on a kept-alive connection (lighter than fetch: about 0.6 ms against
 * 1.4 ms of this process's own time per request); resolves with the status once read. */
function send(agent, url, { method = 'GET', headers = {}, body } = {}) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const h = body === undefined ? headers : { ...headers, 'content-length': Buffer.byteLength(body) };
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: h, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * One audio frame sent on `ws` and the fake's two answers awaited (its Results text, then
 * the audio reversed): ms to the second, and whether the audio went up and came back byte
 * for byte (the Results' SHA-256 of what the fake got; the reversed bytes).
 */
function roundTrip(ws, { audio, sha256, reversed }) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no answer within 10 s')), 10_000);
    ws.closed.then((c) => { clearTimeout(timer); reject(new Error(`the socket closed (${c.code} ${c.reason})`)); });
    const started = performance.now();
    let up = false;
    ws.onmessage = (m) => {
      if (m.type === 'text') {
        up = JSON.parse(m.data).channel?.alternatives?.[0]?.sha256 === sha256;
        return;
      }
      const ms = performance.now() - started;
      clearTimeout(timer);
      ws.onmessage = null;
      ws.messages.length = 0;
      resolve({ ms, same: up && m.data.equals(reversed) });
    };
    ws.send(audio);
  });
}

/** Opens a session through the vault as a browser does (the token as a subprotocol). */
async function viaVault(vault, token) {
  const c = await connect(`${vault.base.replace(/^http:/, 'ws:')}/v1/realtime/deepgram/ws${LISTEN}`, {
    protocols: ['byok-vault', `byok-vault.token.${token}`],
  });
  if (c.status !== 101) throw new Error(`the vault's WebSocket answered ${c.status}: ${c.text}`);
  return c.ws;
}

async function opened(c, what) {
  if (c.status !== 101) throw new Error(`${what} answered ${c.status}: ${c.text}`);
  return c.ws;
}

/**
 * Measures minting (with `measure`, bench.mjs's wrk driver) and the WebSocket proxy on
 * `vault`, whose DEEPGRAM_BASE_URL is `fake.base('deepgram')`. Returns {mint, mint_direct, mint_forward_js, mint_sequential, realtime_ws, realtime_idle}.
 */
export async function measureRealtime({ vault, fake, measure, processes, adminToken, resolveToken, quick }) {
  const key = randomKey('valid');
  const imported = await vault.request('POST', '/v1/admin/import', {
    token: adminToken, body: { dry_run: false, validate: false, entries: [{ user_id: USER, provider: 'deepgram', api_key: key, label: 'realtime' }] },
  });
  if (imported.status !== 200) throw new Error(`import answered ${imported.status}: ${imported.text.slice(0, 300)}`);
  const jwt = vault.token(USER, { exp: Math.floor(Date.now() / 1000) + 6 * 3600 });
  const out = {};

  // Minting: the vault, the fake's token endpoint straight, plain JS forwarding that call.
  const grant = `${fake.base('deepgram')}/v1/auth/grant`;
  const first = await vault.request('POST', '/v1/realtime/deepgram/sessions', { token: jwt, body: { kind: 'stt' } });
  if (first.status !== 201) throw new Error(`minting answered ${first.status}: ${first.text.slice(0, 300)}`);
  // What the vault sends the provider, sent the same way by the bench and by plain JS.
  const asked = fake.requests.filter((r) => r.provider === 'deepgram' && r.path === '/v1/auth/grant').at(-1);
  if (!asked?.body) throw new Error("the fake saw no grant request from the vault");
  const grantBody = asked.body.toString();
  const grantHeaders = { authorization: `Token ${key}`, 'content-type': 'application/json' };
  out.mint_direct = await measure(vault, "the fake's token endpoint (POST /v1/auth/grant) called directly", [{
    method: 'POST', path: new URL(grant).pathname, headers: grantHeaders, body: grantBody,
  }], { base: new URL(grant).origin, counts: false });
  out.mint_forward_js = await measure(vault, 'that call forwarded by plain JS in the Worker', [{
    method: 'POST', path: `/__bench/forward?to=${encodeURIComponent(grant)}`, headers: grantHeaders, body: grantBody,
  }], { counts: false });
  out.mint = await measure(vault, 'POST /v1/realtime/deepgram/sessions (stt)', [{
    method: 'POST', path: '/v1/realtime/deepgram/sessions',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'stt' }),
  }]);

  // The same unloaded, with F0 and F1: one request at a time, the order rotating. Minting's
  // own I/O, done by plain JS, is the forwarded call plus one D1 read (F1 over F0); the
  // vault's own nearest, a resolve of the same key plus that forwarded call.
  const one = {
    f0: { url: `${vault.base}/v1/providers`, init: { headers: { authorization: `Bearer ${jwt}` } } },
    f1: { url: `${vault.base}/v1/health` },
    direct: { url: grant, init: { method: 'POST', headers: grantHeaders, body: grantBody } },
    forward: { url: `${vault.base}/__bench/forward?to=${encodeURIComponent(grant)}`, init: { method: 'POST', headers: grantHeaders, body: grantBody } },
    // The same key resolved (the read, the decryption, the audit event), no provider call.
    resolve: { url: `${vault.base}/v1/resolve`, init: { method: 'POST', headers: { authorization: `Bearer ${resolveToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ user_id: USER, capability: 'stt' }) } },
    mint: { url: `${vault.base}/v1/realtime/deepgram/sessions`, init: { method: 'POST', headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'stt' }) } },
  };
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const seq = Object.fromEntries(Object.keys(one).map((k) => [k, []]));
  const sequential = quick ? 100 : 300;
  for (let i = 0; i < sequential + 10; i++) {
    const order = Object.keys(one).map((_, j, ks) => ks[(i + j) % ks.length]);
    for (const k of order) {
      const started = performance.now();
      const status = await send(agent, one[k].url, one[k].init);
      if (status >= 300) throw new Error(`${k} answered ${status}`);
      if (i >= 10) seq[k].push(performance.now() - started);
    }
  }
  out.mint_sequential = {
    samples: sequential,
    f1_p50_ms: r3(pct(seq.f1, 50)), direct_p50_ms: r3(pct(seq.direct, 50)), forward_js_p50_ms: r3(pct(seq.forward, 50)), mint_p50_ms: r3(pct(seq.mint, 50)),
    added_over_f1: Math.round(((pct(seq.mint, 50) - pct(seq.direct, 50)) / pct(seq.f1, 50)) * 100) / 100,
    forward_js_added_over_f1: Math.round(((pct(seq.forward, 50) - pct(seq.direct, 50)) / pct(seq.f1, 50)) * 100) / 100,
    f0_p50_ms: r3(pct(seq.f0, 50)), resolve_p50_ms: r3(pct(seq.resolve, 50)),
    resolve_plus_forward_over_f1: Math.round(((pct(seq.resolve, 50) + pct(seq.forward, 50) - pct(seq.direct, 50) - pct(seq.f0, 50)) / pct(seq.f1, 50)) * 100) / 100,
    io_floor_over_f1: Math.round(((pct(seq.forward, 50) - pct(seq.direct, 50) + pct(seq.f1, 50) - pct(seq.f0, 50)) / pct(seq.f1, 50)) * 100) / 100,
  };
  agent.destroy();
  log(`minting one at a time: ${JSON.stringify(out.mint_sequential)}`);

  // The WebSocket proxy: three sockets to the same fake, one frame at a time, in turn. The
  // fake keeps every message its sockets got: those of the three are dropped as they go.
  const accepted = () => fake.sockets.filter((x) => x.accepted);
  const fakeEnds = [];
  const upstreamOf = async (opening) => {
    const before = accepted().length;
    const ws = await opening;
    for (const deadline = Date.now() + 5_000; accepted().length === before;) {
      if (Date.now() > deadline) throw new Error('no upstream socket was opened');
      await sleep(10);
    }
    fakeEnds.push(accepted().at(-1).ws);
    return ws;
  };
  const rounds = quick ? 600 : 3000;
  const warmup = quick ? 50 : 200;
  const listen = `${fake.base('deepgram')}${LISTEN}`;
  const paths = {
    vault: await upstreamOf(viaVault(vault, jwt)),
    direct: await upstreamOf(connect(listen.replace(/^http:/, 'ws:'), { headers: { authorization: `Token ${key}` } }).then((c) => opened(c, 'the fake'))),
    js: await upstreamOf(connect(`${vault.base.replace(/^http:/, 'ws:')}/__bench/ws?to=${encodeURIComponent(listen)}`, {
      headers: { 'x-bench-upstream-authorization': `Token ${key}` },
    }).then((c) => opened(c, 'the plain-JS pipe'))),
  };
  const names = Object.keys(paths);
  const frames = Array.from({ length: 16 }, () => {
    const audio = crypto.randomBytes(FRAME_BYTES);
    return { audio, sha256: crypto.createHash('sha256').update(audio).digest('hex'), reversed: Buffer.from(audio).reverse() };
  });
  const times = Object.fromEntries(names.map((n) => [n, []]));
  let changed = 0;
  for (let i = 0; i < warmup + rounds; i++) {
    const order = names.map((_, j) => names[(i + j) % names.length]);
    for (const n of order) {
      const frame = frames[i % frames.length];
      const r = await roundTrip(paths[n], frame);
      if (!r.same) changed += 1;
      if (i >= warmup) times[n].push(r.ms);
    }
    if (i % 100 === 0) for (const ws of fakeEnds) ws.messages.length = 0;
  }
  if (changed) throw new Error(`${changed} frames did not go up and come back byte for byte`);
  const stats = (v) => ({ p50_ms: r3(pct(v, 50)), p90_ms: r3(pct(v, 90)), p99_ms: r3(pct(v, 99)) });
  const half = (v, h) => pct(h ? v.slice(v.length / 2) : v.slice(0, v.length / 2), 50);
  out.realtime_ws = {
    rounds, frame_bytes: FRAME_BYTES,
    vault: stats(times.vault), direct: stats(times.direct), js: stats(times.js),
    added_p50_ms: r3(pct(times.vault, 50) - pct(times.direct, 50)),
    added_p50_first_half_ms: r3(half(times.vault, 0) - half(times.direct, 0)),
    added_p50_second_half_ms: r3(half(times.vault, 1) - half(times.direct, 1)),
    js_added_p50_ms: r3(pct(times.js, 50) - pct(times.direct, 50)),
  };
  log(`websocket round trips: ${JSON.stringify(out.realtime_ws)}`);
  for (const ws of Object.values(paths)) ws.close(1000, 'done');
  await Promise.all(Object.values(paths).map((ws) => ws.closed));

  // Idle sessions: workerd's CPU over the same span, none open, N open, none again.
  const idleSeconds = quick ? 5 : 20;
  const n = 10;
  const idle = async () => {
    const group = processes(vault.pgid);
    const workerd = group.filter((p) => p.comm.startsWith('workerd')).map((p) => p.pid);
    const other = group.filter((p) => !p.comm.startsWith('workerd')).map((p) => p.pid);
    const before = { workerd: cpuNs(workerd), other: cpuNs(other) };
    // Second by second, to tell a steady cost from a single burst.
    const seconds = { workerd: [], other: [] };
    let last = { ...before };
    for (let i = 0; i < idleSeconds; i++) {
      await sleep(1000);
      const now = { workerd: cpuNs(workerd), other: cpuNs(other) };
      for (const k of ['workerd', 'other']) seconds[k].push((now[k] - last[k]) / 1e6);
      last = now;
    }
    return {
      workerd_cpu_ms: r3((last.workerd - before.workerd) / 1e6), other_cpu_ms: r3((last.other - before.other) / 1e6),
      workerd_max_1s_ms: r3(Math.max(...seconds.workerd)), other_max_1s_ms: r3(Math.max(...seconds.other)),
    };
  };
  await sleep(2000); // the closed sessions' audit events go out first
  const none = await idle();
  const before = accepted().length;
  const open = [];
  for (let i = 0; i < n; i++) open.push(await viaVault(vault, jwt));
  // Each session carries one round trip first: proof it is open end to end.
  for (const ws of open) if (!(await roundTrip(ws, frames[0])).same) throw new Error('an idle session changed a frame');
  if (accepted().length - before !== n) throw new Error(`${accepted().length - before} upstream sockets for ${n} sessions`);
  await sleep(1000);
  const withOpen = await idle();
  const stillOpen = open.filter((ws) => !ws.closedWith).length;
  for (const ws of open) ws.close(1000, 'done');
  await Promise.all(open.map((ws) => ws.closed));
  await sleep(2000);
  const noneAgain = await idle();
  const baseline = (none.workerd_cpu_ms + noneAgain.workerd_cpu_ms) / 2;
  out.realtime_idle = {
    seconds: idleSeconds, sessions: n, still_open: stillOpen,
    none_ms: none.workerd_cpu_ms, open_ms: withOpen.workerd_cpu_ms, none_again_ms: noneAgain.workerd_cpu_ms,
    other_none_ms: none.other_cpu_ms, other_open_ms: withOpen.other_cpu_ms, other_none_again_ms: noneAgain.other_cpu_ms,
    max_1s_ms: [none, withOpen, noneAgain].map((x) => `${x.workerd_max_1s_ms}/${x.other_max_1s_ms}`).join(', '),
    // Per session and minute over the baseline (the mean of the two spans without).
    per_session_ms_per_min: r3((withOpen.workerd_cpu_ms - baseline) / n * (60 / idleSeconds)),
  };
  log(`idle sessions: ${JSON.stringify(out.realtime_idle)}`);
  return out;
}
