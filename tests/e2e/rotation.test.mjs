// End to end: master-key rotation of 100 credentials under wrangler dev. Version 2 is
// added and made active; the job re-encrypts every row in chunks through the local jobs
// queue (five of REWRAP_CHUNK = 20, each a queue delivery: the time goes there, not in
// the rows), reporting progress, and re-seals the audit chains' anchors; the dev server is
// stopped mid-job and started again on the same local state, and the job finishes; every
// key then opens, and every audit chain verifies, under version 2 alone.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { addMany, assertSameKey, serviceTokens, startVault, withoutKey } from './harness.mjs';

const M1 = crypto.randomBytes(32).toString('base64');
const M2 = crypto.randomBytes(32).toString('base64');
const { tokens: { ops: ADMIN, svc: RESOLVER }, SERVICE_TOKENS } = serviceTokens({ ops: ['admin'], svc: ['resolve'] });
const COMMON = {
  AUTH_JWT_SECRET: crypto.randomBytes(32).toString('hex'),
  MASTER_KEY: null,
  SERVICE_TOKENS,
};
const N = 100;

let fake;
let vault;
let state;
let creds = [];
const start = async (ring, active) => {
  vault = await startVault({
    front: false,
    state,
    secrets: { ...COMMON, MASTER_KEYS: JSON.stringify(ring), MASTER_KEY_ACTIVE: active },
    vars: { ...fake.vars(), RATE_LIMITS: 'off', JOB_STALL_SECONDS: '5' },
  });
  state = vault.state;
  return vault;
};

before(async () => {
  fake = await startFakeProviders();
  await start({ 1: M1 }, '1');
  const todo = Array.from({ length: N }, (_, i) => ({ user: `u_rot_${i % 50}`, provider: i % 2 ? 'openai' : 'elevenlabs' }));
  creds = await addMany(vault, todo, 20);
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const job = async (id) => (await vault.request('GET', `/v1/admin/jobs/${id}`, { token: ADMIN })).json;

test('100 keys are re-encrypted under the new version, through a restart mid-job', async () => {
  await vault.stop();
  // Version 1 configured away too early: the audit chains sealed under it do not verify.
  await start({ 2: M2 }, '2');
  const early = await vault.request('GET', '/v1/audit/verify', { user: 'u_rot_3' });
  assert.deepEqual([early.json.ok, early.json.broken_reason], [false, 'head_key_version_unknown'], early.text);
  await vault.stop();
  await start({ 1: M1, 2: M2 }, '2');
  const r = await vault.request('POST', '/v1/admin/master-key/rotate', { token: ADMIN });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.total, N);
  assert.equal(r.json.active_version, 2);
  const id = r.json.job_id;

  // Progress shows while it runs; the server is stopped mid-job.
  let seen;
  const deadline = Date.now() + 60_000;
  do {
    seen = await job(id);
    if (seen.done > 0 && seen.state === 'running') break;
    await new Promise((res) => setTimeout(res, 100));
  } while (Date.now() < deadline);
  assert.equal(seen.state, 'running', `the job finished before it could be interrupted: ${JSON.stringify(seen)}`);
  assert.ok(seen.done > 0 && seen.done < N, JSON.stringify(seen));
  await vault.stop();

  // Started again on the same state: the job carries on (redelivered, or resumed as
  // stalled when its progress is asked for) and finishes.
  await start({ 1: M1, 2: M2 }, '2');
  const finish = Date.now() + 120_000;
  do {
    seen = await job(id);
    if (seen.state === 'done') break;
    await new Promise((res) => setTimeout(res, 1000));
  } while (Date.now() < finish);
  assert.deepEqual([seen.state, seen.done, seen.failed, seen.total], ['done', N, 0, N]);
  const left = await vault.sql('SELECT COUNT(*) AS n FROM credentials WHERE key_version != 2');
  assert.equal(left[0].n, 0, 'a row is still under version 1');
  await vault.stop();

  // Version 1 is configured away: health is fine (no key and no audit anchor needs it)
  // and every sampled key still resolves.
  await start({ 2: M2 }, '2');
  const health = await vault.request('GET', '/v1/health');
  assert.equal(health.status, 200, health.text);
  // One master_key.rotated event per row, whatever ran twice; every chain verifies under
  // version 2 alone.
  const chained = Date.now() + 60_000;
  while ((await vault.sql('SELECT COUNT(*) AS n FROM audit_outbox'))[0].n > 0 && Date.now() < chained) {
    await new Promise((res) => setTimeout(res, 1000));
  }
  const rotated = await vault.sql("SELECT COUNT(*) AS n, COUNT(DISTINCT credential_id) AS rows FROM audit_events WHERE action = 'master_key.rotated'");
  assert.deepEqual(rotated, [{ n: N, rows: N }]);
  for (const user of ['u_rot_0', 'u_rot_3', 'u_rot_49']) {
    const v = await vault.request('GET', '/v1/audit/verify', { user });
    assert.deepEqual([v.json.ok, v.json.sealed, v.json.head?.key_version], [true, true, 2], v.text);
  }
  for (const c of creds.filter((_, i) => i % 10 === 7)) {
    const res = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: c.user, capability: c.provider === 'openai' ? 'llm' : 'tts', credential_id: c.id } });
    assert.equal(res.status, 200, withoutKey(res.text));
    assertSameKey(res.json.api_key, c.key);
  }
});
