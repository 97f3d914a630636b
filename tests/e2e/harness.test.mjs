// The harness itself: starting a vault is race-free. wrangler binds port 0 and reports the
// port, so vaults started at once each come up on their own process; a listener that is
// not the vault (another process's 404, even an impostor answering /v1/health in the
// vault's shape) is never taken for a ready vault; a wrangler that cannot bind or dies is
// seen at once and started again. The last three run a stand-in for wrangler (a small node
// script) so each case is certain, not left to chance.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { internals, startVault } from './harness.mjs';

const { startWrangler, listeningSockets, groupMembers } = internals;

/** A loopback server in this process answering with `handler`; listens on port 0. */
async function listener(handler) {
  const server = http.createServer(handler);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    close: () => new Promise((done) => { server.closeAllConnections?.(); server.close(() => done()); }),
  };
}

const notFound = (req, res) => { res.writeHead(404, { 'content-type': 'text/plain' }); res.end('404 Not Found'); };
/** What the vault's health looks like, from anyone. */
const vaultShaped = (req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': `req_${'0'.repeat(32)}` });
  res.end(JSON.stringify({ status: 'ok', checks: { config: 'ok', master_key: 'ok', database: 'ok' } }));
};

/** Whether `pid` runs (a zombie, exited but not yet reaped, does not). */
const alive = (pid) => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
};

