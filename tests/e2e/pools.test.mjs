// End to end: a user's several keys for one provider (key pools). A key the provider
// refuses gives way to the next within the same request, cools down, and comes back by
// itself; `priority` orders them; and every call's usage is metered from the provider's
// own answer. Under wrangler dev (workerd, local D1, local queues) against the fake
// providers: which key served is read from what the fake saw, never from the vault alone.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { randomKey, serviceTokens, startVault, withoutKey } from './harness.mjs';

const { tokens: { resolver: RESOLVER }, SERVICE_TOKENS } = serviceTokens({ resolver: ['resolve'] });

let fake;
let vault;
before(async () => {
  fake = await startFakeProviders();
  vault = await startVault({ secrets: { SERVICE_TOKENS }, vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
});
after(async () => {
  await vault?.stop();
  await fake?.close();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Calls `probe` until it returns something (not undefined), or fails after `ms`. */
async function until(what, probe, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(200);
  }
}

const add = async (user, provider, kind = 'valid') => {
  const key = randomKey(kind);
  const r = await vault.request('POST', '/v1/credentials', { user, body: { provider, api_key: key } });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.credential.id, key };
};
const setPriority = async (user, { id }, priority) => {
  const r = await vault.request('PATCH', `/v1/credentials/${id}`, { user, body: { priority } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.priority ?? r.json.credential?.priority, priority, r.text);
};
/** The user's credentials by id, as GET /v1/credentials shows them. */
const credentials = async (user) => {
  const r = await vault.request('GET', '/v1/credentials', { user });
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(r.json.credentials.map((c) => [c.id, c]));
};

/** A proxied call, its body (a string, a Buffer: framed by a Content-Length) read whole. */
async function call(user, path, body, headers = { 'content-type': 'application/json' }) {
  const from = fake.requests.length;
  const sentAt = Date.now();
  const res = await fetch(`${vault.base}/v1/proxy/${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${vault.token(user)}`, ...headers }, body,
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  // What reached the provider for this call, in order (the live checks of adds excluded).
  const upstream = fake.requests.slice(from).filter((r) => r.method === 'POST');
  return { status: res.status, headers: res.headers, bytes, text: bytes.toString(), upstream, sentAt };
}
const chat = (user) => call(user, 'openai/v1/chat/completions', JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] }));
/** The keys the fake saw, named (a failing assertion never prints a key). */
const named = (records, keys) => records.map((r) => Object.entries(keys).find(([, k]) => k.key === r.key)?.[0] ?? 'another key');

/** The user's `credential.used` events once there are `n`, in the order the keys were
 * tried (the attempt each event names). */
const usesOf = (user, n) => until(`${n} credential.used events of ${user}`, async () => {
  const r = await vault.request('GET', '/v1/audit?limit=200', { user });
  assert.equal(r.status, 200, r.text);
  const uses = r.json.events.filter((e) => e.action === 'credential.used');
  assert.ok(uses.length <= n, `more than ${n} uses: ${JSON.stringify(uses)}`);
  return uses.length === n ? uses.sort((a, b) => a.detail.attempt - b.detail.attempt) : undefined;
});

