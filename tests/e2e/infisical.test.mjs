// End to end: system keys from Infisical (SYSTEM_KEYS_SOURCE=infisical) under wrangler dev,
// against the loopback fake Infisical: the three tiers (Infisical → the cached set → the
// Worker's secrets), the TTL, rotation, outages, revocation, a refused login and a
// misconfigured environment, as POST /v1/resolve and GET /v1/health tell them.
//
// Three vaults, started together: `main` (the tiers, TTL 2 s, max stale 6 s), `badSecret`
// (a client secret Infisical refuses) and `wrongEnv` (INFISICAL_ENVIRONMENT=prod in
// development). After any failure the vault does not ask Infisical again for 10 s; the
// waits below are measured from the fake's own request log, not guessed.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { startFakeInfisical } from './fake-infisical.mjs';
import { assertSameKey, randomKey, startVault, withoutKey } from './harness.mjs';

/** Asserts the vault's log comes to match `pattern` (wrangler writes the Worker's lines a
 * moment after the answer that caused them); returns the log. */
async function assertLog(v, pattern, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  let log = v.log();
  while (!pattern.test(log) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    log = v.log();
  }
  assert.match(log, pattern);
  return log;
}

const TTL_MS = 2_000;
const MAX_STALE_MS = 6_000;
const QUIET_MS = 10_000; // the vault's spacing after a failure (MIN_RETRY_MS)
const SLACK_MS = 1_000; // how far past a boundary the steps act: the vault's clock reads it a request's time later
const NAME = 'SYSTEM_KEY_OPENAI';

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const sleepUntil = (at) => sleep(at - Date.now());
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const lastAt = (fake, path) => fake.requests.filter((r) => !path || r.path === path).at(-1)?.at ?? 0;
const LIST = '/api/v3/secrets/raw';

const serviceToken = `svc_${crypto.randomBytes(24).toString('hex')}`;
const SERVICE_TOKENS = JSON.stringify([{ name: 'svc', sha256: sha256(serviceToken), scopes: ['resolve'] }]);

const identity = (env = 'dev') => ({
  clientId: crypto.randomUUID(),
  clientSecret: `ua_${crypto.randomBytes(24).toString('hex')}`,
  projectId: crypto.randomUUID(),
  environment: env,
  secretPath: '/byok',
});

/** The secrets that point a vault at `fake`; Infisical's settings too are secrets here. */
const infisicalSecrets = (fake, envKey, extra = {}) => ({
  ...fake.vars(),
  INFISICAL_CACHE_TTL_SECONDS: String(TTL_MS / 1000),
  INFISICAL_MAX_STALE_SECONDS: String(MAX_STALE_MS / 1000),
  [NAME]: envKey,
  SERVICE_TOKENS,
  ...extra,
});

const resolve = (vault, user = 'u_no_keys') => vault.request('POST', '/v1/resolve', {
  token: serviceToken, body: { user_id: user, capability: 'llm', provider: 'openai' },
});
const systemKeys = async (vault) => {
  const r = await vault.request('GET', '/v1/health');
  assert.equal(r.status, 200, r.text);
  return { body: r.text, ...r.json.checks.system_keys };
};

/** A system-key answer: 200, from tier `tier`, with exactly `key`. */
function assertSystemKey(r, tier, key, why) {
  assert.equal(r.status, 200, withoutKey(r.text));
  assert.equal(r.json.source, 'system', withoutKey(r.text));
  assert.equal(r.json.fallback_reason, 'no_user_credential');
  assert.equal(r.json.provider, 'openai');
  assert.equal(r.json.system_key_tier, tier, why);
  assertSameKey(r.json.api_key, key, why);
}

function assertNotIn(text, values, where) {
  for (const [label, v] of Object.entries(values)) {
    assert.ok(v && !text.includes(v), `${where} contains ${label}`);
  }
}

/** Every bearer token the fake saw (the vault's Infisical access tokens). */
const accessTokens = (fake) => Object.fromEntries([...new Set(fake.requests
  .map((r) => r.headers.authorization?.replace(/^Bearer /, ''))
  .filter(Boolean))].map((t, i) => [`access token ${i}`, t]));

const fakes = {};
const vaults = {};
const id = { main: identity(), badSecret: identity(), wrongEnv: identity('prod') };
const keys = {
  v1: randomKey('infisical_v1'), v2: randomKey('infisical_v2'),
  mainEnv: randomKey('env_main'), badEnv: randomKey('env_bad'), badInfisical: randomKey('infisical_bad'),
};

