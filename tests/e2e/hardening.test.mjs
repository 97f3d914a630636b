// End to end: what the security review found, as the behaviour that now holds, under
// wrangler dev (workerd, local D1, local queues, local rate-limit bindings).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { anchorSeal, verdict } from './anchors.mjs';
import { echoOf, startFakeProviders } from './fake-providers.mjs';
import { eventsOf, localSql, randomKey, rateWindow, startVault } from './harness.mjs';

const add = (vault, user, body) => vault.request('POST', '/v1/credentials', { user, body });

/** Polls `check` until it holds; fails after `timeoutMs` saying what was awaited. */
async function until(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every disguise of `key` the echo kinds use, and the key's 8-character fragments. */
function disguises(key) {
  return [key, key.toUpperCase(), Buffer.from(key).toString('base64'), encodeURIComponent(`${key}/`)];
}

function assertNoKey(text, key, where) {
  for (const d of disguises(key)) assert.ok(!text.includes(d), `${where} holds the key (${d.slice(0, 6)}…)`);
  // Any 8 characters of its random part identify the key (its `sk_<kind>_` prefix is the
  // fake's vocabulary, not a secret).
  const lower = text.toLowerCase();
  const random = key.slice(key.lastIndexOf('_') + 1);
  for (let i = 0; i + 8 <= random.length; i++) {
    assert.ok(!lower.includes(random.slice(i, i + 8)), `${where} holds a fragment of the key`);
  }
}

describe('provider text, concurrency, outbox, endpoints and bounds', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({
      vars: { ...fake.vars(), RATE_LIMITS: 'off', ALLOW_PRIVATE_BASE_URLS: 'true', MAX_CREDENTIALS_PER_USER: '3' },
    });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  const echoCases = [
    { provider: 'elevenlabs' },
    { provider: 'azure_speech', region: 'eastus' },
    { provider: 'deepgram' },
    { provider: 'openrouter' },
  ];
  for (const c of echoCases) {
    test(`${c.provider}: a secondary call that echoes the key leaves no trace of it anywhere`, async () => {
      const key = randomKey('echo');
      const user = `u_echo_${c.provider}`;
      const r = await add(vault, user, { ...c, api_key: key });
      assert.equal(r.status, 201, r.text);
      const warnings = r.json.credential.warnings;
      assert.ok(warnings.some((w) => w.includes('[redacted]')), JSON.stringify(warnings));
      assert.ok(warnings.every((w) => !/[\u202e\u0007\u200b]/.test(w)), 'hidden characters survived');
      assertNoKey(r.text, key, 'the answer');
      const list = await vault.request('GET', '/v1/credentials', { user });
      assert.deepEqual(list.json.credentials[0].warnings, warnings);
      assertNoKey(list.text, key, 'the list');
      const [row] = await vault.sql(`SELECT warnings, status_detail, models FROM credentials WHERE user_id = '${user}'`);
      assertNoKey(JSON.stringify(row), key, 'the row');
      for (const d of disguises(key)) {
        assert.deepEqual(await vault.stateFilesContaining(d), [], 'the D1 files hold the key');
      }
      assertNoKey(vault.log(), key, 'the log');
      // The fake really did echo it: the test would catch a leak.
      assert.ok(echoOf(key).includes(key));
    });
  }

  test('a refusal that echoes the key is reported without it', async () => {
    const key = randomKey('echoinvalid');
    const r = await add(vault, 'u_echo_refused', { provider: 'elevenlabs', api_key: key });
    assert.equal(r.status, 422);
    assert.match(r.json.detail, /^ElevenLabs says: Invalid API key: No access for key \[redacted\]/);
    assertNoKey(r.text, key, 'the problem');
    assertNoKey(vault.log(), key, 'the log');
  });

  test('model ids naming the key are dropped, names cleaned, oversized lists not read', async () => {
    const key = randomKey('echomodels');
    const r = await add(vault, 'u_models', { provider: 'elevenlabs', api_key: key });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.json.models, [{ id: 'eleven_echo_v1', name: 'Echo [redacted]', capabilities: ['tts'] }]);
    assertNoKey(r.text, key, 'the answer');

    const huge = await add(vault, 'u_models', { provider: 'elevenlabs', api_key: randomKey('huge') });
    assert.equal(huge.status, 201, huge.text);
    assert.match(huge.json.credential.warnings[0], /larger than 2097152 bytes/);
    assert.deepEqual(huge.json.models, []);
  });

  test('hidden characters are refused in keys and labels, on POST and PATCH alike', async () => {
    const user = 'u_input';
    const created = await add(vault, user, { provider: 'elevenlabs', api_key: randomKey('valid'), label: 'Plain' });
    assert.equal(created.status, 201);
    const id = created.json.credential.id;
    for (const [field, value] of [
      ['api_key', `sk_valid_${'a'.repeat(20)}\u0007b`], ['api_key', `sk_valid_${'a'.repeat(20)}\u200bb`],
      ['label', 'Per\u202esonal'], ['label', 'a\u2066b'], ['label', 'zero\u200bwidth'], ['label', 'bom\ufeff'],
    ]) {
      const patched = await vault.request('PATCH', `/v1/credentials/${id}`, { user, body: { [field]: value } });
      assert.equal(patched.status, 400, `${field} ${JSON.stringify(value)}: ${patched.text}`);
      assert.deepEqual(patched.json.errors.map((e) => e.field), [field]);
      const posted = await add(vault, user, { provider: 'elevenlabs', api_key: randomKey('valid'), [field]: value });
      assert.equal(posted.status, 400, `${field} ${JSON.stringify(value)}: ${posted.text}`);
    }
    const shown = await vault.request('GET', `/v1/credentials/${id}`, { user });
    assert.equal(shown.json.label, 'Plain');
    assert.equal(shown.json.key_hint, created.json.credential.key_hint);
  });

  test('a rotation during a slow re-check stands, and the trail tells what happened', async () => {
    const user = 'u_race';
    const slow = randomKey('slowvalid');
    const created = await add(vault, user, { provider: 'elevenlabs', api_key: slow, label: 'Race' });
    assert.equal(created.status, 201, created.text);
    const id = created.json.credential.id;
    // The re-check's call to the provider is held until the rotation has landed: the
    // rotation is certainly during the check, whatever the machine's speed.
    const asked = fake.callsFor(slow).length;
    const next = randomKey('valid');
    const release = fake.hold(slow);
    let checked;
    try {
      const recheck = vault.request('POST', `/v1/credentials/${id}/validate`, { user });
      await until(() => fake.callsFor(slow).length > asked, 'the re-check reached the provider');
      const rotated = await vault.request('PATCH', `/v1/credentials/${id}`, { user, body: { api_key: next } });
      assert.equal(rotated.status, 200, rotated.text);
      release();
      checked = await recheck;
    } finally {
      release();
    }
    // The re-check was of a key that is no longer stored: it writes nothing, and says so.
    assert.equal(checked.status, 409, checked.text);
    assert.equal(checked.json.code, 'conflict');
    const shown = await vault.request('GET', `/v1/credentials/${id}`, { user });
    assert.equal(shown.json.key_hint, `…${next.slice(-4)}`);
    assert.equal(shown.json.status, 'valid');
    // The stored key is the new one: a re-check now probes it.
    const again = await vault.request('POST', `/v1/credentials/${id}/validate`, { user });
    assert.equal(again.status, 200, again.text);
    assert.ok(fake.callsFor(next).length >= 3, 'the new key was probed again');
    const events = await eventsOf(vault, user, 5);
    assert.deepEqual(events.map((e) => [e.action, e.outcome, e.reason]), [
      ['credential.created', 'success', null],
      ['credential.rotated', 'success', null],
      ['credential.validated', 'failure', 'conflict'],
      ['credential.viewed', 'success', null],
      ['credential.validated', 'success', null],
    ]);
  });

  test('the same key added by parallel requests is stored once; the others get 409, never 500', async () => {
    const user = 'u_parallel';
    const key = randomKey('slowvalid');
    const answers = await Promise.all(Array.from({ length: 4 }, () => add(vault, user, { provider: 'elevenlabs', api_key: key })));
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [201, 409, 409, 409], answers.map((a) => a.text).join('\n'));
    const stored = answers.find((a) => a.status === 201).json.credential.id;
    for (const a of answers.filter((x) => x.status === 409)) {
      assert.equal(a.json.code, 'duplicate_credential');
      assert.equal(a.json.credential_id, stored);
    }
    assert.deepEqual(await vault.sql(`SELECT id FROM credentials WHERE user_id = '${user}'`), [{ id: stored }]);
  });

  test('a user holds at most MAX_CREDENTIALS_PER_USER keys, checked before the provider is asked', async () => {
    const user = 'u_full';
    for (let i = 0; i < 3; i++) {
      assert.equal((await add(vault, user, { provider: 'elevenlabs', api_key: randomKey('valid') })).status, 201);
    }
    const extra = randomKey('valid');
    const r = await add(vault, user, { provider: 'elevenlabs', api_key: extra });
    assert.equal(r.status, 409);
    assert.equal(r.json.code, 'credential_limit_reached');
    assert.deepEqual(fake.callsFor(extra), []);
    assert.equal((await vault.sql(`SELECT COUNT(*) AS n FROM credentials WHERE user_id = '${user}'`))[0].n, 3);
  });

  test('a base_url that redirects is refused, and the redirect is not followed', async () => {
    const reachedTarget = () => fake.requests.filter((q) => q.provider === 'ollama').length;
    const before = reachedTarget();
    const r = await add(vault, 'u_redirect', { provider: 'ollama', base_url: `${fake.url}/redirect/ollama` });
    assert.equal(r.status, 502, r.text);
    assert.equal(r.json.code, 'provider_error');
    assert.match(r.json.detail, /redirect/);
    assert.ok(fake.requests.some((q) => q.path === '/redirect/ollama/api/tags'), 'the vault asked the redirecting URL');
    assert.equal(reachedTarget(), before, 'the redirect was followed');
    assert.equal((await vault.sql("SELECT COUNT(*) AS n FROM credentials WHERE user_id = 'u_redirect'"))[0].n, 0);
  });

  test('an event whose nudge was lost is chained by the cron sweep, once', async () => {
    const user = 'u_swept';
    const event = {
      id: `ev_${Date.now().toString(16).padStart(12, '0')}0000${crypto.randomBytes(12).toString('hex')}`,
      at: Date.now(), user_id: user, action: 'credential.viewed', actor: { type: 'user', id: user },
      credential_id: null, provider: null, outcome: 'success', reason: null, source: null,
      request_id: 'req_swept', detail: null,
    };
    const body = JSON.stringify(event).replaceAll("'", "''");
    await vault.sql(`INSERT INTO audit_outbox (id, user_id, event, created_at) VALUES ('${event.id}', '${user}', '${body}', ${Date.now()})`);
    for (let i = 0; i < 2; i++) {
      const cron = await fetch(`${vault.base}/__scheduled?cron=${encodeURIComponent('0 * * * *')}`);
      assert.equal(cron.status, 200, await cron.text());
    }
    const events = await eventsOf(vault, user, 1);
    assert.deepEqual(events.map((e) => [e.id, e.seq]), [[event.id, 1]]);
    assert.deepEqual(verdict((await vault.request('GET', '/v1/audit/verify', { user })).json), { ok: true, checked: 1 });
    assert.deepEqual(await vault.sql('SELECT COUNT(*) AS n FROM audit_outbox'), [{ n: 0 }]);
  });

  test('verification is bounded per request and pages through a chain of 12 000 events', async () => {
    const user = 'u_long';
    const n = 12_000;
    const { sql, head } = chainSql(user, n);
    const file = path.join(vault.dir, 'long-chain.sql');
    await writeFile(file, sql);
    await localSql(vault.state, { file });
    const seal = anchorSeal(vault.secrets.MASTER_KEY, { user, seq: n, hash: head, at: 0 });
    await vault.sql(`INSERT INTO audit_heads (user_id, seq, hash, updated_at, mac, mac_version) VALUES ('${user}', ${n}, '${head}', 0, '${seal.mac}', 1)`);
    let cursor;
    let pages = 0;
    let last;
    do {
      const r = await vault.request('GET', `/v1/audit/verify${cursor ? `?cursor=${cursor}` : ''}`, { user });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.ok, true, r.text);
      cursor = r.json.next_cursor;
      last = r.json;
      pages += 1;
    } while (cursor && pages < 10);
    assert.deepEqual(verdict(last), { ok: true, checked: n });
    assert.equal(pages, 3);
    // An edited row deep in the chain is found by following the pages.
    await vault.sql(`UPDATE audit_events SET outcome = 'failure' WHERE user_id = '${user}' AND seq = 7777`);
    cursor = undefined;
    for (let i = 0; i < 10; i++) {
      const r = await vault.request('GET', `/v1/audit/verify${cursor ? `?cursor=${cursor}` : ''}`, { user });
      last = r.json;
      cursor = r.json.next_cursor;
      if (!cursor) break;
    }
    assert.deepEqual(verdict(last), { ok: false, checked: 7776, broken_seq: 7777 });
  });
});

