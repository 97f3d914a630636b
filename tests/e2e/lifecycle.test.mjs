// End to end: changing, rotating, re-checking and choosing credentials, under wrangler dev.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { randomKey, startVault } from './harness.mjs';

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  // Many live checks from one address within a minute: the vault's own limits are off.
  vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const add = async (user, provider, extra = {}) => {
  const key = randomKey('valid');
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key, ...extra } });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.credential.id, key, credential: r.json.credential };
};
const row = async (id) => (await vault.sql(`SELECT * FROM credentials WHERE id = '${id}'`))[0];
const patch = (user, id, body) => vault.request('PATCH', `/v1/credentials/${id}`, { user, body });

describe('rotation', () => {
  test('a new key is validated first; if it fails the old key stays', async () => {
    const { id } = await add('u_rot', 'elevenlabs');
    const before = await row(id);
    const bad = await patch('u_rot', id, { api_key: randomKey('invalid') });
    assert.equal(bad.status, 422);
    assert.equal(bad.json.code, 'invalid_api_key');
    assert.equal((await row(id)).ciphertext, before.ciphertext);

    const next = randomKey('valid');
    const good = await patch('u_rot', id, { api_key: next });
    assert.equal(good.status, 200, good.text);
    assert.equal(good.json.key_hint, `…${next.slice(-4)}`);
    const after = await row(id);
    assert.notEqual(after.ciphertext, before.ciphertext);
    assert.notEqual(after.fingerprint, before.fingerprint);
    assert.equal(fake.callsFor(next).length, 2, 'the new key was checked with the provider');
  });

  test('an echoed key_hint or an empty api_key never overwrites the key', async () => {
    const { id, credential } = await add('u_echo', 'elevenlabs');
    const before = await row(id);
    for (const api_key of [credential.key_hint, '']) {
      const r = await patch('u_echo', id, { api_key, label: `renamed ${api_key.length}` });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.key_hint, credential.key_hint);
    }
    const after = await row(id);
    assert.equal(after.ciphertext, before.ciphertext);
    assert.equal(after.label, 'renamed 0');
  });

  test('moving a key to another region needs the key again', async () => {
    const { id } = await add('u_region', 'azure_speech', { region: 'eastus' });
    const moved = await patch('u_region', id, { region: 'westeurope' });
    assert.equal(moved.status, 400);
    assert.equal(moved.json.code, 'secret_required');
    assert.equal((await row(id)).params, '{"region":"eastus","base_url":null}');
    const key = randomKey('valid');
    const ok = await patch('u_region', id, { region: 'westeurope', api_key: key });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.params.region, 'westeurope');
    assert.ok(fake.callsFor(key).every((c) => c.region === 'westeurope'));
  });

  test('rotating to a key stored in another credential is a duplicate', async () => {
    const a = await add('u_dup2', 'openai');
    const b = await add('u_dup2', 'openai');
    const r = await patch('u_dup2', b.id, { api_key: a.key });
    assert.equal(r.status, 409);
    assert.equal(r.json.credential_id, a.id);
  });
});

describe('re-checking and models', () => {
  test('a key revoked upstream is a 200 with status invalid_key, and comes back when valid', async () => {
    const { id, key } = await add('u_check', 'openai');
    const path = `/v1/credentials/${id}/validate`;
    assert.equal((await vault.request('POST', path, { user: 'u_check' })).json.status, 'valid');
    fake.revoke(key);
    const dead = await vault.request('POST', path, { user: 'u_check' });
    assert.equal(dead.status, 200);
    assert.equal(dead.json.status, 'invalid_key');
    assert.match(dead.json.status_detail, /^OpenAI says: Incorrect API key provided/);
    const stored = await row(id);
    assert.equal(stored.status, 'invalid_key');
    assert.equal(stored.consecutive_failures, 1);
  });

  test('models are served from the cache until ?refresh=true', async () => {
    const { id, key } = await add('u_models', 'anthropic');
    const calls = fake.callsFor(key).length;
    const cached = await vault.request('GET', `/v1/credentials/${id}/models`, { user: 'u_models' });
    assert.equal(cached.status, 200);
    assert.deepEqual(cached.json.models.map((m) => m.id), ['claude-sonnet-4-5', 'claude-haiku-4-5']);
    assert.match(cached.json.fetched_at, /^\d{4}-\d\d-\d\dT/);
    assert.equal(fake.callsFor(key).length, calls, 'no provider call for cached models');
    const fresh = await vault.request('GET', `/v1/credentials/${id}/models?refresh=true`, { user: 'u_models' });
    assert.equal(fresh.status, 200);
    assert.ok(fake.callsFor(key).length > calls);
  });

  test('a model must be one the provider lists', async () => {
    const { id } = await add('u_model', 'elevenlabs');
    assert.equal((await patch('u_model', id, { model: 'eleven_made_up' })).status, 400);
    const ok = await patch('u_model', id, { model: 'eleven_flash_v2_5' });
    assert.equal(ok.json.model, 'eleven_flash_v2_5');
  });
});

