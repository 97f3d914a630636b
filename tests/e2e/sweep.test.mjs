// End to end: the scheduled revalidation sweep under wrangler dev. The cron (triggered
// locally) claims every credential due and fans them out to the local jobs queue; the
// consumer checks three per invocation against the fake providers, flips exactly the
// revoked keys, audits only changes, and turns a provider's 429 into a delayed retry.
// Each flip reaches a webhook receiver on loopback, signed per Standard Webhooks, once,
// although the receiver fails its first two deliveries; a 2xx with a large body is one
// delivery; deleting a credential removes its notice not yet delivered. A dead key is
// asked less and less often (and not at all after six tries) until its user acts. With
// the live-check limits on, the sweep's checks of imported rows count against them, per
// user and in total, and a refused check comes back later.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { addMany, eventsOf, randomKey, rateWindow, serviceTokens, startVault } from './harness.mjs';

const { tokens: { ops: ADMIN }, SERVICE_TOKENS } = serviceTokens({ ops: ['admin'] });
const PROVIDERS = ['elevenlabs', 'openai', 'anthropic', 'gemini', 'deepgram', 'mistral', 'groq', 'openrouter'];
const USERS = 30;
const PER_USER = 10;

const WEBHOOK_SECRET = crypto.randomBytes(32);

/** A webhook receiver: keeps every delivery; answers 503 to the first `failures`, then as
 * `mode` says: `ok` (204), `page` (200 with a 3 MB page), `down` (503). */
function startReceiver(failures) {
  const deliveries = [];
  const receiver = { mode: 'ok' };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const ok = deliveries.length >= failures && receiver.mode !== 'down';
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks).toString(), ok, at: Date.now() });
      if (ok && receiver.mode === 'page') {
        res.on('error', () => {}); // the vault stops reading early: that is the point
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end(`<html><body>${'Thanks! '.repeat(384 * 1024)}</body></html>`);
        return;
      }
      res.writeHead(ok ? 204 : 503);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(Object.assign(receiver, {
    url: `http://127.0.0.1:${server.address().port}/hooks/byok`,
    deliveries,
    close: () => new Promise((done) => { server.closeAllConnections?.(); server.close(() => done()); }),
  }))));
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

async function waitFor(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** The user revokes nothing: the provider does, and the user's re-check sees it. */
async function flip(c) {
  fake.revoke(c.key);
  const r = await vault.request('POST', `/v1/credentials/${c.id}/validate`, { user: c.user });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.status, 'invalid_key');
}

const noticesOf = async (id) => vault.sql(`SELECT id, attempts FROM notifications WHERE credential_id = '${id}'`);

test('a receiver answering 2xx with a large page has the notice, once', async () => {
  receiver.mode = 'page';
  const c = creds.find((x, i) => i % 10 === 5);
  const seen = receiver.deliveries.length;
  await flip(c);
  const mine = () => receiver.deliveries.slice(seen).filter((d) => JSON.parse(d.body).credential_id === c.id);
  await waitFor(async () => mine().length > 0, 'the notice reached the receiver');
  // Delivered: the notice is gone, not waiting for another attempt.
  await waitFor(async () => (await noticesOf(c.id)).length === 0, 'the delivered notice left the queue');
  assert.equal(mine().length, 1, 'the notice was sent again');
  const id = mine()[0].headers['webhook-id'];
  assert.ok(!vault.log().includes(`notice ${id} not delivered`), 'the delivery was counted as failed');
});

test("deleting a credential removes its notice that is waiting for delivery", async () => {
  receiver.mode = 'down';
  const c = creds.find((x, i) => i % 10 === 6);
  const other = creds.find((x, i) => i % 10 === 7);
  await flip(c);
  await flip(other);
  await waitFor(async () => (await noticesOf(c.id)).length === 1 && (await noticesOf(other.id)).length === 1,
    'both notices are queued');
  const d = await vault.request('DELETE', `/v1/credentials/${c.id}`, { user: c.user });
  assert.equal(d.status, 204, d.text);
  const deletedAt = Date.now();
  // In the delete's own transaction: gone at once; another credential's stays.
  assert.deepEqual(await noticesOf(c.id), [], "the deleted credential's notice is still queued");
  assert.equal((await noticesOf(other.id)).length, 1);
  receiver.mode = 'ok';
  await waitFor(async () => receiver.deliveries.some((d2) => d2.ok && JSON.parse(d2.body).credential_id === other.id),
    "the other credential's notice", 90_000);
  assert.ok(!receiver.deliveries.some((d2) => JSON.parse(d2.body).credential_id === c.id && d2.at > deletedAt),
    "the deleted credential's notice was sent after the delete");
});

