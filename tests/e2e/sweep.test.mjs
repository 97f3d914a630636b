// End to end: the scheduled revalidation sweep under wrangler dev. The cron (triggered
// locally) claims every credential due and fans them out to the local jobs queue; the
// consumer checks three per invocation against the fake providers, flips exactly the
// revoked keys, audits only changes, and turns a provider's 429 into a delayed retry.
// Each flip reaches a webhook receiver on loopback, signed per Standard Webhooks, once,
// although the receiver fails its first two deliveries.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { addMany, eventsOf, serviceTokens, startVault } from './harness.mjs';

const { tokens: { ops: ADMIN }, SERVICE_TOKENS } = serviceTokens({ ops: ['admin'] });
const PROVIDERS = ['elevenlabs', 'openai', 'anthropic', 'gemini', 'deepgram', 'mistral', 'groq', 'openrouter'];
const USERS = 30;
const PER_USER = 10;

const WEBHOOK_SECRET = crypto.randomBytes(32);

/** A webhook receiver: keeps every delivery; answers 503 to the first `failures`. */
function startReceiver(failures) {
  const deliveries = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const ok = deliveries.length >= failures;
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks).toString(), ok, at: Date.now() });
      res.writeHead(ok ? 204 : 503);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/hooks/byok`,
    deliveries,
    close: () => new Promise((done) => { server.closeAllConnections?.(); server.close(() => done()); }),
  })));
}

/** Whether a delivery carries a valid Standard Webhooks signature. */
function signed({ headers, body }) {
  const mac = crypto.createHmac('sha256', WEBHOOK_SECRET)
    .update(`${headers['webhook-id']}.${headers['webhook-timestamp']}.${body}`).digest('base64');
  return headers['webhook-signature'] === `v1,${mac}`;
}

let fake;
let vault;
let receiver;
let creds = [];
before(async () => {
  fake = await startFakeProviders();
  receiver = await startReceiver(2);
  vault = await startVault({
    front: false,
    secrets: {
      SERVICE_TOKENS,
      NOTIFY_WEBHOOK_SECRET: `whsec_${WEBHOOK_SECRET.toString('base64')}`,
    },
    vars: {
      ...fake.vars(), RATE_LIMITS: 'off', REVALIDATE_AFTER_HOURS: '0',
      NOTIFY_WEBHOOK_URL: receiver.url, NOTIFY_RETRY_BASE_SECONDS: '1', ALLOW_PRIVATE_BASE_URLS: 'true',
    },
  });
  // 300 credentials across 8 providers and 30 users, added through the API (each is
  // checked live once), ten at a time.
  const todo = [];
  for (let u = 0; u < USERS; u++) {
    for (let i = 0; i < PER_USER; i++) todo.push({ user: `u_sweep_${u}`, provider: PROVIDERS[(u * PER_USER + i) % PROVIDERS.length] });
  }
  creds = await addMany(vault, todo, 10);
});
after(async () => {
  await vault?.stop();
  await fake?.close();
  await receiver?.close();
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

test('each flip reaches the webhook once, signed, after the receiver recovers', async () => {
  const revoked = creds.filter((_, i) => i % 10 === 3);
  const deadline = Date.now() + 60_000;
  let accepted = [];
  while (Date.now() < deadline) {
    accepted = receiver.deliveries.filter((d) => d.ok);
    if (accepted.length >= revoked.length) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  // The receiver failed the first two; every notice still arrived, once.
  assert.equal(receiver.deliveries.filter((d) => !d.ok).length, 2);
  assert.equal(accepted.length, revoked.length, `${accepted.length} of ${revoked.length} notices arrived`);
  const ids = new Set(accepted.map((d) => d.headers['webhook-id']));
  assert.equal(ids.size, accepted.length, 'a notice arrived twice');
  const byCredential = new Map(revoked.map((c) => [c.id, c]));
  for (const d of receiver.deliveries) {
    assert.ok(signed(d), 'a bad signature');
    assert.ok(Math.abs(Number(d.headers['webhook-timestamp']) - d.at / 1000) < 60);
    const body = JSON.parse(d.body);
    const c = byCredential.get(body.credential_id);
    assert.ok(c, `a notice for ${body.credential_id}, which was not revoked`);
    assert.equal(body.type, 'credential.status_changed');
    assert.equal(body.id, d.headers['webhook-id']);
    assert.deepEqual([body.user_id, body.provider, body.from, body.to, body.reason], [c.user, c.provider, 'valid', 'invalid_key', 'invalid_api_key']);
    for (const k of creds) assert.ok(!d.body.includes(k.key), 'a key in a notice');
  }
  // The retry waited (NOTIFY_RETRY_BASE_SECONDS = 1).
  const [first, second] = receiver.deliveries;
  const retried = receiver.deliveries.find((d, i) => i > 1 && d.headers['webhook-id'] === first.headers['webhook-id']);
  assert.ok(retried && retried.at - first.at >= 900, 'the failed notice was retried after its wait');
  assert.ok(second);
});
