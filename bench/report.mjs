// The benchmark's report: every number of a run in tables, and each budget of issues 12,
// 21 and 22 checked against the floors of the same run.

const fmt = (v) => (v === null || v === undefined ? '–' : typeof v === 'number' ? String(v) : v);
const ratio = (a, b) => Math.round((a / b) * 100) / 100;

/** Issue 21's budgets (bench/metering.mjs): the tap's cost as a ratio of medians in the
 * same run, and the D1 round trips on the proxy's path. A markdown section and whether any
 * was missed. */
export function meteringBudgets(m) {
  const checks = [];
  const check = (what, value, limit, unit, ok = value <= limit) => checks.push({ what, value, limit, unit, ok });
  check('streamed TTFB, metering on / off (p50)', m.ttfb.ratio_p50, 1.05, '×');
  const trips = Object.fromEntries(m.trips.map((t) => [t.what, t]));
  const max = (v) => Number(String(v).split('-').pop());
  const base = trips["no budget, the user's key"];
  // The reading: no round trip added by metering or budgets; at most one on the
  // path in all, the key read, with any budget work combined into it.
  check('D1 round trips added by metering (no budget: on − off)', max(base.on) - max(base.off), 0, '');
  for (const t of m.trips) check(`D1 round trips on the path: ${t.what} (metering on)`, max(t.on), 1, '');
  const lines = [
    '## Issue 21: metering, budgets, failover (bench/metering.mjs)',
    '',
    `Two vaults, METERING on and off, ${m.ttfb.samples} requests each, alternating.`,
    '',
    '| measure | metering on p50 | off p50 | on p90 | off p90 | on/off p50 | per 20 pairs, min–max | 1st half / 2nd half |',
    '|---|---|---|---|---|---|---|---|',
    ...[['streamed chat, time to first byte', m.ttfb], ['plain chat, whole answer', m.plain]].map(([what, x]) =>
      `| ${what} | ${x.on_p50_ms} ms | ${x.off_p50_ms} ms | ${x.on_p90_ms} ms | ${x.off_p90_ms} ms | ${x.ratio_p50}× | ${x.ratio_blocks_min}–${x.ratio_blocks_max}× | ${x.ratio_first_half}× / ${x.ratio_second_half}× |`),
    '',
    '| D1 round trips up to the answer (first key serves) | metering on | off |',
    '|---|---|---|',
    ...m.trips.map((t) => `| ${t.what} | ${t.on} | ${t.off} |`),
    '',
    `Failover (first key 429, the next serves; ${m.failover.samples} samples): p50 ${m.failover.failover_p50_ms} ms against ${m.failover.direct_p50_ms} ms direct (+${m.failover.added_p50_ms} ms); the refused call straight to the fake ${m.failover.refused_call_direct_p50_ms} ms; D1 round trips ${m.failover.trips_failover} against ${m.failover.trips_direct}; upstream calls ${m.failover.upstream_calls} against 1.`,
    '',
    '| budget | measured | limit | |',
    '|---|---|---|---|',
    ...checks.map((b) => `| ${b.what} | ${b.value}${b.unit === '×' ? '×' : ''} | ${b.limit}${b.unit} | ${b.ok ? 'met' : '**missed**'} |`),
    '',
  ];
  return { report: lines.join('\n'), missed: checks.some((b) => !b.ok) };
}

/** Issue 22's budgets (bench/realtime.mjs): minting's added latency against F1's p50, the
 * WebSocket proxy's added round trip against a direct socket, and what idle sessions cost
 * workerd. A markdown section and whether a budget was missed. */
