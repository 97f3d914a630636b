// Issue 21's speed budgets, measured in one run (bench/bench.mjs calls this; also
// `node bench/bench.mjs --metering-only`): two vaults side by side, the same
// configuration but METERING on in one and off in the other (the proxy then passes the
// answer on without the usage tap), measured in alternation so the machine's noise falls on
// both:
//   - a streamed chat's time to first byte through the proxy, and a plain chat's latency;
//   - the D1 round trips on the proxy's request path (counted by bench/entry.mjs up to the
//     answer; what runs after it under waitUntil is not on the path) when the first key
//     serves: no budget, a user's budget on the key, a system key with SYSTEM_KEY_BUDGETS,
//     the same with the user's own override, and a system key without a budget;
//   - one failover (a first key answering 429, the next serving) against a direct call.
import { randomKey, startVault } from '../tests/e2e/harness.mjs';

const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const median = (v) => {
  const s = v.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pct = (v, p) => {
  const s = v.slice().sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const r2 = (x) => Math.round(x * 100) / 100;
const CHAT = '/v1/proxy/openai/v1/chat/completions';

/** Starts the two vaults (metering on, off), seeds both, measures, stops them. */
export async function measureMetering({ fake, secrets, vars, config, adminToken, quick }) {
  const samples = quick ? 120 : 400;
  const failovers = quick ? 20 : 60;
  const budget = { period: 'month', requests: 1_000_000, output_tokens: 1_000_000_000 };
  const common = {
    ...vars,
    SYSTEM_KEY_OPENAI: randomKey('valid'),
    SYSTEM_KEY_ANTHROPIC: randomKey('valid'),
    // The operator's budget on system-key use of OpenAI only: Anthropic's system key has none.
    SYSTEM_KEY_BUDGETS: JSON.stringify({ openai: budget }),
  };
  const vaults = {};
  try {
    for (const mode of ['on', 'off']) {
      vaults[mode] = await startVault({ secrets, vars: { ...common, METERING: mode }, config, front: false, pollMs: 5 });
      await seed(vaults[mode], adminToken, failovers, budget);
    }
    const { on, off } = vaults;
    const jwt = {};
    const auth = (v, user) => ({ authorization: `Bearer ${(jwt[`${v.base}|${user}`] ??= v.token(user, { exp: Math.floor(Date.now() / 1000) + 6 * 3600 }))}` });

    /** One proxied call: ms to the first byte of the answer, ms to its end, round trips. */
    const call = async (v, user, { path = CHAT, body, headers = {} } = {}) => {
      const started = performance.now();
      const res = await fetch(v.base + path, {
        method: 'POST', headers: { ...auth(v, user), 'content-type': 'application/json', ...headers }, body,
      });
      const reader = res.body.getReader();
      let first = null;
      for (;;) {
        const { done } = await reader.read();
        first ??= performance.now() - started;
        if (done) break;
      }
      return {
        status: res.status,
        ttfb: first,
        total: performance.now() - started,
        trips: Number(res.headers.get('x-bench-d1-round-trips')),
        attempts: Number(res.headers.get('x-byok-attempts') ?? 1),
      };
    };
    const streamed = JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Hello' }] });
    const plain = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }] });
    for (const v of [on, off]) for (let i = 0; i < 10; i++) { await call(v, 'u_m', { body: streamed }); await call(v, 'u_m', { body: plain }); }

    // Alternating on/off, and which goes first within a pair, so drift hits both alike.
    const interleaved = async (body, pick) => {
      const got = { on: [], off: [] };
      for (let i = 0; i < samples; i++) {
        for (const mode of i % 2 ? ['off', 'on'] : ['on', 'off']) {
          const r = await call(vaults[mode], 'u_m', { body });
          if (r.status !== 200) throw new Error(`the proxied chat answered ${r.status} (METERING=${mode})`);
          got[mode].push(r[pick]);
        }
      }
      // The ratio per block of 20 pairs: how much it moves within the run.
      const blocks = [];
      for (let i = 0; i + 20 <= samples; i += 20) {
        blocks.push(median(got.on.slice(i, i + 20)) / median(got.off.slice(i, i + 20)));
      }
      return {
        samples,
        on_p50_ms: r2(median(got.on)), off_p50_ms: r2(median(got.off)),
        on_p90_ms: r2(pct(got.on, 90)), off_p90_ms: r2(pct(got.off, 90)),
        ratio_p50: r2(median(got.on) / median(got.off)),
        ratio_blocks_min: r2(Math.min(...blocks)), ratio_blocks_max: r2(Math.max(...blocks)),
        ratio_first_half: r2(median(got.on.slice(0, samples / 2)) / median(got.off.slice(0, samples / 2))),
        ratio_second_half: r2(median(got.on.slice(samples / 2)) / median(got.off.slice(samples / 2))),
      };
    };
    const out = {};
    out.ttfb = await interleaved(streamed, 'ttfb');
    log(`metering, streamed first byte: ${JSON.stringify(out.ttfb)}`);
    out.plain = await interleaved(plain, 'total');
    log(`metering, plain call: ${JSON.stringify(out.plain)}`);

    // D1 round trips up to the answer, the first key serving.
    const cases = [
      ['no budget, the user\'s key', 'u_m', CHAT, plain],
      ['a user\'s budget on the key', 'u_b', CHAT, plain],
      ['system key, SYSTEM_KEY_BUDGETS', 'u_s', CHAT, plain],
      ['system key, SYSTEM_KEY_BUDGETS and a per-user override', 'u_so', CHAT, plain],
      ['system key, no budget (Anthropic)', 'u_s', '/v1/proxy/anthropic/v1/messages',
        JSON.stringify({ model: 'claude-3-5-haiku-latest', max_tokens: 64, messages: [{ role: 'user', content: 'Hello' }] })],
      ['no budget, the user\'s key, streamed', 'u_m', CHAT, streamed],
    ];
    out.trips = [];
    for (const [what, user, path, body] of cases) {
      const row = { what };
      for (const mode of ['on', 'off']) {
        const t = [];
        for (let i = 0; i < 10; i++) {
          const r = await call(vaults[mode], user, { path, body });
          if (r.status !== 200) throw new Error(`${what} answered ${r.status} (METERING=${mode})`);
          t.push(r.trips);
        }
        row[mode] = Math.min(...t) === Math.max(...t) ? t[0] : `${Math.min(...t)}-${Math.max(...t)}`;
      }
      out.trips.push(row);
      log(`D1 round trips, ${what}: metering on ${row.on}, off ${row.off}`);
    }

    // Failover: each u_f<i> holds a first key the provider answers 429 (it then cools down,
    // so each user fails over once) and a second that serves; against u_m's direct call.
    const f = { failover: [], direct: [], trips: [], directTrips: [], attempts: [] };
    for (let i = 0; i < failovers; i++) {
      const a = await call(on, `u_f${i}`, { body: plain });
      if (a.status !== 200 || a.attempts !== 2) throw new Error(`failover of u_f${i}: ${a.status}, ${a.attempts} attempts`);
      const d = await call(on, 'u_m', { body: plain });
      f.failover.push(a.total); f.direct.push(d.total); f.trips.push(a.trips); f.directTrips.push(d.trips); f.attempts.push(a.attempts);
    }
    // The refused call itself: the same fake's 429 answered straight to this process.
    const upstream = [];
    const direct = `${fake.vars().OPENAI_BASE_URL}/v1/chat/completions`;
    for (let i = 0; i < failovers; i++) {
      const started = performance.now();
      const res = await fetch(direct, { method: 'POST', headers: { authorization: `Bearer ${randomKey('busy')}`, 'content-type': 'application/json' }, body: plain });
      await res.arrayBuffer();
      if (res.status !== 429) throw new Error(`a busy key's direct call answered ${res.status}`);
      upstream.push(performance.now() - started);
    }
    out.failover = {
      samples: failovers,
      failover_p50_ms: r2(median(f.failover)), direct_p50_ms: r2(median(f.direct)),
      added_p50_ms: r2(median(f.failover) - median(f.direct)),
      refused_call_direct_p50_ms: r2(median(upstream)),
      trips_failover: `${Math.min(...f.trips)}-${Math.max(...f.trips)}`.replace(/^(\d+)-\1$/, '$1'),
      trips_direct: `${Math.min(...f.directTrips)}-${Math.max(...f.directTrips)}`.replace(/^(\d+)-\1$/, '$1'),
      upstream_calls: 2,
    };
    log(`failover: ${JSON.stringify(out.failover)}`);
    return out;
  } finally {
    for (const v of Object.values(vaults)) await v.stop();
  }
}

