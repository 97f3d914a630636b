// One loopback server standing in for every provider's API, answering with the shapes in
// shared/reference/providers.md. Each provider lives under its own path prefix
// (`/openai`, `/gemini`, …; Azure's region is a path segment: `/azure/<region>/sts`), so a
// test points `<PROVIDER>_BASE_URL` at `fake.base('<provider>')`.
//
// What it does is chosen by the key: `<anything>_<kind>_<random>`, where kind is
//   valid        the provider's 200 shapes (models, quota)
//   invalid      the provider's documented invalid-key answer
//   noscope      a real key lacking the probe's permission (where the provider has that)
//   forbidden    a 403 (permission / IP restriction)
//   quota        out of quota / credits (never to be retried)
//   ratelimited  first call 429 with the provider's own hint style, 1 s, then valid
//   retrydate    first call 429 with Retry-After as an HTTP-date ~1.5 s ahead, then valid
//   retryms      first call 429 with retry-after-ms: 800, then valid
//   longwait     429 with a 60 s hint in the provider's style (does not fit a deadline)
//   flaky        first call 503 (Anthropic: 529 overloaded), then valid
//   slow         never answers
//   slowvalid    valid, but every answer takes SLOW_MS (to hold a check open while a test
//                lands a concurrent change)
//   echo         the probe passes; the secondary call (models, voices, balance) fails
//                with an error that echoes the key raw, upper-cased, base64, percent-encoded
//                and split by a zero-width character, plus a bidi override
//   echoinvalid  the probe refuses the key, echoing it in the message
//   echomodels   valid, but the model list names the key as an id and in a name
//   huge         the probe passes; the model list is larger than the vault reads
//   busy         valid for checks; every real operation answers 429 with Retry-After: 7
//   spent        valid for checks; every real operation answers the provider's quota error
//   spentreset   as spent, and where the provider tells when its quota resets (ElevenLabs's
//                subscription), that is 3 days from now
// and `revoke(key)` makes any key invalid from then on. `hold(key)` makes a key's calls
// wait until the test releases them, and `holdStreamEnd()` holds back the last chunk of the
// SSE streams: a test orders events by what it saw, never by how long it slept.
//
// Real operations (what the vault's proxy forwards, and the official SDKs call) answer too:
// ElevenLabs text-to-speech returns AUDIO (its `/stream` variant in three chunks
// STREAM_GAP_MS apart), OpenAI chat completions with `"stream": true` send an SSE stream of
// three chunks STREAM_GAP_MS apart (the time each was sent is kept in `sseSent`; with
// `stream_options.include_usage` a last chunk carries the usage), Anthropic messages (with
// `"stream": true` its event sequence) and Gemini generateContent / streamGenerateContent
// (`?alt=sse`) answer their shapes; OpenAI embeddings (floats or base64) and Gemini
// embedContent / batchEmbedContents answer EMBEDDING; OpenAI speech and Deepgram speak answer
// AUDIO; OpenAI and ElevenLabs transcriptions answer TRANSCRIPT, Deepgram listen its results
// JSON (with metadata.duration). The realtime token endpoints mint (OpenAI client secrets,
// ElevenLabs single-use tokens, Deepgram grants, Gemini auth tokens; Azure's issueToken is
// the probe's own call) a fresh credential per call, kept in `minted` with the key that
// asked; an invalid key gets the provider's invalid answer, `forbidden`/`noscope` its
// too-few-permissions answer (Deepgram's 403 FORBIDDEN). Realtime WebSockets (Deepgram
// `/v1/listen` and `/v1/speak`, ElevenLabs stream-input and Scribe, OpenAI `/v1/realtime`)
// answer in each provider's shapes. They open with the key in the provider's header, or for
// Deepgram a grant minted here, sent as Deepgram asks a browser to (subprotocols
// `bearer, <grant>`; the answer selects `bearer`), unexpired and from a key not revoked since.
// A bad key or grant is refused as each provider does: Deepgram's 401 before the upgrade,
// ElevenLabs and OpenAI an error message on the open socket, then a close; a socket with no
// credential at all (an ElevenLabs single-use token, which the fake does not take) is a 401.
// Every attempt is kept in `sockets` (its key or grant, whether it was accepted, the socket). Each operation's request (headers and body)
// is kept in `requests`, with what the fake answered (`sent`). A path starting `/redirect/`
// answers 302 to the same path without that prefix (a base_url that bounces elsewhere).
import crypto from 'node:crypto';
import http from 'node:http';

import { accept } from './websocket.mjs';

const json = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

/** What the fake text-to-speech answers: bytes that are not text, as audio is. */
export const AUDIO = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7 + 3) % 256));
export const STREAM_GAP_MS = 300;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** What the fake embeddings answer: values a float32 holds exactly, so base64 loses nothing. */
export const EMBEDDING = [0.125, -0.5, 0.25, 0.75, -0.0625];
/** What the fake transcriptions answer (OpenAI, ElevenLabs). */
export const TRANSCRIPT = 'Hello there.';
const parse = (body) => { try { return JSON.parse(body.toString() || '{}'); } catch { return {}; } };
const float32Base64 = (values) => {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b.toString('base64');
};
/** Writes named SSE events (`event:` and `data:` lines), as Anthropic streams. */
const sseEvents = (res, events) => {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  for (const [event, data] of events) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  res.end();
};

/** ElevenLabs's subscription, its character quota resetting at `resetUnix` (seconds). */
const subscription = (resetUnix) => ({ tier: 'creator', status: 'active', character_count: 1200, character_limit: 10000, next_character_count_reset_unix: resetUnix, voice_slots_used: 1, voice_limit: 30, currency: 'usd' });
/** When a `spentreset` key's quota resets: 3 days from now, to the second. */
const resetSoon = () => Math.floor(Date.now() / 1000) + 3 * 86_400;

const MODEL_PAGES = 2; // providers that page their model list get two pages
export const SLOW_MS = 1500;

/** The error text the echo kinds answer with: the key in every obvious disguise. */
export function echoOf(key) {
  const split = `${key.slice(0, 12)}\u200b${key.slice(12)}`;
  return `No access for key ${key} (${key.toUpperCase()}; ${Buffer.from(key).toString('base64')}; `
    + `${encodeURIComponent(key + '/')}; ${split})\u202e\u0007 please check it`;
}

