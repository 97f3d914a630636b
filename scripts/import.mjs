#!/usr/bin/env node
// Moves keys a deployment holds today (a `.env` of system keys, or a JSON export of
// per-user keys) into byok-vault through POST /v1/admin/import, in chunks the vault
// takes, with a progress bar. Never prints a key: reports name entries by file and line.
// Like the endpoint, it only reports what would happen unless told to import (--commit).
//
//   BYOK_ADMIN_TOKEN=… node scripts/import.mjs --env deploy.env --user ops --url https://vault.example
//   BYOK_ADMIN_TOKEN=… node scripts/import.mjs --json export.json --url … --commit
//   node scripts/import.mjs --env deploy.env --user ops --out request.json   (writes the request only)
//
// Options:
//   --env FILE          a .env-style file: KEY=value lines (export, quotes and # comments allowed)
//   --json FILE         a JSON export: [{user_id, provider, api_key, label?, params?}, …] or
//                       {"entries": […]}; user/userId, key/apiKey, base_url/baseUrl are read too
//   --user ID           whose keys the .env ones become (and the default for JSON entries without one)
//   --url URL           the vault (default http://127.0.0.1:8787); the token is read from the
//                       environment variable BYOK_ADMIN_TOKEN, never from the command line
//   --commit            import for real (without it: a dry run, which reports what would happen
//                       and changes nothing; --dry-run says so explicitly)
//   --validate          have the vault check every key live before storing it (without it the
//                       rows are "unverified" until the vault's revalidation checks them)
//   --chunk N           entries per request (default and most 200; 25 with --validate); requests
//                       also stay under the vault's 64 KiB body limit
//   --batch-id ID       the batch to use (an earlier one to add to); by default the script names a
//                       new one, so a request sent again after a lost answer lands in it
//   --report FILE       write the per-entry report (JSON, no keys) there
//   --out FILE          write the import request (it holds the keys: mode 0600) and send nothing
//
// Exit status: 0 every entry created or skipped as a duplicate, 1 some rejected, 2 it
// could not run (bad arguments, unreadable file, the vault unreachable or refusing).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Environment variable names a hard-coded deployment uses, per provider. */
const ENV_KEYS = {
  elevenlabs: ['ELEVENLABS_API_KEY', 'ELEVEN_API_KEY', 'XI_API_KEY'],
  azure_speech: ['AZURE_SPEECH_KEY', 'AZURE_SPEECH_API_KEY', 'SPEECH_KEY'],
  gemini: ['GEMINI_API_KEY', 'GOOGLE_API_KEY', 'GOOGLE_GENERATIVE_AI_API_KEY'],
  openai: ['OPENAI_API_KEY'],
  anthropic: ['ANTHROPIC_API_KEY'],
  ollama: ['OLLAMA_API_KEY'],
  deepgram: ['DEEPGRAM_API_KEY'],
  openrouter: ['OPENROUTER_API_KEY'],
  groq: ['GROQ_API_KEY'],
  mistral: ['MISTRAL_API_KEY'],
};
/** Where a provider's key is used, when it needs saying. */
const ENV_PARAMS = {
  azure_speech: { region: ['AZURE_SPEECH_REGION', 'SPEECH_REGION'] },
  ollama: { base_url: ['OLLAMA_BASE_URL', 'OLLAMA_HOST', 'OLLAMA_URL'] },
};
const PROVIDERS = Object.keys(ENV_KEYS);

export class UsageError extends Error {}

/** A quoted .env value: the text up to the matching unescaped quote (double quotes take
 * \\n, \\t, \\" and \\\\ escapes, read in one pass), then nothing but a comment. */
function quoted(rest, quote) {
  let value = '';
  for (let i = 1; i < rest.length; i++) {
    const ch = rest[i];
    if (ch === quote) {
      const after = rest.slice(i + 1).trim();
      return after === '' || after.startsWith('#') ? value : undefined;
    }
    if (ch === '\\' && quote === '"' && i + 1 < rest.length) {
      const next = rest[++i];
      value += { n: '\n', t: '\t', '"': '"', '\\': '\\' }[next] ?? `\\${next}`;
    } else {
      value += ch;
    }
  }
  return undefined;
}

