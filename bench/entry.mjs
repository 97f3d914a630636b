// The benchmark's entry module: the vault's own Worker (build/index.js, unchanged) behind a
// wrapper that counts, for each request, the calls the Worker makes into the D1 binding.
// Each `first`/`all`/`run`/`raw` of a statement, each `batch` and each `exec` is one round
// trip to the database; the count and the time spent waiting on them come back in the
// answer's `x-bench-d1-round-trips` and `x-bench-d1-ms` headers. Nothing here is deployed:
// `wrangler dev` runs it only from bench/bench.mjs.
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

export default class extends WorkerEntrypoint {
  async fetch(request) {
    const tally = new Tally();
    const env = Object.create(this.env, { DB: { value: countingDb(this.env.DB, tally) } });
    const response = await vault.fetch.call({ env, ctx: this.ctx }, request);
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
