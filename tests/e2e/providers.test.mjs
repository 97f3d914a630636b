// End to end, per provider: the real Worker against fake servers that answer with each
// provider's documented shapes. A shorter deadline (3 s, 1 s per attempt) keeps the
// hanging-provider cases quick; the logic is the same as with the default 10 s.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { randomKey, startVault } from './harness.mjs';

const DEADLINE_MS = 3000;

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({
    vars: { ...fake.vars(), VALIDATION_DEADLINE_MS: String(DEADLINE_MS), PROBE_ATTEMPT_TIMEOUT_MS: '1000', ALLOW_PRIVATE_BASE_URLS: 'true', RATE_LIMITS: 'off' },
  });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const stored = async (provider) => (await vault.sql(`SELECT COUNT(*) AS n FROM credentials WHERE provider = '${provider}'`))[0].n;

const table = [
  {
    id: 'elevenlabs', models: ['eleven_multilingual_v2', 'eleven_flash_v2_5'],
    quota: { used: 1200, limit: 10000, remaining: 8800, unit: 'characters', resets_at: '2026-12-01T00:00:00Z' },
    invalid: 'ElevenLabs says: Invalid API key', refusals: { quota: 'quota_exhausted', forbidden: 'insufficient_scope' },
  },
  {
    id: 'azure_speech', extra: { region: 'eastus' }, models: ['en-US-JennyNeural', 'de-DE-KatjaNeural'], quota: null,
    invalid: /^Azure AI Speech says the key is invalid or belongs to another region: Access denied/, hint: 'a wait in the message',
    refusals: { forbidden: 'insufficient_scope' },
  },
  {
    id: 'gemini', models: ['gemini-2.0-flash', 'gemini-2.5-flash-preview-tts'], quota: null,
    invalid: 'Google Gemini says: API key not valid. Please pass a valid API key.', hint: 'RetryInfo in the body',
    refusals: { quota: 'quota_exhausted', forbidden: 'insufficient_scope' },
  },
  {
    id: 'openai', models: ['gpt-4o-mini', 'gpt-4o-mini-tts', 'whisper-1', 'text-embedding-3-small'], quota: null,
    invalid: /^OpenAI says: Incorrect API key provided/, kind: 'retryms', hint: 'retry-after-ms',
    refusals: { quota: 'quota_exhausted', forbidden: 'insufficient_scope' },
  },
  {
    id: 'anthropic', models: ['claude-sonnet-4-5', 'claude-haiku-4-5'], quota: null,
    invalid: 'Anthropic says: invalid x-api-key', kind: 'retrydate', hint: 'Retry-After as an HTTP-date',
    refusals: { forbidden: 'insufficient_scope' },
  },
  { id: 'ollama', extra: () => ({ base_url: fake.base('ollama') }), models: ['llama3.2:latest'], quota: null, invalid: 'Ollama says: unauthorized' },
  {
    id: 'deepgram', models: ['nova-3-general', 'aura-2-thalia-en'],
    quota: { used: null, limit: null, remaining: 187.5, unit: 'usd', resets_at: null },
    invalid: 'Deepgram says: Invalid credentials.', refusals: { quota: 'quota_exhausted', forbidden: 'insufficient_scope' },
  },
  {
    id: 'openrouter', models: ['openai/gpt-4o'], quota: { used: 25.5, limit: 100, remaining: 74.5, unit: 'usd', resets_at: null },
    invalid: 'OpenRouter says: No auth credentials found', refusals: { quota: 'quota_exhausted', forbidden: 'insufficient_scope' },
  },
  { id: 'groq', models: ['llama-3.3-70b-versatile', 'whisper-large-v3'], quota: null, invalid: 'Groq says: Invalid API Key', kind: 'retryms', hint: 'retry-after-ms' },
  { id: 'mistral', models: ['mistral-large-latest', 'mistral-embed'], quota: null, invalid: 'Mistral says: Unauthorized' },
];