/** Reads a .env file: name → {value, line}. Values never appear in errors. */
export function parseEnv(text, file = '.env') {
  const vars = new Map();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new UsageError(`${file}:${i + 1}: not a NAME=value line`);
    const rest = m[2];
    let value;
    if (rest[0] === '"' || rest[0] === "'") {
      value = quoted(rest, rest[0]);
      if (value === undefined) throw new UsageError(`${file}:${i + 1}: ${m[1]} has an unclosed quote or text after it`);
    } else {
      value = rest.replace(/\s+#.*$/, '').trim();
    }
    vars.set(m[1], { value, line: i + 1 });
  });
  return vars;
}

/**
 * The import entries a .env of system keys stands for, all for `user`: the common provider
 * variable names and byok-vault's own SYSTEM_KEY_<PROVIDER>[_REGION|_BASE_URL]. Returns the
 * entries (each with its `source`) and the names it did not recognise.
 */
export function entriesFromEnv(vars, { user, file = '.env' }) {
  if (!user) throw new UsageError('--user is required with --env: whose keys do these become?');
  const entries = [];
  const used = new Set();
  const pick = (names) => names.find((n) => vars.has(n) && vars.get(n).value !== '');
  for (const provider of PROVIDERS) {
    const P = provider.toUpperCase();
    const keyName = pick([`SYSTEM_KEY_${P}`, ...ENV_KEYS[provider]]);
    const paramNames = {
      region: [`SYSTEM_KEY_${P}_REGION`, ...(ENV_PARAMS[provider]?.region ?? [])],
      base_url: [`SYSTEM_KEY_${P}_BASE_URL`, ...(ENV_PARAMS[provider]?.base_url ?? [])],
    };
    const params = {};
    for (const [param, names] of Object.entries(paramNames)) {
      const name = pick(names);
      if (name && (keyName || provider === 'ollama')) {
        params[param] = vars.get(name).value;
        used.add(name);
      }
    }
    // Ollama may run without a key: its URL alone makes an entry.
    if (!keyName && !(provider === 'ollama' && params.base_url)) continue;
    const entry = { user_id: user, provider, label: `Imported from ${path.basename(file)}` };
    if (keyName) {
      entry.api_key = vars.get(keyName).value;
      used.add(keyName);
    }
    if (Object.keys(params).length) entry.params = params;
    const line = vars.get(keyName ?? pick(paramNames.base_url)).line;
    entries.push({ entry, source: `${file}:${line}` });
  }
  const ignored = [...vars.keys()].filter((n) => !used.has(n));
  return { entries, ignored };
}

const first = (o, names) => names.map((n) => o[n]).find((v) => v !== undefined && v !== null);

/** The import entries of a JSON export (an array, or an object holding one). */
export function entriesFromJson(data, { user, file = 'export.json' }) {
  const list = Array.isArray(data) ? data : first(data ?? {}, ['entries', 'credentials', 'keys']);
  if (!Array.isArray(list)) throw new UsageError(`${file}: expected an array of entries, or {"entries": [...]}`);
  return {
    entries: list.map((item, i) => {
      const source = `${file}#${i}`;
      if (!item || typeof item !== 'object' || Array.isArray(item)) return { entry: item, source };
      const params = { ...(item.params ?? {}) };
      const region = first(item, ['region']);
      const baseUrl = first(item, ['base_url', 'baseUrl']);
      if (region !== undefined) params.region = region;
      if (baseUrl !== undefined) params.base_url = baseUrl;
      const entry = {
        user_id: first(item, ['user_id', 'userId', 'user']) ?? user,
        provider: first(item, ['provider', 'service']),
        api_key: first(item, ['api_key', 'apiKey', 'key']),
      };
      const label = first(item, ['label', 'name']);
      if (label !== undefined) entry.label = label;
      const model = first(item, ['model']);
      if (model !== undefined) entry.model = model;
      if (Object.keys(params).length) entry.params = params;
      for (const k of Object.keys(entry)) if (entry[k] === undefined) delete entry[k];
      return { entry, source };
    }),
    ignored: [],
  };
}