describe('failover', () => {
  test('a rate-limited key gives way to the next within the request, and is passed over while it cools', async () => {
    const user = 'u_pool_429';
    const A = await add(user, 'openai');
    const B = await add(user, 'openai');
    await setPriority(user, B, 1); // A (priority 0) is tried first
    fake.limitOnce(A.key, 60);
    const before = Date.now();
    const r = await chat(user);
    const afterCall = Date.now();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-byok-attempts'), '2');
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    assert.equal(r.headers.get('x-byok-skipped'), null);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B'], 'the keys the provider saw, in order');
    assert.equal(r.upstream[0].sent.status, 429);
    assert.ok(r.bytes.equals(r.upstream[1].sent.body), "the caller got B's answer as the provider sent it");

    // One credential.used event per key tried.
    const uses = await usesOf(user, 2);
    assert.deepEqual(uses.map((e) => [e.credential_id, e.outcome, e.reason, e.detail?.attempt]),
      [[A.id, 'failure', 'provider_rate_limited', 1], [B.id, 'success', null, 2]], JSON.stringify(uses));

    // The cooled key says so, until the provider's Retry-After (60 s) is over; a 429 says
    // nothing against the key itself.
    const creds = await credentials(user);
    assert.equal(creds[A.id].status, 'valid');
    assert.equal(creds[A.id].cooldown_reason, 'rate_limited');
    const until = Date.parse(creds[A.id].cooldown_until);
    assert.ok(until >= Math.floor(before / 1000) * 1000 + 59_000 && until <= afterCall + 60_000, creds[A.id].cooldown_until);
    assert.equal(creds[B.id].cooldown_until, null);
    assert.equal(creds[B.id].cooldown_reason, null);

    // While A cools, B is tried first, and the receipt says A was passed over.
    const next = await chat(user);
    assert.equal(next.status, 200, next.text);
    assert.deepEqual(named(next.upstream, { A, B }), ['B']);
    assert.equal(next.headers.get('x-byok-credential-id'), B.id);
    assert.equal(next.headers.get('x-byok-attempts'), '1');
    assert.equal(next.headers.get('x-byok-skipped'), A.id);
    // Resolve too hands out B and names the key it skipped.
    const resolved = await vault.request('POST', '/v1/resolve', { token: RESOLVER, body: { user_id: user, capability: 'llm', provider: 'openai' } });
    assert.equal(resolved.status, 200, withoutKey(resolved.text));
    assert.equal(resolved.json.credential_id, B.id);
    assert.deepEqual(resolved.json.skipped, [{ credential_id: A.id, reason: 'rate_limited', until: creds[A.id].cooldown_until }]);
  });

  test('a cooled key is tried first again once its cooldown is over, without anyone touching it', async () => {
    const user = 'u_pool_back';
    const A = await add(user, 'openai');
    const B = await add(user, 'openai');
    await setPriority(user, B, 1);
    fake.limitOnce(A.key, 1);
    const r = await chat(user);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B']);
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    const shown = (await credentials(user))[A.id].cooldown_until;
    assert.ok(shown, 'A shows no cooldown');
    // Shown to the second: the cooldown ends within a second after it. Wait for that much,
    // then call until A serves again (each call before it must have gone to B).
    const over = Date.parse(shown);
    await sleep(Math.max(0, over - Date.now()));
    const back = await until('A serving again', async () => {
      const c = await chat(user);
      assert.equal(c.status, 200, c.text);
      if (named(c.upstream, { A, B })[0] === 'A') return c;
      assert.deepEqual(named(c.upstream, { A, B }), ['B']);
      assert.equal(c.headers.get('x-byok-skipped'), A.id);
      return undefined;
    }, 10_000);
    assert.deepEqual(named(back.upstream, { A, B }), ['A'], 'A served alone, first');
    assert.equal(back.headers.get('x-byok-credential-id'), A.id);
    assert.equal(back.headers.get('x-byok-attempts'), '1');
    assert.equal(back.headers.get('x-byok-skipped'), null);
    assert.ok(back.sentAt >= over, 'A came back before its cooldown was over');
  });

  test('a spent key is marked quota_exhausted, cools for an hour (no reset known) and is not tried meanwhile', async () => {
    const user = 'u_pool_spent';
    const A = await add(user, 'openai', 'spent'); // valid for checks; calls answer insufficient_quota
    const B = await add(user, 'openai');
    await setPriority(user, B, 1);
    const before = Date.now();
    const r = await chat(user);
    const afterCall = Date.now();
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B']);
    assert.equal(r.upstream[0].sent.status, 429);
    assert.equal(JSON.parse(r.upstream[0].sent.body).error.code, 'insufficient_quota');
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    assert.equal(r.headers.get('x-byok-attempts'), '2');

    const creds = await credentials(user);
    assert.equal(creds[A.id].status, 'quota_exhausted');
    assert.equal(creds[A.id].cooldown_reason, 'quota_exhausted');
    const until = Date.parse(creds[A.id].cooldown_until);
    assert.ok(until >= Math.floor(before / 1000) * 1000 + 3600_000 && until <= afterCall + 3600_000, creds[A.id].cooldown_until);
    assert.equal(creds[B.id].status, 'valid');

    const uses = await usesOf(user, 2);
    assert.deepEqual(uses.map((e) => [e.credential_id, e.outcome, e.reason, e.detail?.attempt]),
      [[A.id, 'failure', 'quota_exhausted', 1], [B.id, 'success', null, 2]], JSON.stringify(uses));

    for (let i = 0; i < 2; i++) {
      const next = await chat(user);
      assert.equal(next.status, 200, next.text);
      assert.deepEqual(named(next.upstream, { A, B }), ['B'], 'the spent key was tried while it cools');
      assert.equal(next.headers.get('x-byok-credential-id'), B.id);
      assert.equal(next.headers.get('x-byok-attempts'), '1');
    }
  });

  test('a spent key whose provider says when its quota resets cools until then', async () => {
    const user = 'u_pool_reset';
    const A = await add(user, 'elevenlabs', 'spentreset'); // its quota resets in 3 days
    const B = await add(user, 'elevenlabs');
    await setPriority(user, B, 1);
    const resets = (await credentials(user))[A.id].quota.resets_at;
    assert.ok(Date.parse(resets) > Date.now() + 2 * 86_400_000, resets);
    const speak = () => call(user, 'elevenlabs/v1/text-to-speech/voice123', JSON.stringify({ text: 'Hello', model_id: 'eleven_multilingual_v2' }));
    const r = await speak();
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(named(r.upstream, { A, B }), ['A', 'B']);
    assert.equal(JSON.parse(r.upstream[0].sent.body).detail.status, 'quota_exceeded');
    assert.equal(r.headers.get('x-byok-credential-id'), B.id);
    assert.ok(r.bytes.equals(r.upstream[1].sent.body), "the caller got B's audio");
    const a = (await credentials(user))[A.id];
    assert.equal(a.status, 'quota_exhausted');
    assert.equal(a.cooldown_reason, 'quota_exhausted');
    assert.equal(a.cooldown_until, resets, 'A cools until its quota resets');
    const next = await speak();
    assert.equal(next.status, 200, next.text);
    assert.deepEqual(named(next.upstream, { A, B }), ['B']);
  });

  test('PATCH priority reorders which key is tried first', async () => {
    const user = 'u_pool_prio';
    const keys = { A: await add(user, 'openai'), B: await add(user, 'openai') };
    const first = async () => {
      const r = await chat(user);
      assert.equal(r.status, 200, r.text);
      const seen = named(r.upstream, keys);
      assert.equal(seen.length, 1, `one key per call: ${seen}`);
      assert.equal(r.headers.get('x-byok-credential-id'), keys[seen[0]].id);
      return seen[0];
    };
    const x = await first();
    const y = x === 'A' ? 'B' : 'A';
    assert.equal(await first(), x, 'the same key first again, unchanged');
    await setPriority(user, keys[x], 10);
    assert.equal(await first(), y);
    await setPriority(user, keys[y], 20);
    assert.equal(await first(), x);
    const creds = await credentials(user);
    assert.equal(creds[keys[x].id].priority, 10);
    assert.equal(creds[keys[y].id].priority, 20);
  });
});

