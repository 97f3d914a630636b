// End to end: moving keys an operator holds into the vault. POST /v1/admin/import with a
// dry run (which changes nothing and names no credential a user holds), the real run
// (which creates what the dry run promised, and tells a user whose key it found held), a
// second run (which creates no duplicates), a rollback (which removes exactly the rows
// of the batch that no user changed since), rows imported unchecked (never preferred over
// the user's own key; an Ollama row's base_url never called before a check succeeds), and
// scripts/import.mjs turning a .env and a JSON export into import requests (a dry run
// unless told --commit). Under wrangler dev (workerd, local D1, local queues) against the
// fake providers.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { ROOT, assertSameKey, eventsOf, randomKey, serviceTokens, startVault, withoutKey } from './harness.mjs';
import { entriesFromEnv, entriesFromJson, parseEnv } from '../../scripts/import.mjs';

const {
  tokens: { 'tts-service': RESOLVER, ops: ADMIN },
  SERVICE_TOKENS,
} = serviceTokens({ 'tts-service': ['resolve'], ops: ['admin'] });

let fake;
let vault;
let tmp;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({ secrets: { SERVICE_TOKENS }, vars: { ...fake.vars(), RATE_LIMITS: 'off', ALLOW_PRIVATE_BASE_URLS: 'true' } });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'byok-import-'));
});
after(async () => {
  await vault?.stop();
  await fake?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const importing = (body) => vault.request('POST', '/v1/admin/import', { token: ADMIN, body });
const rollback = (batch) => vault.request('POST', `/v1/admin/import/${batch}/rollback`, { token: ADMIN });
const outcomes = (report) => report.entries.map((e) => (e.reason ? `${e.outcome}:${e.reason}` : e.outcome));
/** What a dry run could change: credential rows, events (queued or chained), jobs. */
const footprint = async () => (await vault.sql(
  `SELECT (SELECT COUNT(*) FROM credentials) AS credentials,
     (SELECT COUNT(*) FROM audit_outbox) + (SELECT COUNT(*) FROM audit_events) AS events,
     (SELECT COUNT(*) FROM jobs) AS jobs`,
))[0];
const batchRows = (batch) => vault.sql(
  `SELECT id, user_id, provider, status, key_version FROM credentials WHERE import_batch_id = '${batch}' ORDER BY id`,
);

describe('POST /v1/admin/import', () => {
  const providers = [
    { provider: 'elevenlabs' },
    { provider: 'openai' },
    { provider: 'anthropic' },
    { provider: 'gemini' },
    { provider: 'azure_speech', params: { region: 'westeurope' } },
  ];
  // 20 new keys across providers and users, one the user already holds, one sent twice,
  // one the provider refuses, one for a provider that does not exist.
  const keys = providers.flatMap((p, i) => Array.from({ length: 4 }, (_, j) => ({
    user_id: `u_imp_${j}`, ...p, api_key: randomKey('valid'), label: `Old ${p.provider} ${i}.${j}`,
  })));
  let held;
  const entries = () => [
    ...keys,
    { user_id: 'u_imp_0', provider: 'openai', api_key: held.key },
    keys[3],
    { user_id: 'u_imp_1', provider: 'openai', api_key: randomKey('invalid') },
    { user_id: 'u_imp_2', provider: 'nope', api_key: randomKey('valid') },
  ];
  let dry;
  let real;

  before(async () => {
    held = { key: randomKey('valid') };
    const r = await vault.request('POST', '/v1/credentials', {
      user: 'u_imp_0', body: { provider: 'openai', api_key: held.key },
    });
    assert.equal(r.status, 201, r.text);
    held.id = r.json.credential.id;
    await eventsOf(vault, 'u_imp_0', 1);
  });

  test('a dry run reports every entry and changes nothing', async () => {
    const before = await footprint();
    const calls = fake.requests.length;
    const r = await importing({ dry_run: true, validate: true, entries: entries() });
    assert.equal(r.status, 200, r.text);
    dry = r.json;
    assert.equal(dry.batch_id, null);
    assert.deepEqual(outcomes(dry), [
      ...keys.map(() => 'created'),
      'skipped:duplicate', 'skipped:duplicate', 'rejected:invalid_api_key', 'rejected:unknown_provider',
    ]);
    // Skipped as held, but which credential holds it is not told: a dry run writes no
    // event that would let the user see someone asked (issue 18: this named held.id).
    assert.equal(dry.entries[20].credential_id, null);
    assert.ok(!r.text.includes(held.id), 'the dry run named the holder');
    assert.equal(dry.entries[21].same_as_entry, 3);
    assert.match(dry.entries[22].message, /incorrect api key|invalid/i);
    assert.deepEqual(dry.summary, { entries: 24, created: 20, skipped: 2, rejected: 2 });
    assert.ok(fake.requests.length - calls >= 21, 'every new key was checked live');
    assert.deepEqual(await footprint(), before, 'the dry run wrote something');
  });

  test('the real run creates what the dry run promised, sealed, audited and usable', async () => {
    assert.ok(dry, 'needs the dry run');
    const before = await footprint();
    const r = await importing({ dry_run: false, validate: true, entries: entries() });
    assert.equal(r.status, 200, r.text);
    real = r.json;
    assert.match(real.batch_id, /^imp_[0-9a-f]{32}$/);
    assert.deepEqual(outcomes(real), outcomes(dry));
    const created = real.entries.filter((e) => e.outcome === 'created');
    assert.equal(created.length, 20);
    const rows = await batchRows(real.batch_id);
    assert.deepEqual(rows.map((row) => row.id), created.map((e) => e.credential_id).sort());
    for (const row of rows) assert.equal(row.status, 'valid');
    const after = await footprint();
    assert.equal(after.credentials, before.credentials + 20);
    assert.equal((await vault.sql(`SELECT total FROM jobs WHERE id = '${real.batch_id}'`))[0].total, 20);

    // Each row answers for its user, with the key that was imported.
    for (const i of [0, 9, 17]) {
      const res = await vault.request('POST', '/v1/resolve', {
        token: RESOLVER,
        body: { user_id: keys[i].user_id, capability: keys[i].provider === 'elevenlabs' || keys[i].provider === 'azure_speech' ? 'tts' : 'llm', provider: keys[i].provider, credential_id: real.entries[i].credential_id },
      });
      assert.equal(res.status, 200, withoutKey(res.text));
      assertSameKey(res.json.api_key, keys[i].api_key, `imported key ${i}`);
    }
    const events = await eventsOf(vault, 'u_imp_1', 5);
    const imported = events.filter((e) => e.action === 'credential.imported');
    assert.equal(imported.length, 5);
    assert.deepEqual(imported[0].actor, { type: 'service', id: 'ops' });
    // The real run names the credential that held a key, and tells its user so.
    assert.equal(real.entries[20].credential_id, held.id);
    await waitFor(async () => (await eventsOf(vault, 'u_imp_0', 1, 0)).some((e) => e.action === 'credential.imported'
      && e.outcome === 'failure' && e.reason === 'duplicate_credential' && e.credential_id === held.id
      && e.actor.id === 'ops'));
    // No key in the database, the queues or the log.
    for (const k of [keys[0].api_key, keys[13].api_key]) {
      assert.deepEqual(await vault.stateFilesContaining(k), []);
      assert.ok(!vault.log().includes(k), 'a key reached the log');
    }
  });

  test('importing the same entries again creates no duplicates', async () => {
    assert.ok(real, 'needs the real run');
    const before = await footprint();
    const r = await importing({ dry_run: false, validate: true, entries: entries() });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.summary.created, 0);
    assert.deepEqual(outcomes(r.json).slice(20), ['skipped:duplicate', 'skipped:duplicate', 'rejected:invalid_api_key', 'rejected:unknown_provider']);
    for (const [i, e] of real.entries.entries()) {
      if (e.outcome === 'created') {
        assert.equal(r.json.entries[i].outcome, 'skipped');
        assert.equal(r.json.entries[i].credential_id, e.credential_id);
      }
    }
    assert.equal((await footprint()).credentials, before.credentials);
    assert.equal((await batchRows(r.json.batch_id)).length, 0);
    // A batch that stored nothing is still one: it can be rolled back (to no effect).
    const back = await rollback(r.json.batch_id);
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.removed, 0);
  });

  test('a rollback removes exactly the rows of the batch that no user changed since', async () => {
    assert.ok(real, 'needs the real run');
    const created = real.entries.filter((e) => e.outcome === 'created');
    const [renamed, chosen] = [created[0], created[1]];
    const p = await vault.request('PATCH', `/v1/credentials/${renamed.credential_id}`, {
      user: renamed.user_id, body: { label: 'Mine now' },
    });
    assert.equal(p.status, 200, p.text);
    const d = await vault.request('PUT', '/v1/preferences/tts', {
      user: chosen.user_id, body: { credential_id: chosen.credential_id },
    });
    assert.equal(d.status, 200, d.text);
    const before = await footprint();

    const r = await rollback(real.batch_id);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.created, 20);
    assert.equal(r.json.removed, 18);
    const removed = r.json.removed_credentials.map((x) => x.credential_id).sort();
    const expected = created.slice(2).map((e) => e.credential_id).sort();
    assert.deepEqual(removed, expected);
    assert.deepEqual(r.json.kept.map((k) => k.credential_id), [chosen.credential_id]);
    assert.equal((await footprint()).credentials, before.credentials - 18);
    const left = await vault.sql(`SELECT id, import_batch_id FROM credentials WHERE id IN ('${renamed.credential_id}', '${chosen.credential_id}', '${held.id}') ORDER BY id`);
    assert.equal(left.length, 3);
    assert.equal(left.find((x) => x.id === renamed.credential_id).import_batch_id, null, 'a changed row left its batch');
    // Each removal is audited on its user's chain.
    const gone = created[2];
    await waitFor(async () => (await eventsOf(vault, gone.user_id, 1, 0))
      .some((e) => e.action === 'credential.deleted' && e.credential_id === gone.credential_id));

    const again = await rollback(real.batch_id);
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.removed, 0);
    assert.equal((await rollback(`imp_${'0'.repeat(32)}`)).status, 404);
  });
});

