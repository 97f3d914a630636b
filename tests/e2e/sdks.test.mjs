// End to end: the providers' official SDKs, unchanged but for their base URL and key, against
// the real Worker under wrangler dev and the fake providers. One user adds a valid key per
// provider through the API; then each SDK, given `<vault>/v1/proxy/<provider>` (plus the
// prefix that SDK expects) as its base URL and the user's vault token as its API key, makes
// its main calls. Each case asserts what the SDK handed the app (equal to what the fake
// provider sent: the text, the streamed chunks, the vector, the audio bytes, the transcript),
// that the fake saw the user's stored key, and that the vault token never reached the fake.
//
// The Python SDKs run in one process (tests/sdk/sdk_cases.py, the pinned SDKs of
// tests/sdk/requirements.txt in the venv scripts/setup.sh makes), one case a line; the
// `openai` npm package runs here (tests/sdk/openai_node_cases.mjs). Neither reaches anything
// but loopback: the Python process refuses any other address, no SDK retries, and none gets
// a key or base URL from the environment.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, describe, test } from 'node:test';

import { startFakeProviders } from './fake-providers.mjs';
import { ROOT, addMany, assertSameKey, startVault } from './harness.mjs';
import { runCase as runNodeCase } from '../sdk/openai_node_cases.mjs';

const PYTHON = path.join(ROOT, '.toolchain', 'venv', 'bin', 'python');
const DRIVER = path.join(ROOT, 'tests', 'sdk', 'sdk_cases.py');
/** How long one case may take (the SDKs' own timeout is 15 s). */
const CASE_TIMEOUT_MS = 30_000;
const USER = 'u_sdks';
const PROVIDERS = ['openai', 'anthropic', 'gemini', 'elevenlabs', 'deepgram'];