async function seed(vault, adminToken, failovers, budget) {
  const entries = [
    { user_id: 'u_m', provider: 'openai', api_key: randomKey('valid'), label: 'bench' },
    { user_id: 'u_b', provider: 'openai', api_key: randomKey('valid'), label: 'budgeted' },
  ];
  for (let i = 0; i < failovers; i++) {
    entries.push({ user_id: `u_f${i}`, provider: 'openai', api_key: randomKey('busy'), label: 'busy' });
    entries.push({ user_id: `u_f${i}`, provider: 'openai', api_key: randomKey('valid'), label: 'serves' });
  }
  const r = await vault.request('POST', '/v1/admin/import', { token: adminToken, body: { dry_run: false, validate: false, entries } });
  if (r.status !== 200) throw new Error(`import answered ${r.status}: ${r.text.slice(0, 300)}`);
  const keysOf = async (user) => (await vault.request('GET', '/v1/credentials', { user })).json.credentials;
  const [b] = await keysOf('u_b');
  const patched = await vault.request('PATCH', `/v1/credentials/${b.id}`, { user: 'u_b', body: { budget } });
  if (patched.status !== 200) throw new Error(`a key's budget: ${patched.status} ${patched.text.slice(0, 300)}`);
  // The busy key first (lower priority is tried first).
  for (let i = 0; i < failovers; i++) {
    for (const c of await keysOf(`u_f${i}`)) {
      const p = await vault.request('PATCH', `/v1/credentials/${c.id}`, { user: `u_f${i}`, body: { priority: c.label === 'busy' ? 0 : 1 } });
      if (p.status !== 200) throw new Error(`priority: ${p.status} ${p.text.slice(0, 300)}`);
    }
  }
  const o = await vault.request('PUT', '/v1/admin/budgets/u_so', { token: adminToken, body: { openai: { period: 'day', requests: 1_000_000 } } });
  if (o.status !== 200) throw new Error(`a user's override: ${o.status} ${o.text.slice(0, 300)}`);
}
