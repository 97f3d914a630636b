// The realtime WebSocket proxy on the real runtime (wrangler dev, workerd): proves that the
// Worker opens an OUTBOUND WebSocket to a loopback server and pipes frames. A fake Deepgram
// listen socket checks the key header, answers each binary audio frame with a transcript
// message (text) and the audio's bytes reversed (binary); the Node client streams random
// audio through `/v1/realtime/deepgram/ws/v1/listen` and gets both back byte for byte.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault } from './harness.mjs';
import { accept, connect } from './websocket.mjs';

let fake;
let upstream;
let vault;
const sockets = [];

/** A fake Deepgram: WebSocket `/v1/listen`; anything else goes to the HTTP fake. */
function startUpstream(httpBase) {
  const server = http.createServer(async (req, res) => {
    const chunks = []; for await (const c of req) chunks.push(c);
    const r = await fetch(httpBase + req.url, { method: req.method, headers: { ...req.headers, host: undefined }, body: chunks.length ? Buffer.concat(chunks) : undefined });
    res.writeHead(r.status, Object.fromEntries(r.headers));
    res.end(Buffer.from(await r.arrayBuffer()));
  });
  server.on('upgrade', (req, socket, head) => {
    const entry = { url: req.url, authorization: req.headers.authorization };
    const ws = accept(req, socket, head);
    entry.ws = ws;
    sockets.push(entry);
    ws.onmessage = (m) => {
      if (m.type === 'binary') {
        ws.send(JSON.stringify({ type: 'Results', channel: { alternatives: [{ transcript: `heard ${m.data.length} bytes`, sha256: crypto.createHash('sha256').update(m.data).digest('hex') }] } }));
        ws.send(Buffer.from(m.data).reverse());
      } else if (m.data.toString() === '{"type":"CloseStream"}') {
        ws.close(1000, 'done');
      }
    };
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r({ server, base: `http://127.0.0.1:${server.address().port}` })));
}

before(async () => {
  fake = await startFakeProviders();
  upstream = await startUpstream(fake.base('deepgram'));
  vault = await startVault({ vars: { ...fake.vars(), DEEPGRAM_BASE_URL: upstream.base, RATE_LIMITS: 'off' } });
});
after(async () => {
  await vault?.stop();
  upstream?.server.close();
  await fake?.close();
});

const wsUrl = (path) => vault.base.replace(/^http:/, 'ws:') + path;

async function addKey(user) {
  const key = randomKey('valid');
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider: 'deepgram', api_key: key } });
  assert.equal(r.status, 201, r.text);
  return { key, id: r.json.credential.id };
}

/** Waits until `cond()` holds, or fails after `ms`. */
async function until(cond, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let owner;
test('a browser session: audio up, transcripts and binary back byte-exact, the key in Deepgram\'s header, closed from the client', async () => {
  owner = await addKey('u_ws');
  const before = sockets.length;
  const c = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen?encoding=linear16&sample_rate=16000'), {
    protocols: ['byok-vault', `byok-vault.token.${vault.token('u_ws')}`],
  });
  assert.equal(c.status, 101, c.text);
  assert.equal(c.headers['sec-websocket-protocol'], 'byok-vault');
  await until(() => sockets.length > before, 'the upstream socket');
  const up = sockets.at(-1);
  assert.equal(up.authorization, `Token ${owner.key}`);
  assert.equal(up.url, '/v1/listen?encoding=linear16&sample_rate=16000');
  const frames = [crypto.randomBytes(3200), crypto.randomBytes(70_000), Buffer.from([0, 255, 0, 128])];
  for (const f of frames) c.ws.send(f);
  await until(() => c.ws.messages.length >= frames.length * 2, 'the answers');
  frames.forEach((f, i) => {
    const text = c.ws.messages[2 * i];
    assert.equal(text.type, 'text');
    const alt = JSON.parse(text.data).channel.alternatives[0];
    assert.equal(alt.sha256, crypto.createHash('sha256').update(f).digest('hex'), 'audio changed on the way up');
    const bin = c.ws.messages[2 * i + 1];
    assert.equal(bin.type, 'binary');
    assert.ok(bin.data.equals(Buffer.from(f).reverse()), 'binary changed on the way down');
  });
  // The upstream got the audio as binary, byte for byte.
  assert.deepEqual(up.ws.messages.map((m) => m.type), ['binary', 'binary', 'binary']);
  frames.forEach((f, i) => assert.ok(up.ws.messages[i].data.equals(f)));
  c.ws.close(4000, 'bye');
  const upClosed = await up.ws.closed;
  assert.equal(upClosed.code, 4000);
  // The session's event is sent after it ends: poll for it, with a deadline.
  const sessionsOf = (events) => events.filter((e) => e.action === 'credential.used' && e.detail?.operation === 'realtime_session');
  let events = [];
  for (const deadline = Date.now() + 20_000; sessionsOf(events).length === 0 && Date.now() < deadline;) {
    events = await eventsOf(vault, 'u_ws', 1);
    if (sessionsOf(events).length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  const used = sessionsOf(events);
  assert.equal(used.length, 1, JSON.stringify(events));
  assert.equal(used[0].credential_id, owner.id);
  assert.equal(used[0].detail.bytes_in, frames.reduce((n, f) => n + f.length, 0));
  assert.ok(used[0].detail.bytes_out > used[0].detail.bytes_in);
  assert.equal(typeof used[0].detail.duration_ms, 'number');
  assert.ok(!JSON.stringify(events).includes(owner.key));
});

test('a server session with Authorization, closed by the provider: the client sees its close', async () => {
  const c = await connect(wsUrl(`/v1/realtime/deepgram/ws/v1/listen?credential_id=${owner.id}`), {
    headers: { authorization: `Bearer ${vault.token('u_ws')}` },
  });
  assert.equal(c.status, 101, c.text);
  await until(() => sockets.at(-1).url === '/v1/listen', 'the upstream socket');
  c.ws.send('{"type":"CloseStream"}');
  const closed = await c.ws.closed;
  assert.equal(closed.code, 1000);
});

test('refusals close with the contract\'s codes before any upstream socket opens', async () => {
  const before = sockets.length;
  const none = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen'), { protocols: ['byok-vault'] });
  assert.equal(none.status, 101);
  assert.equal((await none.ws.closed).code, 4401);
  const other = await connect(wsUrl(`/v1/realtime/deepgram/ws/v1/listen?credential_id=${owner.id}`), {
    protocols: ['byok-vault', `byok-vault.token.${vault.token('u_other')}`],
  });
  assert.equal(other.status, 101);
  const refused = await other.ws.closed;
  assert.equal(refused.code, 4404, refused.reason);
  assert.equal(sockets.length, before, 'an upstream socket was opened for a refusal');
});