// --- what the fake sent, read as each SDK should have read it ------------------------------
const text = (sent) => sent.body.toString('utf8');
const json = (sent) => JSON.parse(text(sent));
/** The `data:` payloads of an SSE body, in order. */
const sse = (sent) => text(sent).split(/\r?\n\r?\n/)
  .map((event) => event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n'))
  .filter((d) => d !== '');
/** OpenAI's base64 embedding (what the SDKs ask for by default): little-endian float32s. */
const float32s = (b64) => {
  const bytes = Buffer.from(b64, 'base64');
  return Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
};
const geminiText = (answer) => (answer.candidates?.[0]?.content?.parts ?? []).map((p) => p.text ?? '').join('');

/**
 * Per case: the provider, the fake's path for the operation, and what the SDK must have
 * returned given what the fake sent (`bytes`: the body itself).
 */
const CASES = {
  'openai.chat': { provider: 'openai', path: '/v1/chat/completions', expect: (s) => json(s).choices[0].message.content },
  'openai.chat_stream': {
    // Asked with stream_options.include_usage: the usage arrives in the last chunk.
    provider: 'openai', path: '/v1/chat/completions',
    expect: (s) => {
      const chunks = sse(s).filter((d) => d !== '[DONE]').map((d) => JSON.parse(d));
      return { text: chunks.map((c) => c.choices?.[0]?.delta?.content).filter(Boolean), total_tokens: chunks.at(-1).usage.total_tokens };
    },
  },
  'openai.embeddings': {
    provider: 'openai', path: '/v1/embeddings',
    expect: (s) => { const e = json(s).data[0].embedding; return typeof e === 'string' ? float32s(e) : e; },
  },
  'openai.speech': { provider: 'openai', path: '/v1/audio/speech', bytes: true },
  'openai.transcription': { provider: 'openai', path: '/v1/audio/transcriptions', expect: (s) => json(s).text },
  'anthropic.messages': {
    provider: 'anthropic', path: '/v1/messages',
    expect: (s) => json(s).content.filter((b) => b.type === 'text').map((b) => b.text).join(''),
  },
  'anthropic.messages_stream': {
    provider: 'anthropic', path: '/v1/messages',
    expect: (s) => {
      const events = sse(s).map((d) => JSON.parse(d));
      return {
        text: events.filter((e) => e.type === 'content_block_delta' && e.delta?.type === 'text_delta').map((e) => e.delta.text),
        // The SDK's final message: input tokens from message_start, output tokens from the
        // last message_delta (cumulative).
        input_tokens: events.find((e) => e.type === 'message_start').message.usage.input_tokens,
        output_tokens: events.filter((e) => e.type === 'message_delta').at(-1).usage.output_tokens,
      };
    },
  },
  'gemini.generate_content': { provider: 'gemini', path: /^\/v1(beta)?\/models\/gemini-2\.0-flash:generateContent$/, expect: (s) => geminiText(json(s)) },
  'gemini.generate_content_stream': {
    provider: 'gemini', path: /^\/v1(beta)?\/models\/gemini-2\.0-flash:streamGenerateContent$/,
    expect: (s) => {
      const chunks = sse(s).map((d) => JSON.parse(d));
      return { text: chunks.map(geminiText).filter(Boolean), total_tokens: chunks.at(-1).usageMetadata.totalTokenCount };
    },
  },
  'gemini.embed_content': {
    provider: 'gemini', path: /^\/v1(beta)?\/models\/text-embedding-004:(batchEmbedContents|embedContent)$/,
    expect: (s) => { const j = json(s); return (j.embeddings?.[0] ?? j.embedding).values; },
  },
  'elevenlabs.text_to_speech': { provider: 'elevenlabs', path: /^\/v1\/text-to-speech\/[^/]+$/, bytes: true },
  'elevenlabs.speech_to_text': { provider: 'elevenlabs', path: '/v1/speech-to-text', expect: (s) => json(s).text },
  'deepgram.listen': { provider: 'deepgram', path: '/v1/listen', expect: (s) => json(s).results.channels[0].alternatives[0].transcript },
  'deepgram.speak': { provider: 'deepgram', path: '/v1/speak', bytes: true },
};

/**
 * The SDKs' own realtime WebSockets through the vault (the URL each makes from its base
 * URL): the fake socket's path, and what the SDK must have returned given what it sent.
 */
const SOCKET_CASES = {
  'openai.realtime': {
    provider: 'openai', path: '/v1/realtime',
    expect: () => ({ events: ['session.created', 'session.updated', 'response.created', 'response.output_text.delta', 'response.done'], input_tokens: 11, output_tokens: 22 }),
  },
  'deepgram.live': {
    provider: 'deepgram', path: '/v1/listen',
    // The fake hears the WAV sent whole (0.5 s of 16 kHz 16-bit audio plus its header).
    expect: (socket) => {
      const audio = socket.ws.messages.filter((m) => m.type === 'binary');
      const n = audio.reduce((sum, m) => sum + m.data.length, 0);
      return { transcripts: audio.map((m) => `heard ${m.data.length} bytes`), duration: n / 32000 };
    },
  },
};

/** The Python SDKs' cases and which of them the `openai` npm package runs too. */
const PYTHON_CASES = Object.keys(CASES);
const NODE_CASES = Object.keys(CASES).filter((c) => c.startsWith('openai.'));

// --- the Python process --------------------------------------------------------------------
/** Starts tests/sdk/sdk_cases.py with a clean environment; `run(request)` answers one case. */
function startDriver() {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'byok-sdk-home-'));
  const child = spawn(PYTHON, [DRIVER], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    // Nothing from this machine's environment: no provider key or base URL an SDK would
    // pick up, no proxy; telemetry and update checks have nothing to switch (none of the
    // pinned SDKs sends any; Deepgram's `telemetry_opt_out` is a no-op kept for old callers).
    env: { PATH: process.env.PATH, HOME: home, LANG: 'C.UTF-8', PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1', NO_PROXY: '*' },
  });
  let stderr = '';
  child.stderr.on('data', (c) => { stderr = (stderr + c).slice(-4000); });
  const pending = new Map();
  let exited = null;
  child.on('exit', (code) => {
    exited = code;
    for (const { reject } of pending.values()) reject(new Error(`sdk_cases.py exited (${code}): ${stderr}`));
    pending.clear();
  });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const answer = JSON.parse(line);
    pending.get(answer.id)?.resolve(answer);
    pending.delete(answer.id);
  });
  let next = 0;
  return {
    run(request) {
      if (exited !== null) return Promise.reject(new Error(`sdk_cases.py exited (${exited}): ${stderr}`));
      const id = ++next;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { pending.delete(id); reject(new Error(`${request.case}: no answer within ${CASE_TIMEOUT_MS} ms`)); }, CASE_TIMEOUT_MS);
        pending.set(id, { resolve: (a) => { clearTimeout(timer); resolve(a); }, reject: (e) => { clearTimeout(timer); reject(e); } });
        child.stdin.write(`${JSON.stringify({ id, ...request })}\n`);
      });
    },
    async stop() {
      if (exited === null) {
        child.stdin.end();
        await new Promise((r) => { child.once('exit', r); setTimeout(() => { child.kill('SIGKILL'); }, 5000).unref(); });
      }
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
}

let fake;
let vault;
let driver;
let token;
/** The user's stored keys by provider: `{ key, id }`. */
const stored = {};
/** Another user's two OpenAI keys (`{ key, id }`), the first its default: USER may name
 * them in `X-Byok-Credential-Id` but never get them; their owner picks the second with it. */
