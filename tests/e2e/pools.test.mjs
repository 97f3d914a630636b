// End to end: a user's several keys for one provider (key pools). A key the provider
// refuses gives way to the next within the same request, cools down, and comes back by
// itself; `priority` orders them; and every call's usage is metered from the provider's
// own answer. Under wrangler dev (workerd, local D1, local queues) against the fake
// providers: which key served is read from what the fake saw, never from the vault alone.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { randomKey, serviceTokens, startVault, withoutKey } from './harness.mjs';

const { tokens: { resolver: RESOLVER }, SERVICE_TOKENS } = serviceTokens({ resolver: ['resolve'] });

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({ secrets: { SERVICE_TOKENS }, vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Calls `probe` until it returns something (not undefined), or fails after `ms`. */
async function until(what, probe, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(200);
  }
}

const add = async (user, provider, kind = 'valid') => {
  const key = randomKey(kind);
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.credential.id, key };
};
const setPriority = async (user, { id }, priority) => {
  const r = await vault.request('PATCH', `/v1/credentials/${id}`, { user, body: { priority } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.priority ?? r.json.credential?.priority, priority, r.text);
};
/** The user's credentials by id, as GET /v1/credentials shows them. */
const credentials = async (user) => {
  const r = await vault.request('GET', '/v1/credentials', { user });
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(r.json.credentials.map((c) => [c.id, c]));
};

/** A proxied call, its body (a string, a Buffer: framed by a Content-Length) read whole. */
async function call(user, path, body, headers = { 'content-type': 'application/json' }) {
  const from = fake.requests.length;
  const sentAt = Date.now();
  const res = await fetch(`${vault.base}/v1/proxy/${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${vault.token(user)}`, ...headers }, body,
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  // What reached the provider for this call, in order (the live checks of adds excluded).
  const upstream = fake.requests.slice(from).filter((r) => r.method === 'POST');
  return { status: res.status, headers: res.headers, bytes, text: bytes.toString(), upstream, sentAt };
}
const chat = (user) => call(user, 'openai/v1/chat/completions', JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] }));
/** The keys the fake saw, named (a failing assertion never prints a key). */
const named = (records, keys) => records.map((r) => Object.entries(keys).find(([, k]) => k.key === r.key)?.[0] ?? 'another key');

/** The user's `credential.used` events once there are at least `n`, oldest first. */
const usesOf = (user, n) => until(`${n} credential.used events of ${user}`, async () => {
  const r = await vault.request('GET', '/v1/audit?limit=200', { user });
  assert.equal(r.status, 200, r.text);
  const uses = r.json.events.filter((e) => e.action === 'credential.used').reverse();
  return uses.length >= n ? uses : undefined;
});