export function realtimeBudgets(r, f1p50) {
  const ws = r.realtime_ws;
  const idle = r.realtime_idle;
  const added = r.mint.p50_ms - r.mint_direct.p50_ms;
  const checks = [
    { what: 'minting: added p50 / F1 p50 (wrk)', value: ratio(added, f1p50), limit: 1.5, unit: '×' },
    { what: 'minting: added p50 / F1 p50 (one at a time, interleaved with F1)', value: r.mint_sequential.added_over_f1, limit: 1.5, unit: '×' },
    { what: 'WebSocket proxy: added round trip p50 (vault − direct)', value: ws.added_p50_ms, limit: 1, unit: ' ms' },
  ].map((c) => ({ ...c, ok: c.value <= c.limit }));
  const row = (what, x) => `| ${what} | ${x.p50_ms} | ${x.p90_ms} | ${x.p99_ms} |`;
  const lines = [
    '## Issue 22: realtime (bench/realtime.mjs)',
    '',
    `Minting: p50 ${r.mint.p50_ms} ms through the vault, ${r.mint_direct.p50_ms} ms straight to the fake's token endpoint, ${r.mint_forward_js.p50_ms} ms forwarded by plain JS; added ${Math.round(added * 100) / 100} ms against F1 p50 ${Math.round(f1p50 * 100) / 100} ms; D1 round trips ${fmt(r.mint.d1_round_trips)}. One request at a time (${r.mint_sequential.samples} of each, interleaved): minting ${r.mint_sequential.mint_p50_ms} ms, direct ${r.mint_sequential.direct_p50_ms} ms, forwarded by plain JS ${r.mint_sequential.forward_js_p50_ms} ms, F1 ${r.mint_sequential.f1_p50_ms} ms, F0 ${r.mint_sequential.f0_p50_ms} ms, a resolve of the same key ${r.mint_sequential.resolve_p50_ms} ms (p50).`,
    '',
    `WebSocket round trips: one ${ws.frame_bytes}-byte binary frame up, the fake's two answers down (its Results text, then the audio reversed), ${ws.rounds} on each path in turn after a warm-up; every frame byte-exact both ways:`,
    '',
    '| path | p50 ms | p90 ms | p99 ms |',
    '|---|---|---|---|',
    row('straight to the fake', ws.direct),
    row('through /v1/realtime/deepgram/ws/v1/listen', ws.vault),
    row('through a plain-JS pipe in the Worker', ws.js),
    '',
    `Added round trip p50: vault ${ws.added_p50_ms} ms (first half ${ws.added_p50_first_half_ms}, second half ${ws.added_p50_second_half_ms}); plain-JS pipe ${ws.js_added_p50_ms} ms.`,
    '',
    `Idle sessions: workerd CPU over ${idle.seconds} s idle: ${idle.none_ms} ms with no session, ${idle.open_ms} ms with ${idle.sessions} open (${idle.still_open} still open at the end), ${idle.none_again_ms} ms with none again; ${idle.per_session_ms_per_min} ms per session per minute over the baseline (every workerd thread's schedstat). wrangler's node meanwhile (not the runtime): ${idle.other_none_ms}, ${idle.other_open_ms}, ${idle.other_none_again_ms} ms. The largest second of each span, workerd/node: ${idle.max_1s_ms} ms.`,
    '',
    '| budget | measured | limit | |',
    '|---|---|---|---|',
    ...checks.map((b) => `| ${b.what} | ${b.value}${b.unit} | ${b.limit}${b.unit} | ${b.ok ? 'met' : '**missed**'} |`),
    '',
    'Floors, the same work done by plain JS in the Worker in the same run:',
    '',
    '| floor | measured |',
    '|---|---|',
    `| minting: added p50 / F1 p50, when plain JS forwards the token call (no key lookup; wrk) | ${ratio(r.mint_forward_js.p50_ms - r.mint_direct.p50_ms, f1p50)}× |`,
    `| the same, one at a time | ${r.mint_sequential.forward_js_added_over_f1}× |`,
    `| minting's I/O alone, one at a time: that forwarded call's added p50 plus one D1 read (F1 − F0), / F1 p50 | ${r.mint_sequential.io_floor_over_f1}× |`,
    `| minting as the vault's own parts, one at a time: a resolve of the same key plus that forwarded call's added p50, less F0 (one request's handling), / F1 p50 | ${r.mint_sequential.resolve_plus_forward_over_f1}× |`,
    `| WebSocket: added round trip p50, a plain-JS pipe | ${ws.js_added_p50_ms} ms |`,
    '',
  ];
  return { report: lines.join('\n'), missed: checks.some((b) => !b.ok) };
}

