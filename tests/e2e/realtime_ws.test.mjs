// The realtime WebSocket proxy on the real runtime (wrangler dev, workerd): proves that the
// Worker opens an OUTBOUND WebSocket to a loopback server and pipes frames. The fake
// providers' realtime sockets (tests/e2e/fake-providers.mjs) check the key header and answer
// in each provider's shapes: Deepgram listen answers each binary audio frame with a
// transcript message (text) and the audio's bytes reversed (binary), so the Node client gets
// both back byte for byte; ElevenLabs stream-input and Scribe, OpenAI realtime; a bad key
// refused at the upgrade (Deepgram) or on the open socket (ElevenLabs, OpenAI).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { assertSameKey, eventsOf, randomKey, startVault } from './harness.mjs';
import { connect } from './websocket.mjs';

let fake;
let vault;
/** The fake's realtime sockets, as they open. */
let sockets;

const SYSTEM_KEY = randomKey('valid');

before(async () => {
  fake = await startFakeProviders();
  sockets = fake.sockets;
  vault = await startVault({
    secrets: { SYSTEM_KEY_DEEPGRAM: SYSTEM_KEY },
    vars: {
      ...fake.vars(),
      RATE_LIMITS: 'off',
      SYSTEM_KEY_BUDGETS: JSON.stringify({ deepgram: { period: 'day', requests: 1 } }),
    },
  });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const wsUrl = (path) => vault.base.replace(/^http:/, 'ws:') + path;

/** Every key stored in this file's vaults, for the log's check. */
const storedKeys = [];

async function addKey(user, provider = 'deepgram') {
  const key = randomKey('valid');
  storedKeys.push(key);
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
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
  assertSameKey(up.headers.authorization, `Token ${owner.key}`, 'the key in Deepgram\'s header');
  assert.equal(up.url, '/deepgram/v1/listen?encoding=linear16&sample_rate=16000');
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
  await until(() => sockets.at(-1).url === '/deepgram/v1/listen', 'the upstream socket');
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

/** `user`'s `credential.used` events for realtime sessions, once `n` are there (20 s at most). */
async function sessionEvents(user, n = 1, pred = () => true) {
  const of = (events) => events.filter((e) => e.action === 'credential.used' && e.detail?.operation === 'realtime_session' && pred(e));
  let events = [];
  for (const deadline = Date.now() + 20_000; of(events).length < n && Date.now() < deadline;) {
    events = await eventsOf(vault, user, 1);
    if (of(events).length < n) await new Promise((r) => setTimeout(r, 100));
  }
  return { sessions: of(events), all: events };
}

const asBrowser = (user) => ({ protocols: ['byok-vault', `byok-vault.token.${vault.token(user)}`] });

test('a caller who hangs up before the vault answers leaves no provider socket open', async () => {
  const release = fake.holdUpgrades();
  const before = sockets.length;
  const u = new URL(wsUrl('/v1/realtime/deepgram/ws/v1/listen'));
  const req = http.request({
    host: u.hostname, port: u.port, path: u.pathname,
    headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': crypto.randomBytes(16).toString('base64'), 'sec-websocket-protocol': `byok-vault, byok-vault.token.${vault.token('u_ws')}` },
  });
  req.on('error', () => {});
  req.end();
  try {
    await until(() => sockets.length > before, 'the upgrade to reach the provider');
    req.destroy();
    // Let the vault see the caller go before the provider answers.
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    release();
  }
  await until(() => sockets[before].ws, 'the provider\'s socket');
  const closed = await Promise.race([sockets[before].ws.closed, new Promise((r) => setTimeout(() => r('still open'), 15_000))]);
  assert.notEqual(closed, 'still open', 'the provider\'s socket was left open for a caller who hung up');
  // However the vault learns it (the caller's socket errors, or the answer finds no one):
  // a normal close, or "going away".
  assert.ok([1000, 1001].includes(closed.code), JSON.stringify(closed));
});

test('ElevenLabs TTS stream-input: text up, audio down, the key in xi-api-key, the characters metered', async () => {
  const el = await addKey('u_el', 'elevenlabs');
  const c = await connect(wsUrl('/v1/realtime/elevenlabs/ws/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?model_id=eleven_flash_v2_5'), asBrowser('u_el'));
  assert.equal(c.status, 101, c.text);
  const up = sockets.at(-1);
  assertSameKey(up.headers['xi-api-key'], el.key, 'the key in xi-api-key');
  assert.equal(up.headers.authorization, undefined);
  assert.equal(up.url, '/elevenlabs/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?model_id=eleven_flash_v2_5');
  c.ws.send(JSON.stringify({ text: ' ' }));
  c.ws.send(JSON.stringify({ text: 'Hello there. ' }));
  c.ws.send(JSON.stringify({ text: 'Bye.' }));
  c.ws.send(JSON.stringify({ text: '' }));
  const closed = await c.ws.closed;
  assert.equal(closed.code, 1000);
  const got = c.ws.messages.map((m) => JSON.parse(m.data.toString()));
  assert.deepEqual(got.map((m) => m.audio && Buffer.from(m.audio, 'base64').toString()), ['audio of Hello there. ', 'audio of Bye.', undefined]);
  assert.equal(got.at(-1).isFinal, true);
  const { sessions } = await sessionEvents('u_el');
  assert.equal(sessions.length, 1);
  const d = sessions[0].detail;
  assert.equal(sessions[0].outcome, 'success');
  assert.equal(d.closed_by, 'provider');
  assert.equal(d.usage.characters, 'Hello there.'.length + 'Bye.'.length);
  const usage = await vault.request('GET', '/v1/usage', { user: 'u_el' });
  assert.equal(usage.status, 200, usage.text);
  const row = usage.json.usage.find((r) => r.provider === 'elevenlabs');
  assert.equal(row.requests, 1);
  assert.equal(row.characters, 16);
});

test('a caller\'s own key in an ElevenLabs message ends the session: it never reaches the provider', async () => {
  await addKey('u_el2', 'elevenlabs');
  const c = await connect(wsUrl('/v1/realtime/elevenlabs/ws/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input'), asBrowser('u_el2'));
  assert.equal(c.status, 101, c.text);
  const up = sockets.at(-1);
  const token = vault.token('u_el2');
  c.ws.send(JSON.stringify({ text: ' ', xi_api_key: token }));
  const closed = await c.ws.closed;
  assert.deepEqual([closed.code, closed.reason], [4400, 'a message may not carry a key: the vault adds the key']);
  assert.equal((await up.ws.closed).code, 4400);
  assert.ok(!up.ws.messages.some((m) => m.data.toString().includes(token)), 'the vault token reached the provider');
});

test('OpenAI realtime through the proxy base URL, as its SDK connects: the session events pass, the tokens are metered', async () => {
  await addKey('u_oa', 'openai');
  const c = await connect(wsUrl('/v1/proxy/openai/v1/realtime?model=gpt-realtime'), { headers: { authorization: `Bearer ${vault.token('u_oa')}` } });
  assert.equal(c.status, 101, c.text);
  const up = sockets.at(-1);
  assert.match(up.headers.authorization, /^Bearer sk_valid_/);
  assert.equal(up.url, '/openai/v1/realtime?model=gpt-realtime');
  await until(() => c.ws.messages.length >= 1, 'session.created');
  assert.equal(JSON.parse(c.ws.messages[0].data).type, 'session.created');
  c.ws.send(JSON.stringify({ type: 'response.create' }));
  const events = () => c.ws.messages.map((m) => JSON.parse(m.data));
  await until(() => events().some((e) => e.type === 'response.done'), 'response.done');
  assert.deepEqual(events().map((e) => e.type), ['session.created', 'response.created', 'response.output_text.delta', 'response.done']);
  assert.equal(events().at(-1).response.usage.output_tokens, 22);
  c.ws.close(1000, 'done');
  assert.equal((await up.ws.closed).code, 1000);
  const { sessions } = await sessionEvents('u_oa');
  assert.deepEqual([sessions[0].detail.usage.input_tokens, sessions[0].detail.usage.output_tokens], [11, 22]);
  assert.equal(sessions[0].detail.closed_by, 'client');
});

test('a key the provider refuses at the upgrade is marked invalid and the next key serves', async () => {
  const a = await addKey('u_two');
  const b = await addKey('u_two');
  const pref = await vault.request('PUT', '/v1/preferences/stt', { user: 'u_two', body: { credential_id: a.id } });
  assert.equal(pref.status, 200, pref.text);
  fake.revoke(a.key);
  const c = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen'), asBrowser('u_two'));
  assert.equal(c.status, 101, c.text);
  // A refusal is a 101 too: the session is open once the second key's socket is, and not
  // closed first.
  const open = await Promise.race([
    until(() => sockets.some((s) => s.key === b.key && s.ws), 'the second key\'s socket').then(() => 'open'),
    c.ws.closed.then((cl) => `closed ${cl.code} ${cl.reason}`),
  ]);
  assert.equal(open, 'open', JSON.stringify(sockets.filter((s) => s.key === a.key || s.key === b.key).map((s) => ({ key: s.key === a.key ? 'a' : 'b', refused: s.refused }))));
  assert.ok(sockets.some((s) => s.key === a.key && s.refused === 401), 'the first key was not tried');
  const stored = await vault.request('GET', `/v1/credentials/${a.id}`, { user: 'u_two' });
  assert.equal(stored.json.credential?.status ?? stored.json.status, 'invalid_key', stored.text);
  c.ws.send('{"type":"CloseStream"}');
  assert.equal((await c.ws.closed).code, 1000);
  // With no key left that the provider takes, the caller's socket closes 4424 before any
  // provider socket opens for it.
  fake.revoke(b.key);
  const d = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen?allow_fallback=false'), asBrowser('u_two'));
  const closed = await d.ws.closed;
  assert.equal(closed.code, 4424, closed.reason);
  assert.equal(closed.reason, 'credential_invalid');
  const { all } = await sessionEvents('u_two', 1);
  assert.ok(!JSON.stringify(all).includes(a.key) && !JSON.stringify(all).includes(b.key));
});

test('ElevenLabs Scribe: audio chunks up, transcripts back, the audio\'s seconds metered from its format', async () => {
  await addKey('u_scribe_ok', 'elevenlabs');
  const c = await connect(wsUrl('/v1/realtime/elevenlabs/ws/v1/speech-to-text/realtime?model_id=scribe_v2_realtime&audio_format=pcm_16000'), asBrowser('u_scribe_ok'));
  assert.equal(c.status, 101, c.text);
  const audio = crypto.randomBytes(16_000);
  c.ws.send(JSON.stringify({ message_type: 'input_audio_chunk', audio_base_64: audio.toString('base64'), commit: true, sample_rate: 16000 }));
  const types = () => c.ws.messages.map((m) => JSON.parse(m.data).message_type);
  await until(() => types().includes('committed_transcript'), 'the committed transcript');
  assert.deepEqual(types(), ['session_started', 'committed_transcript']);
  assert.equal(JSON.parse(c.ws.messages[1].data).text, 'heard 16000 bytes');
  c.ws.close(1000, '');
  const { sessions } = await sessionEvents('u_scribe_ok');
  assert.equal(sessions[0].detail.usage.audio_seconds, 0.5);
});

test('a refusal on the open socket (ElevenLabs Scribe) reaches the client and marks the key', async () => {
  const el = await addKey('u_scribe', 'elevenlabs');
  fake.revoke(el.key);
  const c = await connect(wsUrl('/v1/realtime/elevenlabs/ws/v1/speech-to-text/realtime?model_id=scribe_v2_realtime'), asBrowser('u_scribe'));
  assert.equal(c.status, 101, c.text);
  const closed = await c.ws.closed;
  assert.equal(closed.code, 1000);
  assert.equal(JSON.parse(c.ws.messages[0].data).message_type, 'auth_error');
  const { sessions } = await sessionEvents('u_scribe', 1, (e) => e.outcome === 'failure');
  assert.equal(sessions[0]?.reason, 'credential_invalid', JSON.stringify(sessions));
  let status;
  for (const deadline = Date.now() + 10_000; status !== 'invalid_key' && Date.now() < deadline;) {
    const r = await vault.request('GET', `/v1/credentials/${el.id}`, { user: 'u_scribe' });
    status = r.json.credential?.status ?? r.json.status;
    if (status !== 'invalid_key') await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(status, 'invalid_key');
});

test('the system key serves where policy allows, counted against its budget: past it, 4429 before any socket', async () => {
  const c = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen'), asBrowser('u_sys'));
  assert.equal(c.status, 101, c.text);
  assertSameKey(sockets.at(-1).key, SYSTEM_KEY, 'the system key on the provider\'s socket');
  c.ws.send(crypto.randomBytes(64_000));
  await until(() => c.ws.messages.length >= 2, 'the transcript');
  c.ws.send('{"type":"CloseStream"}');
  assert.equal((await c.ws.closed).code, 1000);
  const { sessions } = await sessionEvents('u_sys');
  assert.equal(sessions[0].source, 'system');
  assert.equal(sessions[0].detail.usage.audio_seconds, 2);
  const before = sockets.length;
  const again = await connect(wsUrl('/v1/realtime/deepgram/ws/v1/listen'), asBrowser('u_sys'));
  const refused = await again.ws.closed;
  assert.equal(refused.code, 4429, refused.reason);
  assert.equal(refused.reason, 'budget_exceeded');
  assert.equal(sockets.length, before, 'a provider socket was opened past the budget');
});

test('a session ends after REALTIME_MAX_SECONDS, both sides closed; a system key the policy forbids is no credential', async () => {
  const short = await startVault({
    secrets: { SYSTEM_KEY_DEEPGRAM: SYSTEM_KEY },
    vars: { ...fake.vars(), RATE_LIMITS: 'off', REALTIME_MAX_SECONDS: '2', FALLBACK_POLICY: 'user_only' },
  });
  try {
    const before = sockets.length;
    const none = await connect(short.base.replace(/^http:/, 'ws:') + '/v1/realtime/deepgram/ws/v1/listen', {
      protocols: ['byok-vault', `byok-vault.token.${short.token('u_nokey')}`],
    });
    const refused = await none.ws.closed;
    assert.deepEqual([refused.code, refused.reason], [4404, 'no_credential']);
    assert.equal(sockets.length, before, 'a provider socket was opened though the policy forbids the system key');
    const key = randomKey('valid');
    storedKeys.push(key);
    const r = await short.request('POST', '/v1/credentials', { user: 'u_idle', body: { provider: 'deepgram', api_key: key } });
    assert.equal(r.status, 201, r.text);
    const c = await connect(short.base.replace(/^http:/, 'ws:') + '/v1/realtime/deepgram/ws/v1/listen', {
      protocols: ['byok-vault', `byok-vault.token.${short.token('u_idle')}`],
    });
    assert.equal(c.status, 101, c.text);
    const up = sockets.at(-1);
    assertSameKey(up.key, key, 'the key on the provider\'s socket');
    const [client, provider] = await Promise.all([c.ws.closed, up.ws.closed]);
    assert.equal(client.code, 1000);
    assert.equal(provider.code, 1000);
    assert.match(client.reason, /time limit/);
    let events = [];
    for (const deadline = Date.now() + 20_000; !events.some((e) => e.detail?.closed_by === 'timeout') && Date.now() < deadline;) {
      events = (await short.request('GET', '/v1/audit?limit=50', { user: 'u_idle' })).json.events;
      await new Promise((res) => setTimeout(res, 100));
    }
    const ended = events.find((e) => e.detail?.closed_by === 'timeout');
    assert.ok(ended, JSON.stringify(events));
    assert.ok(ended.detail.duration_ms >= 2000, ended.detail.duration_ms);
    assertNoSecret(short.log(), 'the second vault\'s log');
  } finally {
    await short.stop();
  }
});

/** Neither a stored key nor the system key appears in `text`. */
function assertNoSecret(text, where) {
  for (const k of [...storedKeys, SYSTEM_KEY]) assert.ok(!text.includes(k), `a key is in ${where}`);
}

test('no key reached the vault\'s log over every session above', () => {
  assert.ok(storedKeys.length >= 6, 'the sessions above stored their keys');
  assertNoSecret(vault.log(), 'the log');
});
