// End to end: using keys. Services resolve a user's key (or the system key, with a
// receipt); users call providers through the streaming proxy, which keeps keys inside.
// Under wrangler dev (workerd, local D1, local queues) against the fake providers.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { AUDIO, STREAM_GAP_MS, startFakeProviders } from './fake-providers.mjs';
import { assertSameKey, eventsOf, randomKey, serviceTokens, startVault, withoutKey } from './harness.mjs';

const {
  tokens: { 'tts-service': RESOLVER, ops: ADMIN },
  SERVICE_TOKENS,
} = serviceTokens({ 'tts-service': ['resolve'], ops: ['admin'] });
const SYSTEM_OPENAI = randomKey('valid');

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({
    secrets: { SERVICE_TOKENS, SYSTEM_KEY_OPENAI: SYSTEM_OPENAI },
    vars: { ...fake.vars(), RATE_LIMITS: 'off' },
  });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const add = async (user, provider, kind = 'valid') => {
  const key = randomKey(kind);
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.credential.id, key };
};
const resolve = (body, token = RESOLVER) => vault.request('POST', '/v1/resolve', { token, body });
const usesOf = async (user, n) => (await eventsOf(vault, user, n)).filter((e) => e.action === 'credential.used');

describe('resolve', () => {
  test("a service gets the user's key, and the use is audited with its source", async () => {
    const { id, key } = await add('u_res', 'elevenlabs');
    const r = await resolve({ user_id: 'u_res', capability: 'tts' });
    assert.equal(r.status, 200, withoutKey(r.text));
    assert.equal(r.json.source, 'user');
    assertSameKey(r.json.api_key, key);
    assert.equal(r.json.credential_id, id);
    assert.equal(r.json.provider, 'elevenlabs');
    assert.equal(r.json.fallback_reason, null);
    const [use] = await usesOf('u_res', 2);
    assert.equal(use.source, 'user');
    assert.equal(use.credential_id, id);
    assert.deepEqual(use.actor, { type: 'service', id: 'tts-service' });
    // Its last use shows on the credential (set off the request path, by the chainer).
    const deadline = Date.now() + 10_000;
    let seen;
    while (Date.now() < deadline && !seen) {
      seen = (await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_res' })).json.last_used_at;
      if (!seen) await new Promise((res) => setTimeout(res, 250));
    }
    assert.ok(seen, 'last_used_at was set');
    assert.equal((await vault.stateFilesContaining(key)).length, 0, 'the key is in the local state');
    assert.ok(!vault.log().includes(key), 'the key is in the log');
  });

  test('without a user key the system key serves, and the receipt says why', async () => {
    const r = await resolve({ user_id: 'u_sys', capability: 'llm', provider: 'openai' });
    assert.equal(r.status, 200, withoutKey(r.text));
    assert.equal(r.json.source, 'system');
    assert.equal(r.json.fallback_reason, 'no_user_credential');
    assertSameKey(r.json.api_key, SYSTEM_OPENAI, 'the system key');
    assert.equal(r.json.credential_id, null);
    const [use] = await usesOf('u_sys', 1);
    assert.equal(use.source, 'system');
    assert.equal(use.outcome, 'success');
  });

  test('a dead user key gives way to the system key; with fallback forbidden, no_credential', async () => {
    const { key } = await add('u_dead', 'openai');
    fake.revoke(key);
    const found = await vault.request('GET', '/v1/credentials', { user: 'u_dead' });
    const id = found.json.credentials[0].id;
    const check = await vault.request('POST', `/v1/credentials/${id}/validate`, { user: 'u_dead' });
    assert.equal(check.json.status, 'invalid_key');
    const r = await resolve({ user_id: 'u_dead', capability: 'llm', provider: 'openai' });
    assert.equal(r.json.source, 'system', withoutKey(r.text));
    assert.equal(r.json.fallback_reason, 'user_credential_invalid');
    const none = await resolve({ user_id: 'u_dead', capability: 'llm', provider: 'openai', allow_fallback: false });
    assert.equal(none.status, 404, none.text);
    assert.equal(none.json.code, 'no_credential');
    assert.equal(none.json.provider, 'openai');
    assert.deepEqual(none.json.skipped, [{ credential_id: id, status: 'invalid_key' }]);
  });

  test('a missing or wrong token is 401, a token without the scope 403', async () => {
    const body = { user_id: 'u_res', capability: 'tts' };
    const missing = await vault.request('POST', '/v1/resolve', { body });
    assert.equal(missing.status, 401);
    assert.equal(missing.headers.get('www-authenticate'), 'Bearer');
    assert.equal((await resolve(body, 'svc_not_a_token')).status, 401);
    assert.equal((await resolve(body, vault.token('u_res'))).status, 401, "a user's token opens no service endpoint");
    const scoped = await resolve(body, ADMIN);
    assert.equal(scoped.status, 403);
    assert.equal(scoped.json.code, 'forbidden');
    assert.equal((await vault.request('GET', '/v1/credentials', { token: RESOLVER })).status, 401);
  });
});

describe('resolve under FALLBACK_POLICY=user_only', () => {
  let strict;
  before(async () => {
    strict = await startVault({
      secrets: { SERVICE_TOKENS, SYSTEM_KEY_OPENAI: SYSTEM_OPENAI },
      vars: { ...fake.vars(), RATE_LIMITS: 'off', FALLBACK_POLICY: 'user_only' },
    });
  });
  after(async () => { await strict?.stop(); });

  test('a user with nothing gets no_credential naming the provider, never the system key', async () => {
    const r = await strict.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: 'u_only', capability: 'llm', provider: 'openai' } });
    assert.equal(r.status, 404, withoutKey(r.text));
    assert.equal(r.json.code, 'no_credential');
    assert.equal(r.json.provider, 'openai');
    assert.match(r.json.detail, /openai/);
    assert.ok(!r.text.includes(SYSTEM_OPENAI));
    const events = await eventsOf(strict, 'u_only', 1);
    assert.equal(events[0].action, 'credential.used');
    assert.equal(events[0].outcome, 'failure');
    assert.equal(events[0].reason, 'no_credential');
  });
});