/** The canonical JSON the vault hashes: keys sorted at every depth, no whitespace. */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

/** SQL inserting a valid chain of `n` events for `user`, hashed independently of the vault. */
function chainSql(user, n) {
  let prev = '0'.repeat(64);
  const lines = [];
  for (let seq = 1; seq <= n; seq++) {
    const e = {
      id: `ev_${seq.toString(16).padStart(12, '0')}0000${'0'.repeat(24)}`, at: 1_800_000_000_000 + seq, user_id: user,
      action: 'credential.viewed', actor: { type: 'user', id: user }, credential_id: null, provider: null,
      outcome: 'success', reason: null, source: null, request_id: `req_${seq}`, detail: null,
    };
    const hash = crypto.createHash('sha256').update(prev).update(canonical({ ...e, seq })).digest('hex');
    lines.push(`('${e.id}','${user}',${seq},${e.at},'credential.viewed','user','${user}',NULL,NULL,'success',NULL,NULL,'req_${seq}',NULL,'${prev}','${hash}')`);
    prev = hash;
  }
  const cols = 'id, user_id, seq, at, action, actor_type, actor_id, credential_id, provider, outcome, reason, source, request_id, detail, prev_hash, hash';
  const chunks = [];
  for (let i = 0; i < lines.length; i += 100) chunks.push(`INSERT INTO audit_events (${cols}) VALUES\n${lines.slice(i, i + 100).join(',\n')};`);
  return { sql: chunks.join('\n'), head: prev };
}