describe('preferences', () => {
  test('a default per capability, only with the user\'s own capable credential, cleared on delete', async () => {
    const voice = await add('u_pref', 'elevenlabs');
    const chat = await add('u_pref', 'anthropic');
    const put = (user, cap, body) => vault.request('PUT', `/v1/preferences/${cap}`, { user, body });
    assert.equal((await put('u_pref', 'tts', { credential_id: voice.id, model: 'eleven_multilingual_v2' })).status, 200);
    assert.equal((await put('u_pref', 'llm', { credential_id: chat.id, model: 'claude-haiku-4-5' })).status, 200);
    assert.equal((await put('u_pref', 'llm', { credential_id: voice.id })).status, 400, 'ElevenLabs offers no llm');
    assert.equal((await put('u_pref', 'llm', { credential_id: chat.id, model: 'gpt-4o' })).status, 400);
    assert.equal((await put('u_other', 'tts', { credential_id: voice.id })).status, 404);
    const prefs = await vault.request('GET', '/v1/preferences', { user: 'u_pref' });
    assert.deepEqual(prefs.json, {
      tts: { credential_id: voice.id, provider: 'elevenlabs', model: 'eleven_multilingual_v2' },
      stt: null,
      llm: { credential_id: chat.id, provider: 'anthropic', model: 'claude-haiku-4-5' },
      embedding: null,
    });
    assert.deepEqual((await vault.request('GET', '/v1/preferences', { user: 'u_other' })).json, { tts: null, stt: null, llm: null, embedding: null });
    assert.equal((await vault.request('DELETE', `/v1/credentials/${voice.id}`, { user: 'u_pref' })).status, 204);
    assert.equal((await vault.request('GET', '/v1/preferences', { user: 'u_pref' })).json.tts, null);
    assert.deepEqual(await vault.sql(`SELECT capability FROM preferences WHERE user_id = 'u_pref'`), [{ capability: 'llm' }]);
  });
});

describe('other users', () => {
  test('cannot change, re-check, list models of, or delete a credential', async () => {
    const { id } = await add('u_owner2', 'openai');
    const before = await row(id);
    assert.equal((await patch('u_intruder', id, { label: 'mine' })).status, 404);
    assert.equal((await vault.request('POST', `/v1/credentials/${id}/validate`, { user: 'u_intruder' })).status, 404);
    assert.equal((await vault.request('GET', `/v1/credentials/${id}/models`, { user: 'u_intruder' })).status, 404);
    assert.equal((await vault.request('DELETE', `/v1/credentials/${id}`, { user: 'u_intruder' })).status, 404);
    assert.deepEqual(await row(id), before);
  });
});

