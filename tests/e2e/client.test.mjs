// The description is usable by a frontend team: openapi-typescript generates types from
// what the running Worker serves at GET /v1/openapi.json, `tsc --strict` type-checks the
// small typed client in tests/client/ against them, and the compiled client walks the
// settings page's flows (add, refuse a bad key, models, default, rotate, re-check, list,
// delete, audit, verify) against the Worker under wrangler dev with the fake providers.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { ROOT, randomKey, startVault } from './harness.mjs';

const run = promisify(execFile);
const BIN = path.join(ROOT, 'node_modules', '.bin');
const WORK = path.join(ROOT, '.test-runs', `client-${process.pid}`);

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(WORK, { recursive: true });
  for (const f of ['byok-client.ts', 'flows.ts']) fs.copyFileSync(path.join(ROOT, 'tests/client', f), path.join(WORK, f));
});
after(async () => {
  await vault?.stop();
  await fake?.close();
  fs.rmSync(WORK, { recursive: true, force: true });
});

test('types generated from the served description type-check a client that walks the main flows', async () => {
  await run(path.join(BIN, 'openapi-typescript'), [`${vault.base}/v1/openapi.json`, '-o', path.join(WORK, 'api.d.ts')], { cwd: ROOT });
  assert.match(fs.readFileSync(path.join(WORK, 'api.d.ts'), 'utf8'), /"\/v1\/credentials\/\{id\}"/);
  fs.writeFileSync(path.join(WORK, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true,
      target: 'ES2022', module: 'commonjs', moduleResolution: 'node', lib: ['ES2022', 'DOM'],
      types: [], skipLibCheck: false, outDir: 'out',
    },
    files: ['api.d.ts', 'byok-client.ts', 'flows.ts'],
  }));
  try {
    await run(path.join(BIN, 'tsc'), ['-p', WORK], { cwd: WORK });
  } catch (e) {
    assert.fail(`tsc refused the client:\n${e.stdout}${e.stderr}`);
  }
  const env = {
    ...process.env,
    BYOK_BASE: vault.base,
    BYOK_TOKEN: vault.token('u_typed', { exp: Math.floor(Date.now() / 1000) + 3600 }),
    BYOK_KEY: randomKey('valid'),
    BYOK_KEY2: randomKey('valid'),
    BYOK_BAD_KEY: randomKey('invalid'),
  };
  const { stdout } = await run(process.execPath, [path.join(WORK, 'out', 'flows.js')], { cwd: WORK, env });
  assert.match(stdout, /flows ok: \d+ events, chain verified/);
});