describe('vaults started at once', () => {
  const decoys = [];
  let vaults = [];
  before(async () => {
    // Listeners that are not the vault, as in the failed run: one answering 404 on every
    // path, one answering /v1/health in the vault's shape.
    for (let i = 0; i < 10; i++) decoys.push(await listener(i % 2 ? vaultShaped : notFound));
  });
  after(async () => {
    await Promise.allSettled(vaults.map((v) => v.stop()));
    await Promise.allSettled(decoys.map((d) => d.close()));
  });

  test('each comes up on ports of its own process and answers as itself', async () => {
    vaults = await Promise.all([
      startVault({ vars: { RATE_LIMITS: 'off' } }),
      startVault({ vars: { RATE_LIMITS: 'off' } }),
      startVault(),
    ]);
    const ports = vaults.map((v) => Number(new URL(v.base).port));
    const inspectors = vaults.map((v) => v.inspectorPort);
    assert.equal(new Set([...ports, ...inspectors]).size, 6, `ports ${ports}, inspectors ${inspectors}`);
    for (const d of decoys) assert.ok(!ports.includes(d.port), 'a vault is on a decoy port');
    for (const [i, v] of vaults.entries()) {
      const own = listeningSockets(v.pgid).map((s) => s.port);
      assert.ok(own.includes(ports[i]), `vault ${i}'s port ${ports[i]} is not its wrangler's (${own})`);
      assert.ok(own.includes(v.inspectorPort), `vault ${i}'s inspector ${v.inspectorPort} is not its wrangler's`);
      const devtools = await (await fetch(`http://127.0.0.1:${v.inspectorPort}/json/version`)).json();
      assert.match(devtools.Browser, /^wrangler\//);
      // Each vault takes tokens signed with its own secret, and only those.
      for (const [j, w] of vaults.entries()) {
        const r = await w.request('GET', '/v1/credentials', { token: v.token('u_harness') });
        assert.equal(r.status, i === j ? 200 : 401, `vault ${j} with vault ${i}'s token: ${r.text}`);
      }
    }
  });

  test('stopping one ends its whole process group and leaves the others serving', async () => {
    const [first, ...rest] = vaults;
    const members = groupMembers(first.pgid);
    assert.ok(members.length >= 2, `wrangler and workerd: ${members}`);
    await first.stop();
    assert.deepEqual(members.filter(alive), [], 'a process of the stopped vault lives on');
    assert.deepEqual(groupMembers(first.pgid), []);
    for (const v of rest) assert.equal((await v.request('GET', '/v1/health')).status, 200);
  });
});

describe('what counts as ready (a stand-in for wrangler)', () => {
  let dir;
  let bin;
  let runs = 0;
  const running = [];
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'byok-harness-'));
    bin = path.join(dir, 'fake-wrangler.mjs');
    // Says and does what the mode asks: the lines wrangler and workerd print, a listener.
    fs.writeFileSync(bin, `#!${process.execPath}
import fs from 'node:fs';
import http from 'node:http';
fs.appendFileSync(process.env.FAKE_PIDS, process.pid + '\\n');
const n = fs.readFileSync(process.env.FAKE_PIDS, 'utf8').trim().split('\\n').length;
const hang = () => setInterval(() => {}, 1 << 30);
const serve = (handler) => {
  const s = http.createServer(handler);
  s.listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    process.send?.(JSON.stringify({ event: 'DEV_SERVER_READY', ip: '127.0.0.1', port }));
    console.log('[wrangler:info] Ready on http://127.0.0.1:' + port);
  });
};
const vault = (req, res) => {
  if (req.url !== '/v1/health') { res.writeHead(404); return res.end(); }
  res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': 'req_' + '1'.repeat(32) });
  res.end(JSON.stringify({ status: 'ok', checks: { config: 'ok', master_key: 'ok', database: 'ok' } }));
};
const notFound = (req, res) => { res.writeHead(404, { 'content-type': 'text/plain' }); res.end('404 Not Found'); };
switch (process.env.FAKE_MODE) {
  case 'exits': console.log('✘ [ERROR] something broke'); process.exit(1); break;
  case 'bind-fails-once':
    if (n === 1) {
      console.log('*** Fatal uncaught kj::Exception: kj/async-io-unix.c++:945: failed: ::bind(sockfd, &addr.generic, addrlen): Address already in use; toString() = 127.0.0.1:9229');
      hang();
    } else serve(vault);
    break;
  case 'names-another-listener': console.log('[wrangler:info] Ready on http://127.0.0.1:' + process.env.FAKE_PORT); hang(); break;
  case 'answers-404': serve(notFound); break;
}
`);
    fs.chmodSync(bin, 0o755);
  });
  after(async () => {
    await Promise.allSettled(running.map((r) => r.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** startWrangler on the stand-in in `mode`; what it returned or threw, the pids it ran,
   * and how long it took. */
  async function attempt(mode, { env = {}, attempts = 3, timeoutMs = 60_000 } = {}) {
    runs += 1;
    const pids = path.join(dir, `pids-${runs}`);
    fs.writeFileSync(pids, '');
    Object.assign(process.env, { FAKE_MODE: mode, FAKE_PIDS: pids, ...env });
    const began = Date.now();
    let result;
    let error;
    try {
      result = await startWrangler([], path.join(dir, `log-${runs}`), { bin, attempts, timeoutMs, pollMs: 50 });
      running.push(result.wrangler);
    } catch (e) {
      error = e;
    }
    const ran = fs.readFileSync(pids, 'utf8').trim().split('\n').filter(Boolean).map(Number);
    return { result, error, ran, took: Date.now() - began };
  }

  test("another process's listener is never ready, even one answering /v1/health as the vault would", async () => {
    for (const handler of [notFound, vaultShaped]) {
      const other = await listener(handler);
      try {
        const { result, error, ran } = await attempt('names-another-listener', { env: { FAKE_PORT: String(other.port) }, attempts: 2 });
        assert.equal(result, undefined, 'the other listener was taken for the vault');
        assert.match(error.message, new RegExp(`no process of wrangler's group listens on port ${other.port}`));
        assert.equal(ran.length, 2);
        assert.deepEqual(ran.filter(alive), [], 'a stand-in outlived its attempt');
      } finally {
        await other.close();
      }
    }
  });

  test('its own process answering 404 is not the vault either', async () => {
    const { result, error, ran } = await attempt('answers-404', { timeoutMs: 8_000 });
    assert.equal(result, undefined);
    assert.match(error.message, /GET \/v1\/health answered 404 without the vault's shape/);
    assert.equal(ran.length, 1, 'a process that answers is not started again');
    assert.deepEqual(ran.filter(alive), []);
  });

  test('a wrangler that cannot bind is seen at once, stopped, and another started', async () => {
    const { result, error, ran, took } = await attempt('bind-fails-once', { timeoutMs: 120_000 });
    assert.equal(error, undefined, error?.message);
    assert.equal(result.attempts, 2);
    assert.equal(ran.length, 2);
    assert.ok(!alive(ran[0]), 'the process that could not bind still runs');
    assert.equal(result.wrangler.pid, ran[1]);
    assert.ok(took < 60_000, `took ${took} ms: the failure waited for the timeout`);
    const res = await fetch(`http://127.0.0.1:${result.ready.port}/v1/health`);
    assert.equal(res.headers.get('x-request-id'), `req_${'1'.repeat(32)}`);
  });

  test('a wrangler that dies is seen at once; after the last attempt the error says why', async () => {
    const { result, error, ran, took } = await attempt('exits', { timeoutMs: 120_000 });
    assert.equal(result, undefined);
    assert.equal(ran.length, 3);
    assert.equal([...error.message.matchAll(/wrangler exited \(1\) before it was ready/g)].length, 3, error.message);
    assert.match(error.message, /something broke/, 'the log tail is in the error');
    assert.ok(took < 60_000, `took ${took} ms: the exit waited for the timeout`);
  });
});