/** The budgets, each a check over the run's results. */
export function budgets(r) {
  // Floors measured twice (start and end of the run): their mean is the floor.
  const mean = (a, b, key) => (b ? (a[key] + b[key]) / 2 : a[key]);
  const f1p50 = mean(r.f1, r.f1_end, 'p50_ms');
  const f1p99 = mean(r.f1, r.f1_end, 'p99_ms');
  const f0cpu = mean(r.f0, r.f0_end, 'workerd_cpu_ms');
  const f1cpu = mean(r.f1, r.f1_end, 'workerd_cpu_ms');
  const out = [];
  const check = (what, value, limit, unit = '') => out.push({ what, value, limit, unit, ok: value <= limit });
  for (const key of ['list_50', 'get', 'resolve']) {
    check(`${r[key].name}: p50 / F1 p50`, ratio(r[key].p50_ms, f1p50), 1.5, '×');
    check(`${r[key].name}: p99 / F1 p99`, ratio(r[key].p99_ms, f1p99), 2, '×');
  }
  for (const key of ['create', 'preferences']) {
    check(`${r[key].name}: p50 / F1 p50`, ratio(r[key].p50_ms, f1p50), 2.5, '×');
  }
  check('proxy: added p50 / F1 p50', ratio(r.proxy.p50_ms - r.proxy_direct.p50_ms, f1p50), 1.5, '×');
  for (const key of ['list_50', 'get', 'resolve']) check(`${r[key].name}: D1 round trips`, Number(String(r[key].d1_round_trips).split('-').pop()), 1);
  for (const key of ['create', 'preferences']) check(`${r[key].name}: D1 round trips`, Number(String(r[key].d1_round_trips).split('-').pop()), 2);
  check('list at 500 / list at 5 (p50)', ratio(r.list_500.p50_ms, r.list_5.p50_ms), 2, '×');
  check('resolve at the large table / at 1 000 rows (p50)', ratio(r.resolve_100k.p50_ms, r.resolve_1k.p50_ms), 1.2, '×');
  // Each of these does one D1 round trip and sends one audit queue message: what it costs
  // beyond plain JS doing that much I/O is the Worker's own work (with, for the listing,
  // the larger D1 answer it reads). workerd's CPU, all of it: an upper bound.
  // The listing's floor reads its 50 rows: plain JS asking the same query, plus what one
  // queue message adds to F1.
  const queueCpu = r.f1q.workerd_cpu_ms - r.f1.workerd_cpu_ms;
  const ioFloor = { list_50: r.rows_js_50.workerd_cpu_ms + queueCpu, get: r.f1q.workerd_cpu_ms, resolve: r.f1q.workerd_cpu_ms };
  for (const key of ['list_50', 'get', 'resolve']) {
    check(`${r[key].name}: CPU over plain JS doing its I/O (ms/request)`, Math.round((r[key].workerd_cpu_ms - ioFloor[key]) * 1000) / 1000, 1, ' ms');
  }
  check('cold start: the Worker\'s startup (wrangler check startup)', r.bundle.startup_profile_ms, 100, ' ms');
  check('bundle, gzipped (wrangler\'s count)', r.bundle.upload_gzip_kib, 400, ' KiB');
  // Where a budget cannot be met by any code on this runtime, the same run shows it: the
  // floor of the work itself, done by plain JS in the same Worker.
  const floors = [
    ['list at 500 / list at 5 (p50), when plain JS reads the 500 rows', ratio(r.rows_js_500.p50_ms, r.list_5.p50_ms), '×'],
    ['proxy: CPU over plain JS doing its I/O (one query, one message, one forwarded call)',
      Math.round((r.proxy.workerd_cpu_ms - (r.f1q.workerd_cpu_ms + r.forward_js.workerd_cpu_ms - f0cpu)) * 1000) / 1000, ' ms'],
    ['proxy: added p50 / F1 p50, when plain JS forwards the call (no key lookup)', ratio(r.forward_js.p50_ms - r.proxy_direct.p50_ms, f1p50), '×'],
  ];
  return { out, floors, f1p50, f1p99, f0cpu, f1cpu };
}