describe('the vault\'s own limits on live checks (RATE_LIMITS on, the default)', () => {
  let fake;
  let vault;
  before(async () => {
    fake = await startFakeProviders();
    vault = await startVault({ vars: fake.vars() });
  });
  after(async () => {
    await vault?.stop();
    await fake?.close();
  });

  test('a burst of re-checks from one user gets 429s before the provider is asked', async () => {
    const user = 'u_burst';
    const key = randomKey('valid');
    const windows = await rateWindow(15_000);
    const created = await add(vault, user, { provider: 'elevenlabs', api_key: key });
    assert.equal(created.status, 201, created.text);
    const id = created.json.credential.id;
    const requests = 25;
    const answers = [];
    for (let i = 0; i < requests; i++) answers.push(await vault.request('POST', `/v1/credentials/${id}/validate`, { user }));
    const spanned = windows();
    const refused = answers.filter((a) => a.status === 429);
    // LIVE_CHECKS_PER_USER: 10 per window, the add's check among them.
    assert.ok(refused.length >= Math.max(5, requests - 10 * spanned), `only ${refused.length} of ${requests} refused in ${spanned} window(s)`);
    assert.ok(answers.every((a) => a.status === 200 || a.status === 429));
    if (spanned === 1) {
      const statuses = answers.map((a) => a.status).join(',');
      assert.match(statuses, /^(200,)*429(,429)*$/, 'a check went through after one was refused, in one window');
    }
    for (const a of refused) {
      assert.equal(a.json.code, 'rate_limited');
      assert.equal(a.headers.get('retry-after'), '60');
      assert.equal(a.json.retry_after_seconds, 60);
    }
    // One probe (subscription) per check that went through: fewer than the requests.
    const probes = fake.callsFor(key).filter((c) => c.path === '/v1/user/subscription').length;
    assert.equal(probes, 1 + answers.filter((a) => a.status === 200).length);
    assert.ok(probes < requests + 1);
    // Views are not limited.
    assert.equal((await vault.request('GET', `/v1/credentials/${id}`, { user })).status, 200);
    const events = await eventsOf(vault, user, requests + 1);
    assert.ok(events.some((e) => e.action === 'credential.validated' && e.reason === 'rate_limited'));
  });

  test('a burst of adds from one address across many users gets 429s too', async () => {
    const requests = 130;
    const keys = Array.from({ length: requests }, () => randomKey('valid'));
    const windows = await rateWindow(25_000);
    const answers = [];
    for (let i = 0; i < requests; i += 10) {
      answers.push(...await Promise.all(keys.slice(i, i + 10).map((k, j) => add(vault, `u_many_${i + j}`, { provider: 'elevenlabs', api_key: k }))));
    }
    const spanned = windows();
    const refused = answers.filter((a) => a.status === 429);
    // LIVE_CHECKS_PER_ADDRESS: 60 per window (the re-checks above may have used some).
    assert.ok(refused.length >= Math.max(10, requests - 60 * spanned), `only ${refused.length} of ${requests} refused in ${spanned} window(s)`);
    assert.ok(answers.every((a) => a.status === 201 || a.status === 429), answers.map((a) => a.status).join(','));
    const probed = keys.filter((k) => fake.callsFor(k).length > 0).length;
    assert.equal(probed, answers.filter((a) => a.status === 201).length);
    assert.ok(probed < requests);
    // What was refused stored nothing.
    assert.equal((await vault.sql("SELECT COUNT(*) AS n FROM credentials WHERE user_id LIKE 'u_many_%'"))[0].n, probed);
  });

  test('base_urls that reach local or IPv4 space through IPv6 are refused as input', async () => {
    for (const base_url of [
      'https://[::ffff:127.0.0.1]', 'https://[::ffff:7f00:1]', 'https://[::127.0.0.1]', 'https://[64:ff9b::a9fe:a9fe]',
      'https://[2002:7f00:1::1]', 'https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]', 'https://[fec0::1]', 'https://[fd12::1]',
      'https://[ff02::1]', 'https://[::]', 'https://192.0.0.8', 'https://198.18.0.1', 'https://240.0.0.1',
      'https://255.255.255.255', 'https://0.0.0.0', 'https://0x7f.1', 'https://169.254.169.254',
    ]) {
      const r = await add(vault, 'u_ssrf', { provider: 'ollama', base_url });
      assert.equal(r.status, 400, `${base_url}: ${r.text}`);
      assert.deepEqual(r.json.errors.map((e) => e.field), ['base_url'], base_url);
    }
  });
});

