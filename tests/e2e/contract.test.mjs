// The contract as a fuzzer sees it: schemathesis (installed by scripts/setup.sh into
// .toolchain/venv) runs every operation of the description the Worker serves at
// GET /v1/openapi.json, under wrangler dev with the fake providers, with all of its checks:
// no 5xx, status codes, content types, headers and bodies that conform to the description.
// User operations run with a user's token, service operations with a service token.
// A failure is fixed in the Worker, never silenced in the description.
//
// Every check runs, but (tests/contract/schemathesis.toml says why) positive_data_acceptance,
// which would have the vault accept requests its semantic rules refuse, and
// negative_data_rejection on the import alone, which reports a malformed entry instead of
// refusing the batch. The description states every rule a schema can (enums, patterns,
// lengths). The seeded credential's id is given for `{id}`, so its operations answer 200.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { ROOT, randomKey, serviceTokens, startVault } from './harness.mjs';

const SCHEMATHESIS = path.join(ROOT, '.toolchain', 'venv', 'bin', 'schemathesis');
const { tokens: { contract: SERVICE }, SERVICE_TOKENS } = serviceTokens({ contract: ['resolve', 'admin'] });
/** Examples per operation: enough to walk every documented status, small enough for CI. */
const EXAMPLES = Number(process.env.BYOK_CONTRACT_EXAMPLES ?? 25);
const REPORTS = path.join(ROOT, '.test-runs', 'schemathesis');

let fake;
let vault;
let credentialId;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({
    secrets: {
      SERVICE_TOKENS,
      SYSTEM_KEY_OPENAI: randomKey('valid'),
    },
    vars: { ...fake.vars(), RATE_LIMITS: 'off', REVALIDATE_AFTER_HOURS: '0' },
  });
  // Something to read, change and delete: a credential of the fuzzing user.
  const r = await vault.request('POST', '/v1/credentials', {
    user: 'u_contract', body: { provider: 'elevenlabs', api_key: randomKey('valid') },
  });
  assert.equal(r.status, 201, r.text);
  credentialId = r.json.credential.id;
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

/** Runs schemathesis over the operations `filter` selects, with `token`; its exit code and
 * output. Its own output never holds a key: the only keys here are the fakes' test keys. */
function schemathesis(name, filter, token) {
  fs.mkdirSync(REPORTS, { recursive: true });
  const args = [
    '--config-file', path.join(ROOT, 'tests', 'contract', 'schemathesis.toml'),
    'run', `${vault.base}/v1/openapi.json`,
    '--url', vault.base,
    '--max-examples', String(EXAMPLES),
    '--seed', '7',
    // One worker: hypothesis's lambda descriptions race in CPython 3.11's parser with two.
    '--workers', '1',
    '--request-timeout', '20',
    '--header', `Authorization: Bearer ${token}`,
    '--report', 'junit', '--report-junit-path', path.join(REPORTS, `${name}.xml`),
    '--generation-database', 'none',
    '--no-color',
    ...filter,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(SCHEMATHESIS, args, {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BYOK_CREDENTIAL_ID: credentialId },
    });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      // The whole report stays as an artefact; an assertion shows its end.
      fs.writeFileSync(path.join(REPORTS, `${name}.log`), out);
      resolve({ code, out });
    });
  });
}

test('every user operation conforms to the description', async () => {
  const r = await schemathesis('user', ['--exclude-path-regex', '^/v1/(admin|resolve)'], vault.token('u_contract'));
  assert.equal(r.code, 0, r.out.slice(-6000));
});

test('every service operation conforms to the description', async () => {
  const r = await schemathesis('service', ['--include-path-regex', '^/v1/(admin|resolve)'], SERVICE);
  assert.equal(r.code, 0, r.out.slice(-6000));
});