export function render(r, { at, duration, connections }) {
  const { out, floors, f1p50, f1p99, f0cpu, f1cpu } = budgets(r);
  const rows = Object.values(r).filter((x) => x && x.p50_ms !== undefined);
  const lines = [
    `# byok-vault benchmark, ${at.toISOString()}`,
    '',
    `wrk, 1 thread, ${connections} connections, ${duration} s per operation after a warm-up; wrangler dev (workerd, local D1, local queues).`,
    `Floors: F1 p50 ${Math.round(f1p50 * 100) / 100} ms, p99 ${Math.round(f1p99 * 100) / 100} ms (mean of the start and the end of the run); workerd CPU per request: F0 ${f0cpu} ms, F1 ${f1cpu} ms.`,
    '',
    '| operation | p50 ms | p90 ms | p99 ms | req/s | D1 round trips | D1 wait ms | workerd CPU ms/req | errors |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map((x) => `| ${x.name} | ${x.p50_ms} | ${x.p90_ms} | ${x.p99_ms} | ${x.rps} | ${fmt(x.d1_round_trips)} | ${fmt(x.d1_wait_ms)} | ${x.workerd_cpu_ms} | ${x.errors} |`),
    '',
    `Streamed answer, time to first byte (p50): direct ${r.stream_ttfb.direct_p50_ms} ms, through the proxy ${r.stream_ttfb.proxy_p50_ms} ms.`,
    '',
    `Audit backlog: ${r.audit_backlog.events} imported events chained at ${r.audit_backlog.chained_per_s} events/s by one consumer at a time (imports took ${r.audit_backlog.import_ms} ms; the chain caught up ${r.audit_backlog.drained_ms_after_import} ms after the last).`,
    '',
    `Audit pipeline: ${r.audit.events_offered_per_s} events/s offered, ${r.audit.events_chained_per_s} events/s from request to chained row (${r.audit.events_chained} events; the backlog drained ${r.audit.backlog_drained_ms_after_load} ms after the load stopped); lag from answer to chained row under load p50 ${r.audit.lag_p50_ms} ms, p99 ${r.audit.lag_p99_ms} ms (${r.audit.lag_samples} samples).`,
    '',
    `Cold start: the Worker's startup ${r.bundle.startup_profile_ms} ms (wrangler check startup's profile; ${r.bundle.startup_busy_ms} ms of it sampled busy). Local runtime, for context: workerd start → first answer ${r.cold_start.workerd_start_to_first_answer_ms} ms (${r.cold_start.workerd_processes} workerd processes; wrangler spawn → first answer ${r.cold_start.wrangler_spawn_to_first_answer_ms} ms); the first resolve after it ${r.cold_start.first_resolve_ms} ms.`,
    '',
    `Bundle: wasm ${r.bundle.wasm_bytes} bytes, ${r.bundle.wasm_gzip_bytes} gzipped; wrangler's upload ${r.bundle.upload_kib} KiB, ${r.bundle.upload_gzip_kib} KiB gzipped.`,
    '',
    'Storage (SQLite pages in use, tables with their indexes):',
    '',
    '| table | rows | bytes | bytes/row |',
    '|---|---|---|---|',
    ...Object.entries(r.storage).map(([t, s]) => `| ${t} | ${s.rows} | ${s.bytes} | ${fmt(s.bytes_per_row)} |`),
    '',
    '## Budgets',
    '',
    '| budget | measured | limit | |',
    '|---|---|---|---|',
    ...out.map((b) => `| ${b.what} | ${b.value}${b.unit} | ${b.limit}${b.unit} | ${b.ok ? 'met' : '**missed**'} |`),
    '',
    'The floors of the missed ones, measured in the same run:',
    '',
    '| floor | measured |',
    '|---|---|',
    ...floors.map(([what, value, unit]) => `| ${what} | ${value}${unit} |`),
    '',
  ];
  let meteringMissed = false;
  if (r.metering) {
    const m = meteringBudgets(r.metering);
    lines.push(m.report);
    meteringMissed = m.missed;
  }
  let realtimeMissed = false;
  if (r.realtime_ws) {
    const rt = realtimeBudgets(r, f1p50);
    lines.push(rt.report);
    realtimeMissed = rt.missed;
  }
  const errors = rows.filter((x) => x.errors > 0).map((x) => x.name);
  if (errors.length) lines.push(`**Requests failed in:** ${errors.join(', ')}`, '');
  return { report: lines.join('\n'), missed: out.some((b) => !b.ok) || meteringMissed || realtimeMissed || errors.length > 0 };
}
