// End to end: how many times each operation goes to D1, counted at the binding itself.
// The vault runs behind bench/entry.mjs (the benchmark's entry module), which counts every
// call into the D1 binding a request makes and says so in `x-bench-d1-round-trips`. The
// budgets: one round trip for reads and resolve, at most two for writes, the audit event
// riding in the same batch as the read or the change.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, serviceTokens, startVault } from './harness.mjs';

describe('D1 round trips per request', () => {
  let fake;
  let vault;
  const { tokens, SERVICE_TOKENS } = serviceTokens({ resolver: ['resolve'] });
  const trips = (r) => Number(r.headers.get('x-bench-d1-round-trips'));
  let created;

  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({
      secrets: { SERVICE_TOKENS },
      vars: { ...fake.vars(), RATE_LIMITS: 'off' },
      front: false,
      config: (toml) => toml.replace('main = "build/worker/shim.mjs"', 'main = "bench/entry.mjs"'),
    });
    created = await vault.request('POST', '/v1/credentials', { user: 'u_trips', body: { provider: 'openai', api_key: randomKey('valid') } });
    assert.equal(created.status, 201, created.text);
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('the counter sees D1 at all: health reads one row, providers none', async () => {
    assert.equal(trips(await vault.request('GET', '/v1/health')), 1);
    assert.equal(trips(await vault.request('GET', '/v1/providers', { user: 'u_trips' })), 0);
  });

  test('reads and resolve: one round trip, their audit event included', async () => {
    const id = created.json.credential.id;
    const list = await vault.request('GET', '/v1/credentials', { user: 'u_trips' });
    assert.equal(list.status, 200);
    assert.equal(trips(list), 1, 'GET /v1/credentials');
    const one = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_trips' });
    assert.equal(one.status, 200);
    assert.equal(trips(one), 1, 'GET /v1/credentials/{id}');
    const missing = await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_other' });
    assert.equal(missing.status, 404);
    assert.equal(trips(missing), 1, "another user's credential");
    const resolved = await vault.request('POST', '/v1/resolve', {
      token: tokens.resolver, body: { user_id: 'u_trips', capability: 'llm' },
    });
    assert.equal(resolved.status, 200);
    assert.equal(trips(resolved), 1, 'POST /v1/resolve');
    // Each read still left exactly its event, with the provider read from the row.
    const events = await eventsOf(vault, 'u_trips', 4);
    assert.deepEqual(events.map((e) => [e.action, e.outcome, e.provider]), [
      ['credential.created', 'success', 'openai'],
      ['credential.viewed', 'success', null],
      ['credential.viewed', 'success', 'openai'],
      ['credential.used', 'success', 'openai'],
    ]);
    const other = await eventsOf(vault, 'u_other', 1);
    // Another user's miss says nothing of the credential it did not find, not its provider.
    assert.deepEqual(other.map((e) => [e.action, e.outcome, e.reason, e.credential_id, e.provider]), [
      ['credential.viewed', 'failure', 'not_found', id, null],
    ]);
  });

  test('writes: at most two round trips, the event in the same batch', async () => {
    const add = await vault.request('POST', '/v1/credentials', { user: 'u_trips', body: { provider: 'anthropic', api_key: randomKey('valid') } });
    assert.equal(add.status, 201);
    assert.ok(trips(add) <= 2, `POST /v1/credentials: ${trips(add)}`);
    const put = await vault.request('PUT', '/v1/preferences/llm', { user: 'u_trips', body: { credential_id: add.json.credential.id } });
    assert.equal(put.status, 200);
    assert.ok(trips(put) <= 2, `PUT /v1/preferences/llm: ${trips(put)}`);
  });

  test('health finds a stored key version that is no longer configured, in one round trip', async () => {
    const id = created.json.credential.id;
    assert.equal((await vault.request('GET', '/v1/health')).status, 200);
    // Versions 1 (configured) and 9 (not) in use: the walk over the versions finds 9.
    await vault.sql(`UPDATE credentials SET key_version = 9 WHERE id = '${id}'`);
    try {
      const r = await vault.request('GET', '/v1/health');
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.checks.master_key, 'version_missing');
      assert.match(r.json.detail, /version 9/);
      assert.equal(trips(r), 1);
    } finally {
      await vault.sql(`UPDATE credentials SET key_version = 1 WHERE id = '${id}'`);
    }
    assert.equal((await vault.request('GET', '/v1/health')).status, 200);
  });
});
