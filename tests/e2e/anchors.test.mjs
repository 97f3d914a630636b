// End to end: the audit chain against whoever can write the local D1 but holds no master
// key. Each attack is made with SQL on the running vault's database, as such a writer
// would (every hash recomputed where that helps them), and `GET /v1/audit/verify` must
// answer `ok: false`; untouched chains, and chains written before seals existed, verify.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { chainOf, eventOfRow, rewriteChain, sqlValue, verdict } from './anchors.mjs';
import { startFakeProviders } from './fake-providers.mjs';
import { eventsOf, randomKey, startVault } from './harness.mjs';

/** `user` adds a key and looks at it `views` times; waits until the events are chained. */
async function trail(vault, user, views) {
  const created = await vault.request('POST', '/v1/credentials', { user, body: { provider: 'elevenlabs', api_key: randomKey('valid') } });
  assert.equal(created.status, 201, created.text);
  for (let i = 0; i < views; i++) {
    assert.equal((await vault.request('GET', `/v1/credentials/${created.json.credential.id}`, { user })).status, 200);
  }
  assert.equal((await eventsOf(vault, user, views + 1)).length, views + 1);
}

const verify = async (vault, user) => {
  const r = await vault.request('GET', '/v1/audit/verify', { user });
  assert.equal(r.status, 200, r.text);
  return r.json;
};

const rows = (vault, user) => vault.sql(`SELECT * FROM audit_events WHERE user_id = ${sqlValue(user)} ORDER BY seq`);
const moveHead = (vault, user, to) => vault.sql(`UPDATE audit_heads SET seq = ${to.seq}, hash = ${sqlValue(to.hash)} WHERE user_id = ${sqlValue(user)}`);

