// docs/openapi.yaml stays true: it parses, every $ref resolves, and every documented
// method and path is routed by the running Worker (never 405, never an unknown route).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import YAML from 'yaml';

import { ROOT, startVault } from './harness.mjs';

const spec = YAML.parse(fs.readFileSync(path.join(ROOT, 'docs', 'openapi.yaml'), 'utf8'));

let vault;
before(async () => { vault = await startVault(); });
after(async () => { await vault?.stop(); });

test('every $ref resolves', () => {
  const refs = JSON.stringify(spec).match(/"#\/components\/[^"]+"/g) ?? [];
  assert.ok(refs.length > 10);
  for (const ref of refs) {
    const target = ref.slice(3, -1).split('/').reduce((node, key) => node?.[key], spec);
    assert.ok(target, `unresolved ${ref}`);
  }
});

test('every documented operation is routed by the Worker', async () => {
  const methods = ['get', 'post', 'put', 'patch', 'delete'];
  let checked = 0;
  for (const [template, item] of Object.entries(spec.paths)) {
    const url = template.replace('{id}', 'c_00000000000000000000000000000000').replace('{capability}', 'tts');
    for (const method of methods.filter((m) => item[m])) {
      const body = ['post', 'put', 'patch'].includes(method) ? {} : undefined;
      const r = await vault.request(method.toUpperCase(), url, { user: 'u_openapi', body });
      assert.notEqual(r.status, 405, `${method} ${template}`);
      const unknownRoute = r.status === 404 && !template.includes('{');
      assert.ok(!unknownRoute, `${method} ${template} is not routed`);
      checked += 1;
    }
  }
  assert.ok(checked >= 12, `only ${checked} operations`);
});

test('GET /v1/openapi.json serves this description, with the API headers', async () => {
  const r = await vault.request('GET', '/v1/openapi.json');
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type'), /^application\/json/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  assert.match(r.headers.get('x-request-id') ?? '', /^req_[0-9a-f]{32}$/);
  assert.deepEqual(r.json, spec);
});

test('a method a route does not take is a 405 that says which it does, even one the Rust library does not know', async () => {
  // node:http, since fetch refuses to send TRACE.
  const send = (method) => new Promise((resolve, reject) => {
    const req = http.request(`${vault.base}/v1/credentials`, {
      method, headers: { authorization: `Bearer ${vault.token('u_openapi')}` },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res));
    });
    req.on('error', reject);
    req.end();
  });
  for (const method of ['TRACE', 'QUERY', 'PROPFIND']) {
    const res = await send(method);
    assert.equal(res.statusCode, 405, method);
    assert.equal(res.headers.allow, 'GET, POST, OPTIONS');
  }
});