describe('proxy', () => {
  const proxy = (user, method, path, { body, headers = {} } = {}) => fetch(`${vault.base}/v1/proxy/${path}`, {
    method,
    headers: { authorization: `Bearer ${vault.token(user)}`, cookie: 'session=s3cr3t-cookie', 'content-type': 'application/json', ...headers },
    body,
  });

  test("text-to-speech returns the provider's audio bytes unchanged, with the receipt", async () => {
    const { id, key } = await add('u_tts', 'elevenlabs');
    const res = await proxy('u_tts', 'POST', 'elevenlabs/v1/text-to-speech/voice123?output_format=mp3_44100_128', { body: JSON.stringify({ text: 'Hello', model_id: 'eleven_multilingual_v2' }) });
    assert.equal(res.status, 200);
    const bytes = Buffer.from(await res.arrayBuffer());
    assert.ok(bytes.equals(AUDIO), 'the audio changed on the way');
    assert.equal(res.headers.get('content-type'), 'audio/mpeg');
    assert.equal(res.headers.get('set-cookie'), null);
    assert.equal(res.headers.get('x-byok-source'), 'user');
    assert.equal(res.headers.get('x-byok-credential-id'), id);
    const seen = fake.requests.filter((r) => r.operation && r.provider === 'elevenlabs').at(-1);
    assert.equal(seen.key, key, 'the provider saw the user key');
    assert.equal(seen.query, '?output_format=mp3_44100_128');
    assert.equal(JSON.parse(seen.body).text, 'Hello');
    assert.equal(seen.headers.authorization, undefined, "the caller's token was forwarded");
    assert.equal(seen.headers.cookie, undefined, "the caller's cookies were forwarded");
    const uses = await usesOf('u_tts', 2);
    assert.equal(uses[0].source, 'user');
    assert.equal(uses[0].outcome, 'success');
  });

  test('an SSE chat stream reaches the client chunk by chunk', async () => {
    await add('u_sse', 'openai');
    const sentBefore = fake.sseSent.length;
    // The fake sends its last chunk only once the client has the first (or after 10 s): a
    // proxy that buffered would deliver nothing before it, on a fast machine or a slow one.
    const release = fake.holdStreamEnd();
    let text = '';
    let firstAt;
    let beforeTheEnd;
    try {
      const res = await proxy('u_sse', 'POST', 'openai/v1/chat/completions', {
        body: JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /text\/event-stream/);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        if (firstAt === undefined && text.includes('data:')) {
          firstAt = Date.now();
          beforeTheEnd = !release.timedOut;
          release();
        }
      }
    } finally {
      release();
    }
    const sent = fake.sseSent.slice(sentBefore);
    assert.equal(sent.length, 3);
    assert.ok(beforeTheEnd, 'the first chunk arrived only after the fake had sent the last');
    assert.ok(firstAt <= sent[2], `the first chunk arrived at ${firstAt}, after the last was sent at ${sent[2]}`);
    assert.ok(sent[2] - sent[0] >= 2 * STREAM_GAP_MS - 50);
    assert.match(text, /"content":"Hello"/);
    assert.match(text, /data: \[DONE\]/);
  });

  test('a disallowed path or method is refused without reaching the provider', async () => {
    await add('u_deny', 'elevenlabs');
    const before = fake.requests.length;
    for (const [method, path] of [
      ['GET', 'elevenlabs/v1/text-to-speech/voice123'],
      ['POST', 'elevenlabs/v1/user/subscription'],
      ['DELETE', 'elevenlabs/v1/voices/v1'],
      ['POST', 'elevenlabs/v1/text-to-speech/..%2F..%2Fuser'],
      ['POST', 'openai/v1/files'],
    ]) {
      const res = await proxy('u_deny', method, path, { body: method === 'GET' ? undefined : '{}' });
      assert.ok([403, 404, 405].includes(res.status), `${method} ${path}: ${res.status}`);
      assert.equal((await res.json()).code !== undefined, true);
    }
    assert.equal(fake.requests.length, before, 'a refused call reached the provider');
    const anon = await fetch(`${vault.base}/v1/proxy/elevenlabs/v1/text-to-speech/voice123`, { method: 'POST', body: '{}' });
    assert.equal(anon.status, 401);
  });

  test('a key revoked upstream flips to invalid_key and the caller is told', async () => {
    const { id, key } = await add('u_rev', 'elevenlabs');
    fake.revoke(key);
    const res = await proxy('u_rev', 'POST', 'elevenlabs/v1/text-to-speech/voice123', { body: '{"text":"Hi"}' });
    assert.equal(res.status, 424);
    const body = await res.json();
    assert.equal(body.code, 'credential_invalid');
    assert.equal(body.credential_id, id);
    const cred = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_rev' });
    assert.equal(cred.json.status, 'invalid_key');
    const events = await eventsOf(vault, 'u_rev', 3);
    assert.ok(events.some((e) => e.action === 'credential.validated' && e.outcome === 'failure' && e.reason === 'credential_invalid'), JSON.stringify(events));
    assert.ok(events.some((e) => e.action === 'credential.used' && e.reason === 'credential_invalid'));
  });

  test('a 429 passes through untouched and changes no status', async () => {
    const { id } = await add('u_busy', 'elevenlabs', 'busy');
    const res = await proxy('u_busy', 'POST', 'elevenlabs/v1/text-to-speech/voice123', { body: '{"text":"Hi"}' });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '7');
    const body = await res.json();
    assert.equal(body.detail.status, 'too_many_concurrent_requests');
    const cred = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_busy' });
    assert.equal(cred.json.status, 'valid');
  });

  test('a spent key flips to quota_exhausted and the caller is told', async () => {
    const { id } = await add('u_spent', 'openai', 'spent');
    const res = await proxy('u_spent', 'POST', 'openai/v1/chat/completions', { body: JSON.stringify({ model: 'gpt-4o-mini', messages: [] }) });
    assert.equal(res.status, 402);
    assert.equal((await res.json()).code, 'quota_exhausted');
    const cred = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_spent' });
    assert.equal(cred.json.status, 'quota_exhausted');
  });

  test('without a user key the system key serves the call, with its receipt', async () => {
    const res = await proxy('u_nokey', 'POST', 'openai/v1/chat/completions', { body: JSON.stringify({ model: 'gpt-4o-mini', messages: [] }) });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-byok-source'), 'system');
    assert.equal(res.headers.get('x-byok-fallback-reason'), 'no_user_credential');
    assert.equal(res.headers.get('x-byok-credential-id'), null);
    assert.equal((await res.json()).choices[0].message.content, 'Hello there!');
    assertSameKey(fake.requests.filter((r) => r.operation).at(-1).key, SYSTEM_OPENAI, 'the key the provider saw');
    assert.ok(!vault.log().includes(SYSTEM_OPENAI));
  });
});
