// End to end: the usage table under wrangler dev (workerd, local D1). The statement that
// counts a call (`ADD` in src/edge/d1/usage.rs, read from that file) adds up when many run
// at once: parallel calls on one row lose no count. GET /v1/usage then reads the rows back
// through the Worker's own D1 listing, for the caller only, summed as asked; GET
// /v1/admin/usage reads every user's, for operators only. (The proxy's own recording of
// its calls is proved where it is wired.)
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ROOT, serviceTokens, startVault } from './harness.mjs';

const {
  tokens: { ops: ADMIN, 'tts-service': RESOLVER },
  SERVICE_TOKENS,
} = serviceTokens({ ops: ['admin'], 'tts-service': ['resolve'] });

let vault;
before(async () => {
  // RATE_LIMITS off puts the test-only front worker before the vault: its /__test/sql runs
  // statements on the vault's local D1 through the same running instance.
  vault = await startVault({ secrets: { SERVICE_TOKENS }, vars: { RATE_LIMITS: 'off' } });
});
after(async () => { await vault?.stop(); });

/** The counting statement, exactly as the Worker runs it (a Rust string literal). */
function addStatement() {
  const source = fs.readFileSync(path.join(ROOT, 'src/edge/d1/usage.rs'), 'utf8');
  const literal = source.match(/const ADD: &str = "((?:[^"\\]|\\.)*)";/s);
  assert.ok(literal, 'src/edge/d1/usage.rs declares const ADD');
  // A backslash at a line's end continues the string without the newline and the indent.
  return literal[1].replace(/\\\n\s*/g, '');
}

/** Runs `sql` with `params` on the vault's local D1, through the running instance. */
async function sql(statement, params = []) {
  const res = await fetch(`${vault.base}/__test/sql`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sql: statement, params }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, body.error);
  return body.results;
}

const today = () => new Date().toISOString().slice(0, 10);
const CRED = 'c_0123456789abcdef0123456789abcdef';

test('counting a call is one upsert whose counters add to the row', () => {
  const add = addStatement();
  assert.doesNotMatch(add, /;/, 'one statement');
  assert.match(add, /^INSERT INTO usage \(/);
  assert.match(add, /ON CONFLICT \(user_id, day, provider, credential_id, source, model\) DO UPDATE SET/);
  for (const counter of ['requests', 'input_tokens', 'output_tokens', 'characters', 'audio_seconds', 'incomplete']) {
    assert.match(add, new RegExp(`\\b${counter} = ${counter} \\+ excluded\\.${counter}\\b`), counter);
  }
  assert.doesNotMatch(add, /SELECT/i, 'no read before the write');
});

test('parallel calls on one row lose no count, and the listing reads them back for their user only', async () => {
  const add = addStatement();
  const day = today();
  // ?1 user, ?2 day, ?3 provider, ?4 credential ('' for a system key), ?5 source, ?6 model
  // ('' when unknown), ?7 input, ?8 output, ?9 characters, ?10 audio seconds, ?11 incomplete.
  const calls = [];
  for (let i = 0; i < 60; i += 1) {
    calls.push(sql(add, ['u_usage_a', day, 'openai', CRED, 'user', 'gpt-4o', 3, 2, 0, 0.5, i % 3 === 0 ? 1 : 0]));
  }
  for (let i = 0; i < 20; i += 1) {
    calls.push(sql(add, ['u_usage_a', day, 'elevenlabs', '', 'system', '', 0, 0, 10, 0, 0]));
    calls.push(sql(add, ['u_usage_b', day, 'elevenlabs', '', 'system', '', 0, 0, 100, 0, 0]));
  }
  await Promise.all(calls);

  const stored = await sql("SELECT * FROM usage WHERE user_id = 'u_usage_a' AND provider = 'openai'");
  assert.equal(stored.length, 1);
  assert.deepEqual(
    [stored[0].requests, stored[0].input_tokens, stored[0].output_tokens, stored[0].audio_seconds, stored[0].incomplete],
    [60, 180, 120, 30, 20],
  );

  const r = await vault.request('GET', '/v1/usage', { user: 'u_usage_a' });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.truncated, false);
  assert.equal(r.json.to, today());
  assert.deepEqual(r.json.usage, [
    { day, provider: 'elevenlabs', credential_id: null, source: 'system', model: null, requests: 20, input_tokens: 0, output_tokens: 0, characters: 200, audio_seconds: 0, incomplete: 0 },
    { day, provider: 'openai', credential_id: CRED, source: 'user', model: 'gpt-4o', requests: 60, input_tokens: 180, output_tokens: 120, characters: 0, audio_seconds: 30, incomplete: 20 },
  ]);

  // Summed over everything but the day; another user has none of it.
  const byDay = await vault.request('GET', `/v1/usage?group_by=day&from=${day}&to=${day}`, { user: 'u_usage_a' });
  assert.equal(byDay.status, 200, byDay.text);
  assert.deepEqual(byDay.json.usage.map((u) => [u.day, u.provider, u.source, u.requests, u.characters]), [[day, null, null, 80, 200]]);
  const other = await vault.request('GET', '/v1/usage', { user: 'u_usage_c' });
  assert.deepEqual(other.json.usage, []);

  const bad = await vault.request('GET', '/v1/usage?from=2026-02-30', { user: 'u_usage_a' });
  assert.equal(bad.status, 400, bad.text);
  assert.deepEqual(bad.json.errors.map((e) => e.field), ['from']);
});

test('operators read who spent how much of the system keys, and only they may', async () => {
  for (const token of [undefined, vault.token('u_usage_a'), RESOLVER]) {
    const r = await vault.request('GET', '/v1/admin/usage', { token });
    assert.equal(r.status, token === RESOLVER ? 403 : 401, r.text);
  }
  // The rows the previous test counted (each test file has its own vault).
  const r = await vault.request('GET', '/v1/admin/usage?source=system&group_by=provider', { token: ADMIN });
  assert.equal(r.status, 200, r.text);
  const mine = r.json.usage.filter((u) => u.user_id.startsWith('u_usage_'));
  assert.deepEqual(mine.map((u) => [u.user_id, u.provider, u.requests, u.characters]), [
    ['u_usage_a', 'elevenlabs', 20, 200],
    ['u_usage_b', 'elevenlabs', 20, 2000],
  ]);
  const one = await vault.request('GET', '/v1/admin/usage?user_id=u_usage_b', { token: ADMIN });
  assert.equal(one.status, 200, one.text);
  assert.deepEqual(one.json.usage.map((u) => [u.user_id, u.source, u.credential_id]), [['u_usage_b', 'system', null]]);
});