describe('a database writer without the master key', () => {
  let fake;
  let vault;
  const users = ['u_intact', 'u_rewrite', 'u_strip', 'u_trunc', 'u_cp', 'u_cpseal', 'u_from', 'u_to', 'u_gone'];
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' }, front: true });
    for (const u of users) await trail(vault, u, 3);
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('the attacks below recompute hashes exactly as the vault does', async () => {
    const stored = await rows(vault, 'u_intact');
    assert.deepEqual(chainOf(stored.map(eventOfRow)).map((l) => l.hash), stored.map((r) => r.hash));
  });

  test('an intact chain verifies, sealed, and names its head', async () => {
    const v = await verify(vault, 'u_intact');
    const [head] = await vault.sql("SELECT seq, hash FROM audit_heads WHERE user_id = 'u_intact'");
    assert.deepEqual(verdict(v), { ok: true, checked: 4 });
    assert.equal(v.sealed, true);
    assert.deepEqual([v.head.seq, v.head.hash, v.head.key_version], [head.seq, head.hash, 1]);
    assert.ok(Date.parse(v.head.sealed_at) > Date.now() - 600_000, v.head.sealed_at);
  });

  test('a chain rewritten with every hash recomputed and its head moved does not verify', async () => {
    const end = await rewriteChain(vault, 'u_rewrite', (events) => {
      events[1] = { ...events[1], outcome: 'failure', reason: 'not_found' };
    });
    await moveHead(vault, 'u_rewrite', end);
    const v = await verify(vault, 'u_rewrite');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'head_invalid');
  });

  test('a rewritten chain whose head seal is stripped does not verify either', async () => {
    const end = await rewriteChain(vault, 'u_strip', (events) => events.splice(1, 1));
    await moveHead(vault, 'u_strip', end);
    await vault.sql("UPDATE audit_heads SET mac = NULL, mac_version = NULL WHERE user_id = 'u_strip'");
    const v = await verify(vault, 'u_strip');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'head_unsealed');
    // Nor when the writer also makes the vault look as if it still had unsealed anchors
    // of its own: the other users' strict seals show it never had.
    await vault.sql(`INSERT INTO audit_legacy (id, state, updated_at) VALUES (1, 'open', ${Date.now()})`);
    try {
      assert.equal((await verify(vault, 'u_strip')).ok, false);
    } finally {
      await vault.sql('DELETE FROM audit_legacy');
    }
  });

  test('the newest events deleted with the head moved back to the new end do not verify', async () => {
    await vault.sql("DELETE FROM audit_events WHERE user_id = 'u_trunc' AND seq > 2");
    const [last] = await vault.sql("SELECT seq, hash FROM audit_events WHERE user_id = 'u_trunc' ORDER BY seq DESC LIMIT 1");
    await moveHead(vault, 'u_trunc', last);
    const v = await verify(vault, 'u_trunc');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'head_invalid');
  });

  test('every event deleted with the checkpoint moved to the head does not verify', async () => {
    await vault.sql("DELETE FROM audit_events WHERE user_id = 'u_cp'");
    await vault.sql(`INSERT INTO audit_checkpoints (user_id, seq, hash, updated_at)
      SELECT user_id, seq, hash, updated_at FROM audit_heads WHERE user_id = 'u_cp'`);
    const v = await verify(vault, 'u_cp');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'checkpoint_unsealed');
  });

  test("...nor with the head's own seal copied onto the checkpoint", async () => {
    await vault.sql("DELETE FROM audit_events WHERE user_id = 'u_cpseal'");
    await vault.sql(`INSERT INTO audit_checkpoints (user_id, seq, hash, updated_at, mac, mac_version)
      SELECT user_id, seq, hash, updated_at, mac, mac_version FROM audit_heads WHERE user_id = 'u_cpseal'`);
    const v = await verify(vault, 'u_cpseal');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'checkpoint_invalid');
  });

  test("a chain of the writer's making under another user's head (and seal) does not verify", async () => {
    const end = await rewriteChain(vault, 'u_to', (events) => {
      events.forEach((e, i) => { e.id = `ev_forged_${i}`; });
    });
    await vault.sql(`UPDATE audit_heads SET seq = ${end.seq}, hash = ${sqlValue(end.hash)},
      updated_at = (SELECT updated_at FROM audit_heads WHERE user_id = 'u_from'),
      mac = (SELECT mac FROM audit_heads WHERE user_id = 'u_from'),
      mac_version = (SELECT mac_version FROM audit_heads WHERE user_id = 'u_from') WHERE user_id = 'u_to'`);
    const v = await verify(vault, 'u_to');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'head_invalid');
    assert.equal((await verify(vault, 'u_from')).ok, true);
  });

  test('a user who holds a key but whose whole chain was deleted does not verify', async () => {
    await vault.sql("DELETE FROM audit_events WHERE user_id = 'u_gone'");
    await vault.sql("DELETE FROM audit_heads WHERE user_id = 'u_gone'");
    const v = await verify(vault, 'u_gone');
    assert.equal(v.ok, false, JSON.stringify(v));
    assert.equal(v.broken_reason, 'chain_missing');
  });

  test('the chains left alone still verify', async () => {
    assert.deepEqual(verdict(await verify(vault, 'u_intact')), { ok: true, checked: 4 });
  });
});

describe('anchors written before seals existed', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    // Alone (no front worker), so that the cron below is the vault's.
    vault = await startVault({ vars: fake.vars() });
    await trail(vault, 'u_old', 2);
    // As migration 0005 finds a database written before it: anchors without seals, and
    // the legacy window open.
    await vault.sql('UPDATE audit_heads SET mac = NULL, mac_version = NULL');
    await vault.sql(`INSERT INTO audit_legacy (id, state, updated_at) VALUES (1, 'open', ${Date.now()})`);
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('verify, unsealed, until the cron seals them as they are', async () => {
    const before = await verify(vault, 'u_old');
    assert.deepEqual(verdict(before), { ok: true, checked: 3 });
    assert.equal(before.sealed, false);
    assert.equal(before.head.sealed_at, null);
    const cron = await fetch(`${vault.base}/__scheduled?cron=${encodeURIComponent('0 * * * *')}`);
    assert.equal(cron.status, 200, await cron.text());
    const after = await verify(vault, 'u_old');
    assert.deepEqual(verdict(after), { ok: true, checked: 3 });
    assert.equal(after.sealed, true);
    assert.deepEqual(await vault.sql("SELECT substr(mac, 1, 2) AS m, mac_version AS v FROM audit_heads WHERE user_id = 'u_old'"), [{ m: 't:', v: 1 }]);
  });
});