const providers = {
  elevenlabs: {
    key: (h) => h['xi-api-key'],
    primary: (path) => path === '/v1/user/subscription',
    echo: (res, key) => json(res, 400, { detail: { status: 'invalid_request', message: echoOf(key) } }),
    echoinvalid: (res, key) => json(res, 401, { detail: { status: 'invalid_api_key', message: `Invalid API key: ${echoOf(key)}` } }),
    echomodels: (res, key) => json(res, 200, [
      { model_id: key, name: 'A model named after the key', can_do_text_to_speech: true },
      { model_id: 'eleven_echo_v1', name: `Echo \u202e${key}`, can_do_text_to_speech: true },
    ]),
    huge: (res) => json(res, 200, [{ model_id: 'eleven_huge', name: 'x'.repeat(3 * 1024 * 1024) }]),
    ok(res, path) {
      if (path === '/v1/user/subscription') {
        return json(res, 200, subscription(1796083200));
      }
      if (path === '/v1/models') {
        return json(res, 200, [
          { model_id: 'eleven_multilingual_v2', name: 'Eleven Multilingual v2', can_do_text_to_speech: true, can_do_voice_conversion: false, languages: [{ language_id: 'en', name: 'English' }] },
          { model_id: 'eleven_flash_v2_5', name: 'Eleven Flash v2.5', can_do_text_to_speech: true, can_do_voice_conversion: false, languages: [{ language_id: 'en', name: 'English' }] },
        ]);
      }
      return json(res, 404, { detail: { status: 'not_found', message: 'Not found' } });
    },
    invalid: (res) => json(res, 401, { detail: { status: 'invalid_api_key', message: 'Invalid API key' } }),
    spentreset: (res, path, ok) => (path === '/v1/user/subscription' ? json(res, 200, subscription(resetSoon())) : ok()),
    noscope: (res, path, ok) => (path === '/v1/user/subscription'
      ? json(res, 401, { detail: { status: 'missing_permissions', message: 'The API key you used is missing the permission user_read to execute this operation.' } })
      : ok()),
    forbidden: (res) => json(res, 403, { detail: { status: 'ip_not_allowed', message: 'Requests from this IP address are not allowed for this API key.' } }),
    quota: (res) => json(res, 401, { detail: { status: 'quota_exceeded', message: 'This request exceeds your quota of 10000. You have 0 credits remaining.' } }),
    limited: (res, secs) => json(res, 429, { detail: { status: 'too_many_concurrent_requests', message: 'Too many concurrent requests.' } },
      { 'retry-after': String(secs), 'current-concurrent-requests': '3', 'maximum-concurrent-requests': '2' }),
    error: (res) => json(res, 503, { detail: { status: 'system_busy', message: 'The system is experiencing heavy traffic, please try again later.' } }),
  },
  azure: {
    key: (h) => h['ocp-apim-subscription-key'],
    primary: (path) => path.endsWith('/sts/v1.0/issueToken'),
    echo: (res, key) => json(res, 400, { error: { code: '400', message: echoOf(key) } }),
    ok(res, path) {
      if (path.endsWith('/sts/v1.0/issueToken')) {
        res.writeHead(200, { 'content-type': 'application/jwt; charset=us-ascii' });
        return res.end('eyJhbGciOiJodHRwOi8vd3d3LnczLm9yZy8yMDAxLzA0L3htbGRzaWctbW9yZSNobWFjLXNoYTI1NiJ9.eyJyZWdpb24iOiJlYXN0dXMifQ.c2ln');
      }
      if (path.endsWith('/cognitiveservices/voices/list')) {
        return json(res, 200, [
          { Name: 'Microsoft Server Speech Text to Speech Voice (en-US, JennyNeural)', DisplayName: 'Jenny', LocalName: 'Jenny', ShortName: 'en-US-JennyNeural', Gender: 'Female', Locale: 'en-US', LocaleName: 'English (United States)', StyleList: ['assistant'], SampleRateHertz: '24000', VoiceType: 'Neural', Status: 'GA' },
          { Name: 'Microsoft Server Speech Text to Speech Voice (de-DE, KatjaNeural)', DisplayName: 'Katja', LocalName: 'Katja', ShortName: 'de-DE-KatjaNeural', Gender: 'Female', Locale: 'de-DE', LocaleName: 'German (Germany)', SampleRateHertz: '24000', VoiceType: 'Neural', Status: 'GA' },
        ]);
      }
      return json(res, 404, { error: { code: '404', message: 'Resource not found' } });
    },
    invalid: (res) => json(res, 401, { error: { code: '401', message: 'Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.' } }),
    forbidden: (res) => json(res, 403, { error: { code: '403', message: 'Out of call volume quota for this subscription.' } }),
    limited: (res, secs) => json(res, 429, { error: { code: '429', message: `Requests to the Speech API have exceeded the rate limit of your current pricing tier. Please retry after ${secs} seconds.` } }),
    error: (res) => json(res, 503, { error: { code: '503', message: 'Service is temporarily unavailable.' } }),
  },
  gemini: {
    key: (h) => h['x-goog-api-key'],
    ok(res, path, query) {
      if (path !== '/v1beta/models') return json(res, 404, { error: { code: 404, message: 'Not found', status: 'NOT_FOUND' } });
      if (!query.get('pageToken')) {
        return json(res, 200, { models: [{ name: 'models/gemini-2.0-flash', version: '2.0', displayName: 'Gemini 2.0 Flash', inputTokenLimit: 1048576, outputTokenLimit: 8192, supportedGenerationMethods: ['generateContent', 'countTokens'] }], nextPageToken: 'page-2' });
      }
      return json(res, 200, { models: [{ name: 'models/gemini-2.5-flash-preview-tts', version: '2.5', displayName: 'Gemini 2.5 Flash Preview TTS', supportedGenerationMethods: ['generateContent'] }] });
    },
    invalid: (res) => json(res, 400, { error: { code: 400, message: 'API key not valid. Please pass a valid API key.', status: 'INVALID_ARGUMENT', details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'API_KEY_INVALID', domain: 'googleapis.com', metadata: { service: 'generativelanguage.googleapis.com' } }] } }),
    forbidden: (res) => json(res, 403, { error: { code: 403, message: 'Generative Language API has not been used in project 1234 before or it is disabled.', status: 'PERMISSION_DENIED', details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'SERVICE_DISABLED', domain: 'googleapis.com' }] } }),
    quota: (res) => json(res, 429, { error: { code: 429, message: 'You exceeded your current quota. Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0', status: 'RESOURCE_EXHAUSTED', details: [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '3s' }] } }),
    limited: (res, secs) => json(res, 429, { error: { code: 429, message: 'You exceeded your current quota, please check your plan and billing details.', status: 'RESOURCE_EXHAUSTED', details: [
      { '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations: [{ quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests', quotaId: 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier', quotaValue: '15' }] },
      { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: `${secs}s` }] } }),
    error: (res) => json(res, 503, { error: { code: 503, message: 'The model is overloaded. Please try again later.', status: 'UNAVAILABLE' } }),
  },
  openai: openaiStyle('/v1/models', ['gpt-4o-mini', 'gpt-4o-mini-tts', 'whisper-1', 'text-embedding-3-small'], {
    invalid: (res) => json(res, 401, { error: { message: 'Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://platform.openai.com/account/api-keys.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } }),
    noscope: (res) => json(res, 401, { error: { message: "You have insufficient permissions for this operation. Missing scopes: api.model.read. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes.", type: 'invalid_request_error', param: null, code: null } }),
    quota: (res) => json(res, 429, { error: { message: 'You exceeded your current quota, please check your plan and billing details.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' } }),
  }),
  groq: openaiStyle('/openai/v1/models', ['llama-3.3-70b-versatile', 'whisper-large-v3'], {
    invalid: (res) => json(res, 401, { error: { message: 'Invalid API Key', type: 'invalid_request_error', code: 'invalid_api_key' } }),
  }),
  mistral: openaiStyle('/v1/models', ['mistral-large-latest', 'mistral-embed'], {
    invalid: (res) => json(res, 401, { message: 'Unauthorized', request_id: '0d1f2f4b7c' }),
  }),
  anthropic: {
    key: (h) => h['x-api-key'],
    ok(res, path, query) {
      if (path !== '/v1/models') return json(res, 404, { type: 'error', error: { type: 'not_found_error', message: 'Not found' } });
      if (!query.get('after_id')) {
        return json(res, 200, { data: [{ type: 'model', id: 'claude-sonnet-4-5', display_name: 'Claude Sonnet 4.5', created_at: '2025-09-29T00:00:00Z' }], has_more: true, first_id: 'claude-sonnet-4-5', last_id: 'claude-sonnet-4-5' });
      }
      return json(res, 200, { data: [{ type: 'model', id: 'claude-haiku-4-5', display_name: 'Claude Haiku 4.5', created_at: '2025-10-15T00:00:00Z' }], has_more: false, first_id: 'claude-haiku-4-5', last_id: 'claude-haiku-4-5' });
    },
    invalid: (res) => json(res, 401, { type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' }, request_id: 'req_011CSHoEeqs5C35K2UUqR7Fy' }),
    forbidden: (res) => json(res, 403, { type: 'error', error: { type: 'permission_error', message: 'Your API key does not have permission to use the specified resource.' } }),
    limited: (res, secs) => json(res, 429, { type: 'error', error: { type: 'rate_limit_error', message: 'Number of requests has exceeded your per-minute rate limit' } }, { 'retry-after': String(secs) }),
    error: (res) => json(res, 529, { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
  },
  ollama: {
    key: (h) => bearerKey(h),
    keyless: true,
    ok(res, path) {
      if (path === '/api/tags') {
        return json(res, 200, { models: [{ name: 'llama3.2:latest', model: 'llama3.2:latest', modified_at: '2025-01-01T00:00:00Z', size: 2019393189, digest: 'a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72', details: { format: 'gguf', family: 'llama', parameter_size: '3.2B', quantization_level: 'Q4_K_M' } }] });
      }
      if (path === '/api/version') return json(res, 200, { version: '0.5.1' });
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('404 page not found');
    },
    invalid: (res) => json(res, 401, { error: 'unauthorized' }),
    limited: (res, secs) => json(res, 429, { error: 'too many requests' }, { 'retry-after': String(secs) }),
    error: (res) => json(res, 503, { error: 'server busy' }),
  },
  deepgram: {
    key: (h) => (h.authorization ?? '').replace(/^Token /, ''),
    primary: (path) => path === '/v1/projects',
    echo: (res, key) => json(res, 400, { err_code: 'BAD_REQUEST', err_msg: echoOf(key), request_id: 'r9' }),
    ok(res, path) {
      if (path === '/v1/projects') return json(res, 200, { projects: [{ project_id: '3dc6c6e1-5e36-4f5d-9b2f-0c0b3b1b5c1a', name: 'Default Project', company: 'Acme' }] });
      if (path.endsWith('/balances')) return json(res, 200, { balances: [{ balance_id: 'b0c1a2', amount: 187.5, units: 'usd', purchase_order_id: 'po_1' }] });
      if (path === '/v1/models') {
        return json(res, 200, {
          stt: [{ name: 'nova-3', canonical_name: 'nova-3-general', architecture: 'nova-3', languages: ['en'], version: '2025-01-01.0', uuid: 'u1', batch: true, streaming: true, formatted_output: true }],
          tts: [{ name: 'aura-2-thalia-en', canonical_name: 'aura-2-thalia-en', architecture: 'aura-2', languages: ['en'], version: '2025-01-01.0', uuid: 'u2', metadata: { accent: 'American' } }],
        });
      }
      return json(res, 404, { err_code: 'NOT_FOUND', err_msg: 'Not found.' });
    },
    invalid: (res) => json(res, 401, { err_code: 'INVALID_AUTH', err_msg: 'Invalid credentials.', request_id: 'r1' }),
    forbidden: (res) => json(res, 403, { err_code: 'FORBIDDEN', err_msg: 'Insufficient permissions.', request_id: 'r2' }),
    quota: (res) => json(res, 402, { err_code: 'ASR_PAYMENT_REQUIRED', err_msg: 'Project does not have enough credits for an ASR request and does not have an overage agreement.', request_id: 'r3' }),
    limited: (res, secs) => json(res, 429, { err_code: 'TOO_MANY_REQUESTS', err_msg: 'Too many requests. Please try again later', request_id: 'r4' }, { 'retry-after': String(secs) }),
    error: (res) => json(res, 503, { err_code: 'SERVICE_UNAVAILABLE', err_msg: 'Service unavailable.', request_id: 'r5' }),
  },
  openrouter: {
    key: (h) => bearerKey(h),
    primary: (path) => path === '/api/v1/key',
    echo: (res, key) => json(res, 400, { error: { message: echoOf(key), code: 400 } }),
    ok(res, path) {
      if (path === '/api/v1/key') return json(res, 200, { data: { label: 'sk-or-v1-au7...890', limit: 100, limit_remaining: 74.5, usage: 25.5, is_free_tier: false, rate_limit: { requests: 10, interval: '10s' } } });
      if (path === '/api/v1/models') return json(res, 200, { data: [{ id: 'openai/gpt-4o', name: 'OpenAI: GPT-4o', context_length: 128000, architecture: { input_modalities: ['text', 'image'], output_modalities: ['text'] }, pricing: { prompt: '0.0000025', completion: '0.00001' } }] });
      return json(res, 404, { error: { message: 'Not Found', code: 404 } });
    },
    invalid: (res) => json(res, 401, { error: { message: 'No auth credentials found', code: 401 } }),
    forbidden: (res) => json(res, 403, { error: { message: 'Key is disabled', code: 403 } }),
    quota: (res) => json(res, 402, { error: { message: 'Insufficient credits. Add more using https://openrouter.ai/credits', code: 402 } }),
    limited: (res, secs) => json(res, 429, { error: { message: 'Rate limit exceeded', code: 429 } }, { 'retry-after': String(secs) }),
    error: (res) => json(res, 502, { error: { message: 'Provider returned error', code: 502 } }),
  },
};

function bearerKey(h) {
  return (h.authorization ?? '').replace(/^Bearer /, '');
}

function openaiStyle(modelsPath, ids, overrides) {
  return {
    key: (h) => bearerKey(h),
    ok(res, path) {
      if (path !== modelsPath) return json(res, 404, { error: { message: 'Not found', type: 'invalid_request_error' } });
      return json(res, 200, { object: 'list', data: ids.map((id) => ({ id, object: 'model', created: 1721172741, owned_by: 'system' })) });
    },
    forbidden: (res) => json(res, 403, { error: { message: 'Country, region, or territory not supported', type: 'request_forbidden', code: 'unsupported_country_region_territory' } }),
    limited: (res, secs) => json(res, 429, { error: { message: 'Rate limit reached for requests', type: 'requests', param: null, code: 'rate_limit_exceeded' } },
      { 'retry-after': String(secs), 'x-ratelimit-limit-requests': '500', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': `${secs}s` }),
    error: (res) => json(res, 503, { error: { message: 'The server is overloaded or not ready yet.', type: 'server_error' } }),
    ...overrides,
  };
}

/** The real operations the fakes perform, by provider: (method, path) → handler. */
function operation(name, method, path) {
  if (name === 'elevenlabs' && method === 'POST' && /^\/v1\/text-to-speech\/[^/]+$/.test(path)) {
    return async (res) => { res.writeHead(200, { 'content-type': 'audio/mpeg', 'set-cookie': 'provider-session=1' }); res.end(AUDIO); };
  }
  if (name === 'elevenlabs' && method === 'POST' && /^\/v1\/text-to-speech\/[^/]+\/stream$/.test(path)) {
    return async (res) => {
      res.writeHead(200, { 'content-type': 'audio/mpeg' });
      for (let i = 0; i < 3; i++) {
        res.write(AUDIO.subarray(i * 1000, (i + 1) * 1000));
        if (i < 2) await sleep(STREAM_GAP_MS);
      }
      res.end();
    };
  }
  if (name === 'openai' && method === 'POST' && path === '/v1/chat/completions') {
    return async (res, body, state) => {
      const request = parse(body);
      const model = request.model ?? 'gpt-4o-mini';
      const usage = { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 };
      // With include_usage every chunk carries `usage: null` and one more, before [DONE],
      // carries the usage with no choices.
      const withUsage = request.stream_options?.include_usage === true;
      const chunk = (choices, extra = {}) => ({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 1732500000, model, choices, ...(withUsage ? { usage: null } : {}), ...extra });
      if (!request.stream) {
        return json(res, 200, { id: 'chatcmpl-fake', object: 'chat.completion', created: 1732500000, model, choices: [{ index: 0, message: { role: 'assistant', content: 'Hello there!' }, finish_reason: 'stop' }], usage });
      }
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
      const words = ['Hello', ' there', '!'];
      for (let i = 0; i < words.length; i++) {
        // A test may hold the last chunk back until it has seen the first (holdStreamEnd).
        if (i === words.length - 1) await state.streamEnd;
        res.write(`data: ${JSON.stringify(chunk([{ index: 0, delta: { content: words[i] }, finish_reason: null }]))}\n\n`);
        state.sseSent.push(Date.now());
        if (i < words.length - 1) await sleep(STREAM_GAP_MS);
      }
      res.write(`data: ${JSON.stringify(chunk([{ index: 0, delta: {}, finish_reason: 'stop' }]))}\n\n`);
      if (withUsage) res.write(`data: ${JSON.stringify(chunk([], { usage }))}\n\n`);
      res.write('data: [DONE]\n\n');
      res.end();
      return undefined;
    };
  }
  if (name === 'openai' && method === 'POST' && path === '/v1/embeddings') {
    return async (res, body) => {
      const request = parse(body);
      // The SDKs ask for base64 (little-endian float32s) unless the app asks for floats.
      const embedding = request.encoding_format === 'base64' ? float32Base64(EMBEDDING) : EMBEDDING;
      const inputs = Array.isArray(request.input) ? request.input : [request.input];
      json(res, 200, { object: 'list', data: inputs.map((_, index) => ({ object: 'embedding', index, embedding })), model: request.model ?? 'text-embedding-3-small', usage: { prompt_tokens: 1, total_tokens: 1 } });
    };
  }
  if ((name === 'openai' && method === 'POST' && path === '/v1/audio/speech')
    || (name === 'deepgram' && method === 'POST' && path === '/v1/speak')) {
    return async (res) => { res.writeHead(200, { 'content-type': 'audio/mpeg' }); res.end(AUDIO); };
  }
  if (name === 'openai' && method === 'POST' && path === '/v1/audio/transcriptions') {
    return async (res, body) => {
      // Multipart: only the response format matters here (verbose_json adds the duration).
      const verbose = /name="response_format"\r\n\r\nverbose_json/.test(body.toString('latin1'));
      json(res, 200, verbose
        ? { task: 'transcribe', language: 'english', duration: 0.5, text: TRANSCRIPT, segments: [] }
        : { text: TRANSCRIPT, usage: { type: 'duration', seconds: 1 } });
    };
  }
  if (name === 'anthropic' && method === 'POST' && path === '/v1/messages') {
    return async (res, body) => {
      const request = parse(body);
      const model = request.model ?? 'claude-sonnet-4-5';
      if (!request.stream) {
        return json(res, 200, { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [{ type: 'text', text: 'Hello!' }], stop_reason: 'end_turn', stop_sequence: null, usage: { input_tokens: 5, output_tokens: 2 } });
      }
      // The real event sequence: message_start (input usage), one text block, message_delta
      // (cumulative output usage), message_stop.
      const words = ['Hello', ' there', '!'];
      sseEvents(res, [
        ['message_start', { type: 'message_start', message: { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 5, output_tokens: 1 } } }],
        ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
        ['ping', { type: 'ping' }],
        ...words.map((text) => ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text } }]),
        ['content_block_stop', { type: 'content_block_stop', index: 0 }],
        ['message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 3 } }],
        ['message_stop', { type: 'message_stop' }],
      ]);
      return undefined;
    };
  }
  const gemini = name === 'gemini' && method === 'POST' && /^\/v1(beta)?\/models\/[^/:]+:([A-Za-z]+)$/.exec(path);
  if (gemini && gemini[2] === 'generateContent') {
    return async (res) => json(res, 200, { candidates: [{ content: { role: 'model', parts: [{ text: 'Hello!' }] }, finishReason: 'STOP', index: 0 }], usageMetadata: { promptTokenCount: 3, candidatesTokenCount: 2, totalTokenCount: 5 }, modelVersion: 'gemini-2.0-flash', responseId: 'resp-fake' });
  }
  if (gemini && gemini[2] === 'streamGenerateContent') {
    return async (res, body, state, query) => {
      const words = ['Hello', ' there', '!'];
      const chunks = words.map((text, i) => ({
        candidates: [{ content: { role: 'model', parts: [{ text }] }, index: 0, ...(i === words.length - 1 ? { finishReason: 'STOP' } : {}) }],
        usageMetadata: i === words.length - 1
          ? { promptTokenCount: 3, candidatesTokenCount: 3, totalTokenCount: 6 }
          : { promptTokenCount: 3, totalTokenCount: 3 },
        modelVersion: 'gemini-2.0-flash',
        responseId: 'resp-fake',
      }));
      if (query.get('alt') !== 'sse') return json(res, 200, chunks); // without alt=sse: one JSON array
      // Gemini separates its SSE events with CRLFs.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const c of chunks) res.write(`data: ${JSON.stringify(c)}\r\n\r\n`);
      res.end();
      return undefined;
    };
  }
  if (gemini && gemini[2] === 'embedContent') {
    return async (res) => json(res, 200, { embedding: { values: EMBEDDING } });
  }
  if (gemini && gemini[2] === 'batchEmbedContents') {
    return async (res, body) => json(res, 200, { embeddings: (parse(body).requests ?? [{}]).map(() => ({ values: EMBEDDING })) });
  }
  if (name === 'elevenlabs' && method === 'POST' && path === '/v1/speech-to-text') {
    return async (res) => json(res, 200, {
      language_code: 'eng', language_probability: 0.98, text: TRANSCRIPT, transcription_id: 'tr_fake', audio_duration_secs: 0.5,
      words: [
        { text: 'Hello', start: 0, end: 0.2, type: 'word', speaker_id: 'speaker_0', logprob: -0.01 },
        { text: ' ', start: 0.2, end: 0.25, type: 'spacing', speaker_id: 'speaker_0', logprob: 0 },
        { text: 'there.', start: 0.25, end: 0.5, type: 'word', speaker_id: 'speaker_0', logprob: -0.02 },
      ],
    });
  }
  if (name === 'deepgram' && method === 'POST' && path === '/v1/listen') {
    return async (res) => json(res, 200, {
      metadata: {
        transaction_key: 'deprecated', request_id: '5b8e1a7c-2f1d-4c3b-9a0e-6d7f8e9a0b1c', sha256: 'a'.repeat(64), created: '2026-12-01T12:00:00.000Z',
        duration: 0.5, channels: 1, models: ['1abfe86b-e047-4eed-858a-35e5625b41ee'],
        model_info: { '1abfe86b-e047-4eed-858a-35e5625b41ee': { name: 'general-nova-3', version: '2025-01-01.0', arch: 'nova-3' } },
      },
      results: { channels: [{ alternatives: [{ transcript: 'hello there', confidence: 0.99, words: [
        { word: 'hello', start: 0, end: 0.2, confidence: 0.99 },
        { word: 'there', start: 0.25, end: 0.5, confidence: 0.98 },
      ] }] }] },
    });
  }
  return undefined;
}

/** Keeps what the fake answers to `record` in `record.sent` (status and body bytes), so a
 * test can compare what a client got with what the provider sent. */
function keepSent(res, record) {
  const chunks = [];
  const keep = (c, enc) => { if (c != null && typeof c !== 'function') chunks.push(Buffer.from(c, typeof enc === 'string' ? enc : undefined)); };
  const { write, end } = res;
  res.write = (c, ...rest) => { keep(c, rest[0]); return write.call(res, c, ...rest); };
  res.end = (c, ...rest) => {
    keep(c, rest[0]);
    record.sent = { status: res.statusCode, body: Buffer.concat(chunks) };
    return end.call(res, c, ...rest);
  };
}

/**
 * A gate: `wait` settles when `open()` is called, or by itself after `maxMs`; then
 * `open.timedOut` says which.
 */
function gate(maxMs) {
  let resolve;
  const wait = new Promise((r) => { resolve = r; });
  const open = () => { clearTimeout(timer); resolve(); };
  open.timedOut = false;
  const timer = setTimeout(() => { open.timedOut = true; resolve(); }, maxMs);
  return { wait, open };
}

/** The realtime token endpoints, by provider: (method, path) → the answer to a valid key. */
function tokenEndpoint(name, method, path) {
  if (method !== 'POST') return null;
  const fresh = (prefix) => `${prefix}${crypto.randomBytes(12).toString('hex')}`;
  const now = () => Math.floor(Date.now() / 1000);
  if (name === 'openai' && path === '/v1/realtime/client_secrets') {
    return (res, body) => {
      const secs = body.expires_after?.seconds ?? 600;
      const value = fresh('ek_');
      json(res, 200, { value, expires_at: now() + secs, session: { type: body.session?.type ?? 'realtime', object: 'realtime.session', model: body.session?.model ?? 'gpt-realtime' } });
      return value;
    };
  }
  if (name === 'elevenlabs' && /^\/v1\/single-use-token\/(realtime_scribe|batch_scribe|tts_websocket)$/.test(path)) {
    return (res) => { const token = fresh('sutkn_'); json(res, 200, { token }); return token; };
  }
  if (name === 'deepgram' && path === '/v1/auth/grant') {
    return (res, body) => {
      const ttl = body.ttl_seconds ?? 30;
      const token = `eyJhbGciOiJIUzI1NiJ9.${fresh('')}.c2ln`;
      json(res, 200, { access_token: token, expires_in: ttl });
      return token;
    };
  }
  if (name === 'gemini' && path === '/v1alpha/auth_tokens') {
    return (res) => { const token = `auth_tokens/${fresh('')}`; json(res, 200, { name: token }); return token; };
  }
  return null;
}

/**
 * Answers an upgrade with `response` (a whole HTTP answer) and half-closes the connection,
 * reading and dropping anything more the client sends: closing a socket that still holds
 * unread bytes resets it (an RST), and the client may lose the answer, which no real
 * provider does.
 */
function refuseUpgrade(socket, response) {
  socket.on('data', () => {});
  socket.on('error', () => {});
  socket.on('end', () => socket.destroy());
  socket.end(response);
  setTimeout(() => socket.destroy(), 5_000).unref();
}

/**
 * A realtime WebSocket endpoint of the fake, in the provider's shapes: its handler, given
 * the accepted socket, or undefined for a path that is not one.
 */
function realtimeSocket(name, path) {
  if (name === 'deepgram' && path === '/v1/listen') {
    return (ws) => {
      let bytes = 0;
      ws.onmessage = (m) => {
        if (m.type === 'binary') {
          bytes += m.data.length;
          ws.send(JSON.stringify({ type: 'Results', is_final: true, duration: m.data.length / 32000, channel: { alternatives: [{ transcript: `heard ${m.data.length} bytes`, confidence: 0.99, sha256: crypto.createHash('sha256').update(m.data).digest('hex') }] } }));
          ws.send(Buffer.from(m.data).reverse());
        } else if (JSON.parse(m.data.toString()).type === 'CloseStream') {
          ws.send(JSON.stringify({ type: 'Metadata', transaction_key: 'deprecated', request_id: crypto.randomUUID(), duration: bytes / 32000, channels: 1 }));
          ws.close(1000, '');
        }
      };
    };
  }
  if (name === 'deepgram' && path === '/v1/speak') {
    return (ws) => {
      ws.onmessage = (m) => {
        const msg = JSON.parse(m.data.toString());
        if (msg.type === 'Speak') ws.send(Buffer.from(`audio of ${msg.text}`));
        else if (msg.type === 'Flush') ws.send(JSON.stringify({ type: 'Flushed', sequence_id: 0 }));
        else if (msg.type === 'Close') ws.close(1000, '');
      };
    };
  }
  if (name === 'elevenlabs' && /^\/v1\/text-to-speech\/[^/]+\/stream-input$/.test(path)) {
    return (ws, { invalid }) => {
      if (invalid) {
        ws.send(JSON.stringify({ message: 'Invalid API key', error: 'invalid_api_key', code: 1008 }));
        ws.close(1008, 'Invalid API key');
        return;
      }
      ws.onmessage = (m) => {
        const { text } = JSON.parse(m.data.toString());
        if (text === '') {
          ws.send(JSON.stringify({ isFinal: true }));
          ws.close(1000, '');
        } else if (text.trim()) {
          ws.send(JSON.stringify({ audio: Buffer.from(`audio of ${text}`).toString('base64'), isFinal: null, normalizedAlignment: { chars: [...text], charStartTimesMs: [], charsDurationsMs: [] } }));
        }
      };
    };
  }
  if (name === 'elevenlabs' && path === '/v1/speech-to-text/realtime') {
    return (ws, { invalid }) => {
      if (invalid) {
        ws.send(JSON.stringify({ message_type: 'auth_error', error: 'You must be authenticated to use this endpoint.' }));
        ws.close(1000, '');
        return;
      }
      ws.send(JSON.stringify({ message_type: 'session_started', session_id: crypto.randomUUID(), config: { sample_rate: 16000, model_id: 'scribe_v2_realtime' } }));
      ws.onmessage = (m) => {
        const msg = JSON.parse(m.data.toString());
        if (msg.message_type !== 'input_audio_chunk') return;
        const n = Buffer.from(msg.audio_base_64 ?? '', 'base64').length;
        ws.send(JSON.stringify({ message_type: msg.commit ? 'committed_transcript' : 'partial_transcript', text: `heard ${n} bytes` }));
      };
    };
  }
  if (name === 'openai' && path === '/v1/realtime') {
    return (ws, { invalid, query }) => {
      if (invalid) {
        ws.send(JSON.stringify({ type: 'error', event_id: 'event_0', error: { type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided.', param: null, event_id: null } }));
        ws.close(3000, 'invalid_request_error.invalid_api_key');
        return;
      }
      const session = { type: 'realtime', object: 'realtime.session', id: 'sess_fake1', model: query.get('model') ?? 'gpt-realtime', output_modalities: ['audio'] };
      ws.send(JSON.stringify({ type: 'session.created', event_id: 'event_1', session }));
      let n = 1;
      ws.onmessage = (m) => {
        const msg = JSON.parse(m.data.toString());
        if (msg.type === 'session.update') {
          ws.send(JSON.stringify({ type: 'session.updated', event_id: `event_${++n}`, session: { ...session, ...msg.session } }));
        } else if (msg.type === 'response.create') {
          const id = `resp_${++n}`;
          ws.send(JSON.stringify({ type: 'response.created', event_id: `event_${++n}`, response: { object: 'realtime.response', id, status: 'in_progress', output: [] } }));
          ws.send(JSON.stringify({ type: 'response.output_text.delta', event_id: `event_${++n}`, response_id: id, item_id: 'item_1', output_index: 0, content_index: 0, delta: 'Hello from the fake.' }));
          ws.send(JSON.stringify({ type: 'response.done', event_id: `event_${++n}`, response: { object: 'realtime.response', id, status: 'completed', output: [], usage: { total_tokens: 33, input_tokens: 11, output_tokens: 22, input_token_details: { text_tokens: 11, audio_tokens: 0, cached_tokens: 0 }, output_token_details: { text_tokens: 22, audio_tokens: 0 } } } }));
        }
      };
    };
  }
  return undefined;
}

export function startFakeProviders() {
  const sseSent = [];
  // Keys whose answers wait (hold), and the SSE streams' last chunk (holdStreamEnd).
  const holds = new Map();
  const streams = { sseSent, streamEnd: null };
  const seen = new Map();
  const requests = [];
  const hanging = new Set();
  const revoked = new Set();
  const limitOnce = new Map();
  /** The realtime credentials minted: { provider, key, token, body }. */
  const minted = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://fake');
    if (url.pathname.startsWith('/redirect/')) {
      requests.push({ provider: 'redirect', method: req.method, path: url.pathname, key: '', headers: req.headers, at: Date.now() });
      res.writeHead(302, { location: `http://${req.headers.host}${url.pathname.slice('/redirect'.length)}${url.search}` });
      return res.end();
    }
    const [, name, ...rest] = url.pathname.split('/');
    const p = providers[name === 'azure' ? 'azure' : name];
    if (!p) return json(res, 404, { error: 'unknown fake provider' });
    // Azure: /azure/<region>/<sts|tts>/…; the region is kept for the tests to check.
    const path = '/' + (name === 'azure' ? rest.slice(2) : rest).join('/');
    const region = name === 'azure' ? rest[0] : undefined;
    const key = p.key(req.headers) ?? '';
    const count = (seen.get(`${name}:${key}`) ?? 0) + 1;
    seen.set(`${name}:${key}`, count);
    const record = { provider: name, method: req.method, path, region, query: url.search, key, headers: req.headers, at: Date.now() };
    requests.push(record);
    keepSent(res, record);
    const held = holds.get(key);
    if (held) {
      held.wait.then(() => answer(record, p, count, url, req, res));
      return undefined;
    }
    return answer(record, p, count, url, req, res);
  });
  /**
   * The realtime socket attempts: { provider, path, query, url, key, headers, protocols,
   * token, accepted, refused?, ws }.
   */
  const sockets = [];
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://fake');
    const [, name, ...rest] = url.pathname.split('/');
    const p = providers[name];
    const path = '/' + rest.join('/');
    const protocols = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((x) => x.trim()).filter(Boolean);
    const entry = { provider: name, path: url.pathname, query: url.search, url: req.url, headers: req.headers, protocols, at: Date.now() };
    sockets.push(entry);
    const realtime = p && realtimeSocket(name, path);
    // A browser's Deepgram grant (subprotocols `bearer, <grant>`): minted here, unexpired,
    // from a key not revoked since. A server's key: in the provider's header.
    const [scheme, token] = protocols;
    const grant = name === 'deepgram' && scheme === 'bearer' && protocols.length === 2
      ? minted.find((m) => m.provider === 'deepgram' && m.token === token) : undefined;
    entry.token = token;
    const granted = grant && !revoked.has(grant.key) && Date.now() < grant.at + (grant.body.ttl_seconds ?? 30) * 1000;
    const key = grant ? grant.key : (p?.key(req.headers) ?? '');
    entry.key = key;
    const invalid = grant ? !granted : (key === '' || revoked.has(key) || key.split('_')[1] === 'invalid');
    // Deepgram refuses a bad key or grant at the upgrade, and every provider a socket with no
    // credential at all; the others accept a bad key and say so on the socket.
    if (!realtime || (invalid && (name === 'deepgram' || key === ''))) {
      entry.accepted = false;
      entry.refused = realtime ? 401 : 404;
      const body = JSON.stringify({ err_code: 'INVALID_AUTH', err_msg: 'Invalid credentials.', request_id: crypto.randomUUID() });
      refuseUpgrade(socket, `HTTP/1.1 ${entry.refused} ${realtime ? 'Unauthorized' : 'Not Found'}\r\nconnection: close\r\ncontent-type: application/json\r\ndg-error: Invalid credentials.\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      return;
    }
    const open = () => {
      entry.accepted = true;
      entry.ws = accept(req, socket, head, grant ? 'bearer' : undefined);
      realtime(entry.ws, { invalid, query: url.searchParams });
    };
    // A held upgrade is answered when the test says so (holdUpgrades).
    if (upgrades.held) upgrades.held.wait.then(open);
    else open();
  });
  const upgrades = { held: null };
  /** Answers the request `record` (recorded when it arrived). */
  function answer(record, p, count, url, req, res) {
    const { provider: name, key, path } = record;
    const ok = () => p.ok(res, path, url.searchParams);
    const kind = revoked.has(key) ? 'invalid' : key === '' && p.keyless ? 'valid' : key.split('_')[1];
    if (limitOnce.has(key)) {
      const secs = limitOnce.get(key);
      limitOnce.delete(key);
      record.limited = true;
      return p.limited(res, secs);
    }
    const mint = tokenEndpoint(name, req.method, path);
    if (mint) {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        record.body = Buffer.concat(chunks);
        record.operation = true;
        switch (kind) {
          case 'valid': {
            const token = mint(res, parse(record.body));
            minted.push({ provider: name, key, token, body: parse(record.body), at: Date.now() });
            return undefined;
          }
          case 'forbidden':
          case 'noscope': return (p.forbidden ?? p.invalid)(res);
          case 'quota':
          case 'spent': return (p.quota ?? p.invalid)(res);
          case 'busy': return p.limited(res, 7);
          default: return p.invalid(res);
        }
      });
      return undefined;
    }
    const op = operation(name, req.method, path);
    if (op) {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        record.body = Buffer.concat(chunks);
        record.operation = true;
        switch (kind) {
          case 'invalid': return p.invalid(res);
          case 'busy': return p.limited(res, 7);
          case 'spent':
          case 'spentreset': return (p.quota ?? p.invalid)(res);
          default: return op(res, record.body, streams, url.searchParams);
        }
      });
      return undefined;
    }
    switch (kind) {
      case 'valid':
      case 'busy':
      case 'spent': return ok();
      case 'spentreset': return p.spentreset ? p.spentreset(res, path, ok) : ok();
      case 'invalid': return p.invalid(res);
      case 'noscope': return p.noscope ? p.noscope(res, path, ok) : ok();
      case 'forbidden': return (p.forbidden ?? p.invalid)(res);
      case 'quota': return (p.quota ?? p.invalid)(res);
      case 'ratelimited': return count === 1 ? p.limited(res, 1) : ok();
      case 'retrydate':
        if (count === 1) {
          const at = new Date(Math.ceil((Date.now() + 1500) / 1000) * 1000).toUTCString();
          return json(res, 429, { error: { message: 'Rate limited' } }, { 'retry-after': at });
        }
        return ok();
      case 'retryms': return count === 1 ? json(res, 429, { error: { message: 'Rate limited', code: 'rate_limit_exceeded' } }, { 'retry-after-ms': '800' }) : ok();
      case 'longwait': return p.limited(res, 60);
      case 'flaky': return count === 1 ? p.error(res) : ok();
      case 'slow': hanging.add(res); return undefined;
      case 'slowvalid': hanging.add(res); setTimeout(() => { hanging.delete(res); ok(); }, SLOW_MS); return undefined;
      case 'echo': return p.primary(path) ? ok() : p.echo(res, key);
      case 'echoinvalid': return p.echoinvalid(res, key);
      case 'echomodels': return p.primary(path) ? ok() : p.echomodels(res, key);
      case 'huge': return p.primary(path) ? ok() : p.huge(res);
      default: return p.invalid(res);
    }
  }
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      const url = `http://127.0.0.1:${port}`;
      resolve({
        url,
        requests,
        minted,
        sockets,
        base: (provider) => `${url}/${provider}`,
        /** Every provider's base URL var, pointing here. */
        vars: () => ({
          ELEVENLABS_BASE_URL: `${url}/elevenlabs`,
          AZURE_SPEECH_STS_BASE_URL: `${url}/azure/{region}/sts`,
          AZURE_SPEECH_TTS_BASE_URL: `${url}/azure/{region}/tts`,
          AZURE_SPEECH_STT_BASE_URL: `${url}/azure/{region}/stt`,
          GEMINI_BASE_URL: `${url}/gemini`,
          OPENAI_BASE_URL: `${url}/openai`,
          ANTHROPIC_BASE_URL: `${url}/anthropic`,
          DEEPGRAM_BASE_URL: `${url}/deepgram`,
          OPENROUTER_BASE_URL: `${url}/openrouter`,
          GROQ_BASE_URL: `${url}/groq`,
          MISTRAL_BASE_URL: `${url}/mistral`,
        }),
        callsFor: (key) => requests.filter((r) => r.key === key),
        /** When the fake sent each SSE chunk (ms since the epoch), over every stream. */
        sseSent,
        /**
         * Realtime upgrades from now on wait (recorded in `sockets` when they arrive) until
         * the returned function is called, or `maxMs` has passed.
         */
        holdUpgrades({ maxMs = 30_000 } = {}) {
          const g = gate(maxMs);
          upgrades.held = g;
          g.wait.then(() => { if (upgrades.held === g) upgrades.held = null; });
          return g.open;
        },
        /** From now on the provider answers this key as invalid (a key revoked upstream). */
        revoke: (key) => revoked.add(key),
        /** The next call with this key answers 429 in the provider's style, asking for `secs`. */
        limitOnce: (key, secs) => limitOnce.set(key, secs),
        /**
         * From now on every call with this key waits (it is recorded in `requests` when it
         * arrives) until the returned function is called, or `maxMs` has passed: a test
         * lands a change while a check is certainly in flight, without guessing a delay.
         */
        hold(key, { maxMs = 30_000 } = {}) {
          const g = gate(maxMs);
          holds.set(key, g);
          g.wait.then(() => { if (holds.get(key) === g) holds.delete(key); });
          return g.open;
        },
        /**
         * SSE streams started from now on send their last chunk only when the returned
         * function is called (or after `maxMs`, and then its `timedOut` is true): a test
         * that sees the first chunk before releasing it knows the stream was not buffered,
         * however slow the machine.
         */
        holdStreamEnd({ maxMs = 10_000 } = {}) {
          const g = gate(maxMs);
          streams.streamEnd = g.wait;
          g.wait.then(() => { if (streams.streamEnd === g.wait) streams.streamEnd = null; });
          return g.open;
        },
        close: () => new Promise((done) => {
          for (const g of holds.values()) g.open();
          for (const res of hanging) res.destroy();
          for (const s of sockets) s.ws?.destroy();
          server.closeAllConnections?.();
          server.close(() => done());
        }),
      });
    });
  });
}
