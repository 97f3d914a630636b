// Realtime credentials on the real runtime: POST /v1/realtime/{provider}/sessions mints each
// of the five providers' own short-lived credential from the user's stored key (the fake
// token endpoints answer with the providers' real shapes and record which key asked), and
// answers where the browser connects; refusals reach no provider; a refused key is marked;
// neither the key nor the minted credential is in a log line or an audit event.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault } from './harness.mjs';

const SYSTEM_OPENAI = randomKey('valid');
const SYSTEM_DEEPGRAM = randomKey('forbidden');
/** What the fake Azure issueToken answers. */
const AZURE_JWT = 'eyJhbGciOiJodHRwOi8vd3d3LnczLm9yZy8yMDAxLzA0L3htbGRzaWctbW9yZSNobWFjLXNoYTI1NiJ9.eyJyZWdpb24iOiJlYXN0dXMifQ.c2ln';

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({
    secrets: { SYSTEM_KEY_OPENAI: SYSTEM_OPENAI, SYSTEM_KEY_DEEPGRAM: SYSTEM_DEEPGRAM },
    vars: { ...fake.vars(), RATE_LIMITS: 'off' },
  });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

/** `user` stores a valid key for `provider`; the key and the credential's id. */
async function addKey(user, provider, extra = {}) {
  const key = randomKey('valid');
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key, ...extra } });
  assert.equal(r.status, 201, r.text);
  return { key, id: r.json.credential.id };
}

const mint = (user, provider, body) => vault.request('POST', `/v1/realtime/${provider}/sessions`, { user, body });
const wsBase = (provider) => fake.base(provider).replace(/^http:/, 'ws:');

const keys = [];
const tokens = [];

test('each of the five providers mints from the user\'s stored key and says where the browser connects', async () => {
  const user = 'u_rt';
  const cases = [
    ['openai', { kind: 'conversation', model: 'gpt-realtime', ttl_seconds: 120 }],
    ['elevenlabs', { kind: 'tts', voice_id: 'JBFqnCBsd6RMkjVDRZzb' }],
    ['deepgram', { kind: 'stt', ttl_seconds: 60 }],
    ['azure_speech', { kind: 'stt' }, { region: 'westeurope' }],
    ['gemini', { kind: 'conversation', model: 'gemini-live-2.5-flash-preview' }],
  ];
  for (const [provider, body, extra] of cases) {
    const { key, id } = await addKey(user, provider, extra);
    keys.push(key);
    const before = fake.requests.length;
    const r = await mint(user, provider, body);
    assert.equal(r.status, 201, `${provider}: ${r.text}`);
    assert.equal(r.json.provider, provider);
    assert.equal(r.json.kind, body.kind);
    assert.equal(r.json.source, 'user');
    assert.equal(r.json.credential_id, id);
    assert.equal(r.json.fallback_reason, null);
    const expires = Date.parse(r.json.expires_at);
    assert.ok(expires > Date.now() && expires <= Date.now() + 901_000, `${provider}: ${r.json.expires_at}`);
    // The fake's token endpoint was asked once, with the user's stored key.
    const calls = fake.requests.slice(before);
    assert.equal(calls.length, 1, `${provider}: ${calls.map((c) => c.path)}`);
    assert.equal(calls[0].key, key, `${provider}: not the user's key`);
    const token = r.json.token;
    tokens.push(token);
    if (provider === 'azure_speech') {
      assert.equal(token, AZURE_JWT);
      assert.equal(calls[0].region, 'westeurope');
    } else {
      const made = fake.minted.find((m) => m.token === token);
      assert.ok(made, `${provider}: the token is not what the fake minted`);
      assert.equal(made.key, key);
    }
    assert.notEqual(token, key);
    const { connect } = r.json;
    switch (provider) {
      case 'openai':
        assert.equal(fake.minted.at(-1).body.expires_after.seconds, 120);
        assert.equal(connect.url, `${wsBase('openai')}/v1/realtime?model=gpt-realtime`);
        assert.deepEqual(connect.protocols, ['realtime', `openai-insecure-api-key.${token}`]);
        break;
      case 'elevenlabs':
        assert.equal(calls[0].path, '/v1/single-use-token/tts_websocket');
        assert.equal(connect.url, `${wsBase('elevenlabs')}/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input?single_use_token=${token}`);
        break;
      case 'deepgram':
        assert.deepEqual(fake.minted.at(-1).body, { ttl_seconds: 60 });
        assert.equal(connect.url, `${wsBase('deepgram')}/v1/listen`);
        assert.deepEqual(connect.protocols, ['bearer', token]);
        break;
      case 'azure_speech':
        assert.equal(connect.region, 'westeurope');
        assert.match(connect.url, /^ws:\/\/127\.0\.0\.1:\d+\/azure\/westeurope\/stt\/speech\/recognition\/conversation\/cognitiveservices\/v1$/);
        break;
      case 'gemini': {
        const sent = fake.minted.at(-1).body;
        assert.equal(sent.uses, 1);
        assert.deepEqual(sent.bidiGenerateContentSetup, { model: 'models/gemini-live-2.5-flash-preview' });
        const url = new URL(connect.url);
        assert.equal(url.searchParams.get('access_token'), token);
        assert.equal(connect.query_parameter, 'access_token');
        break;
      }
      default:
    }
  }
});