describe('failover', () => {
  test('a rate-limited key gives way to the next within the request, and is passed over while it cools', async () => {
    const user = 'u_pool_429';
    const A = await add(user, 'openai');
    const B = await add(user, 'openai');
    await setPriority(user, B, 1); // A (priority 0) is tried first
    fake.limitOnce(A.key, 60);
    const before = Date.now();
    const r = await chat(user);
    const afterCall = Date.now();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-byok-attempts'), '2');
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    assert.equal(r.headers.get('x-byok-skipped'), null);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B'], 'the keys the provider saw, in order');
    assert.equal(r.upstream[0].sent.status, 429);
    assert.ok(r.bytes.equals(r.upstream[1].sent.body), "the caller got B's answer as the provider sent it");

    // One credential.used event per key tried.
    const uses = (await usesOf(user, 2)).slice(-2);
    assert.deepEqual(uses.map((e) => [e.credential_id, e.outcome, e.reason, e.detail?.attempt]),
      [[A.id, 'failure', 'provider_rate_limited', 1], [B.id, 'success', null, 2]], JSON.stringify(uses));

    // The cooled key says so, until the provider's Retry-After (60 s) is over; a 429 says
    // nothing against the key itself.
    const creds = await credentials(user);
    assert.equal(creds[A.id].status, 'valid');
    assert.equal(creds[A.id].cooldown_reason, 'rate_limited');
    const until = Date.parse(creds[A.id].cooldown_until);
    assert.ok(until >= Math.floor(before / 1000) * 1000 + 59_000 && until <= afterCall + 60_000, creds[A.id].cooldown_until);
    assert.equal(creds[B.id].cooldown_until, null);
    assert.equal(creds[B.id].cooldown_reason, null);

    // While A cools, B is tried first, and the receipt says A was passed over.
    const next = await chat(user);
    assert.equal(next.status, 200, next.text);
    assert.deepEqual(named(next.upstream, { A, B }), ['B']);
    assert.equal(next.headers.get('x-byok-credential-id'), B.id);
    assert.equal(next.headers.get('x-byok-attempts'), '1');
    assert.equal(next.headers.get('x-byok-skipped'), A.id);
    // Resolve too hands out B and names the key it skipped.
    const resolved = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: user, capability: 'llm', provider: 'openai' } });
    assert.equal(resolved.status, 200, withoutKey(resolved.text));
    assert.equal(resolved.json.credential_id, B.id);
    assert.deepEqual(resolved.json.skipped, [{ credential_id: A.id, reason: 'rate_limited', until: creds[A.id].cooldown_until }]);
  });

  test('a cooled key is tried first again once its cooldown is over, without anyone touching it', async () => {
    const user = 'u_pool_back';
    const A = await add(user, 'openai');
    const B = await add(user, 'openai');
    await setPriority(user, B, 1);
    fake.limitOnce(A.key, 1);
    const r = await chat(user);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B']);
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    const shown = (await credentials(user))[A.id].cooldown_until;
    assert.ok(shown, 'A shows no cooldown');
    // Shown to the second: the cooldown ends within a second after it. Wait for that much,
    // then call until A serves again (each call before it must have gone to B).
    const over = Date.parse(shown);
    await sleep(Math.max(0, over - Date.now()));
    const back = await until('A serving again', async () => {
      const c = await chat(user);
      assert.equal(c.status, 200, c.text);
      if (named(c.upstream, { A, B })[0] === 'A') return c;
      assert.deepEqual(named(c.upstream, { A, B }), ['B']);
      assert.equal(c.headers.get('x-byok-skipped'), A.id);
      return undefined;
    }, 10_000);
    assert.deepEqual(named(back.upstream, { A, B }), ['A'], 'A served alone, first');
    assert.equal(back.headers.get('x-byok-credential-id'), A.id);
    assert.equal(back.headers.get('x-byok-attempts'), '1');
    assert.equal(back.headers.get('x-byok-skipped'), null);
    assert.ok(back.sentAt >= over, 'A came back before its cooldown was over');
  });

  test('a spent key is marked quota_exhausted, cools for an hour (no reset known) and is not tried meanwhile', async () => {
    const user = 'u_pool_spent';
    const A = await add(user, 'openai', 'spent'); // valid for checks; calls answer insufficient_quota
    const B = await add(user, 'openai');
    await setPriority(user, B, 1);
    const before = Date.now();
    const r = await chat(user);
    const afterCall = Date.now();
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B']);
    assert.equal(r.upstream[0].sent.status, 429);
    assert.equal(JSON.parse(r.upstream[0].sent.body).error.code, 'insufficient_quota');
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    assert.equal(r.headers.get('x-byok-attempts'), '2');

    const creds = await credentials(user);
    assert.equal(creds[A.id].status, 'quota_exhausted');
    assert.equal(creds[A.id].cooldown_reason, 'quota_exhausted');
    const until = Date.parse(creds[A.id].cooldown_until);
    assert.ok(until >= Math.floor(before / 1000) * 1000 + 3600_000 && until <= afterCall + 3600_000, creds[A.id].cooldown_until);
    assert.equal(creds[B.id].status, 'valid');

    const uses = (await usesOf(user, 2)).slice(-2);
    assert.deepEqual(uses.map((e) => [e.credential_id, e.outcome, e.reason, e.detail?.attempt]),
      [[A.id, 'failure', 'quota_exhausted', 1], [B.id, 'success', null, 2]], JSON.stringify(uses));

    for (let i = 0; i < 2; i++) {
      const next = await chat(user);
      assert.equal(next.status, 200, next.text);
      assert.deepEqual(named(next.upstream, { A, B }), ['B'], 'the spent key was tried while it cools');
      assert.equal(next.headers.get('x-byok-credential-id'), B.id);
      assert.equal(next.headers.get('x-byok-attempts'), '1');
    }
  });

  test('PATCH priority reorders which key is tried first', async () => {
    const user = 'u_pool_prio';
    const keys = { A: await add(user, 'openai'), B: await add(user, 'openai') };
    const first = async () => {
      const r = await chat(user);
      assert.equal(r.status, 200, r.text);
      const seen = named(r.upstream, keys);
      assert.equal(seen.length, 1, `one key per call: ${seen}`);
      assert.equal(r.headers.get('x-byok-credential-id'), keys[seen[0]].id);
      return seen[0];
    };
    const x = await first();
    const y = x === 'A' ? 'B' : 'A';
    assert.equal(await first(), x, 'the same key first again, unchanged');
    await setPriority(user, keys[x], 10);
    assert.equal(await first(), y);
    await setPriority(user, keys[y], 20);
    assert.equal(await first(), x);
    const creds = await credentials(user);
    assert.equal(creds[keys[x].id].priority, 10);
    assert.equal(creds[keys[y].id].priority, 20);
  });
});