/** A progress bar on stderr: redrawn in place on a terminal, a line per step otherwise. */
export function progress(total, { stream = process.stderr } = {}) {
  const width = 30;
  return (done, counts) => {
    const filled = Math.round((done / Math.max(total, 1)) * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} entries`;
    const tally = `created ${counts.created} · skipped ${counts.skipped} · rejected ${counts.rejected}`;
    if (stream.isTTY) stream.write(`\r${bar}  ${tally}${done >= total ? '\n' : ''}`);
    else stream.write(`${bar}  ${tally}\n`);
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Outcomes the vault says to send again: its own limits, the request's share of provider
 * calls, a provider's back-off. */
const RETRYABLE = new Set(['rate_limited', 'not_checked', 'provider_rate_limited']);
/** The vault refuses bodies over 64 KiB: requests stay under this. */
const MAX_BODY_BYTES = 60_000;

/** Splits `indices` into requests of at most `count` entries and MAX_BODY_BYTES. */
function chunks(indices, items, count) {
  const out = [];
  let current = [];
  let bytes = 200;
  for (const i of indices) {
    const size = Buffer.byteLength(JSON.stringify(items[i].entry)) + 1;
    if (current.length && (current.length >= count || bytes + size > MAX_BODY_BYTES)) {
      out.push(current);
      current = [];
      bytes = 200;
    }
    current.push(i);
    bytes += size;
  }
  if (current.length) out.push(current);
  return out;
}

/** A batch id named in advance, so a request sent again after a lost answer lands in it. */
export const newBatchId = () => `imp_${crypto.randomBytes(16).toString('hex')}`;

/**
 * Sends `items` ({entry, source}) in requests the vault takes; returns the merged report
 * (with what was done so far on `error.report` if it stops). Entries the vault says to send
 * again are sent once the wait it names has passed; an HTTP 429 or 503 is waited out.
 */
export async function sendAll(items, { url, token, dryRun = true, validate, chunk, batchId, onProgress, log = () => {} }) {
  const results = new Array(items.length);
  const counts = { created: 0, skipped: 0, rejected: 0 };
  const batch = dryRun ? null : batchId ?? newBatchId();
  const report = () => ({
    batch_id: batch, dry_run: dryRun, validated: validate,
    summary: { entries: items.length, ...counts }, entries: results,
  });
  let pending = items.map((_, i) => i);
  for (let round = 0; pending.length && round < 6; round++) {
    const again = [];
    let waitSeconds = 0;
    for (const indices of chunks(pending, items, chunk)) {
      const body = { dry_run: dryRun, validate, entries: indices.map((i) => items[i].entry) };
      if (batch) body.batch_id = batch;
      let answer;
      try {
        answer = await post(`${url}/v1/admin/import`, token, body, log);
      } catch (e) {
        e.batch = batch;
        e.report = report();
        throw e;
      }
      answer.entries.forEach((line, k) => {
        const i = indices[k];
        if (line.outcome === 'rejected' && RETRYABLE.has(line.reason) && round < 5) {
          again.push(i);
          waitSeconds = Math.max(waitSeconds, line.retry_after_seconds ?? 60);
          return;
        }
        const { index, ...rest } = line;
        if (rest.same_as_entry != null) rest.same_as_entry = indices[rest.same_as_entry];
        results[i] = { source: items[i].source, ...rest };
        counts[line.outcome] = (counts[line.outcome] ?? 0) + 1;
      });
      onProgress?.(counts.created + counts.skipped + counts.rejected, counts);
    }
    pending = again.sort((a, b) => a - b);
    if (pending.length) {
      const wait = Math.min(waitSeconds, 120);
      log(`${pending.length} entries are to be sent again (the vault's or a provider's limit); waiting ${wait}s`);
      await sleep(wait * 1000);
    }
  }
  return report();
}

async function post(url, token, body, log) {
  for (let attempt = 1; ; attempt++) {
    let res;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (e) {
      if (attempt >= 4) throw new Error(`the vault could not be reached (${e.cause?.code ?? e.message})`);
      await sleep(500 * 2 ** attempt);
      continue;
    }
    const text = await res.text();
    if (res.ok) return JSON.parse(text);
    if ((res.status === 429 || res.status === 503) && attempt < 6) {
      const wait = Math.min(Number(res.headers.get('retry-after')) || 2 ** attempt, 120);
      log(`the vault answered ${res.status}; trying again in ${wait}s`);
      await sleep(wait * 1000);
      continue;
    }
    let problem;
    try { problem = JSON.parse(text); } catch { problem = {}; }
    const fields = (problem.errors ?? []).map((e) => `${e.field}: ${e.message}`).join('; ');
    throw new Error(`the vault answered ${res.status} ${problem.code ?? ''}${problem.detail ? `: ${problem.detail}` : ''}${fields ? ` (${fields})` : ''}`);
  }
}

function parseArgs(argv) {
  // A dry run unless told otherwise, as the endpoint is.
  const opts = { url: 'http://127.0.0.1:8787', dryRun: true, validate: false };
  let commit = false;
  let dry = false;
  const takes = { '--env': 'env', '--json': 'json', '--user': 'user', '--url': 'url', '--chunk': 'chunk', '--batch-id': 'batchId', '--report': 'report', '--out': 'out' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--dry-run') dry = true;
    else if (a === '--commit') commit = true;
    else if (a === '--validate') opts.validate = true;
    else if (a === '--help' || a === '-h') opts.help = true;
    else if (takes[a] && i + 1 < argv.length) opts[takes[a]] = argv[++i];
    else throw new UsageError(`unknown or incomplete argument: ${a}`);
  }
  if (!opts.help && !opts.env === !opts.json) throw new UsageError('name one input: --env FILE or --json FILE');
  if (commit && dry) throw new UsageError('--commit and --dry-run contradict each other');
  opts.dryRun = !commit;
  const most = opts.validate ? 25 : 200;
  const target = (() => { try { return new URL(opts.url); } catch { throw new UsageError(`--url is not a URL: ${opts.url}`); } })();
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(target.hostname);
  if (target.protocol !== 'https:' && !(target.protocol === 'http:' && loopback)) {
    throw new UsageError('--url must be https (plain http only to this machine): the token and the keys travel in it');
  }
  opts.chunk = opts.chunk === undefined ? most : Number(opts.chunk);
  if (!Number.isInteger(opts.chunk) || opts.chunk < 1 || opts.chunk > most) {
    throw new UsageError(`--chunk must be 1..${most}${opts.validate ? ' with --validate' : ''}`);
  }
  opts.url = opts.url.replace(/\/+$/, '');
  return opts;
}

/** Writes JSON readable by its owner alone (a request file holds keys; a report may hold
 * what an export had in the wrong column). */
function writePrivate(file, value) {
  fs.writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
}

export async function main(argv = process.argv.slice(2), env = process.env) {
  const say = (line) => process.stderr.write(`[import] ${line}\n`);
  let opts;
  try {
    opts = parseArgs(argv);
    if (opts.help) {
      process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\nimport ')[0].replace(/^#!.*\n/, ''));
      return 0;
    }
    const file = opts.env ?? opts.json;
    let text;
    try { text = fs.readFileSync(file, 'utf8'); } catch (e) { throw new UsageError(`cannot read ${file}: ${e.code ?? e.message}`); }
    const name = path.basename(file);
    let parsed;
    if (opts.env) {
      parsed = entriesFromEnv(parseEnv(text, name), { user: opts.user, file: name });
    } else {
      let data;
      try { data = JSON.parse(text); } catch { throw new UsageError(`${name}: not valid JSON`); }
      parsed = entriesFromJson(data, { user: opts.user, file: name });
    }
    if (parsed.ignored.length) say(`ignored (not a provider key this script knows): ${parsed.ignored.join(', ')}`);
    if (!parsed.entries.length) throw new UsageError(`${name}: no provider keys found`);
    say(`${parsed.entries.length} entries from ${name}`);
    if (opts.out) {
      const request = { dry_run: opts.dryRun, validate: opts.validate, entries: parsed.entries.map((e) => e.entry) };
      writePrivate(opts.out, request);
      say(`wrote the import request to ${opts.out} (it holds the keys; mode 0600)`);
      return 0;
    }
    const token = env.BYOK_ADMIN_TOKEN;
    if (!token) throw new UsageError('set BYOK_ADMIN_TOKEN to a service token with the admin scope');
    const report = await sendAll(parsed.entries, {
      url: opts.url, token, dryRun: opts.dryRun, validate: opts.validate, chunk: opts.chunk, batchId: opts.batchId,
      onProgress: progress(parsed.entries.length), log: say,
    });
    if (opts.report) writePrivate(opts.report, report);
    for (const line of report.entries.filter((e) => e?.outcome === 'rejected')) {
      say(`rejected ${line.source}: ${line.reason}${line.message ? ` (${line.message})` : ''}`);
    }
    const s = report.summary;
    say(`${opts.dryRun ? 'dry run: would create' : 'created'} ${s.created}, skipped ${s.skipped} as duplicates, rejected ${s.rejected}`);
    if (opts.dryRun) say('nothing was imported: run again with --commit to import');
    if (report.batch_id) say(`batch ${report.batch_id} (undo with POST /v1/admin/import/${report.batch_id}/rollback)`);
    return s.rejected ? 1 : 0;
  } catch (e) {
    say(e instanceof UsageError ? e.message : `stopped: ${e.message}`);
    if (e.batch) say(`what was created so far is batch ${e.batch}: go on with --batch-id ${e.batch}, or roll it back`);
    if (e.report && opts?.report) writePrivate(opts.report, e.report);
    return 2;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
