// End to end: request bodies and the caller's connection. The vault authenticates a caller
// before it reads a byte of the body, refuses a body past its limit while it is still
// arriving, streams a proxied body to the provider as it arrives, and records a use that
// reached the provider even when the caller hangs up. Under wrangler dev (workerd) with a
// stand-in ElevenLabs that shows what it received and when.
//
// What the Worker itself does with a body is observed on workerd's own port (see
// `runtimeBase`), with wrangler's body draining off: wrangler dev's middleware would read
// any body the Worker left unread before its answer goes out, and its front proxy cannot
// pass on an answer that comes while the client is still sending.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { eventsOf, internals, randomKey, startVault } from './harness.mjs';

const SYSTEM = randomKey('valid');
const LIMIT = 1_000_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` holds, polling; fails after `ms`. */
async function until(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * A stand-in for ElevenLabs' speech-to-text that records each request as it arrives (its
 * headers, each chunk of its body, whether it was cut off) and answers once the body has
 * ended, or, for a held request, once the test releases it.
 */
function startStandIn() {
  const requests = [];
  let hold = false;
  let stall = false;
  const held = [];
  const stalled = new Set();
  const server = http.createServer((req, res) => {
    if (stall) {
      // An error whose head comes at once and whose body never ends.
      res.writeHead(500, { 'content-type': 'application/json' });
      res.write('{"detail":{"status":"internal","message":"');
      stalled.add(res);
      return;
    }
    const record = { path: req.url, headers: req.headers, chunks: [], ended: false, aborted: false };
    requests.push(record);
    req.on('data', (c) => record.chunks.push(c));
    req.on('aborted', () => { record.aborted = true; });
    req.on('error', () => { record.aborted = true; });
    req.on('end', () => {
      record.ended = true;
      const body = Buffer.concat(record.chunks);
      const answer = () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ text: 'hello', bytes: body.length, sha256: crypto.createHash('sha256').update(body).digest('hex') }));
      };
      if (hold) held.push(answer);
      else answer();
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        base: `http://127.0.0.1:${port}/elevenlabs`,
        requests,
        hold: (on) => { hold = on; },
        stall: (on) => { stall = on; },
        release: () => { while (held.length) held.shift()(); },
        held: () => held.length,
        close: () => new Promise((done) => {
          for (const res of stalled) res.destroy();
          server.closeAllConnections?.();
          server.close(() => done());
        }),
      });
    });
  });
}

/**
 * Starts a request with a chunked body, writes `first`, and leaves the body open. Resolves
 * `answered` with the status and body when an answer comes; `send(bytes)` writes more,
 * `end()` finishes the body, `abort()` hangs up.
 */
function openUpload(base, path, headers, first) {
  const url = new URL(path, base);
  // A connection of its own: one whose body the vault left unread is not used again.
  const req = http.request({
    agent: false,
    host: url.hostname, port: url.port, path: url.pathname + url.search, method: 'POST',
    headers: { 'content-type': 'application/octet-stream', ...headers },
  });
  const answered = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json = null;
        try { json = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  // A hang-up rejects `answered`: nobody waits for it then.
  answered.catch(() => {});
  if (first) req.write(first);
  return {
    answered,
    send: (bytes) => new Promise((r) => req.write(bytes, r)),
    end: () => req.end(),
    abort: () => req.destroy(),
    /** Hangs up as a client that goes away does: the connection reset, not closed. */
    reset: () => (req.socket ? req.socket.resetAndDestroy() : req.destroy()),
  };
}

/** A whole POST on a connection of its own: the answer, as `vault.request` gives it. */
function send(base, path, { user, body, headers = {} }) {
  const upload = openUpload(base, path, {
    ...(user ? { authorization: `Bearer ${tokenFor(user)}` } : {}),
    'content-length': String(body.length), ...headers,
  });
  upload.send(body);
  upload.end();
  return upload.answered;
}
let tokenFor;

/** Resolves with the answer, or `null` if none came within `ms`. */
const within = (promise, ms) => Promise.race([promise, sleep(ms).then(() => null)]);

/**
 * The port where workerd itself serves the vault, under wrangler's own front proxy (which
 * never cancels a request when its client goes away; the runtime does): found among the
 * listening sockets of the processes wrangler started, as the one that answers as the vault.
 */
async function runtimeBase(vault) {
  const ports = (internals.listeningSockets(vault.pgid) ?? [])
    .map((s) => s.port)
    .filter((p) => `http://127.0.0.1:${p}` !== vault.base);
  for (const port of ports) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/v1/health`, { signal: AbortSignal.timeout(2000) });
      await r.arrayBuffer();
      if (r.status === 200 && r.headers.get('x-request-id')?.startsWith('req_')) return `http://127.0.0.1:${port}`;
    } catch { /* not an HTTP listener */ }
  }
  throw new Error('workerd serves the vault on no port of its own');
}