const othersCredentials = [];

before(async () => {
  fake = await startFakeProviders();
  driver = startDriver();
  vault = await startVault({ vars: { ...fake.vars(), RATE_LIMITS: 'off' } });
  const creds = await addMany(vault, [...PROVIDERS.map((provider) => ({ user: USER, provider })), { user: 'u_sdks_other', provider: 'openai' }], 3);
  for (const c of creds) {
    if (c.user === USER) stored[c.provider] = c;
    else othersCredentials.push(c);
  }
  // Added after the first, so not the user's default key.
  othersCredentials.push(...await addMany(vault, [{ user: 'u_sdks_other', provider: 'openai' }], 1));
  token = vault.token(USER);
});
after(async () => {
  await driver?.stop();
  await vault?.stop();
  await fake?.close();
});

/** Where the token may hide in a request the fake received: any header, the URL, the body. */
function assertNoToken(requests, tokens) {
  for (const r of requests) {
    const seen = [JSON.stringify(r.headers), r.path, r.query ?? '', r.body ? r.body.toString('latin1') : ''].join('\n');
    for (const t of tokens) {
      assert.ok(!seen.includes(t), `the vault token reached the fake provider (${r.method} ${r.path})`);
    }
  }
}

/** A failed case's report for an assertion message (the driver has taken the token out). */
const report = (answer) => JSON.stringify(answer.error ?? answer.value).slice(0, 1500) + (answer.trace ? `\n${answer.trace}` : '');

/** Runs `name` through `run`, then checks the SDK's value, the key the fake saw, and the token. */
async function check(name, run) {
  const c = CASES[name];
  const mark = fake.requests.length;
  const answer = await run({ case: name, base: vault.base, token });
  const calls = fake.requests.slice(mark);
  assertNoToken(calls, [token]);
  assert.ok(answer.ok, `${name} failed: ${report(answer)}`);

  const ops = calls.filter((r) => r.provider === c.provider
    && (typeof c.path === 'string' ? r.path === c.path : c.path.test(r.path)));
  assert.ok(ops.length >= 1, `${name}: the fake saw no ${c.path} call (saw: ${calls.map((r) => `${r.provider} ${r.method} ${r.path}`).join(', ') || 'nothing'})`);
  for (const r of calls) assertSameKey(r.key, stored[c.provider].key, `the key the fake saw for ${r.method} ${r.path}`);
  const sent = ops.at(-1).sent;
  assert.ok(sent && sent.status === 200, `${name}: the fake answered ${sent?.status}`);

  if (c.bytes) {
    assert.ok(answer.value?.bytes_b64, `${name}: the SDK returned no bytes: ${report(answer)}`);
    const got = Buffer.from(answer.value.bytes_b64, 'base64');
    assert.ok(got.length > 0, `${name}: no audio`);
    assert.ok(got.equals(sent.body), `${name}: the SDK's ${got.length} bytes are not the ${sent.body.length} the fake sent`);
  } else {
    const want = c.expect(sent);
    assert.ok(want !== undefined && want !== '' && !(Array.isArray(want) && want.length === 0), `${name}: the fake's answer holds nothing to compare`);
    assert.deepEqual(answer.value, want, `${name}: what the SDK returned is not what the fake sent`);
  }
  return { answer, ops };
}

describe('the official Python SDKs, with only the base URL and the vault token', () => {
  for (const name of PYTHON_CASES) {
    test(name, async () => {
      const { ops } = await check(name, (r) => driver.run(r));
      if (name === 'gemini.generate_content_stream') {
        assert.match(ops.at(-1).query, /[?&]alt=sse(&|$)/, 'the stream was asked for as SSE');
      }
    });
  }
});

describe('the official Python SDKs\' own realtime WebSockets, with only the base URL and the vault token', () => {
  for (const [name, c] of Object.entries(SOCKET_CASES)) {
    test(name, async () => {
      const mark = fake.sockets.length;
      const answer = await driver.run({ case: name, base: vault.base, token });
      assert.ok(answer.ok, `${name} failed: ${report(answer)}`);
      const opened = fake.sockets.slice(mark);
      assert.equal(opened.length, 1, `${name}: ${opened.length} provider sockets opened`);
      const socket = opened[0];
      assert.equal(socket.path, `/${c.provider}${c.path}`);
      assertSameKey(socket.key, stored[c.provider].key, `the key the fake's socket saw for ${name}`);
      const seen = JSON.stringify(socket.headers) + socket.url + socket.ws.messages.map((m) => m.data.toString('latin1')).join('');
      assert.ok(!seen.includes(token), `${name}: the vault token reached the provider's socket`);
      assert.deepEqual(answer.value, c.expect(socket), `${name}: what the SDK returned is not what the fake sent`);
    });
  }
});

