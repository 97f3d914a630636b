// The official `openai` npm package, configured only with the vault's base URL and a user's
// vault token as its key, for tests/e2e/sdks.test.mjs: each case returns what the SDK gave
// the app, or what a refusal looked like to it. No retries (a refusal is seen as the SDK
// first sees it) and a short timeout; the base URL is the vault's, on loopback.
import OpenAI, { toFile } from 'openai';

const TIMEOUT_MS = 15_000;

/** A small valid WAV file of silence: what an app would upload for a transcript. */
export function wav(seconds = 0.5, rate = 16000) {
  const frames = Buffer.alloc(Math.floor(seconds * rate) * 2);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0); h.writeUInt32LE(36 + frames.length, 4); h.write('WAVEfmt ', 8);
  h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22);
  h.writeUInt32LE(rate, 24); h.writeUInt32LE(rate * 2, 28); h.writeUInt16LE(2, 32); h.writeUInt16LE(16, 34);
  h.write('data', 36); h.writeUInt32LE(frames.length, 40);
  return Buffer.concat([h, frames]);
}

/** The client an app would make: the base URL, the key, and extra headers (defaultHeaders). */
const client = ({ base, token, headers }) => new OpenAI({
  baseURL: `${base}/v1/proxy/openai/v1`, apiKey: token, defaultHeaders: headers, maxRetries: 0, timeout: TIMEOUT_MS,
});

const messages = [{ role: 'user', content: 'Say hello' }];

export const cases = {
  'openai.chat': async (r) => (await client(r).chat.completions.create({ model: 'gpt-4o-mini', messages })).choices[0].message.content,
  'openai.chat_stream': async (r) => {
    const out = { text: [], total_tokens: null };
    const stream = await client(r).chat.completions.create({ model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) {
      const text = chunk.choices[0]?.delta?.content;
      if (text) out.text.push(text);
      if (chunk.usage) out.total_tokens = chunk.usage.total_tokens;
    }
    return out;
  },
  'openai.embeddings': async (r) => Array.from((await client(r).embeddings.create({ model: 'text-embedding-3-small', input: 'hello' })).data[0].embedding),
  'openai.speech': async (r) => {
    const res = await client(r).audio.speech.create({ model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'Hello' });
    return Buffer.from(await res.arrayBuffer());
  },
  'openai.transcription': async (r) => (await client(r).audio.transcriptions.create({
    model: 'whisper-1', file: await toFile(wav(), 'hello.wav', { type: 'audio/wav' }),
  })).text,
};

/**
 * Runs one case as the Python driver does (tests/sdk/sdk_cases.py): `{ ok, value }` or
 * `{ ok: false, error: { class, status, code, body, headers } }`, bytes as `{ bytes_b64 }`.
 */
export async function runCase(request) {
  try {
    const value = await cases[request.case](request);
    return { ok: true, value: Buffer.isBuffer(value) ? { bytes_b64: value.toString('base64') } : value };
  } catch (e) {
    const headers = {};
    e.headers?.forEach?.((v, k) => { headers[k.toLowerCase()] = v; });
    return {
      ok: false,
      error: {
        class: `openai.${e.constructor?.name}`,
        status: e.status ?? null,
        code: e.error?.code ?? null,
        message: String(e.message).split(request.token).join('<vault token>'),
        body: e.error ?? null,
        headers,
      },
    };
  }
}