const STT = '/v1/proxy/elevenlabs/v1/speech-to-text';

describe('request bodies', () => {
  let standIn;
  let vault;
  let direct;
  before(async () => {
    standIn = await startStandIn();
    process.env.WRANGLER_DISABLE_REQUEST_BODY_DRAINING = 'true';
    try {
      vault = await startVault({
        secrets: { SYSTEM_KEY_ELEVENLABS: SYSTEM },
        vars: { ELEVENLABS_BASE_URL: standIn.base, PROXY_MAX_BODY_BYTES: String(LIMIT), RATE_LIMITS: 'off' },
        front: false,
      });
    } finally {
      delete process.env.WRANGLER_DISABLE_REQUEST_BODY_DRAINING;
    }
    direct = await runtimeBase(vault);
    tokenFor = (user) => vault.token(user);
  });
  after(async () => {
    await vault?.stop();
    await standIn?.close();
  });

  test('a caller who is not authenticated is refused while its body is still arriving', async () => {
    for (const [path, authorization] of [
      [STT, 'Bearer a.b.c'],
      [STT, `Bearer ${SYSTEM}`],
      ['/v1/credentials', 'Bearer a.b.c'],
      ['/v1/admin/import', `Bearer ${vault.token('u_a')}`],
    ]) {
      const upload = openUpload(direct, path, { authorization }, Buffer.alloc(256 * 1024, 1));
      const r = await within(upload.answered, 20_000);
      upload.abort();
      assert.ok(r, `${path}: no answer until the body ends`);
      assert.equal(r.status, 401, `${path}: ${r.text}`);
      assert.equal(r.json.code, 'unauthorized');
    }
    assert.equal(standIn.requests.length, 0);
  });

  test('a JSON body past 64 KiB is refused as soon as it passes, without waiting for the rest', async () => {
    const upload = openUpload(direct, '/v1/credentials', {
      authorization: `Bearer ${vault.token('u_a')}`, 'content-type': 'application/json',
    }, Buffer.alloc(70 * 1024, 0x20));
    const r = await within(upload.answered, 20_000);
    upload.abort();
    assert.ok(r, 'no answer until the body ends');
    assert.equal(r.status, 413, r.text);
    assert.equal(r.json.code, 'payload_too_large');
    const stored = await vault.request('GET', '/v1/credentials', { user: 'u_a' });
    assert.deepEqual(stored.json?.credentials, [], stored.text);
  });

  test('the proxy streams the caller\'s body to the provider as it arrives', async () => {
    const user = `Bearer ${vault.token('u_stream')}`;
    const first = crypto.randomBytes(100 * 1024);
    const upload = openUpload(direct, STT, { authorization: user }, first);
    const before = standIn.requests.length;
    // The provider gets the first part while the caller has not finished sending.
    await until(() => {
      const r = standIn.requests[before];
      return r && Buffer.concat(r.chunks).length >= first.length;
    }, 'the first part to reach the provider before the body ended');
    const rest = crypto.randomBytes(300 * 1024);
    await upload.send(rest);
    upload.end();
    const r = await upload.answered;
    assert.equal(r.status, 200, r.text);
    const whole = Buffer.concat([first, rest]);
    assert.equal(r.json.bytes, whole.length);
    assert.equal(r.json.sha256, crypto.createHash('sha256').update(whole).digest('hex'));
    assert.equal(r.headers['x-byok-source'], 'system');
    const got = standIn.requests[before];
    assert.equal(got.headers['xi-api-key'] === SYSTEM, true, 'the system key was not sent');
    assert.equal(got.headers.authorization, undefined);
  });

  test('a body framed by its length reaches the provider byte for byte, with its length', async () => {
    const body = crypto.randomBytes(900 * 1024);
    const before = standIn.requests.length;
    const r = await send(direct, STT, { user: 'u_framed', body, headers: { 'content-type': 'audio/wav' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.sha256, crypto.createHash('sha256').update(body).digest('hex'));
    assert.equal(standIn.requests[before].headers['content-length'], String(body.length));
  });

  test('a body past PROXY_MAX_BODY_BYTES is refused: declared, before any call; chunked, cut off', async () => {
    const before = standIn.requests.length;
    const declared = await send(direct, STT, { user: 'u_big', body: Buffer.alloc(LIMIT + 1, 7) });
    assert.equal(declared.status, 413, declared.text);
    assert.equal(declared.json.code, 'payload_too_large');
    assert.equal(standIn.requests.length, before, 'a declared oversize reached the provider');

    const upload = openUpload(direct, STT, { authorization: `Bearer ${vault.token('u_big')}` }, Buffer.alloc(600 * 1024, 1));
    await upload.send(Buffer.alloc(600 * 1024, 2));
    const r = await within(upload.answered, 20_000);
    upload.abort();
    assert.ok(r, 'no answer until the body ended');
    assert.equal(r.status, 413, r.text);
    assert.equal(r.json.code, 'payload_too_large');
    // The call may be cut off before it even connects; if it reached the provider, the
    // provider saw it cut off before its end: never a cut-off body taken for a whole one.
    const got = standIn.requests.slice(before);
    assert.ok(got.length <= 1, `${got.length} calls`);
    for (const call of got) {
      await until(() => call.aborted || call.ended, 'the provider to see the call end');
      assert.equal(call.ended, false, 'the provider took a cut-off body for a whole one');
      assert.ok(Buffer.concat(call.chunks).length <= LIMIT, 'more than the limit reached the provider');
    }
  });

  test('an error answer whose body stalls is given up on: the caller is answered', async () => {
    standIn.stall(true);
    try {
      const r = await within(send(direct, STT, { user: 'u_stall', body: Buffer.from('abc') }), 30_000);
      assert.ok(r, 'no answer while the provider\'s error body stalls');
      assert.equal(r.status, 504, r.text);
      assert.equal(r.json.code, 'provider_unreachable');
    } finally {
      standIn.stall(false);
    }
  });

  test('a use that reached the provider is recorded when the caller hangs up', async () => {
    standIn.hold(true);
    try {
      const before = standIn.requests.length;
      const upload = openUpload(direct, STT, {
        authorization: `Bearer ${vault.token('u_gone')}`, 'content-length': '5',
      }, Buffer.from('hello'));
      upload.end();
      // The provider has the whole request and is "thinking"; the caller goes away.
      await until(() => standIn.requests[before]?.ended && standIn.held() === 1, 'the provider to hold the call');
      upload.reset();
      await sleep(300);
      standIn.release();
    } finally {
      standIn.hold(false);
      standIn.release();
    }
    const uses = (await eventsOf(vault, 'u_gone', 1)).filter((e) => e.action === 'credential.used');
    assert.equal(uses.length, 1, 'the use was not recorded');
    assert.equal(uses[0].source, 'system');
    assert.equal(uses[0].outcome, 'success');
  });
});

describe('limits on the operator\'s system keys (RATE_LIMITS on)', () => {
  let standIn;
  let vault;
  const PER_USER = 3;
  const PER_ADDRESS = 6;
  before(async () => {
    standIn = await startStandIn();
    vault = await startVault({
      secrets: { SYSTEM_KEY_ELEVENLABS: SYSTEM },
      vars: { ELEVENLABS_BASE_URL: standIn.base },
      // Small limits, so a burst crosses them whatever the minute's window holds already.
      config: (toml) => toml
        .replace(/(name = "SYSTEM_KEY_USES_PER_USER"\nnamespace_id = "\d+"\nsimple = \{ limit = )\d+/, `$1${PER_USER}`)
        .replace(/(name = "SYSTEM_KEY_USES_PER_ADDRESS"\nnamespace_id = "\d+"\nsimple = \{ limit = )\d+/, `$1${PER_ADDRESS}`),
      front: false,
    });
  });
  after(async () => {
    await vault?.stop();
    await standIn?.close();
  });

  test('a user without a key is refused 429 past the limit, before the provider is contacted', async () => {
    const before = standIn.requests.length;
    const answers = [];
    // The local binding counts in windows aligned to the minute: 2 x limit + 1 calls cross
    // the limit in one window or the other.
    for (let i = 0; i < 2 * PER_USER + 1; i++) {
      answers.push(await vault.request('POST', STT, { user: 'u_tap', body: 'abc', headers: { 'content-type': 'audio/wav' } }));
    }
    const served = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 429);
    assert.equal(served.length + refused.length, answers.length, answers.map((a) => a.status).join(','));
    assert.ok(refused.length >= 1, 'nothing was refused');
    assert.ok(served.length <= 2 * PER_USER);
    for (const a of refused) {
      assert.equal(a.json.code, 'rate_limited');
      assert.equal(a.headers.get('retry-after'), '60');
      assert.equal(a.json.retry_after_seconds, 60);
    }
    assert.equal(standIn.requests.length - before, served.length, 'a refused call reached the provider');
    const uses = (await eventsOf(vault, 'u_tap', answers.length)).filter((e) => e.action === 'credential.used');
    assert.equal(uses.filter((e) => e.reason === 'rate_limited' && e.source === 'system').length, refused.length);
  });

  test('many users from one address are refused past the address\'s limit', async () => {
    const before = standIn.requests.length;
    const answers = [];
    for (let i = 0; i < 2 * PER_ADDRESS + 1; i++) {
      answers.push(await vault.request('POST', STT, { user: `u_crowd_${i}`, body: 'abc', headers: { 'content-type': 'audio/wav' } }));
    }
    const refused = answers.filter((a) => a.status === 429);
    assert.ok(refused.length >= 1, answers.map((a) => a.status).join(','));
    assert.ok(refused.every((a) => a.json.code === 'rate_limited'));
    assert.equal(standIn.requests.length - before, answers.filter((a) => a.status === 200).length);
  });
});