describe('rows imported without a check', () => {
  const importOne = async (entry) => {
    const r = await importing({ dry_run: false, entries: [entry] });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.entries[0].outcome, 'created', r.text);
    assert.equal(r.json.entries[0].status, 'unverified');
    return r.json.entries[0].credential_id;
  };

  test("never take over from the user's own key, in resolve or the proxy", async () => {
    const own = randomKey('valid');
    const added = await vault.request('POST', '/v1/credentials', { user: 'u_own', body: { provider: 'openai', api_key: own } });
    assert.equal(added.status, 201, added.text);
    const planted = randomKey('valid');
    const id = await importOne({ user_id: 'u_own', provider: 'openai', api_key: planted });
    const listed = await vault.request('GET', '/v1/credentials', { user: 'u_own' });
    assert.equal(listed.json.credentials.find((c) => c.id === id).status, 'unverified');

    const res = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: 'u_own', capability: 'llm', provider: 'openai' } });
    assert.equal(res.status, 200, withoutKey(res.text));
    assert.equal(res.json.credential_id, added.json.credential.id);
    assertSameKey(res.json.api_key, own, "the user's own key");
    const calls = fake.requests.length;
    const p = await vault.request('POST', '/v1/proxy/openai/v1/chat/completions', {
      user: 'u_own', body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] },
    });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.headers.get('x-byok-credential-id'), added.json.credential.id);
    const sent = fake.requests.slice(calls).filter((r) => r.operation);
    assert.ok(sent.length > 0 && sent.every((r) => r.key === own), 'the proxy used another key than the user\'s own');
  });

  test("an Ollama row's base_url is never called until a check there succeeds", async () => {
    const calls = () => fake.requests.filter((r) => r.provider === 'ollama').length;
    const before = calls();
    const id = await importOne({ user_id: 'u_oll', provider: 'ollama', params: { base_url: fake.base('ollama') } });
    for (const body of [
      { user_id: 'u_oll', capability: 'llm', provider: 'ollama' },
      { user_id: 'u_oll', capability: 'llm', credential_id: id },
    ]) {
      const r = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body });
      assert.equal(r.status, 404, withoutKey(r.text));
      assert.equal(r.json.code, 'no_credential');
    }
    const p = await vault.request('POST', '/v1/proxy/ollama/api/chat', {
      user: 'u_oll', body: { model: 'llama3.2', messages: [{ role: 'user', content: 'Hi' }], stream: false },
    });
    assert.equal(p.status, 404, p.text);
    assert.equal(calls(), before, "the importer's base_url was called");

    // The user checks it: the one call there is the check; from then on it serves.
    const v = await vault.request('POST', `/v1/credentials/${id}/validate`, { user: 'u_oll' });
    assert.equal(v.status, 200, v.text);
    assert.equal(v.json.status, 'valid');
    assert.equal(calls(), before + 1);
    const r = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: 'u_oll', capability: 'llm', provider: 'ollama' } });
    assert.equal(r.status, 200, withoutKey(r.text));
    assert.equal(r.json.credential_id, id);
  });
});