describe('production refuses to run without an audience', () => {
  let vault;
  after(async () => { await vault?.stop(); });

  test('without AUTH_AUDIENCE health names it and the API answers 503', async () => {
    vault = await startVault({ vars: { ENVIRONMENT: 'production' } });
    const health = await vault.request('GET', '/v1/health');
    assert.equal(health.status, 503);
    assert.equal(health.json.code, 'not_configured');
    assert.ok(health.json.problems.some((p) => p.startsWith('AUTH_AUDIENCE')), health.text);
    const r = await vault.request('GET', '/v1/credentials', { user: 'u_a' });
    assert.equal(r.status, 503);
    await vault.stop();

    vault = await startVault({ vars: { ENVIRONMENT: 'production', AUTH_AUDIENCE: 'https://app.example' } });
    assert.equal((await vault.request('GET', '/v1/health')).status, 200);
    assert.equal((await vault.request('GET', '/v1/credentials', { user: 'u_a' })).status, 401, 'a token without aud');
    const wrong = vault.token('u_a', { aud: 'https://other.example' });
    assert.equal((await vault.request('GET', '/v1/credentials', { token: wrong })).status, 401);
    const right = vault.token('u_a', { aud: 'https://app.example' });
    assert.equal((await vault.request('GET', '/v1/credentials', { token: right })).status, 200);
  });
});