describe('the official openai npm package, with only the base URL and the vault token', () => {
  for (const name of NODE_CASES) {
    test(name, () => check(name, runNodeCase));
  }
});

/** One case per SDK, the first each SDK runs above. */
const FIRST_OF = ['openai.chat', 'anthropic.messages', 'gemini.generate_content', 'elevenlabs.text_to_speech', 'deepgram.speak'];
/** What each SDK raises on a status error (openai-node's as `openai.<class>`). */
const RAISES = {
  openai: 'openai.NotFoundError',
  anthropic: 'anthropic.NotFoundError',
  gemini: 'google.genai.errors.ClientError',
  elevenlabs: 'elevenlabs.core.api_error.ApiError',
  deepgram: 'deepgram.core.api_error.ApiError',
};

/** A refusal as each SDK shows it: its exception, status 404, the vault's `code`. */
function assertRefusal(answer, provider, code) {
  assert.equal(answer.ok, false, `expected a refusal, the SDK returned ${JSON.stringify(answer.value)?.slice(0, 200)}`);
  const e = answer.error;
  assert.equal(e.class, RAISES[provider], report(answer));
  assert.equal(e.status, 404, report(answer));
  assert.equal(e.code, code, report(answer));
  assert.match(e.headers['content-type'] ?? '', /^application\/problem\+json/, report(answer));
  // The vault's own answer: nothing says it came from the provider.
  assert.equal(e.headers['x-byok-upstream-status'], undefined);
}

describe('refusals as each SDK shows them', () => {
  for (const name of FIRST_OF) {
    const provider = CASES[name].provider;
    test(`${name}: a user without a key gets no_credential`, async () => {
      const mark = fake.requests.length;
      const answer = await driver.run({ case: name, base: vault.base, token: vault.token('u_sdks_nokeys'), headers: { 'X-Byok-Allow-Fallback': 'false' } });
      assertRefusal(answer, provider, 'no_credential');
      assert.equal(fake.requests.length, mark, 'a refusal reaches no provider');
    });
    test(`${name}: X-Byok-Credential-Id through the SDK's extra-headers option naming another user's key gets not_found`, async () => {
      const mark = fake.requests.length;
      const answer = await driver.run({ case: name, base: vault.base, token, headers: { 'X-Byok-Credential-Id': othersCredentials[0].id } });
      assertRefusal(answer, provider, 'not_found');
      assert.equal(fake.requests.length, mark, 'a refusal reaches no provider');
    });
  }
  test('openai npm: a user without a key gets no_credential; another user\'s X-Byok-Credential-Id through defaultHeaders gets not_found', async () => {
    const mark = fake.requests.length;
    assertRefusal(await runNodeCase({ case: 'openai.chat', base: vault.base, token: vault.token('u_sdks_nokeys') }), 'openai', 'no_credential');
    assertRefusal(await runNodeCase({ case: 'openai.chat', base: vault.base, token, headers: { 'X-Byok-Credential-Id': othersCredentials[0].id } }), 'openai', 'not_found');
    assert.equal(fake.requests.length, mark, 'a refusal reaches no provider');
  });
});

describe('X-Byok-Credential-Id through the SDK\'s extra-headers option picks that key', () => {
  // u_sdks_other holds two OpenAI keys; the header names the second, which is not the default.
  for (const [sdk, run] of [['openai-python (default_headers)', (r) => driver.run(r)], ['openai npm (defaultHeaders)', runNodeCase]]) {
    test(sdk, async () => {
      const [first, second] = othersCredentials;
      const mark = fake.requests.length;
      const answer = await run({ case: 'openai.chat', base: vault.base, token: vault.token('u_sdks_other'), headers: { 'X-Byok-Credential-Id': second.id, 'X-Byok-Allow-Fallback': 'false' } });
      assert.ok(answer.ok, report(answer));
      assert.equal(answer.value, 'Hello there!');
      const calls = fake.requests.slice(mark);
      assert.equal(calls.length, 1);
      assertSameKey(calls[0].key, second.key, 'the key the fake saw');
      assert.notEqual(calls[0].key, first.key);
    });
  }
});

test('neither the vault token nor a stored key is in the vault\'s log', () => {
  const log = vault.log();
  assert.ok(!log.includes(token), 'the vault token is in the log');
  for (const p of PROVIDERS) assert.ok(!log.includes(stored[p].key), `the ${p} key is in the log`);
  assertNoToken(fake.requests, [token]);
});