test('a dead key is asked less and less often, then not until its user acts', async () => {
  // Three keys the first sweep found revoked (dead_checks 1): one checked 23 h ago, one
  // 25 h ago, one found dead six times and last asked a year ago.
  const [a, b, c] = creds.filter((_, i) => i % 10 === 3 && i > 0).slice(0, 3);
  const now = Date.now();
  const hour = 3_600_000;
  const set = (x, lastMs, dead) => vault.sql(`UPDATE credentials SET last_validated_at = ${lastMs}, dead_checks = ${dead},
    revalidation_queued_at = NULL WHERE id = '${x.id}'`);
  await set(a, now - 23 * hour, 1);
  await set(b, now - 25 * hour, 1);
  await set(c, now - 365 * 24 * hour, 6);
  // REVALIDATE_AFTER_HOURS is 0 here: a key not found dead would be due at once.
  const r = await vault.request('POST', '/v1/admin/revalidate', { token: ADMIN });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.queued, 1, 'only the key dead for more than a day is asked again');
  const claimed = await vault.sql(`SELECT id FROM credentials WHERE revalidation_queued_at IS NOT NULL
    AND id IN ('${a.id}', '${b.id}', '${c.id}')`);
  assert.deepEqual(claimed.map((x) => x.id), [b.id]);
  await waitFor(async () => (await vault.sql(`SELECT dead_checks FROM credentials WHERE id = '${b.id}'`))[0].dead_checks === 2,
    'the check found it dead a second time');
  // Its user re-checks the one left alone: the usual schedule again.
  const v = await vault.request('POST', `/v1/credentials/${c.id}/validate`, { user: c.user });
  assert.equal(v.status, 200, v.text);
  assert.equal((await vault.sql(`SELECT dead_checks FROM credentials WHERE id = '${c.id}'`))[0].dead_checks, 0);
});

describe('the sweep under the live-check limits', () => {
  const { tokens: { ops: OPS }, SERVICE_TOKENS: TOKENS } = serviceTokens({ ops: ['admin'] });
  const PER_USER = 1;
  const IN_TOTAL = 2;
  const PERIOD_S = 10;
  let limited;
  let fake2;
  before(async () => {
    fake2 = await startFakeProviders();
    limited = await startVault({
      secrets: { SERVICE_TOKENS: TOKENS },
      vars: { ...fake2.vars(), RATE_LIMITS: 'on', REVALIDATE_AFTER_HOURS: '0' },
      // Small limits, so that a few keys need several of the binding's windows; windows of
      // 10 s (the binding's other period), so that waiting for a fresh one costs seconds,
      // not most of a minute. A refused check still comes back after the vault's 60 s.
      config: (toml) => toml
        .replace('namespace_id = "1001"\nsimple = { limit = 10, period = 60 }', `namespace_id = "1001"\nsimple = { limit = ${PER_USER}, period = ${PERIOD_S} }`)
        .replace('namespace_id = "1002"\nsimple = { limit = 60, period = 60 }', `namespace_id = "1002"\nsimple = { limit = ${IN_TOTAL}, period = ${PERIOD_S} }`),
    });
  });
  after(async () => {
    await limited?.stop();
    await fake2?.close();
  });

  test('checks of imported keys count per user and in total; a refused one waits and is never marked', async () => {
    // One user with three imported keys; five users with one each. None was checked.
    const providers = ['openai', 'anthropic', 'mistral', 'groq', 'gemini'];
    const mine = Array.from({ length: 3 }, (_, i) => ({ user_id: 'u_lim_a', provider: providers[i], api_key: randomKey('valid') }));
    const singles = Array.from({ length: 5 }, (_, i) => ({ user_id: `u_lim_${i}`, provider: providers[i], api_key: randomKey('valid') }));
    const r = await limited.request('POST', '/v1/admin/import', { token: OPS, body: { dry_run: false, entries: [...mine, ...singles] } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.summary.created, 8, r.text);
    assert.equal(fake2.requests.length, 0, 'the import asked a provider');

    const ids = new Map(r.json.entries.map((e, i) => [e.credential_id, [...mine, ...singles][i].api_key]));
    // The binding counts in fixed windows: the sweep starts with most of one left, and
    // every bound below allows for as many windows as the check took. (No refusal at all
    // would take the eight checks spread over four windows, 30 s; they take a few.)
    const windows = await rateWindow(7_000, PERIOD_S * 1000);
    const s = await limited.request('POST', '/v1/admin/revalidate', { token: OPS });
    assert.equal(s.status, 202, s.text);
    assert.equal(s.json.queued, 8);
    // Each key is tried once: asked (the limits let it through) or told to wait.
    const asked = () => new Set(fake2.requests.map((q) => q.key));
    const waiting = () => new Set([...limited.log().matchAll(/revalidation: (c_[0-9a-f]+) waits \(the (?:user|client address) limit on live checks is reached\)/g)].map((m) => ids.get(m[1])));
    await waitFor(async () => [...ids.values()].every((k) => asked().has(k) || waiting().has(k)), 'every imported key tried', 40_000);
    const n = windows();
    const probed = [...ids.values()].filter((k) => asked().has(k));
    assert.ok(probed.length >= 1, 'the sweep checked nothing');
    assert.ok(probed.length <= IN_TOTAL * n, `${probed.length} keys checked in ${n} window(s)`);
    assert.ok(mine.filter((e) => asked().has(e.api_key)).length <= PER_USER * n, "u_lim_a's keys passed its limit");
    // A check the limits refused asked nothing and marked nothing: it waits, unverified.
    const rows = () => limited.sql("SELECT status FROM credentials WHERE user_id LIKE 'u_lim_%'");
    // (A refused check comes back a minute later, not before this settles.)
    await waitFor(async () => (await rows()).filter((x) => x.status === 'valid').length === probed.length, 'the checked keys written valid', 15_000);
    const now = await rows();
    assert.ok(now.every((x) => x.status === 'unverified' || x.status === 'valid'), JSON.stringify(now));
    assert.match(limited.log(), /revalidation: c_[0-9a-f]+ waits \(the (user|client address) limit on live checks is reached\)/);
  });
});