/** The data of each server-sent event in `body` (a provider's stream), parsed; not [DONE]. */
const events = (body) => body.toString().split(/\r?\n/)
  .filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim())
  .filter((d) => d !== '[DONE]').map((d) => JSON.parse(d));
/** The user's usage rows (GET /v1/usage) once they count at least `n` requests. */
const usageOf = (user, n = 1) => until(`usage of ${user}`, async () => {
  const r = await vault.request('GET', '/v1/usage', { user });
  assert.equal(r.status, 200, r.text);
  return r.json.usage.reduce((s, x) => s + x.requests, 0) >= n ? r.json.usage : undefined;
});
const json = { 'content-type': 'application/json' };
const zero = { input_tokens: 0, output_tokens: 0, characters: 0, audio_seconds: 0 };

/** A multipart body with one audio file, as the STT clients send it. */
function multipart(fields) {
  const boundary = `----byok${Date.now()}`;
  const parts = Object.entries(fields).map(([name, v]) => Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"${Buffer.isBuffer(v) ? '; filename="a.wav"\r\nContent-Type: audio/wav' : ''}\r\n\r\n`),
    Buffer.isBuffer(v) ? v : Buffer.from(v), Buffer.from('\r\n'),
  ]));
  return { body: Buffer.concat([...parts, Buffer.from(`--${boundary}--\r\n`)]), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}
