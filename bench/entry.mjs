// The benchmark's entry module: the vault's own Worker (build/index.js, unchanged) behind a
// wrapper that counts, for each request, the calls the Worker makes into the D1 binding.
// Each `first`/`all`/`run`/`raw` of a statement, each `batch` and each `exec` is one round
// trip to the database; the count and the time spent waiting on them come back in the
// answer's `x-bench-d1-round-trips` and `x-bench-d1-ms` headers. Nothing here is deployed,
// and nothing may be: its /__bench routes answer stored rows (ciphertext included) and
// forward a request anywhere. wrangler.toml's `main` is the Worker's own shim; `wrangler
// dev` runs this file only from bench/bench.mjs (and the round-trip test). It also
// answers, as floors in plain JS: GET /__bench/rows, the same rows a listing reads;
// /__bench/forward, one subrequest passed through; /__bench/f1q, one trivial query and one
// audit queue message; /__bench/ws, a WebSocket piped to `to` (with the key the caller
// gives in x-bench-upstream-authorization), frames passed on as they come.
//
// workers-rs checks a binding's constructor name, so the wrapper is made with
// Object.create over the real binding: the name is still "D1Database", and every method
// that is not counted is the real one, called on the real object.
import { WorkerEntrypoint } from 'cloudflare:workers';
import Vault from '../build/index.js';

const COUNTED = ['first', 'all', 'run', 'raw'];

function countingStatement(real, tally, unwrap) {
  const s = Object.create(real);
  s.bind = (...args) => countingStatement(real.bind(...args), tally, unwrap);
  for (const name of COUNTED) {
    s[name] = (...args) => tally.time(() => real[name](...args));
  }
  unwrap.set(s, real);
  return s;
}

function countingDb(real, tally) {
  const unwrap = new WeakMap();
  const db = Object.create(real);
  db.prepare = (sql) => countingStatement(real.prepare(sql), tally, unwrap);
  db.batch = (statements) => tally.time(() => real.batch(statements.map((s) => unwrap.get(s) ?? s)));
  db.exec = (sql) => tally.time(() => real.exec(sql));
  return db;
}

class Tally {
  trips = 0;
  ms = 0;
  async time(call) {
    this.trips += 1;
    const started = Date.now();
    try {
      return await call();
    } finally {
      this.ms += Date.now() - started;
    }
  }
}

const vault = Vault.prototype;

// What GET /v1/credentials reads (src/edge/d1/rows.rs COLUMNS, models left out),
// asked and answered in plain JS: the floor for a listing, so the benchmark can tell the
// runtime's and D1's cost of the rows from what the Worker adds to them.
const LISTING = `SELECT id, user_id, provider, label, key_hint, key_version, nonce, ciphertext,
  fingerprint, params, model, status, status_detail, warnings, quota, NULL AS models, models_fetched_at,
  consecutive_failures, last_validated_at, created_at, updated_at, version, last_used_at,
  revalidation_queued_at, import_batch_id
  FROM credentials WHERE user_id = ?1 AND (?2 IS NULL OR provider = ?2) ORDER BY created_at DESC, id`;

export default class extends WorkerEntrypoint {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === '/__bench/f1q') {
      // F1's one trivial query and one message on the audit queue (a nudge, as every audited
      // request sends one): the I/O of a read or a resolve, with none of the Worker's code.
      const row = await this.env.DB.prepare('SELECT 1 AS one').first();
      await this.env.AUDIT_QUEUE.send(JSON.stringify({ nudge: 'bench' }), { contentType: 'json' });
      return Response.json(row);
    }
    if (url.pathname === '/__bench/forward') {
      // One subrequest, its answer streamed back: the runtime's own cost of what the proxy
      // does around its key lookup. The target is the bench's fake provider (loopback).
      const upstream = await fetch(url.searchParams.get('to'), { method: request.method, headers: request.headers, body: request.body });
      return new Response(upstream.body, { status: upstream.status, headers: upstream.headers });
    }
    if (url.pathname === '/__bench/ws') {
      // The runtime's own cost of a WebSocket proxy: the upstream socket opened, the
      // caller's accepted, each frame sent on from its event, no key lookup, no audit.
      const up = await fetch(url.searchParams.get('to'), {
        headers: { upgrade: 'websocket', authorization: request.headers.get('x-bench-upstream-authorization') ?? '' },
      });
      const upstream = up.webSocket;
      if (!upstream) return new Response(`upstream answered ${up.status}`, { status: 502 });
      const [client, server] = Object.values(new WebSocketPair());
      for (const ws of [upstream, server]) ws.binaryType = 'arraybuffer';
      upstream.accept();
      server.accept();
      server.addEventListener('message', (e) => upstream.send(e.data));
      upstream.addEventListener('message', (e) => server.send(e.data));
      const closeBoth = (e) => {
        for (const ws of [upstream, server]) { try { ws.close(e.code === 1005 || e.code === 1006 ? 1000 : e.code, e.reason); } catch { /* closed */ } }
      };
      server.addEventListener('close', closeBoth);
      upstream.addEventListener('close', closeBoth);
      return new Response(null, { status: 101, webSocket: client });
    }
    if (url.pathname === '/__bench/rows') {
      const { results } = await this.env.DB.prepare(LISTING).bind(url.searchParams.get('user'), null).all();
      return Response.json({ credentials: results });
    }
    const tally = new Tally();
    const env = Object.create(this.env, { DB: { value: countingDb(this.env.DB, tally) } });
    const response = await vault.fetch.call({ env, ctx: this.ctx }, request);
    // A WebSocket's 101 cannot be rebuilt with headers added: it goes out as it is.
    if (response.webSocket) return response;
    const headers = new Headers(response.headers);
    headers.set('x-bench-d1-round-trips', String(tally.trips));
    headers.set('x-bench-d1-ms', String(tally.ms));
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
  }

  queue(batch) {
    return vault.queue.call(this, batch);
  }

  scheduled(event) {
    return vault.scheduled.call(this, event);
  }
}
