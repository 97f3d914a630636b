// End to end: budgets hold under concurrency (issue 21, point 3). Under wrangler dev with
// local D1 against the fake providers: parallel first calls of a new user against a budget
// of one request let exactly one reach the provider; a refusal says which budget and until
// when; an operator's per-user budget is audited; crossing 80 % and 100 % is told once each,
// signed, at the webhook.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, serviceTokens, startVault } from './harness.mjs';

const WEBHOOK_SECRET = crypto.randomBytes(32);
const { tokens: { ops: ADMIN }, SERVICE_TOKENS } = serviceTokens({ ops: ['admin'] });
const TTS = '/v1/proxy/elevenlabs/v1/text-to-speech/voice123';

/** A webhook receiver on loopback that keeps every delivery and answers 204. */
function startReceiver() {
  const deliveries = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(204);
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/hooks`,
    deliveries,
    close: () => new Promise((done) => { server.closeAllConnections?.(); server.close(() => done()); }),
  })));
}

const signed = ({ headers, body }) => headers['webhook-signature'] === `v1,${crypto.createHmac('sha256', WEBHOOK_SECRET)
  .update(`${headers['webhook-id']}.${headers['webhook-timestamp']}.${body}`).digest('base64')}`;

async function waitFor(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('budgets under wrangler dev', () => {
  let fake;
  let vault;
  let receiver;
  const SYSTEM = randomKey('valid');
  before(async () => {
    fake = await startFakeProviders();
    receiver = await startReceiver();
    vault = await startVault({
      front: false,
      secrets: { SYSTEM_KEY_ELEVENLABS: SYSTEM, SERVICE_TOKENS, NOTIFY_WEBHOOK_SECRET: `whsec_${WEBHOOK_SECRET.toString('base64')}` },
      vars: {
        ...fake.vars(), RATE_LIMITS: 'off', ALLOW_PRIVATE_BASE_URLS: 'true',
        NOTIFY_WEBHOOK_URL: receiver.url, NOTIFY_RETRY_BASE_SECONDS: '1',
        SYSTEM_KEY_BUDGETS: JSON.stringify({ '*': { period: 'day', requests: 1 } }),
      },
    });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
    await receiver?.close();
  });

  const speak = (user) => fetch(`${vault.base}${TTS}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${vault.token(user)}`, 'content-type': 'application/json' },
    body: '{"text":"Hello"}',
  });

  test('parallel first calls of a new user against a budget of one request: exactly one reaches the provider', async () => {
    for (const [user, n] of [['u_burst_a', 12], ['u_burst_b', 12]]) {
      const seen = fake.requests.filter((r) => r.key === SYSTEM).length;
      const answers = await Promise.all(Array.from({ length: n }, () => speak(user)));
      const statuses = answers.map((r) => r.status).sort();
      const bodies = await Promise.all(answers.map((r) => r.text()));
      assert.deepEqual(statuses, [200, ...Array(n - 1).fill(429)], `${user}: ${statuses}`);
      assert.equal(fake.requests.filter((r) => r.key === SYSTEM).length - seen, 1, `${user}: the provider was called more than once`);
      for (const [i, r] of answers.entries()) {
        if (r.status !== 429) continue;
        const problem = JSON.parse(bodies[i]);
        assert.equal(problem.code, 'budget_exceeded');
        assert.equal(r.headers.get('content-type'), 'application/problem+json');
        assert.deepEqual(
          [problem.budget.scope, problem.budget.provider, problem.budget.period, problem.budget.unit, problem.budget.limit, problem.budget.used],
          ['system', 'elevenlabs', 'day', 'requests', 1, 1],
        );
        const retry = Number(r.headers.get('retry-after'));
        assert.ok(retry >= 1 && retry <= 86_400, `Retry-After ${retry}`);
        assert.equal(problem.retry_after_seconds, retry);
        assert.equal(new Date(problem.budget.resets_at).getTime() % 86_400_000, 0, 'the reset is a UTC midnight');
        assert.equal(r.headers.get('x-byok-upstream-status'), null, 'a refusal of the vault\'s own');
      }
    }
    // The counters in D1 say the same.
    const rows = await vault.sql("SELECT scope, requests FROM budget_use WHERE scope LIKE 'system:u_burst_%' ORDER BY scope");
    assert.deepEqual(rows, [{ scope: 'system:u_burst_a:*', requests: 1 }, { scope: 'system:u_burst_b:*', requests: 1 }]);
  });

  test('an operator\'s budget for one user is audited, and 80 % and 100 % are told once each, signed', async () => {
    const user = 'u_told';
    const put = await vault.request('PUT', `/v1/admin/budgets/${user}`, {
      token: ADMIN, body: { elevenlabs: { period: 'month', requests: 5 } },
    });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.source, 'user');
    const events = await eventsOf(vault, user, 1);
    assert.ok(events.some((e) => e.action === 'budget.updated' && e.actor.type === 'service'), JSON.stringify(events));
    const mine = () => receiver.deliveries.filter((d) => JSON.parse(d.body).user_id === user);
    // Four calls: 80 %.
    for (let i = 0; i < 4; i++) assert.equal((await speak(user)).status, 200);
    await waitFor(() => mine().length === 1, 'the 80 % notice');
    // The fifth: 100 %; the sixth is refused.
    assert.equal((await speak(user)).status, 200);
    await waitFor(() => mine().length === 2, 'the 100 % notice');
    assert.equal((await speak(user)).status, 429);
    const notices = mine().map((d) => ({ d, body: JSON.parse(d.body) }));
    assert.deepEqual(notices.map((n) => n.body.percent), [80, 100]);
    for (const { d, body } of notices) {
      assert.ok(signed(d), 'a signature that does not verify');
      assert.equal(body.type, 'usage.threshold');
      assert.equal(body.id, d.headers['webhook-id']);
      assert.deepEqual([body.scope, body.provider, body.unit, body.limit], ['system', 'elevenlabs', 'requests', 5]);
      assert.ok(!d.body.includes(SYSTEM), 'the key is in a notice');
    }
    // Once: a later call past the budget tells nothing new.
    assert.equal((await speak(user)).status, 429);
    const shown = await vault.request('GET', `/v1/admin/budgets/${user}`, { token: ADMIN });
    assert.equal(shown.json.this_period.elevenlabs.used.requests, 5);
    assert.equal(mine().length, 2);
    assert.ok(!vault.log().includes(SYSTEM), 'the key is in the log');
  });
});
