// End to end: the audit trail through the real local queue and consumer, its hash chain in
// the local D1, and the direct path when the queue producer is missing.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { verdict } from './anchors.mjs';
import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault, withoutAuditQueueProducer } from './harness.mjs';

const add = (vault, user, api_key) =>
  vault.request('POST', '/v1/credentials', { user, body: { provider: 'elevenlabs', api_key } });

/** A scripted session over two users; returns the events each should have, in order. */
async function scriptedSession(vault, keys) {
  const good = randomKey('valid');
  const bad = randomKey('invalid');
  keys.push(good, bad);
  const created = await add(vault, 'u_alice', good);
  assert.equal(created.status, 201);
  const id = created.json.credential.id;
  assert.equal((await vault.request('GET', '/v1/credentials', { user: 'u_alice' })).status, 200);
  assert.equal((await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_alice' })).status, 200);
  assert.equal((await add(vault, 'u_alice', bad)).status, 422);
  assert.equal((await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_bob' })).status, 404);
  assert.equal((await vault.request('GET', '/v1/credentials', { user: 'u_bob' })).status, 200);
  assert.equal((await vault.request('DELETE', `/v1/credentials/${id}`, { user: 'u_alice' })).status, 204);
  return {
    id,
    alice: [
      ['credential.created', 'success', null, id],
      ['credential.viewed', 'success', null, null],
      ['credential.viewed', 'success', null, id],
      ['credential.created', 'failure', 'invalid_api_key', null],
      ['credential.deleted', 'success', null, id],
    ],
    bob: [
      ['credential.viewed', 'failure', 'not_found', id],
      ['credential.viewed', 'success', null, null],
    ],
  };
}

const shape = (events) => events.map((e) => [e.action, e.outcome, e.reason, e.credential_id]);

function assertChainShape(events, user) {
  events.forEach((e, i) => {
    assert.equal(e.seq, i + 1);
    assert.deepEqual(e.actor, { type: 'user', id: user });
    assert.match(e.hash, /^[0-9a-f]{64}$/);
    assert.equal(e.prev_hash, i === 0 ? '0'.repeat(64) : events[i - 1].hash);
    assert.match(e.request_id, /^req_[0-9a-f]{32}$/);
  });
}

describe('the audit trail through the local queue', () => {
  let fake;
  let vault;
  const keys = [];
  let session;

  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({ vars: fake.vars() });
    session = await scriptedSession(vault, keys);
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('every operation yields exactly one event, in order, for its own user only', async () => {
    const alice = await eventsOf(vault, 'u_alice', session.alice.length);
    const bob = await eventsOf(vault, 'u_bob', session.bob.length);
    assert.deepEqual(shape(alice), session.alice);
    assert.deepEqual(shape(bob), session.bob);
    assertChainShape(alice, 'u_alice');
    assertChainShape(bob, 'u_bob');
    assert.equal(alice[0].provider, 'elevenlabs');
    assert.equal(alice[2].provider, 'elevenlabs', "a view of one's own credential names its provider");
    assert.equal(bob[0].provider, null, "a miss on another user's credential does not name it");
    // Nothing arrives late or twice.
    await new Promise((res) => setTimeout(res, 2500));
    const rows = await vault.sql('SELECT user_id, COUNT(*) AS n FROM audit_events GROUP BY user_id ORDER BY user_id');
    assert.deepEqual(rows, [{ user_id: 'u_alice', n: 5 }, { user_id: 'u_bob', n: 2 }]);
  });

  test('the audit list filters and pages', async () => {
    const created = await vault.request('GET', '/v1/audit?action=credential.created', { user: 'u_alice' });
    assert.deepEqual(created.json.events.map((e) => e.outcome), ['failure', 'success']);
    const byId = await vault.request('GET', `/v1/audit?credential_id=${session.id}`, { user: 'u_alice' });
    assert.deepEqual(byId.json.events.map((e) => e.action), ['credential.deleted', 'credential.viewed', 'credential.created']);
    const page1 = await vault.request('GET', '/v1/audit?limit=2', { user: 'u_alice' });
    assert.deepEqual(page1.json.events.map((e) => e.seq), [5, 4]);
    const page2 = await vault.request('GET', `/v1/audit?limit=2&cursor=${page1.json.next_cursor}`, { user: 'u_alice' });
    assert.deepEqual(page2.json.events.map((e) => e.seq), [3, 2]);
    assert.equal((await vault.request('GET', '/v1/audit?limit=500', { user: 'u_alice' })).status, 400);
    assert.equal((await vault.request('GET', '/v1/audit')).status, 401);
  });

  test('the chains verify', async () => {
    assert.deepEqual(verdict((await vault.request('GET', '/v1/audit/verify', { user: 'u_alice' })).json), { ok: true, checked: 5 });
    assert.deepEqual(verdict((await vault.request('GET', '/v1/audit/verify', { user: 'u_bob' })).json), { ok: true, checked: 2 });
  });

  test('no test key, token or secret is in the audit table or the log', async () => {
    const table = JSON.stringify(await vault.sql('SELECT * FROM audit_events'));
    assert.match(table, /credential\.created/, 'the scan reads the audit rows');
    const log = vault.log();
    for (const k of keys) {
      assert.ok(!table.includes(k), 'a key is in the audit table');
      assert.ok(!log.includes(k), 'a key is in the log');
    }
    assert.ok(!table.includes(vault.secrets.MASTER_KEY) && !log.includes(vault.secrets.MASTER_KEY));
  });

  test('an edited row breaks the chain at its seq', async () => {
    await vault.sql("UPDATE audit_events SET outcome = 'success', reason = NULL WHERE user_id = 'u_alice' AND seq = 4");
    const r = await vault.request('GET', '/v1/audit/verify', { user: 'u_alice' });
    assert.deepEqual(verdict(r.json), { ok: false, checked: 3, broken_seq: 4 });
  });

  test('a deleted row breaks the chain where it was', async () => {
    await vault.sql("DELETE FROM audit_events WHERE user_id = 'u_bob' AND seq = 1");
    const r = await vault.request('GET', '/v1/audit/verify', { user: 'u_bob' });
    assert.deepEqual(verdict(r.json), { ok: false, checked: 0, broken_seq: 1 });
  });

  test('retention removes old events and the rest of the chain still verifies', async () => {
    // Age u_carol's first two events; they are then removed, so changing them is fine.
    const k = randomKey('valid');
    keys.push(k);
    const id = (await add(vault, 'u_carol', k)).json.credential.id;
    for (let i = 0; i < 3; i++) await vault.request('GET', `/v1/credentials/${id}`, { user: 'u_carol' });
    assert.equal((await eventsOf(vault, 'u_carol', 4)).length, 4);
    await vault.sql("UPDATE audit_events SET at = 1000 WHERE user_id = 'u_carol' AND seq <= 2");
    const cron = await fetch(`${vault.base}/__scheduled?cron=${encodeURIComponent('0 * * * *')}`);
    assert.equal(cron.status, 200, await cron.text());
    const left = await eventsOf(vault, 'u_carol', 0);
    assert.deepEqual(left.map((e) => e.seq), [3, 4]);
    const r = await vault.request('GET', '/v1/audit/verify', { user: 'u_carol' });
    assert.deepEqual(verdict(r.json), { ok: true, checked: 2, starts_after_seq: 2 });
    assert.equal(r.json.sealed, true, 'the checkpoint retention wrote is sealed');
  });
});

describe('the audit trail without a queue producer', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({ vars: fake.vars(), config: withoutAuditQueueProducer });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('every event is still recorded, through the direct path, and the chain verifies', async () => {
    const keys = [];
    const session = await scriptedSession(vault, keys);
    // The direct path writes within the request: no waiting for a consumer.
    const alice = await eventsOf(vault, 'u_alice', 0);
    const bob = await eventsOf(vault, 'u_bob', 0);
    assert.deepEqual(shape(alice), session.alice);
    assert.deepEqual(shape(bob), session.bob);
    assertChainShape(alice, 'u_alice');
    assert.deepEqual(verdict((await vault.request('GET', '/v1/audit/verify', { user: 'u_alice' })).json), { ok: true, checked: 5 });
    assert.match(vault.log(), /AUDIT_QUEUE is not bound; writing event ev_[0-9a-f]+ directly/);
    // Nothing waits in the outbox, and a cron sweep chains nothing twice.
    assert.deepEqual(await vault.sql('SELECT COUNT(*) AS n FROM audit_outbox'), [{ n: 0 }]);
    const cron = await fetch(`${vault.base}/__scheduled?cron=${encodeURIComponent('0 * * * *')}`);
    assert.equal(cron.status, 200, await cron.text());
    const rows = await vault.sql('SELECT user_id, COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM audit_events GROUP BY user_id ORDER BY user_id');
    assert.deepEqual(rows, [{ user_id: 'u_alice', n: 5, ids: 5 }, { user_id: 'u_bob', n: 2, ids: 2 }]);
  });
});

describe('audit messages delivered by hand to the real local queue', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    // tests/e2e/front fronts the vault and can put any message on its audit queue.
    // wrangler dev binds no [[ratelimits]] to the second worker of a multi-config session,
    // so the vault's own live-check limits are off here.
    vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' }, front: true });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  const inject = async (body) => {
    const r = await fetch(`${vault.base}/__inject/audit`, { method: 'POST', body });
    assert.equal(r.status, 202);
  };
  /** The queue message the vault itself sent for a listed event. */
  const messageOf = (e, user) => JSON.stringify({
    id: e.id, at: Date.parse(e.at), user_id: user, action: e.action, actor: e.actor,
    credential_id: e.credential_id, provider: e.provider, outcome: e.outcome, reason: e.reason,
    source: e.source, request_id: e.request_id, detail: e.detail,
  });

  test('the same message delivered twice leaves one row and the chain verifies', async () => {
    assert.equal((await add(vault, 'u_dave', randomKey('valid'))).status, 201);
    const [original] = await eventsOf(vault, 'u_dave', 1);
    await inject(messageOf(original, 'u_dave'));
    await inject(messageOf(original, 'u_dave'));
    const fresh = { ...original, id: `ev_${Date.now().toString(16).padStart(12, '0')}0000${'ab'.repeat(12)}`, at: new Date().toISOString() };
    await inject(messageOf(fresh, 'u_dave'));
    await inject(messageOf(fresh, 'u_dave'));
    const events = await eventsOf(vault, 'u_dave', 2);
    await new Promise((res) => setTimeout(res, 2500));
    const rows = await vault.sql("SELECT id, seq FROM audit_events WHERE user_id = 'u_dave' ORDER BY seq");
    assert.deepEqual(rows.map((r) => r.id), [original.id, fresh.id]);
    assert.deepEqual(events.map((e) => e.seq), [1, 2]);
    assert.deepEqual(verdict((await vault.request('GET', '/v1/audit/verify', { user: 'u_dave' })).json), { ok: true, checked: 2 });
  });

  test('a message that is not an event is retried, then kept by the dead-letter consumer', async () => {
    await inject('this is not an audit event');
    const deadline = Date.now() + 30_000;
    let rows = [];
    while (Date.now() < deadline) {
      rows = await vault.sql('SELECT body, reason FROM audit_dead_letters');
      if (rows.length) break;
      await new Promise((res) => setTimeout(res, 1000));
    }
    assert.deepEqual(rows, [{ body: 'this is not an audit event', reason: 'not an audit event' }]);
  });

  test('a backlog larger than one consumer invocation chains to the end, not at the hourly cron', async () => {
    // 1 200 events waiting in the outbox and a single nudge: one invocation chains at most
    // 500, so the rest moves only if the consumer asks for another pass.
    await vault.sql(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200)
      INSERT INTO audit_outbox (id, user_id, event, created_at)
      SELECT printf('ev_backlog_%05d', i), printf('u_backlog_%02d', i % 40),
        json_object('id', printf('ev_backlog_%05d', i), 'at', 1800000000000 + i,
          'user_id', printf('u_backlog_%02d', i % 40), 'action', 'credential.viewed',
          'actor', json_object('type', 'user', 'id', printf('u_backlog_%02d', i % 40)), 'outcome', 'success'),
        1800000000000 + i
      FROM n`);
    await inject(JSON.stringify({ nudge: 'ev_backlog_00001' }));
    const count = async () => (await vault.sql(
      "SELECT (SELECT COUNT(*) FROM audit_events WHERE user_id LIKE 'u_backlog_%') AS chained, (SELECT COUNT(*) FROM audit_outbox) AS waiting",
    ))[0];
    const deadline = Date.now() + 30_000;
    let now = await count();
    while ((now.chained < 1200 || now.waiting > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      now = await count();
    }
    assert.deepEqual(now, { chained: 1200, waiting: 0 });
    const verify = await vault.request('GET', '/v1/audit/verify', { user: 'u_backlog_39' });
    assert.deepEqual(verdict(verify.json), { ok: true, checked: 30 });
  });
});