before(async () => {
  for (const name of Object.keys(id)) fakes[name] = await startFakeInfisical(id[name]);
  fakes.main.setSecret(NAME, keys.v1);
  fakes.main.setSecret('OTHER_SECRET', randomKey('not_a_system_key'));
  fakes.badSecret.setSecret(NAME, keys.badInfisical);
  // Down from the start: the harness's first health check finds nothing cached.
  fakes.main.mode('503');
  // The other two together; the main one last: its first test needs to start within
  // Infisical's quiet period, which the harness's health check at start opens.
  const both = await Promise.allSettled([
    startVault({ secrets: infisicalSecrets(fakes.badSecret, keys.badEnv, { INFISICAL_CLIENT_SECRET: `ua_wrong_${crypto.randomBytes(16).toString('hex')}` }) }),
    startVault({ secrets: infisicalSecrets(fakes.wrongEnv, randomKey('env_wrong')) }),
  ]);
  // Kept even when the other failed, so that after() stops it.
  [vaults.badSecret, vaults.wrongEnv] = both.map((s) => s.value);
  for (const s of both) if (s.status === 'rejected') throw s.reason;
  vaults.main = await startVault({ secrets: infisicalSecrets(fakes.main, keys.mainEnv) });
});

after(async () => {
  await Promise.allSettled(Object.values(vaults).map((v) => v?.stop()));
  await Promise.allSettled(Object.values(fakes).map((f) => f.stop()));
});

describe('Infisical down with nothing cached', () => {
  test('the env secret serves (tier env) and Infisical is not asked again within 10 s', async () => {
    const { main: vault } = vaults;
    const fake = fakes.main;
    assert.ok(fake.counts.logins >= 1, 'the first health check tried to log in');
    assert.equal(fake.counts.lists, 0);
    const asked = fake.requests.length;
    assert.ok(Date.now() - lastAt(fake) < QUIET_MS - 2_000, 'too slow to see the quiet period');

    assertSystemKey(await resolve(vault), 'env', keys.mainEnv, 'nothing cached: the Worker secret serves');
    const health = await systemKeys(vault);
    assert.equal(health.source, 'infisical');
    assert.equal(health.tier, 'env');
    assert.equal(health.ok, false);
    assert.match(health.problem, /Infisical's login failed \(503 /);
    assertNotIn(health.body, keys, 'the health body');
    assert.equal(fake.requests.length, asked, 'Infisical was asked again within 10 s of a failure');
    fake.mode('ok');
  });
});

describe('a client secret Infisical refuses', () => {
  test('health says the login was refused, the log says so, and neither quotes a secret', async () => {
    const { badSecret: vault } = vaults;
    const fake = fakes.badSecret;
    assertSystemKey(await resolve(vault), 'env', keys.badEnv, 'the env secret serves');
    const health = await systemKeys(vault);
    assert.equal(health.source, 'infisical');
    assert.equal(health.tier, 'env');
    assert.equal(health.ok, false);
    assert.match(health.problem, /refused the machine identity's login \(401 Invalid credentials\)/);
    assert.ok(fake.counts.logins >= 1);
    assert.equal(fake.counts.lists, 0, 'no list without a token');

    const log = await assertLog(vault, /system keys: nothing from Infisical may serve, the Worker's secrets do \(Infisical refused the machine identity's login \(401 Invalid credentials\)\)/);
    const secrets = {
      'the configured client secret': vault.secrets.INFISICAL_CLIENT_SECRET,
      "the identity's real client secret": id.badSecret.clientSecret,
      'the env system key': keys.badEnv,
      'the Infisical value': keys.badInfisical,
      'the service token': serviceToken,
    };
    assertNotIn(health.body, secrets, 'the health body');
    assertNotIn(log, secrets, 'the wrangler log');
  });
});

describe('INFISICAL_ENVIRONMENT not the deployment\'s', () => {
  test('health is 503 not_configured naming INFISICAL_ENVIRONMENT, and Infisical is never asked', async () => {
    const { wrongEnv: vault } = vaults;
    const r = await vault.request('GET', '/v1/health');
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.code, 'not_configured');
    assert.deepEqual(r.json.problems, [
      'INFISICAL_ENVIRONMENT: is prod but ENVIRONMENT is development: a dev identity must not read prod secrets',
    ]);
    assert.equal(r.json.checks.config, 'error');
    const resolved = await resolve(vault);
    assert.equal(resolved.status, 503, resolved.text);
    assert.equal(resolved.json.code, 'not_configured');
    assert.equal(fakes.wrongEnv.requests.length, 0);
    await assertLog(vault, /configuration: INFISICAL_ENVIRONMENT: is prod but ENVIRONMENT is development/);
    assertNotIn(r.text + vault.log(), { 'the client secret': id.wrongEnv.clientSecret }, 'health or the log');
  });
});