test('the system key mints where policy allows, with its receipt; too few permissions is said so', async () => {
  const r = await mint('u_sys', 'openai', { kind: 'stt' });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.source, 'system');
  assert.equal(r.json.fallback_reason, 'no_user_credential');
  assert.equal(r.json.credential_id, null);
  assert.equal(fake.minted.at(-1).key, SYSTEM_OPENAI);
  tokens.push(r.json.token);
  // A Deepgram key below Member: the provider's 403, not a dead key.
  const d = await mint('u_sys', 'deepgram', { kind: 'stt' });
  assert.equal(d.status, 422, d.text);
  assert.equal(d.json.code, 'insufficient_scope');
});

test('refusals reach no provider', async () => {
  const before = fake.requests.length;
  const cases = [
    ['gemini', { kind: 'conversation' }, 404, 'no_credential'],
    ['openai', { kind: 'stt', allow_fallback: false }, 404, 'no_credential'],
    ['openai', { kind: 'tts' }, 400, 'invalid_request'],
    ['elevenlabs', { kind: 'tts' }, 400, 'invalid_request'],
    ['anthropic', { kind: 'conversation' }, 400, 'invalid_request'],
    ['nope', { kind: 'stt' }, 400, 'unknown_provider'],
  ];
  for (const [provider, body, status, code] of cases) {
    const r = await mint('u_none', provider, body);
    assert.equal(r.status, status, `${provider} ${JSON.stringify(body)}: ${r.text}`);
    assert.equal(r.json.code, code);
  }
  const r = await vault.request('POST', '/v1/realtime/openai/sessions', { body: { kind: 'stt' } });
  assert.equal(r.status, 401);
  assert.equal(fake.requests.length, before, 'a refusal reached a provider');
});

test('a key the provider refuses while minting is marked invalid_key', async () => {
  const { key, id } = await addKey('u_revoked', 'elevenlabs');
  keys.push(key);
  fake.revoke(key);
  const r = await mint('u_revoked', 'elevenlabs', { kind: 'stt' });
  assert.equal(r.status, 424, r.text);
  assert.equal(r.json.code, 'credential_invalid');
  assert.equal(r.json.credential_id, id);
  const c = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_revoked' });
  assert.equal(c.json.status, 'invalid_key');
});

test('the use is audited as realtime_token, and no key or minted credential is in a log line or an event', async () => {
  // Five credentials created and five used.
  const events = await eventsOf(vault, 'u_rt', 10);
  const used = events.filter((e) => e.action === 'credential.used');
  assert.equal(used.length, 5, JSON.stringify(events.map((e) => e.action)));
  for (const e of used) {
    assert.equal(e.outcome, 'success');
    assert.equal(e.source, 'user');
    assert.equal(e.detail.operation, 'realtime_token');
  }
  const sys = await eventsOf(vault, 'u_sys', 2);
  const trail = JSON.stringify([events, sys]);
  const log = vault.log();
  for (const secret of [...keys, ...tokens, SYSTEM_OPENAI, SYSTEM_DEEPGRAM]) {
    assert.ok(!trail.includes(secret), 'a secret is in an audit event');
    assert.ok(!log.includes(secret), 'a secret is in the log');
  }
});