describe('bad input', () => {
  test('every malformed request gets its precise 4xx and changes nothing in D1', async () => {
    const { id } = await add('u_bad', 'elevenlabs');
    const azure = await add('u_bad', 'azure_speech', { region: 'eastus' });
    const dump = async () => JSON.stringify(await vault.sql('SELECT * FROM credentials ORDER BY id')) + JSON.stringify(await vault.sql('SELECT * FROM preferences'));
    const before = await dump();
    const k = randomKey('valid');
    const post = (body, headers) => ['POST', '/v1/credentials', body, headers];
    const cases = [
      [...post({ api_key: k }), 400, 'invalid_request', 'provider'],
      [...post({ provider: 'elevenlabs' }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: '' }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: '   ' }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: 'x'.repeat(1025) }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: 'sk with spaces inside' }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: 12345 }), 400, 'invalid_request', 'api_key'],
      [...post({ provider: 'elevenlabs', api_key: k, label: '' }), 400, 'invalid_request', 'label'],
      [...post({ provider: 'elevenlabs', api_key: k, label: 'x'.repeat(101) }), 400, 'invalid_request', 'label'],
      [...post({ provider: 'elevenlabs', api_key: k, label: ['a'] }), 400, 'invalid_request', 'label'],
      [...post({ provider: 'elevenlabs', api_key: k, admin: true }), 400, 'invalid_request', 'admin'],
      [...post({ provider: 'elevenlabs', api_key: k, region: 'eastus' }), 400, 'invalid_request', 'region'],
      [...post({ provider: 'nope', api_key: k }), 400, 'unknown_provider', 'provider'],
      [...post({ provider: 42, api_key: k }), 400, 'invalid_request', 'provider'],
      [...post({ provider: 'azure_speech', api_key: k }), 400, 'invalid_request', 'region'],
      [...post({ provider: 'azure_speech', api_key: k, region: 'east.us.evil.com' }), 400, 'invalid_request', 'region'],
      [...post({ provider: 'ollama' }), 400, 'invalid_request', 'base_url'],
      [...post({ provider: 'ollama', base_url: 'not a url' }), 400, 'invalid_request', 'base_url'],
      [...post({ provider: 'ollama', base_url: 'ftp://ollama.example' }), 400, 'invalid_request', 'base_url'],
      [...post('{"provider":"elevenlabs",'), 400, 'invalid_request', 'body'],
      [...post('[1,2,3]'), 400, 'invalid_request', 'body'],
      [...post(''), 400, 'invalid_request', 'body'],
      [...post('provider=elevenlabs', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type'],
      [...post({ provider: 'elevenlabs', api_key: k, label: 'x'.repeat(70_000) }), 413, 'payload_too_large'],
      ['PATCH', `/v1/credentials/${id}`, {}, undefined, 400, 'invalid_request', 'body'],
      ['PATCH', `/v1/credentials/${id}`, { colour: 'red' }, undefined, 400, 'invalid_request', 'colour'],
      ['PATCH', `/v1/credentials/${id}`, { label: 7 }, undefined, 400, 'invalid_request', 'label'],
      ['PATCH', `/v1/credentials/${id}`, { region: 'westus' }, undefined, 400, 'invalid_request', 'region'],
      ['PATCH', `/v1/credentials/${id}`, { model: 'not_a_model' }, undefined, 400, 'invalid_request', 'model'],
      ['PATCH', `/v1/credentials/${azure.id}`, { region: 'westus' }, undefined, 400, 'secret_required', 'api_key'],
      ['PATCH', `/v1/credentials/${id}`, 'label=x', { 'content-type': 'text/plain' }, 415, 'unsupported_media_type'],
      ['PUT', '/v1/preferences/tts', {}, undefined, 400, 'invalid_request', 'credential_id'],
      ['PUT', '/v1/preferences/tts', { credential_id: 'c_nope' }, undefined, 400, 'invalid_request', 'credential_id'],
      ['PUT', '/v1/preferences/llm', { credential_id: id }, undefined, 400, 'invalid_request', 'credential_id'],
      ['PUT', '/v1/preferences/tts', { credential_id: id, model: 'nope' }, undefined, 400, 'invalid_request', 'model'],
      ['GET', '/v1/credentials?provider=nope', undefined, undefined, 400, 'unknown_provider'],
      ['GET', `/v1/credentials/${id}/models?refresh=maybe`, undefined, undefined, 400, 'invalid_request', 'refresh'],
      ['GET', '/v1/audit?limit=0', undefined, undefined, 400, 'invalid_request', 'limit'],
      ['PUT', '/v1/credentials', {}, undefined, 405, 'method_not_allowed'],
      ['GET', '/v1/credentials/c_00000000000000000000000000000000', undefined, undefined, 404, 'not_found'],
    ];
    assert.ok(cases.length >= 25);
    for (const [method, path, body, headers, status, code, field] of cases) {
      const r = await vault.request(method, path, { user: 'u_bad', body, headers });
      const what = `${method} ${path} ${JSON.stringify(body)?.slice(0, 60)}`;
      assert.equal(r.status, status, `${what}: ${r.text.slice(0, 200)}`);
      assert.equal(r.headers.get('content-type'), 'application/problem+json', what);
      assert.equal(r.json.code, code, what);
      if (field) assert.ok(r.json.errors?.some((e) => e.field === field), `${what}: ${r.text.slice(0, 300)}`);
    }
    assert.equal(await dump(), before);
  });
});
