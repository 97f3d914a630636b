// End to end: the Worker under wrangler dev (workerd, local D1) against fake providers.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { randomKey, startVault } from './harness.mjs';

const count = async (vault) => (await vault.sql('SELECT COUNT(*) AS n FROM credentials'))[0].n;
const add = (vault, user, api_key, extra = {}) =>
  vault.request('POST', '/v1/credentials', { user, body: { provider: 'elevenlabs', api_key, ...extra } });

describe('a configured vault', () => {
  let fake;
  let vault;
  const usedKeys = [];
  const key = (kind) => { const k = randomKey(kind); usedKeys.push(k); return k; };

  before(async () => {
    fake = await startFakeProviders();
    // Many keys from one address within a minute: the vault's own live-check limits are off.
    vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('health is ok', async () => {
    const r = await vault.request('GET', '/v1/health');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { status: 'ok', checks: { config: 'ok', master_key: 'ok', database: 'ok', system_keys: { source: 'env', tier: 'env', ok: true }, providers: 'live' } });
    assert.equal(r.headers.get('cache-control'), 'no-store');
    assert.match(r.headers.get('x-request-id'), /^req_[0-9a-f]{32}$/);
  });

  test('the provider catalog describes ElevenLabs', async () => {
    const r = await vault.request('GET', '/v1/providers', { user: 'u_catalog' });
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.providers.find((p) => p.id === 'elevenlabs'), {
      id: 'elevenlabs', name: 'ElevenLabs', capabilities: ['tts', 'stt'],
      fields: [{ name: 'api_key', required: true, secret: true }],
      supports_model_listing: true, supports_quota: true,
    });
  });

  test('a valid key is stored encrypted and only ever shown masked', async () => {
    const k = key('valid');
    const r = await add(vault, 'u_alice', k, { label: 'Personal' });
    assert.equal(r.status, 201, r.text);
    const c = r.json.credential;
    assert.equal(r.headers.get('location'), `/v1/credentials/${c.id}`);
    assert.match(c.id, /^c_[0-9a-f]{32}$/);
    assert.equal(c.key_hint, `…${k.slice(-4)}`);
    assert.equal(c.status, 'valid');
    assert.equal(c.label, 'Personal');
    assert.deepEqual(c.quota, { used: 1200, limit: 10000, remaining: 8800, unit: 'characters', resets_at: '2026-12-01T00:00:00Z' });
    assert.deepEqual(r.json.models.map((m) => m.id), ['eleven_multilingual_v2', 'eleven_flash_v2_5']);
    assert.deepEqual(r.json.models[0].capabilities, ['tts']);
    assert.ok(!r.text.includes(k), 'the key is in the response');
    assert.ok(!('api_key' in c) && !('ciphertext' in c) && !('nonce' in c));

    // The provider was asked with the key in its auth header.
    assert.deepEqual(fake.callsFor(k).map((c) => c.path), ['/v1/user/subscription', '/v1/models']);

    const [row] = await vault.sql(`SELECT user_id, provider, key_hint, key_version, nonce, ciphertext, fingerprint, status FROM credentials WHERE id = '${c.id}'`);
    assert.equal(row.user_id, 'u_alice');
    assert.equal(row.key_version, 1);
    assert.equal(Buffer.from(row.nonce, 'base64').length, 12);
    assert.equal(Buffer.from(row.ciphertext, 'base64').length, Buffer.byteLength(k) + 16);
    assert.ok(!JSON.stringify(row).includes(k));

    const shown = await vault.request('GET', `/v1/credentials/${c.id}`, { user: 'u_alice' });
    assert.equal(shown.status, 200);
    assert.deepEqual(shown.json, c);
  });

  test('an invalid key is rejected with the provider\'s reason and nothing is stored', async () => {
    const before = await count(vault);
    const r = await add(vault, 'u_alice', key('invalid'));
    assert.equal(r.status, 422);
    assert.equal(r.headers.get('content-type'), 'application/problem+json');
    assert.deepEqual(r.json, {
      type: 'https://byok-vault.dev/problems/invalid-api-key', title: 'The provider rejected this API key',
      status: 422, code: 'invalid_api_key', detail: 'ElevenLabs says: Invalid API key', provider: 'elevenlabs',
    });
    assert.equal(await count(vault), before);
  });

  test('a key rate-limited once with Retry-After: 1 is retried and accepted within the deadline', async () => {
    const k = key('ratelimited');
    const started = Date.now();
    const r = await add(vault, 'u_alice', k);
    const took = Date.now() - started;
    assert.equal(r.status, 201, r.text);
    const calls = fake.callsFor(k).filter((c) => c.path === '/v1/user/subscription');
    assert.equal(calls.length, 2);
    assert.ok(calls[1].at - calls[0].at >= 950, `retried after ${calls[1].at - calls[0].at} ms`);
    assert.ok(took < 10_000, `took ${took} ms`);
  });

  test('a rate limit longer than the deadline is reported with Retry-After and stores nothing', async () => {
    const before = await count(vault);
    const k = key('longwait');
    const started = Date.now();
    const r = await add(vault, 'u_alice', k);
    assert.equal(r.status, 429);
    assert.equal(r.json.code, 'provider_rate_limited');
    assert.equal(r.headers.get('retry-after'), '60');
    assert.equal(r.json.retry_after_seconds, 60);
    assert.equal(fake.callsFor(k).length, 1, 'it did not sleep past the deadline');
    assert.ok(Date.now() - started < 5_000);
    assert.equal(await count(vault), before);
  });

  test('a server error followed by success is retried and accepted', async () => {
    const r = await add(vault, 'u_alice', key('flaky'));
    assert.equal(r.status, 201, r.text);
  });

  test('a key without user_read is accepted with a warning and no quota', async () => {
    const r = await add(vault, 'u_alice', key('noscope'));
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.credential.quota, null);
    assert.equal(r.json.credential.warnings.length, 1);
    assert.match(r.json.credential.warnings[0], /user_read/);
  });

  test('a key the provider refuses from this IP lacks scope', async () => {
    const r = await add(vault, 'u_alice', key('forbidden'));
    assert.equal(r.status, 422);
    assert.equal(r.json.code, 'insufficient_scope');
  });

  test('a provider that never answers is a 504 within the deadline and stores nothing', async () => {
    const before = await count(vault);
    const started = Date.now();
    const r = await add(vault, 'u_alice', key('slow'));
    const took = Date.now() - started;
    assert.equal(r.status, 504);
    assert.equal(r.json.code, 'provider_unreachable');
    assert.ok(took < 12_000, `took ${took} ms`);
    assert.equal(await count(vault), before);
  });

  test('the same key twice is a 409 naming the stored credential', async () => {
    const k = key('valid');
    const first = await add(vault, 'u_dup', k);
    assert.equal(first.status, 201);
    const again = await add(vault, 'u_dup', k);
    assert.equal(again.status, 409);
    assert.equal(again.json.code, 'duplicate_credential');
    assert.equal(again.json.credential_id, first.json.credential.id);
  });

  test('requests without a valid token are 401', async () => {
    const claims = { exp: Math.floor(Date.now() / 1000) + 600 };
    const cases = {
      'no token': undefined,
      'bad signature': vault.token('u_alice', {}, { secret: 'another-secret-another-secret-xx' }),
      expired: vault.token('u_alice', { exp: Math.floor(Date.now() / 1000) - 120 }),
      'alg none': vault.token('u_alice', claims, { header: { alg: 'none', typ: 'JWT' } }),
      'no exp': vault.token('u_alice', { exp: undefined }),
      garbage: 'not.a.jwt',
    };
    for (const [name, token] of Object.entries(cases)) {
      const r = await vault.request('GET', '/v1/credentials', { token });
      assert.equal(r.status, 401, name);
      assert.equal(r.json.code, 'unauthorized', name);
      assert.equal(r.headers.get('www-authenticate'), 'Bearer', name);
    }
  });

  test('users never see, nor delete, each other\'s credentials; DELETE removes the row', async () => {
    const mine = await add(vault, 'u_owner', key('valid'));
    const id = mine.json.credential.id;
    assert.equal((await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_other' })).status, 404);
    assert.equal((await vault.request('DELETE', `/v1/credentials/${id}`, { user: 'u_other' })).status, 404);
    const theirs = await vault.request('GET', '/v1/credentials', { user: 'u_other' });
    assert.deepEqual(theirs.json, { credentials: [] });
    const own = await vault.request('GET', '/v1/credentials?provider=elevenlabs', { user: 'u_owner' });
    assert.deepEqual(own.json.credentials.map((c) => c.id), [id]);

    assert.equal((await vault.request('DELETE', `/v1/credentials/${id}`, { user: 'u_owner' })).status, 204);
    assert.equal((await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_owner' })).status, 404);
    assert.deepEqual(await vault.sql(`SELECT id FROM credentials WHERE id = '${id}'`), []);
  });

  test('malformed requests get a precise 4xx and change nothing', async () => {
    const before = await count(vault);
    const k = key('valid');
    const cases = [
      [{ api_key: k }, 400, 'invalid_request'],
      [{ provider: 'elevenlabs' }, 400, 'invalid_request'],
      [{ provider: 'elevenlabs', api_key: '' }, 400, 'invalid_request'],
      [{ provider: 'elevenlabs', api_key: 'x'.repeat(1025) }, 400, 'invalid_request'],
      [{ provider: 'elevenlabs', api_key: k, label: 'x'.repeat(101) }, 400, 'invalid_request'],
      [{ provider: 'elevenlabs', api_key: k, extra: 1 }, 400, 'invalid_request'],
      [{ provider: 'nope', api_key: k }, 400, 'unknown_provider'],
      ['{"provider":', 400, 'invalid_request'],
    ];
    for (const [body, status, code] of cases) {
      const r = await vault.request('POST', '/v1/credentials', { user: 'u_alice', body });
      assert.equal(r.status, status, JSON.stringify(body).slice(0, 80));
      assert.equal(r.json.code, code);
    }
    const text = await vault.request('POST', '/v1/credentials', { user: 'u_alice', body: 'provider=elevenlabs', headers: { 'content-type': 'text/plain' } });
    assert.equal(text.status, 415);
    const big = await vault.request('POST', '/v1/credentials', { user: 'u_alice', body: { provider: 'elevenlabs', api_key: k, label: 'x'.repeat(70_000) } });
    assert.equal(big.status, 413);
    assert.equal(await count(vault), before);
  });

  test('no plaintext key or secret is in the D1 files or the wrangler log', async () => {
    // Let D1 settle its WAL into the files on disk before scanning.
    await vault.sql('PRAGMA wal_checkpoint(TRUNCATE)').catch(() => {});
    assert.ok(usedKeys.length >= 8);
    // The scan does read the database: what is stored in the clear is found.
    assert.notDeepEqual(await vault.stateFilesContaining('u_alice'), [], 'the scan finds no D1 data at all');
    const log = vault.log();
    assert.match(log, /POST \/v1\/credentials 201/, 'the log holds the run');
    assert.match(log, /"route":"\/v1\/credentials","status":201/, 'the vault writes its own request line');
    for (const k of usedKeys) {
      assert.deepEqual(await vault.stateFilesContaining(k), [], 'a key is in the local D1 state');
      assert.ok(!log.includes(k), 'a key is in the wrangler log');
    }
    for (const s of [vault.secrets.MASTER_KEY, vault.secrets.AUTH_JWT_SECRET]) {
      assert.ok(!log.includes(s), 'a secret is in the wrangler log');
    }
  });
});

describe('a vault without a master key', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({ secrets: { MASTER_KEY: null }, vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('health is 503 not_configured and says which check failed', async () => {
    const r = await vault.request('GET', '/v1/health');
    assert.equal(r.status, 503);
    assert.equal(r.json.code, 'not_configured');
    assert.deepEqual(r.json.checks, { config: 'ok', master_key: 'missing', database: 'ok', system_keys: { source: 'env', tier: 'env', ok: true }, providers: 'live' });
  });

  test('adding a key stores nothing and asks no provider', async () => {
    const r = await add(vault, 'u_alice', randomKey('valid'));
    assert.equal(r.status, 503);
    assert.equal(r.json.code, 'not_configured');
    assert.equal(await count(vault), 0);
    assert.equal(fake.requests.length, 0);
  });
});
