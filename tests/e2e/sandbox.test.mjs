// The newcomer's sandbox: `bash scripts/dev.sh --sandbox` starts the vault with the stand-in
// providers, prints keys that work, are refused or are rate limited, and health (so the
// settings page) says it is a sandbox. Run as a newcomer would, on ports the OS assigns; the
// whole process group is stopped afterwards, the stand-in providers with it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';

import { ROOT, internals } from './harness.mjs';

let child;
let out = '';
/** dev.sh's output for a failure message, without the dev token or the sandbox keys. */
const shown = (text) => text
  .replace(/(#token=|TOKEN=)[^\s'"]+/g, '$1…')
  .replace(/sk_[a-z]+_[0-9a-f]+/g, 'sk_…');
let base;
// An interrupted run leaves nothing behind either.
process.on('exit', () => { try { if (child?.pid) process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } });
before(async () => {
  // Port 0 for both: the OS assigns them as wrangler binds; dev.sh prints the URL it got.
  child = spawn('bash', ['scripts/dev.sh', '--sandbox'], {
    cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: '0', INSPECTOR_PORT: '0' },
  });
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const deadline = Date.now() + 180_000;
  for (;;) {
    const m = /is listening on (http:\/\/127\.0\.0\.1:(\d+))/.exec(out);
    // The URL is dev.sh's own wrangler's (a process of its group listens there), and what
    // answers there is the vault.
    if (m && internals.listeningSockets(child.pid).some((s) => s.port === Number(m[2]))) {
      try {
        const r = await fetch(`${m[1]}/v1/health`);
        if (r.ok && (await r.json()).checks?.database === 'ok') { base = m[1]; break; }
      } catch { /* not yet */ }
    }
    if (child.exitCode !== null) throw new Error(`dev.sh exited (${child.exitCode}):\n${shown(out.slice(-3000))}`);
    if (Date.now() > deadline) throw new Error(`dev.sh --sandbox never answered:\n${shown(out.slice(-3000))}`);
    await new Promise((r) => setTimeout(r, 500));
  }
});
after(async () => {
  if (!child?.pid) return;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
    const timer = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
    await exited;
    clearTimeout(timer);
  }
  // Until nothing of dev.sh's group is left (wrangler's workerd, the stand-ins): a group
  // with a live member keeps its id, so this reaches only what dev.sh started.
  for (let i = 0; i < 100 && internals.groupMembers(child.pid).length > 0; i++) {
    if (i > 0) { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }
    await new Promise((r) => setTimeout(r, 50));
  }
});

const printed = (what) => new RegExp(`${what}:\\s+(sk_[a-z]+_[0-9a-f]+)`).exec(out)?.[1];

test('names the flag first, prints the keys and a signed-in link, and says it is a sandbox', async () => {
  assert.match(out.split('\n')[0], /--sandbox|sandbox:/);
  const token = /#token=([A-Za-z0-9_.-]+)/.exec(out)?.[1];
  assert.ok(token, 'no signed-in link');
  const health = await (await fetch(`${base}/v1/health`)).json();
  assert.equal(health.checks.providers, 'sandbox');

  const add = (key) => fetch(`${base}/v1/credentials`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ provider: 'openai', api_key: key }),
  });
  const works = await add(printed('works'));
  assert.equal(works.status, 201, await works.text());
  const refused = await add(printed('refused'));
  assert.equal(refused.status, 422);
  const limited = await add(printed('rate limited'));
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers.get('retry-after')) > 0);
});