const WAV = Buffer.alloc(2048, 7);
const SPOKEN = 'Grüße aus der Küche, 100 % echt!';

// Each case: the call, and what the fake itself sent (or was sent) that the row must show.
const metered = [
  ['OpenAI chat', 'openai', 'openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] }, (sent) => {
    const { usage, model } = JSON.parse(sent.body);
    return { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens, model };
  }],
  ['OpenAI chat, streamed with include_usage', 'openai', 'openai/v1/chat/completions', { model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'Hi' }] }, (sent) => {
    const last = events(sent.body).filter((e) => e.usage).at(-1);
    return { input_tokens: last.usage.prompt_tokens, output_tokens: last.usage.completion_tokens, model: last.model };
  }],
  ['Anthropic messages', 'anthropic', 'anthropic/v1/messages', { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }] }, (sent) => {
    const { usage, model } = JSON.parse(sent.body);
    return { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens, model };
  }],
  ['Anthropic messages, streamed', 'anthropic', 'anthropic/v1/messages', { model: 'claude-sonnet-4-5', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'Hi' }] }, (sent) => {
    const all = events(sent.body);
    const start = all.find((e) => e.type === 'message_start').message;
    // message_delta's output_tokens is cumulative: the last one is the count.
    const deltas = all.filter((e) => e.type === 'message_delta');
    return { input_tokens: start.usage.input_tokens, output_tokens: deltas.at(-1).usage.output_tokens, model: start.model };
  }],
  ['Gemini generateContent', 'gemini', 'gemini/v1beta/models/gemini-2.0-flash:generateContent', { contents: [{ parts: [{ text: 'Hi' }] }] }, (sent) => {
    const { usageMetadata: u, modelVersion } = JSON.parse(sent.body);
    return { input_tokens: u.promptTokenCount, output_tokens: u.candidatesTokenCount, model: modelVersion };
  }],
  ['Gemini streamGenerateContent?alt=sse', 'gemini', 'gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse', { contents: [{ parts: [{ text: 'Hi' }] }] }, (sent) => {
    const last = events(sent.body).filter((e) => e.usageMetadata).at(-1);
    return { input_tokens: last.usageMetadata.promptTokenCount, output_tokens: last.usageMetadata.candidatesTokenCount, model: last.modelVersion };
  }],
  ['ElevenLabs text to speech', 'elevenlabs', 'elevenlabs/v1/text-to-speech/voice123', { text: SPOKEN, model_id: 'eleven_multilingual_v2' }, (sent, received) => {
    assert.ok(sent.body.length > 0, 'no audio');
    return { characters: [...JSON.parse(received).text].length };
  }],
  ['ElevenLabs speech to text', 'elevenlabs', 'elevenlabs/v1/speech-to-text', multipart({ model_id: 'scribe_v1', file: WAV }), (sent) => {
    const { words } = JSON.parse(sent.body);
    return { audio_seconds: Math.max(...words.map((w) => w.end)) };
  }],
  ['Deepgram listen', 'deepgram', 'deepgram/v1/listen?model=nova-3', { body: WAV, headers: { 'content-type': 'audio/wav' } }, (sent) => {
    return { audio_seconds: JSON.parse(sent.body).metadata.duration };
  }],
];