for (const p of table) {
  const user = `u_${p.id}`;
  const add = (kind) => {
    const extra = typeof p.extra === 'function' ? p.extra() : p.extra ?? {};
    const key = randomKey(kind);
    return vault.request('POST', '/v1/credentials', { user, body: { provider: p.id, api_key: key, ...extra } }).then((r) => ({ ...r, key }));
  };

  describe(p.id, () => {
    test('a valid key is accepted with its models and quota', async () => {
      const r = await add('valid');
      assert.equal(r.status, 201, r.text);
      assert.deepEqual(r.json.models.map((m) => m.id), p.models);
      assert.deepEqual(r.json.credential.quota, p.quota);
      assert.equal(r.json.credential.provider, p.id);
      assert.ok(!r.text.includes(r.key));
      if (p.id === 'azure_speech') {
        assert.deepEqual(fake.callsFor(r.key).map((c) => [c.region, c.path]), [['eastus', '/sts/v1.0/issueToken'], ['eastus', '/cognitiveservices/voices/list']]);
      }
    });

    test('an invalid key is refused with the provider\'s reason and nothing is stored', async () => {
      const before = await stored(p.id);
      const r = await add('invalid');
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.code, 'invalid_api_key');
      assert.equal(r.json.provider, p.id);
      if (p.invalid instanceof RegExp) assert.match(r.json.detail, p.invalid);
      else assert.equal(r.json.detail, p.invalid);
      assert.ok(!r.text.includes(r.key), 'the key is echoed back');
      assert.equal(await stored(p.id), before);
    });

    for (const [kind, code] of Object.entries(p.refusals ?? {})) {
      test(`a ${kind} refusal is 422 ${code}, not retried`, async () => {
        const r = await add(kind);
        assert.equal(r.status, 422, r.text);
        assert.equal(r.json.code, code);
        assert.equal(fake.callsFor(r.key).length, 1);
      });
    }

    test(`a rate limit with ${p.hint ?? 'Retry-After in seconds'} that fits is waited out and accepted`, async () => {
      const r = await add(p.kind ?? 'ratelimited');
      assert.equal(r.status, 201, r.text);
      const [first, second] = fake.callsFor(r.key);
      assert.equal(second.path, first.path);
      assert.ok(second.at - first.at >= 700, `retried after ${second.at - first.at} ms`);
    });

    test('a rate limit that does not fit the deadline is a 429 with Retry-After and stores nothing', async () => {
      const before = await stored(p.id);
      const started = Date.now();
      const r = await add('longwait');
      assert.equal(r.status, 429, r.text);
      assert.equal(r.json.code, 'provider_rate_limited');
      assert.equal(r.headers.get('retry-after'), '60');
      assert.equal(r.json.retry_after_seconds, 60);
      assert.ok(Date.now() - started < DEADLINE_MS);
      assert.equal(await stored(p.id), before);
    });

    test('a provider that never answers is a 504 within the deadline', async () => {
      const before = await stored(p.id);
      const started = Date.now();
      const r = await add('slow');
      const took = Date.now() - started;
      assert.equal(r.status, 504, r.text);
      assert.equal(r.json.code, 'provider_unreachable');
      assert.ok(took < DEADLINE_MS + 1500, `took ${took} ms`);
      assert.equal(await stored(p.id), before);
    });

    test('a server error followed by success is accepted', async () => {
      const r = await add('flaky');
      assert.equal(r.status, 201, r.text);
      assert.ok(fake.callsFor(r.key).length >= 2);
    });
  });
}

describe('provider specifics', () => {
  test('a restricted OpenAI key without the model scope is accepted with a warning', async () => {
    const key = randomKey('noscope');
    const r = await vault.request('POST', '/v1/credentials', { user: 'u_scope', body: { provider: 'openai', api_key: key } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.credential.warnings.length, 1);
    assert.deepEqual(r.json.models, []);
  });

  test('a local Ollama needs no key and shows no hint', async () => {
    const r = await vault.request('POST', '/v1/credentials', { user: 'u_local', body: { provider: 'ollama', base_url: fake.base('ollama') } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.credential.key_hint, null);
    assert.equal(r.json.credential.params.base_url, fake.base('ollama'));
    const [row] = await vault.sql(`SELECT ciphertext FROM credentials WHERE id = '${r.json.credential.id}'`);
    assert.equal(row.ciphertext, null);
    const again = await vault.request('POST', '/v1/credentials', { user: 'u_local', body: { provider: 'ollama', base_url: fake.base('ollama') } });
    assert.equal(again.status, 409);
  });

  test('the catalog lists every provider with its fields', async () => {
    const r = await vault.request('GET', '/v1/providers', { user: 'u_catalog' });
    assert.deepEqual(r.json.providers.map((p) => p.id), table.map((p) => p.id));
    const azure = r.json.providers.find((p) => p.id === 'azure_speech');
    assert.deepEqual(azure.fields.map((f) => f.name), ['api_key', 'region']);
    const ollama = r.json.providers.find((p) => p.id === 'ollama');
    assert.deepEqual(ollama.fields, [{ name: 'base_url', required: true, secret: false }, { name: 'api_key', required: false, secret: true }]);
  });
});