describe('Infisical serving, cached, rotated, down and revoking', () => {
  const fake = () => fakes.main;
  const vault = () => vaults.main;
  const counts = () => ({ ...fake().counts });

  test('(1) once Infisical answers, its secret serves (tier infisical)', async () => {
    await sleepUntil(lastAt(fake()) + QUIET_MS + SLACK_MS); // past the failure at start
    const was = counts();
    assertSystemKey(await resolve(vault()), 'infisical', keys.v1, 'served from Infisical');
    assert.deepEqual(counts(), { logins: was.logins + 1, lists: was.lists + 1 });
    const list = fake().requests.at(-1);
    assert.equal(list.path, LIST);
    const q = new URLSearchParams(list.query);
    assert.equal(q.get('workspaceId'), id.main.projectId);
    assert.equal(q.get('environment'), 'dev');
    assert.equal(q.get('secretPath'), '/byok');
    const { body, ...health } = await systemKeys(vault());
    assert.deepEqual(health, { source: 'infisical', tier: 'infisical', ok: true, problem: null });
    assertNotIn(body, keys, 'the health body');
    await assertLog(vault(), /system keys: Infisical serves again/);
  });

  /** Waits out the TTL of the set in hand and has the vault fetch it again, so the next
   * steps start at the beginning of a TTL of their own, however long the last ones took. */
  const freshFetch = async (key) => {
    await sleepUntil(lastAt(fake(), LIST) + TTL_MS + SLACK_MS);
    const was = counts();
    assertSystemKey(await resolve(vault()), 'infisical', key, 'fetched again after the TTL');
    assert.deepEqual(counts(), { logins: was.logins, lists: was.lists + 1 });
    return lastAt(fake(), LIST);
  };

  test('(2) within the TTL a second resolve asks Infisical nothing', async () => {
    const fetched = await freshFetch(keys.v1);
    const was = counts();
    const requests = fake().requests.length;
    assertSystemKey(await resolve(vault()), 'infisical', keys.v1);
    assertSystemKey(await resolve(vault()), 'infisical', keys.v1);
    assert.ok(Date.now() - fetched < TTL_MS, 'too slow to test within the TTL');
    assert.deepEqual(counts(), was, 'Infisical was asked within the TTL');
    assert.equal(fake().requests.length, requests);
  });

  test('(3) a rotated secret is served after the TTL, with the same access token', async () => {
    const fetched = await freshFetch(keys.v1);
    fake().setSecret(NAME, keys.v2);
    assertSystemKey(await resolve(vault()), 'infisical', keys.v1, 'within the TTL the cached value serves');
    assert.ok(Date.now() - fetched < TTL_MS, 'too slow to test within the TTL');
    await sleepUntil(fetched + TTL_MS + SLACK_MS);
    const was = counts();
    assertSystemKey(await resolve(vault()), 'infisical', keys.v2, 'the rotated value after the TTL');
    assert.deepEqual(counts(), { logins: was.logins, lists: was.lists + 1 });
  });

  test('(4) Infisical 503: the last set serves (tier cache), then past max stale the env secret', async () => {
    const fetched = lastAt(fake(), LIST);
    fake().mode('503');
    await sleepUntil(fetched + TTL_MS + SLACK_MS);
    let was = counts();
    assertSystemKey(await resolve(vault()), 'cache', keys.v2, 'the cached set through the outage');
    assert.deepEqual(counts(), { logins: was.logins, lists: was.lists + 1 });
    let health = await systemKeys(vault());
    assert.equal(health.tier, 'cache');
    assert.equal(health.ok, false);
    assert.match(health.problem, /Infisical did not list the secrets \(503 /);
    await assertLog(vault(), /system keys: serving the set Infisical sent \d+ s ago \(Infisical did not list the secrets \(503 /);

    await sleepUntil(fetched + MAX_STALE_MS + SLACK_MS);
    was = counts();
    assertSystemKey(await resolve(vault()), 'env', keys.mainEnv, 'past max stale the Worker secret serves');
    health = await systemKeys(vault());
    assert.equal(health.tier, 'env');
    assert.equal(health.ok, false);
    assert.deepEqual(counts(), was, 'Infisical was asked again within 10 s of a failure');
  });

  test('(5) a revoked token (401) drops the cached set: the env secret serves, not the stale value', async () => {
    fake().mode('ok');
    await sleepUntil(lastAt(fake()) + QUIET_MS + SLACK_MS);
    assertSystemKey(await resolve(vault()), 'infisical', keys.v2, 'Infisical serves again after the outage');
    const fetched = lastAt(fake(), LIST);

    fake().mode('401-revoked');
    await sleepUntil(fetched + TTL_MS + SLACK_MS);
    const was = counts();
    const r = await resolve(vault());
    assertSystemKey(r, 'env', keys.mainEnv, 'a refusal must not leave the stale Infisical value serving');
    assert.deepEqual(counts(), { logins: was.logins, lists: was.lists + 1 });
    const health = await systemKeys(vault());
    assert.equal(health.tier, 'env');
    assert.equal(health.ok, false);
    assert.match(health.problem, /refused to list the secrets to the machine identity \(401 Failed to authorize: token has been revoked\)/);
    await assertLog(vault(), /nothing from Infisical may serve, the Worker's secrets do \(Infisical refused to list/);
    // A refusal is not retried at once either.
    assertSystemKey(await resolve(vault()), 'env', keys.mainEnv);
    assert.deepEqual(counts(), { logins: was.logins, lists: was.lists + 1 });
  });

  test('no secret value, client secret or access token is in the log', () => {
    const log = vault().log();
    assertNotIn(log, {
      'the first Infisical value': keys.v1,
      'the rotated Infisical value': keys.v2,
      'the env system key': keys.mainEnv,
      'the client secret': id.main.clientSecret,
      'the service token': serviceToken,
      ...accessTokens(fake()),
    }, 'the wrangler log');
    assert.ok(Object.keys(accessTokens(fake())).length >= 1, 'the vault used an access token');
  });
});