async function waitFor(check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail('timed out waiting');
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Runs scripts/import.mjs; its exit code and output (stdout and stderr together). */
function script(args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'scripts/import.mjs'), ...args], {
      cwd: ROOT, env: { ...process.env, BYOK_ADMIN_TOKEN: ADMIN, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
}

describe('scripts/import.mjs', () => {
  test('reads .env names, quotes and byok-vault system key names; never a value in an error', () => {
    const vars = parseEnv([
      '# deployment keys',
      'export OPENAI_API_KEY="sk-one" # the team key',
      "ANTHROPIC_API_KEY='sk-two'",
      'SYSTEM_KEY_AZURE_SPEECH=az-three',
      'SYSTEM_KEY_AZURE_SPEECH_REGION=westeurope',
      'OLLAMA_BASE_URL=https://ollama.example',
      'DATABASE_URL=postgres://x',
      '',
    ].join('\n'), 'deploy.env');
    const { entries, ignored } = entriesFromEnv(vars, { user: 'u_ops', file: 'deploy.env' });
    assert.deepEqual(entries.map((e) => [e.entry.provider, e.entry.api_key ?? null, e.entry.params ?? null, e.source]), [
      ['azure_speech', 'az-three', { region: 'westeurope' }, 'deploy.env:4'],
      ['openai', 'sk-one', null, 'deploy.env:2'],
      ['anthropic', 'sk-two', null, 'deploy.env:3'],
      ['ollama', null, { base_url: 'https://ollama.example' }, 'deploy.env:6'],
    ]);
    assert.deepEqual(ignored, ['DATABASE_URL']);
    assert.throws(() => parseEnv('OPENAI_API_KEY sk-secret-value\n', 'bad.env'), (e) => !e.message.includes('sk-secret-value') && /bad\.env:1/.test(e.message));
    const json = entriesFromJson({ credentials: [{ userId: 'u1', service: 'openai', apiKey: 'k', baseUrl: undefined }] }, { file: 'x.json' });
    assert.deepEqual(json.entries[0].entry, { user_id: 'u1', provider: 'openai', api_key: 'k' });
  });

  test('moves a .env of system keys in for one user, with a progress bar and no key in its output', async () => {
    const openai = randomKey('valid');
    const eleven = randomKey('valid');
    const env = path.join(tmp, 'deploy.env');
    fs.writeFileSync(env, `OPENAI_API_KEY=${openai}\nELEVENLABS_API_KEY="${eleven}"\nPORT=8080\n`);
    const report = path.join(tmp, 'env-report.json');
    const r = await script(['--env', env, '--user', 'u_env', '--url', vault.base, '--validate', '--commit', '--report', report]);
    assert.equal(r.code, 0, r.out.replaceAll(openai, '…').replaceAll(eleven, '…'));
    assert.ok(!r.out.includes(openai) && !r.out.includes(eleven), 'a key reached the output');
    assert.match(r.out, /\[#+\] 2\/2 entries/);
    assert.match(r.out, /ignored .*PORT/);
    const written = JSON.parse(fs.readFileSync(report, 'utf8'));
    assert.deepEqual(written.entries.map((e) => e.outcome), ['created', 'created']);
    assert.ok(!fs.readFileSync(report, 'utf8').includes(openai));
    const res = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: 'u_env', capability: 'llm', provider: 'openai' } });
    assert.equal(res.status, 200, withoutKey(res.text));
    assertSameKey(res.json.api_key, openai);
  });

  test('a JSON export larger than one request goes in as one batch, and one rollback takes it back', async () => {
    const n = 450;
    const exported = Array.from({ length: n }, (_, i) => ({
      user: `u_exp_${i % 90}`, provider: ['openai', 'anthropic', 'gemini'][i % 3], key: randomKey('valid'), name: `Export ${i}`,
    }));
    const file = path.join(tmp, 'export.json');
    fs.writeFileSync(file, JSON.stringify({ credentials: exported }));
    const report = path.join(tmp, 'export-report.json');
    const before = await footprint();

    // Without --commit the script only reports, as the endpoint does.
    for (const flags of [[], ['--dry-run']]) {
      const dry = await script(['--json', file, '--url', vault.base, ...flags, '--report', report]);
      assert.equal(dry.code, 0, dry.out);
      assert.match(dry.out, /would create 450/);
      assert.match(dry.out, /run again with --commit/);
      const { credentials, jobs } = await footprint();
      assert.deepEqual({ credentials, jobs }, { credentials: before.credentials, jobs: before.jobs }, `the dry run (${flags}) wrote something`);
    }

    const r = await script(['--json', file, '--url', vault.base, '--commit', '--report', report]);
    assert.equal(r.code, 0, r.out);
    assert.equal((r.out.match(/\[[#.]+\] \d+\/450 entries/g) ?? []).length, 3, 'a progress line per request');
    const written = JSON.parse(fs.readFileSync(report, 'utf8'));
    assert.equal(written.summary.created, n);
    assert.equal(written.entries[449].source, 'export.json#449');
    assert.equal((await batchRows(written.batch_id)).length, n);
    assert.ok(!r.out.includes(exported[0].key) && !fs.readFileSync(report, 'utf8').includes(exported[0].key));

    const again = await script(['--json', file, '--url', vault.base, '--commit']);
    assert.equal(again.code, 0, again.out);
    assert.match(again.out, /created 0, skipped 450/);

    const back = await rollback(written.batch_id);
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.removed, n);
    assert.equal((await footprint()).credentials, before.credentials);
  });

  test('a refused request stops the script with the reason, and bad arguments say what is wrong', async () => {
    const file = path.join(tmp, 'one.json');
    fs.writeFileSync(file, JSON.stringify([{ user_id: 'u_x', provider: 'openai', api_key: randomKey('valid') }]));
    const refused = await script(['--json', file, '--url', vault.base, '--commit'], { BYOK_ADMIN_TOKEN: RESOLVER });
    assert.equal(refused.code, 2);
    assert.match(refused.out, /403 forbidden/);
    const usage = await script(['--env', path.join(tmp, 'deploy.env')]);
    assert.equal(usage.code, 2);
    assert.match(usage.out, /--user is required/);
    const plain = await script(['--json', file, '--url', 'http://vault.example']);
    assert.equal(plain.code, 2);
    assert.match(plain.out, /must be https/);
    const both = await script(['--json', file, '--url', vault.base, '--commit', '--dry-run']);
    assert.equal(both.code, 2);
    assert.match(both.out, /contradict/);
  });
});