describe('metering', () => {
  for (const [name, provider, path, request, expected] of metered) {
    test(`${name}: the usage row shows what the provider reported`, async () => {
      const user = `u_meter_${name.replace(/[^A-Za-z]+/g, '_').toLowerCase()}`;
      const { id } = await add(user, provider);
      const { body, headers } = request.body ? request : { body: JSON.stringify(request), headers: json };
      const r = await call(user, path, body, headers);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.upstream.length, 1);
      const { sent } = r.upstream[0];
      assert.ok(r.bytes.equals(sent.body), 'the caller got what the provider sent');
      const want = expected(sent, r.upstream[0].body);
      const rows = await usageOf(user);
      assert.equal(rows.length, 1, JSON.stringify(rows));
      const [row] = rows;
      const { model, ...counts } = { ...zero, ...want };
      assert.deepEqual(
        { provider: row.provider, credential_id: row.credential_id, source: row.source, requests: row.requests, incomplete: row.incomplete, input_tokens: row.input_tokens, output_tokens: row.output_tokens, characters: row.characters, audio_seconds: row.audio_seconds },
        { provider, credential_id: id, source: 'user', requests: 1, incomplete: 0, ...counts },
      );
      if (model !== undefined) assert.equal(row.model, model);
      assert.ok(Object.values(counts).some((v) => v > 0), 'the fake reported nothing to compare');
    });
  }

  /**
   * Starts a streamed chat call on a connection of its own, the fake holding the stream's
   * last chunks back, and cuts that connection once the first event has arrived: closed
   * (FIN), or with `reset`, reset (RST) as a dropped network or a killed client leaves it.
   * Then lets the fake finish its stream (the usage chunk comes last).
   */
  async function cutStream(user, { reset = false } = {}) {
    const body = JSON.stringify({ model: 'gpt-4o-mini', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'Hi' }] });
    const release = fake.holdStreamEnd({ maxMs: 30_000 });
    try {
      return await new Promise((resolve, reject) => {
        const req = http.request(`${vault.base}/v1/proxy/openai/v1/chat/completions`, {
          method: 'POST', agent: false,
          headers: { authorization: `Bearer ${vault.token(user)}`, ...json, 'content-length': Buffer.byteLength(body) },
        }, (res) => {
          let seen = '';
          res.on('data', (c) => {
            seen += c;
            if (!seen.includes('data:') || req.destroyed) return;
            if (reset) req.socket.resetAndDestroy(); else req.destroy();
            resolve({ status: res.statusCode, seen });
          });
          res.on('end', () => reject(new Error('the stream ended before the client cut it')));
        });
        req.on('error', () => { /* the cut itself */ });
        req.end(body);
      });
    } finally {
      release();
    }
  }

  test('a stream the client cuts off is recorded incomplete, never as a complete zero', async () => {
    const user = 'u_meter_cut';
    const { id } = await add(user, 'openai');
    const from = fake.requests.length;
    const { status, seen } = await cutStream(user);
    assert.equal(status, 200);
    assert.ok(!seen.includes('"usage":{'), 'the client saw the usage before it hung up');
    const rows = await usageOf(user);
    assert.equal(rows.length, 1, JSON.stringify(rows));
    assert.equal(rows[0].credential_id, id);
    assert.equal(rows[0].requests, 1);
    assert.equal(rows[0].incomplete, 1, `a cut stream was recorded complete: ${JSON.stringify(rows[0])}`);
    assert.equal(fake.requests.slice(from).filter((r) => r.method === 'POST').length, 1);
  });

  // Known bug, reported: when the client's connection is reset mid-stream, the vault's
  // pass-through waits forever on a write nobody takes, workerd cancels the request as hung
  // ("Network connection lost", then "canceled this request because ... hung"), and the
  // call is never metered. (A fetch aborted by undici resets its connection now and then,
  // which made a fetch-based version of the test above fail about one run in ten.)
  test('a stream whose client connection is reset is still recorded incomplete', async () => {
    const user = 'u_meter_reset';
    await add(user, 'openai');
    const { status } = await cutStream(user, { reset: true });
    assert.equal(status, 200);
    const rows = await until('a usage row of the reset stream', async () => {
      const r = await vault.request('GET', '/v1/usage', { user });
      return r.json.usage.length ? r.json.usage : undefined;
    }, 8_000);
    assert.equal(rows[0].requests, 1);
    assert.equal(rows[0].incomplete, 1);
  });
});
