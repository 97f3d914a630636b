// End to end: the scheduled revalidation sweep under wrangler dev. The cron (triggered
// locally) claims every credential due and fans them out to the local jobs queue; the
// consumer checks three per invocation against the fake providers, flips exactly the
// revoked keys, audits only changes, and turns a provider's 429 into a delayed retry.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault } from './harness.mjs';

const ADMIN = `svc_${crypto.randomBytes(16).toString('hex')}`;
const sha = (t) => crypto.createHash('sha256').update(t).digest('hex');
const PROVIDERS = ['elevenlabs', 'openai', 'anthropic', 'gemini', 'deepgram', 'mistral', 'groq', 'openrouter'];
const USERS = 30;
const PER_USER = 10;

let fake;
let vault;
const creds = [];
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({
    front: false,
    secrets: { SERVICE_TOKENS: JSON.stringify([{ name: 'ops', sha256: sha(ADMIN), scopes: ['admin'] }]) },
    vars: { ...fake.vars(), RATE_LIMITS: 'off', REVALIDATE_AFTER_HOURS: '0' },
  });
  // 300 credentials across 8 providers and 30 users, added through the API (each is
  // checked live once), ten at a time.
  const todo = [];
  for (let u = 0; u < USERS; u++) {
    for (let i = 0; i < PER_USER; i++) todo.push({ user: `u_sweep_${u}`, provider: PROVIDERS[(u * PER_USER + i) % PROVIDERS.length] });
  }
  for (let i = 0; i < todo.length; i += 10) {
    await Promise.all(todo.slice(i, i + 10).map(async ({ user, provider }) => {
      const key = randomKey('valid');
      const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
      assert.equal(r.status, 201, r.text);
      creds.push({ user, provider, key, id: r.json.credential.id });
    }));
  }
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const rows = async () => vault.sql('SELECT id, status, last_validated_at, version FROM credentials');

test('one sweep checks every credential, flips exactly the revoked ones, and waits out a 429', async () => {
  const revoked = creds.filter((_, i) => i % 10 === 3);
  for (const c of revoked) fake.revoke(c.key);
  const limited = creds.filter((c, i) => i % 10 !== 3 && c.provider === 'elevenlabs').slice(0, 2);
  for (const c of limited) fake.limitOnce(c.key, 2);
  const before = new Map((await rows()).map((r) => [r.id, r]));
  const started = Date.now();

  const cron = await fetch(`${vault.base}/__scheduled?cron=${encodeURIComponent('0 * * * *')}`);
  assert.equal(cron.status, 200, await cron.text());

  // Every credential's check lands (the two limited ones after their delay).
  let after;
  const deadline = Date.now() + 150_000;
  for (;;) {
    after = await rows();
    const done = after.filter((r) => r.last_validated_at > before.get(r.id).last_validated_at).length;
    if (done === creds.length || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 2000));
  }
  const byId = new Map(after.map((r) => [r.id, r]));
  const unchecked = creds.filter((c) => !(byId.get(c.id).last_validated_at > before.get(c.id).last_validated_at));
  assert.equal(unchecked.length, 0, `${unchecked.length} credentials were not checked`);
  const revokedIds = new Set(revoked.map((c) => c.id));
  for (const c of creds) {
    assert.equal(byId.get(c.id).status, revokedIds.has(c.id) ? 'invalid_key' : 'valid', `${c.provider} ${c.id}`);
  }

  // A 429 was a delayed retry, not a failure: the key's next call came after the wait.
  for (const c of limited) {
    const calls = fake.requests.filter((r) => r.key === c.key && r.at >= started);
    const first = calls.findIndex((r) => r.limited);
    assert.ok(first >= 0, 'the fake did answer 429');
    assert.ok(calls[first + 1], 'the check was tried again');
    assert.ok(calls[first + 1].at - calls[first].at >= 1900, `retried after ${calls[first + 1].at - calls[first].at} ms`);
  }

  // Each consumer invocation checked at most three.
  const batches = [...vault.log().matchAll(/QUEUE byok-vault-jobs-dev (\d+)\/(\d+)/g)].map((m) => Number(m[2]));
  assert.ok(batches.length > 0, 'no jobs batch in the log');
  assert.ok(Math.max(...batches) <= 3, `a batch of ${Math.max(...batches)}`);

  // Only changes are audited: the revoked user's event, none for an unchanged key.
  const victim = revoked[0];
  const events = await eventsOf(vault, victim.user, PER_USER + 1);
  const flips = events.filter((e) => e.action === 'credential.validated');
  assert.equal(flips.length, revoked.filter((c) => c.user === victim.user).length);
  assert.ok(flips.every((e) => e.outcome === 'failure' && e.reason === 'invalid_api_key' && e.detail.new_status === 'invalid_key' && e.actor.type === 'service'));

  // A second sweep right away queues nothing: every claim is fresh.
  const again = await vault.request('POST', '/v1/admin/revalidate', { token: ADMIN });
  assert.equal(again.status, 202, again.text);
  assert.equal(again.json.queued, 0);
});
