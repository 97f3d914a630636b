// End to end: the vault token where each provider's SDK puts its key (issue 20, point 1),
// and answers that say whether they are the provider's own (point 3). Under wrangler dev
// against the fake providers; the official SDKs themselves run in sdks.test.mjs.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault } from './harness.mjs';

describe('the vault token in a provider SDK\'s own key header', () => {
  let fake;
  let vault;
  const SYSTEM = { gemini: randomKey('valid'), elevenlabs: randomKey('valid'), deepgram: randomKey('valid') };
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({
      secrets: { SYSTEM_KEY_GEMINI: SYSTEM.gemini, SYSTEM_KEY_ELEVENLABS: SYSTEM.elevenlabs, SYSTEM_KEY_DEEPGRAM: SYSTEM.deepgram },
      vars: { ...fake.vars(), RATE_LIMITS: 'off' },
    });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  const call = (path, headers, body = '{"contents":[{"parts":[{"text":"hi"}]}]}') => fetch(`${vault.base}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body,
  });

  test('x-goog-api-key, ?key=, xi-api-key and Authorization: Token carry it; the provider never sees it', async () => {
    const token = vault.token('u_sdk');
    const gen = '/v1/proxy/gemini/v1beta/models/gemini-2.0-flash:generateContent';
    const before = fake.requests.length;
    const cases = [
      [gen, { 'x-goog-api-key': token }, 'gemini'],
      [`${gen}?key=${token}`, {}, 'gemini'],
      ['/v1/proxy/elevenlabs/v1/text-to-speech/voice123', { 'xi-api-key': token }, 'elevenlabs'],
    ];
    for (const [path, headers, provider] of cases) {
      const r = await call(path, headers, provider === 'elevenlabs' ? '{"text":"Hello"}' : undefined);
      assert.equal(r.status, 200, `${path}: ${await r.clone().text()}`);
      assert.equal(r.headers.get('x-byok-upstream-status'), '200');
      assert.equal(r.headers.get('x-byok-source'), 'system');
      await r.arrayBuffer();
    }
    const seen = fake.requests.slice(before);
    assert.equal(seen.length, cases.length);
    for (const [i, req] of seen.entries()) {
      assert.ok(req.key === SYSTEM[cases[i][2]], `${cases[i][0]}: the provider did not get the key`);
      assert.ok(!JSON.stringify(req.headers).includes(token) && !req.path.includes(token) && !(req.query ?? '').includes(token),
        `${cases[i][0]}: the vault token reached the provider`);
    }
    // Never in a log line or an event either.
    const uses = (await eventsOf(vault, 'u_sdk', cases.length)).filter((e) => e.action === 'credential.used');
    assert.equal(uses.length, cases.length);
    assert.ok(!JSON.stringify(uses).includes(token), 'the token is in an audit event');
    assert.ok(!vault.log().includes(token), 'the token is in the log');
  });

  test('a provider key pasted where the SDK puts its key is 401, reaches no provider and is never echoed', async () => {
    const pasted = randomKey('valid');
    const before = fake.requests.length;
    for (const [path, headers] of [
      ['/v1/proxy/elevenlabs/v1/text-to-speech/voice123', { 'xi-api-key': pasted }],
      ['/v1/proxy/deepgram/v1/listen', { authorization: `Token ${pasted}` }],
      ['/v1/proxy/gemini/v1beta/models/gemini-2.0-flash:generateContent', { 'x-goog-api-key': pasted }],
    ]) {
      const r = await call(path, headers);
      const text = await r.text();
      assert.equal(r.status, 401, `${path}: ${text}`);
      assert.equal(JSON.parse(text).code, 'unauthorized');
      assert.equal(r.headers.get('x-byok-upstream-status'), null);
      assert.ok(!text.includes(pasted), 'the key was echoed');
    }
    assert.equal(fake.requests.length, before, 'a provider was contacted');
    assert.ok(!vault.log().includes(pasted), 'the key is in the log');
  });

  test('the provider\'s own refusal is marked as the provider\'s; the vault\'s own is problem+json, unmarked', async () => {
    const token = vault.token('u_marks');
    const refused = await call('/v1/proxy/gemini/v1beta/files', { 'x-goog-api-key': token });
    assert.equal(refused.status, 403);
    assert.equal(refused.headers.get('content-type'), 'application/problem+json');
    assert.equal(refused.headers.get('x-byok-upstream-status'), null);
    // A key the provider refuses in use: the answer is the vault's (424), not the provider's 401.
    fake.revoke(SYSTEM.deepgram);
    const dead = await call('/v1/proxy/deepgram/v1/listen', { authorization: `Token ${token}` }, 'audio');
    assert.equal(dead.headers.get('x-byok-upstream-status'), null);
    assert.equal(dead.headers.get('content-type'), 'application/problem+json');
  });
});
