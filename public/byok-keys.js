// <byok-keys>: a person's provider keys, managed against byok-vault. One custom element,
// no framework, no build step. A host app embeds it and hands it the user's token:
//
//   <script type="module" src="https://vault.example/byok-keys.js"></script>
//   <byok-keys api-base="https://vault.example"></byok-keys>
//   document.querySelector('byok-keys').token = () => myApp.currentToken();
//
// Keys go from the person's keyboard to the vault: the element never stores one (no
// localStorage, no sessionStorage, no cookie, no logging), clears the field as soon as it
// has been sent, never hands one to the host app (no event or property carries it), and the
// vault only ever answers with a masked hint. It runs in the host page, though: script the
// host page runs could read what is typed, as it could anywhere on that page. `token` is a
// property (never an attribute, so it stays out of the DOM): a string or a function returning
// one, called per request so a host can refresh it. Events: `byok-change` after anything
// changed. "Try live" on a realtime voice key mints a short-lived provider credential from
// that key and opens the provider's WebSocket with it once (so the host page's CSP must allow
// the provider in `connect-src`); that credential goes to the socket only.

const STATUS_TEXT = {
  valid: 'Valid',
  invalid_key: 'Invalid key',
  insufficient_scope: 'Missing permission',
  quota_exhausted: 'Quota used up',
  rate_limited: 'Rate limited',
  unreachable: 'Unreachable',
  provider_error: 'Provider error',
  needs_reconfiguration: 'Needs re-entry',
  unverified: 'Not yet checked',
};
const CAPABILITY_TEXT = { tts: 'Text to speech', stt: 'Speech to text', llm: 'Chat (LLM)', embedding: 'Embeddings' };
/** The realtime session "Try live" opens, per provider whose keys mint a short-lived browser
 * credential (`POST /v1/realtime/{provider}/sessions`, docs/realtime.md): speech to text
 * where the provider has it (nothing is generated: opening it costs next to nothing), else a
 * conversation. Azure Speech is used through its Speech SDK, not a raw socket: its try ends
 * at the minted token. */
const LIVE_KIND = { deepgram: 'stt', openai: 'stt', elevenlabs: 'stt', azure_speech: 'stt', gemini: 'conversation' };
const LIVE_KIND_TEXT = { stt: 'speech to text', tts: 'text to speech', conversation: 'conversation' };
/** A try's credential lives this long (seconds): enough to open one socket. */
const LIVE_TTL_SECONDS = 60;
/** How long a try waits for the provider's socket to open. */
const LIVE_WAIT_MS = 15_000;
/** The units a budget may limit, and how one of each reads (`tokens`, input and output
 * together, is what a chat or embedding key shows when no budget names a unit). */
const UNIT_TEXT = {
  requests: ['request', 'requests'],
  input_tokens: ['input token', 'input tokens'],
  output_tokens: ['output token', 'output tokens'],
  characters: ['character', 'characters'],
  audio_seconds: ['second of audio', 'seconds of audio'],
  tokens: ['token', 'tokens'],
};
const BUDGET_UNITS = ['requests', 'input_tokens', 'output_tokens', 'characters', 'audio_seconds'];
/** The unit that fits what a key is used for, when its budget names none. */
const CAPABILITY_UNIT = { tts: 'characters', stt: 'audio_seconds', llm: 'tokens', embedding: 'tokens' };
const PERIOD_TEXT = { day: 'today', month: 'this month' };
const PER_PERIOD = { day: 'a day', month: 'a month' };
const COOLING_TEXT = { rate_limited: 'rate limited', quota_exhausted: 'quota spent' };
/** Days the chart of a key's use spans, ending today (UTC days, as usage is kept). */
const CHART_DAYS = 30;
const DAY_MS = 86_400_000;

const STYLE = `
:host { display: block; font: 15px/1.45 system-ui, sans-serif; color: #1c1e21; max-width: 60rem; }
* { box-sizing: border-box; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .6rem; }
h3 { font-size: 1rem; margin: 0 0 .3rem; }
section { margin-bottom: 1.2rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: .8rem; }
.card { border: 1px solid #c9ccd1; border-radius: 8px; padding: .8rem; background: #fff; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .6rem; margin: .4rem 0; font-size: .9rem; }
.card dt { color: #4b4f56; }
.card dd { margin: 0; }
.status { display: inline-block; padding: 0 .45rem; border-radius: 1rem; font-size: .85rem; font-weight: 600; }
.status.good { background: #d7f5dd; color: #0b5b1d; }
.status.bad { background: #fde2e1; color: #8a1410; }
.status.wait { background: #fff1c7; color: #6b4e00; }
.row { display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; margin-top: .4rem; }
label { display: block; font-weight: 600; margin: .5rem 0 .15rem; }
input, select { font: inherit; padding: .35rem .5rem; border: 1px solid #8d949e; border-radius: 6px; min-width: 14rem; }
button { font: inherit; padding: .35rem .8rem; border-radius: 6px; border: 1px solid #1b4fb0; background: #1b5fd0; color: #fff; cursor: pointer; }
button.secondary { background: #fff; color: #1b4fb0; }
button.danger { background: #b3261e; border-color: #8a1410; }
button:disabled { opacity: .6; cursor: progress; }
button:focus-visible, input:focus-visible, select:focus-visible { outline: 3px solid #f2b705; outline-offset: 1px; }
.feedback { margin: .4rem 0; padding: .5rem .7rem; border-radius: 6px; }
.feedback.good { background: #d7f5dd; color: #0b5b1d; }
.feedback.bad { background: #fde2e1; color: #8a1410; }
.feedback.info { background: #e7f0fd; color: #123b7a; }
.empty { border: 2px dashed #8d949e; border-radius: 8px; padding: 1rem; }
.banner { background: #fff1c7; color: #5c4300; padding: .5rem .7rem; border-radius: 6px; margin-bottom: .8rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .25rem .4rem; border-bottom: 1px solid #dadde1; }
.hint { font-family: ui-monospace, monospace; }
.usage { margin: .5rem 0; font-size: .9rem; }
.usage p { margin: .2rem 0; }
.meter { height: .55rem; border-radius: .3rem; background: #e4e6eb; overflow: hidden; margin: .15rem 0 .35rem; }
.meter > div { height: 100%; background: #1b5fd0; }
.meter.full > div { background: #b3261e; }
.spark { display: block; width: 100%; max-width: 15rem; height: 2.2rem; }
.spark rect { fill: #1b5fd0; }
.spark rect.none { fill: #c9ccd1; }
.spark rect.today { fill: #0b3d91; }
.caption { color: #4b4f56; font-size: .85rem; }
.pool { margin-bottom: .8rem; }
.pool > p { margin: 0 0 .4rem; color: #4b4f56; }
ol.cards { list-style: none; padding: 0; margin: 0; }
.field-error { color: #8a1410; font-size: .85rem; margin: .15rem 0 0; }
.field-error:empty { display: none; }
/* A try's status line takes no room until it says something (and stays in the tree, so a
   screen reader hears what is written into it). */
.live:empty { margin: 0; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
`;

/** Text for a moment in the past. */
function ago(iso) {
  if (!iso) return 'never';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function quotaText(q) {
  if (!q) return 'not reported';
  const n = (v) => (v == null ? '?' : Number(v).toLocaleString());
  const resets = q.resets_at ? `, resets ${new Date(q.resets_at).toLocaleDateString()}` : '';
  if (q.remaining != null && q.used == null) return `${n(q.remaining)} ${q.unit} left${resets}`;
  return `${n(q.used)} of ${n(q.limit)} ${q.unit} used${resets}`;
}

const num = (n) => Number(n).toLocaleString(undefined, { maximumFractionDigits: 1 });
const unitText = (unit, n) => UNIT_TEXT[unit][n === 1 ? 0 : 1];
/** The UTC day (`YYYY-MM-DD`) of a moment: usage is kept per UTC day. */
const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);
/** A UTC day as the person's locale writes a short date. */
const dayText = (day) => new Date(`${day}T00:00:00Z`).toLocaleDateString(undefined, { day: 'numeric', month: 'short', timeZone: 'UTC' });

/** How much of `unit` a usage row (or a `usage_this_period`) counts. */
function amount(row, unit) {
  if (!row) return 0;
  if (unit === 'tokens') return (row.input_tokens ?? 0) + (row.output_tokens ?? 0);
  return row[unit] ?? 0;
}

/** The first day of the budget period that holds today (UTC, as the vault counts). */
function periodStart(period, now = Date.now()) {
  const today = utcDay(now);
  return period === 'day' ? today : `${today.slice(0, 8)}01`;
}

/** When the period that holds now ends, and a budget is whole again. */
function periodEnd(period, now = Date.now()) {
  const d = new Date(now);
  return period === 'day'
    ? new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1))
    : new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1));
}

/** When a cooldown ends, in the person's locale and time zone (with the date when not today). */
function untilText(iso) {
  const at = new Date(iso);
  const time = at.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return at.toDateString() === new Date().toDateString() ? time : `${at.toLocaleDateString(undefined, { day: 'numeric', month: 'short' })} ${time}`;
}

/** A user's keys for one provider in the order the vault tries them, leaving out what
 * changes from call to call (a cooldown, a capability's default): a key no check has
 * confirmed after the others, then `priority` (lower first), then a valid key before a
 * failing one, then as the vault lists them (newest first). */
function inOrder(keys, priorities = new Map()) {
  const p = (c) => (priorities.has(c.id) ? priorities.get(c.id) : c.priority ?? 0);
  const rank = (c) => (c.status === 'valid' ? 0 : c.status === 'unverified' ? 2 : 1);
  const unverified = (c) => (c.status === 'unverified' ? 1 : 0);
  return keys.map((c, i) => ({ c, i }))
    .sort((a, b) => unverified(a.c) - unverified(b.c) || p(a.c) - p(b.c) || rank(a.c) - rank(b.c) || a.i - b.i)
    .map(({ c }) => c);
}

/** The fewest priority changes (`[{id, priority}]`) that put `ordered[from]` at `to`, or
 * null when the vault's order cannot have it there (a key no check has confirmed never goes
 * ahead of a confirmed one). Each key in turn keeps its number; the others on either side
 * take the nearest that keeps them in place (an equal one where the tie already falls the
 * right way), and the plan that changes fewest keys wins. */
function planMove(ordered, from, to) {
  const want = [...ordered];
  const [moved] = want.splice(from, 1);
  want.splice(to, 0, moved);
  const pos = new Map(ordered.map((c, i) => [c.id, i]));
  // Whether `a` goes before `b` when their priorities are equal.
  const first = (a, b) => {
    const pair = pos.get(a.id) < pos.get(b.id) ? [a, b] : [b, a];
    return inOrder(pair, new Map([[a.id, 0], [b.id, 0]]))[0] === a;
  };
  const works = (changes) => {
    const order = inOrder(ordered, new Map(changes.map((x) => [x.id, x.priority])));
    return order.every((c, i) => c.id === want[i].id) && changes.every((x) => Math.abs(x.priority) <= 1_000_000);
  };
  let best = null;
  for (let m = 0; m < want.length; m++) {
    const q = want.map((c) => c.priority ?? 0);
    for (let k = m - 1; k >= 0; k--) {
      if (q[k] > q[k + 1] || (q[k] === q[k + 1] && !first(want[k], want[k + 1]))) q[k] = first(want[k], want[k + 1]) ? q[k + 1] : q[k + 1] - 1;
    }
    for (let k = m + 1; k < want.length; k++) {
      if (q[k] < q[k - 1] || (q[k] === q[k - 1] && !first(want[k - 1], want[k]))) q[k] = first(want[k - 1], want[k]) ? q[k - 1] : q[k - 1] + 1;
    }
    const changes = want.map((c, i) => ({ id: c.id, priority: q[i] })).filter((x, i) => x.priority !== (want[i].priority ?? 0));
    // Of two as short, the one that renumbers the key the person moved.
    const better = !best || changes.length < best.length
      || (changes.length === best.length && changes.some((x) => x.id === moved.id) && !best.some((x) => x.id === moved.id));
    if (better && works(changes)) best = changes;
  }
  return best;
}

/** An element made with its attributes and children (text is always set as text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** An SVG element with its attributes and children. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** The host a WebSocket URL names (never its query, where a credential may be). */
function hostOf(url) {
  try { return new URL(url).host; } catch { return 'the provider'; }
}

/** Opens the provider's socket as `connect` says (the minted credential is in its URL or its
 * subprotocols) and closes it as soon as it is open. Resolves `open`, `blocked` (this page's
 * Content-Security-Policy does not allow the host: Chromium reports that before the error),
 * `failed` (an error, or a close before it opened) or `timeout`. The credential serves this
 * one socket: it is not kept, shown or logged. */
function openOnce({ url, protocols }) {
  return new Promise((resolve) => {
    let ws = null;
    let blocked = false;
    let origin = null;
    try { origin = new URL(url).origin; } catch { /* the constructor says so below */ }
    const onViolation = (e) => {
      if (e.effectiveDirective === 'connect-src' && origin && e.blockedURI.startsWith(origin)) blocked = true;
    };
    const finish = (outcome) => {
      clearTimeout(timer);
      document.removeEventListener('securitypolicyviolation', onViolation);
      if (ws) {
        ws.onopen = null; ws.onerror = null; ws.onclose = null;
        ws.close(1000);
      }
      resolve(outcome);
    };
    const timer = setTimeout(() => finish('timeout'), LIVE_WAIT_MS);
    document.addEventListener('securitypolicyviolation', onViolation);
    try {
      ws = new WebSocket(url, protocols ?? []);
    } catch {
      finish('failed');
      return;
    }
    ws.onopen = () => finish('open');
    ws.onerror = () => finish(blocked ? 'blocked' : 'failed');
    ws.onclose = () => finish(blocked ? 'blocked' : 'failed');
  });
}

/** What the vault said, as a sentence a person can act on. */
function explain(problem, providerName) {
  if (!problem) return 'Something went wrong; try again.';
  if (problem.code === 'rate_limited' || problem.code === 'provider_rate_limited') {
    const s = problem.retry_after_seconds;
    const who = problem.code === 'rate_limited' ? 'Too many checks in a short time' : `${providerName ?? 'The provider'} is rate limiting this key`;
    return `${who}. Try again in ${s} second${s === 1 ? '' : 's'}.`;
  }
  const fields = (problem.errors ?? []).map((e) => `${e.field} ${e.message}`).join('; ');
  return [problem.detail ?? problem.title, fields].filter(Boolean).join(' — ');
}

let counter = 0;
let sheet = null;
/** One constructed stylesheet for every instance (no inline <style>: a strict CSP holds). */
function styles() {
  if (!sheet) {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLE);
  }
  return sheet;
}

export class ByokKeys extends HTMLElement {
  static observedAttributes = ['api-base'];

  #token = null;
  #providers = [];
  #credentials = [];
  #preferences = {};
  #models = new Map(); // credential id → [{id, name}]
  #sandbox = false;
  /** The user's metered use (GET /v1/usage rows) over the chart's days and this month. */
  #usage = { rows: [], truncated: false, ok: false };
  /** The last "Try live" outcome per credential id ({tone, text}; never the credential),
   * shown in its row across renders until the next change. */
  #tries = new Map();
  /** Timers that take a cooldown's badge away when it ends. */
  #timers = [];
  #id = `byok-${++counter}`;
  /** What the last action did, shown above the keys (and in the add form) until the next. */
  #notice = null;
  #addNotice = null;

  /** One live region for the element's life: a region rebuilt with its text already in it
   * is not announced, so messages are written into this one after each render. */
  #live = h('div', { class: 'sr-only', 'aria-live': 'polite', role: 'status' });

  constructor() {
    super();
    this.attachShadow({ mode: 'open' }).adoptedStyleSheets = [styles()];
  }

  /** The user's bearer token: a string, or a function returning one. */
  set token(value) {
    this.#token = value;
    if (this.isConnected) this.refresh();
  }

  get apiBase() {
    return (this.getAttribute('api-base') ?? '').replace(/\/+$/, '');
  }

  connectedCallback() {
    this.refresh();
  }

  attributeChangedCallback(name, old, value) {
    if (this.isConnected && old !== value) this.refresh();
  }

  #currentToken() {
    return typeof this.#token === 'function' ? this.#token() : this.#token;
  }

  async #call(method, path, body) {
    const headers = { authorization: `Bearer ${this.#currentToken()}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(`${this.apiBase}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      return { ok: false, status: 0, problem: { title: 'The vault could not be reached.' } };
    }
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    return res.ok ? { ok: true, status: res.status, body: json } : { ok: false, status: res.status, problem: json };
  }

  #providerName(id) {
    return this.#providers.find((p) => p.id === id)?.name ?? id;
  }

  /** Loads everything and draws the element again. */
  async refresh() {
    if (!this.#currentToken()) {
      this.#draw([h('p', { class: 'feedback info', role: 'status' }, 'Sign in to manage your provider keys.')]);
      return;
    }
    // One range holds both the chart's days and the month so far.
    const now = Date.now();
    const from = [utcDay(now - (CHART_DAYS - 1) * DAY_MS), periodStart('month', now)].sort()[0];
    const [providers, credentials, preferences, health, usage] = await Promise.all([
      this.#call('GET', '/v1/providers'),
      this.#call('GET', '/v1/credentials'),
      this.#call('GET', '/v1/preferences'),
      this.#call('GET', '/v1/health'),
      this.#call('GET', `/v1/usage?from=${from}&to=${utcDay(now)}`),
    ]);
    if (!providers.ok || !credentials.ok) {
      const p = providers.ok ? credentials.problem : providers.problem;
      this.#draw([h('p', { class: 'feedback bad', role: 'alert' }, explain(p))]);
      return;
    }
    this.#providers = providers.body.providers;
    this.#credentials = credentials.body.credentials;
    this.#preferences = preferences.ok ? preferences.body : {};
    this.#sandbox = health.body?.checks?.providers === 'sandbox';
    this.#usage = usage.ok ? { rows: usage.body.usage ?? [], truncated: !!usage.body.truncated, ok: true } : { rows: [], truncated: false, ok: false };
    // The model lists of the defaults, for choosing each default's model.
    const chosen = [...new Set(Object.values(this.#preferences).filter(Boolean).map((p) => p.credential_id))];
    await Promise.all(chosen.filter((id) => !this.#models.has(id)).map(async (id) => {
      const r = await this.#call('GET', `/v1/credentials/${id}/models`);
      if (r.ok) this.#models.set(id, r.body.models);
    }));
    this.#render();
  }

  #draw(children) {
    const root = this.shadowRoot;
    root.replaceChildren(...children.filter((c) => c != null), this.#live);
  }

  #render() {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
    this.#draw([
      this.#sandbox ? h('p', { class: 'banner', role: 'note' }, 'Sandbox: this vault talks to stand-in providers, not the real ones. Keys here are test keys.') : null,
      h('section', { 'aria-labelledby': `${this.#id}-keys` },
        h('h2', { id: `${this.#id}-keys` }, 'Your provider keys'),
        h('div', { class: 'notice', tabindex: '-1' }, this.#noticeEl(this.#notice)),
        this.#credentials.length ? this.#keyList() : this.#emptyState()),
      this.#addForm(),
      this.#defaults(),
      this.#audit(),
    ]);
  }

  /** The keys, a provider's several keys together in the order the vault tries them (and
   * that the person can change), then the keys that are their provider's only one. */
  #keyList() {
    const byProvider = new Map();
    for (const c of this.#credentials) byProvider.set(c.provider, [...(byProvider.get(c.provider) ?? []), c]);
    const pools = [];
    const single = [];
    for (const [provider, keys] of byProvider) {
      if (keys.length === 1) { single.push(this.#card(keys[0], null)); continue; }
      const ordered = inOrder(keys);
      const id = `${this.#id}-pool-${provider}`;
      pools.push(h('div', { class: 'pool' },
        h('p', { id }, `Your ${keys.length} ${this.#providerName(provider)} keys, in the order they are tried. A key that is cooling down waits until the others have been tried, and a key you chose as a default goes first for that use.`),
        h('ol', { class: 'cards', 'aria-labelledby': id }, ordered.map((c, i) => h('li', {}, this.#card(c, { ordered, index: i }))))));
    }
    return h('div', {}, pools, single.length ? h('div', { class: 'cards' }, single) : null);
  }

  #noticeEl(n) {
    return n ? h('p', { class: `feedback ${n.tone}`, role: n.tone === 'bad' ? 'alert' : null }, n.text) : null;
  }

  #say(text) {
    this.#live.textContent = '';
    // A change the screen reader notices: written after the render, in the region that stayed.
    setTimeout(() => { this.#live.textContent = text; }, 50);
  }

  #emptyState() {
    return h('div', { class: 'empty', role: 'note' },
      h('h3', {}, 'No keys yet'),
      h('p', {}, 'Add the API key of a provider you use (ElevenLabs, OpenAI, Anthropic, …) below. It is checked with the provider before it is saved, stored encrypted, and only ever shown masked.'));
  }

  #card(c, pool) {
    const status = c.status;
    const tone = status === 'valid' ? 'good' : ['rate_limited', 'unreachable', 'unverified'].includes(status) ? 'wait' : 'bad';
    const name = this.#providerName(c.provider);
    const feedback = h('div', { 'aria-live': 'polite' });
    const tried = this.#tries.get(c.id);
    const live = LIVE_KIND[c.provider] ? h('p', { class: `live${tried ? ` feedback ${tried.tone}` : ''}`, role: 'status' }, tried?.text) : null;
    const card = h('article', { class: 'card', 'aria-label': `${name} key ${c.label ?? ''}`.trim(), 'data-credential': c.id },
      h('h3', {}, name, c.label ? ` — ${c.label}` : ''),
      h('span', { class: `status ${tone}` }, STATUS_TEXT[status] ?? status), ' ',
      this.#coolingBadge(c),
      c.status_detail ? h('p', { class: 'feedback bad' }, c.status_detail) : null,
      h('dl', {},
        pool ? [h('dt', {}, 'Order'), h('dd', {}, `${pool.index + 1} of ${pool.ordered.length}${pool.index === 0 ? ' (tried first)' : ''}`)] : null,
        h('dt', {}, 'Key'), h('dd', { class: 'hint' }, c.key_hint ?? '—'),
        h('dt', {}, 'Model'), h('dd', {}, c.model ?? 'provider default'),
        h('dt', {}, 'Quota'), h('dd', {}, quotaText(c.quota)),
        h('dt', {}, 'Last check'), h('dd', {}, ago(c.last_validated_at)),
        h('dt', {}, 'Last use'), h('dd', {}, ago(c.last_used_at))),
      (c.warnings ?? []).map((w) => h('p', { class: 'feedback info' }, w)),
      this.#usageOf(c),
      feedback,
      live,
      pool ? this.#moveButtons(c, pool, feedback) : null,
      h('div', { class: 'row' },
        h('button', { class: 'secondary', type: 'button', 'aria-description': `${name} ${c.key_hint ?? ''}`, onclick: (e) => this.#recheck(c, e.currentTarget, feedback) }, 'Re-check'),
        live ? h('button', {
          class: 'secondary', type: 'button',
          'aria-description': `${name} ${c.key_hint ?? ''}: opens a ${LIVE_KIND_TEXT[LIVE_KIND[c.provider]]} session with a credential that lives ${LIVE_TTL_SECONDS} seconds`,
          onclick: (e) => this.#tryLive(c, e.currentTarget, live),
        }, 'Try live') : null,
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#openRotate(c, card, feedback) }, 'Rotate key'),
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#openModels(c, card, feedback) }, 'Choose model'),
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#openBudget(c, card, feedback) }, c.budget ? 'Change budget' : 'Set budget'),
        c.budget ? h('button', { class: 'secondary', type: 'button', onclick: (e) => this.#removeBudget(c, e.currentTarget, feedback) }, 'Remove budget') : null,
        h('button', { class: 'danger', type: 'button', onclick: () => this.#confirmDelete(c, card) }, 'Delete')));
    return card;
  }

  /** "Try live": mints a short-lived realtime credential from exactly this key (no other
   * key, no system key), opens the provider's socket with it once and closes it, and says
   * in the row what happened. The credential goes to the socket only. */
  async #tryLive(c, button, out) {
    const kind = LIVE_KIND[c.provider];
    const name = this.#providerName(c.provider);
    const show = (tone, text) => {
      this.#tries.set(c.id, { tone, text });
      out.className = `live feedback ${tone}`;
      out.textContent = text;
    };
    button.disabled = true;
    show('info', `Minting a short-lived ${name} credential from this key…`);
    const r = await this.#call('POST', `/v1/realtime/${c.provider}/sessions`,
      { kind, credential_id: c.id, ttl_seconds: LIVE_TTL_SECONDS, allow_fallback: false });
    button.disabled = false;
    if (!r.ok) {
      const text = `Live: no credential minted. ${explain(r.problem, name)}${r.problem?.code ? ` (${r.problem.code})` : ''}`;
      show('bad', text);
      // The vault now holds the key as refused or spent: draw that, this outcome in its row.
      if (['credential_invalid', 'quota_exhausted'].includes(r.problem?.code)) {
        await this.refresh();
        this.#say(text);
      }
      return;
    }
    if (c.provider === 'azure_speech') {
      show('good', `Live: token minted, valid until ${untilText(r.body.expires_at)}. Azure Speech is used through its Speech SDK, not a plain socket, so this page does not connect with it.`);
      return;
    }
    const host = hostOf(r.body.connect.url);
    button.disabled = true;
    show('info', `Connecting to ${host}…`);
    const outcome = await openOnce(r.body.connect);
    button.disabled = false;
    const text = {
      open: `Live: connected to ${name} (${LIVE_KIND_TEXT[kind]}) with a ${LIVE_TTL_SECONDS}-second credential, and closed again. This key works for realtime.`,
      blocked: `Live: could not connect: this page's Content-Security-Policy does not allow ${host}.`,
      failed: `Live: could not connect to ${host}. The credential was minted, but the socket closed before it opened.`,
      timeout: `Live: could not connect to ${host}: no answer in ${LIVE_WAIT_MS / 1000} seconds.`,
    }[outcome];
    show(outcome === 'open' ? 'good' : 'bad', text);
  }

  /** A key as a sentence names it: its provider, label and hint. */
  #keyName(c) {
    return `${this.#providerName(c.provider)} key ${c.label ? `${c.label} ` : ''}(${c.key_hint ?? 'no key'})`;
  }

  /** "Cooling down until 14:05 (rate limited)" while the vault holds the key back; it goes
   * when the cooldown ends (the vault tries the key again then, untouched). */
  #coolingBadge(c) {
    const left = Date.parse(c.cooldown_until ?? '') - Date.now();
    if (!(left > 0)) return null;
    const why = COOLING_TEXT[c.cooldown_reason];
    const badge = h('span', { class: 'status wait' }, `Cooling down until ${untilText(c.cooldown_until)}${why ? ` (${why})` : ''}`);
    if (left < 2 ** 31 - 1) this.#timers.push(setTimeout(() => badge.remove(), left));
    return badge;
  }

  /** The units a key's use is shown in: its budget's, else the one that fits what the key
   * does (its use as a default first, else its provider's first capability). */
  #unitsOf(c) {
    const limited = BUDGET_UNITS.filter((u) => c.budget?.[u] != null);
    if (limited.length) return limited;
    const caps = this.#providers.find((p) => p.id === c.provider)?.capabilities ?? [];
    const asDefault = caps.find((cap) => this.#preferences[cap]?.credential_id === c.id);
    return [CAPABILITY_UNIT[asDefault ?? caps[0]] ?? 'requests'];
  }

  /** This period's use against the budget (a bar per limited unit), and a chart of the
   * last days' use. The period's use is the vault's own count when it gives one
   * (`usage_this_period`), else the sum of the key's metered days. */
  #usageOf(c) {
    const period = c.budget?.period ?? 'month';
    const units = this.#unitsOf(c);
    const rows = this.#usage.rows.filter((r) => r.credential_id === c.id);
    if (!this.#usage.ok && !c.usage_this_period && !c.budget) return null;
    const start = periodStart(period);
    const counted = !!c.usage_this_period;
    const used = (unit) => (counted ? amount(c.usage_this_period, unit) : rows.filter((r) => r.day >= start).reduce((n, r) => n + amount(r, unit), 0));
    // A list cut short by the vault counts only part of the days.
    const atLeast = !counted && this.#usage.truncated ? 'at least ' : '';
    const known = counted || this.#usage.ok;
    const block = h('div', { class: 'usage' });
    for (const unit of units) {
      const n = used(unit);
      const limit = c.budget?.[unit];
      const id = `${this.#id}-use-${c.id}-${unit}`;
      if (limit == null) {
        block.append(h('p', {}, `${atLeast}${num(n)} ${unitText(unit, n)} ${PERIOD_TEXT[period]}`));
        continue;
      }
      if (!known) {
        block.append(h('p', {}, `Budget: ${num(limit)} ${unitText(unit, limit)} ${PER_PERIOD[period]}`));
        continue;
      }
      const spent = n >= limit;
      const text = `${atLeast}${num(n)} / ${num(limit)} ${unitText(unit, limit)} ${PERIOD_TEXT[period]}`;
      const fill = h('div', {});
      // CSSOM, not a style attribute: the page's CSP allows no inline style.
      fill.style.width = `${limit > 0 ? Math.min(100, (n / limit) * 100) : 100}%`;
      block.append(h('p', { id }, text),
        h('div', { class: `meter${spent ? ' full' : ''}`, role: 'meter', 'aria-labelledby': id, 'aria-valuemin': '0', 'aria-valuemax': String(limit), 'aria-valuenow': String(Math.min(n, limit)), 'aria-valuetext': text }, fill));
      if (spent) block.append(h('p', { class: 'feedback bad' }, `Budget reached: calls with this key wait until ${periodEnd(period).toLocaleString(undefined, { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' })}, and go to your next key meanwhile.`));
    }
    if (this.#usage.ok) block.append(this.#chart(units[0], rows));
    return block;
  }

  /** A bar per day of the last CHART_DAYS (UTC) days, today last, with a summary in words
   * for screen readers; each bar's value shows on hover. */
  #chart(unit, rows) {
    const now = Date.now();
    const days = Array.from({ length: CHART_DAYS }, (_, i) => utcDay(now - (CHART_DAYS - 1 - i) * DAY_MS));
    const perDay = new Map();
    for (const r of rows) perDay.set(r.day, (perDay.get(r.day) ?? 0) + amount(r, unit));
    const values = days.map((d) => perDay.get(d) ?? 0);
    const total = values.reduce((a, b) => a + b, 0);
    const max = Math.max(...values);
    const active = values.filter((v) => v > 0).length;
    const what = UNIT_TEXT[unit][1];
    const summary = total === 0
      ? `No ${what} used in the last ${CHART_DAYS} days.`
      : `${what[0].toUpperCase()}${what.slice(1)} per day over the last ${CHART_DAYS} days: ${num(total)} in all, on ${active} day${active === 1 ? '' : 's'}; the most, ${num(max)}, on ${dayText(days[values.indexOf(max)])}.`;
    const [W, H] = [5, 30];
    return h('div', {},
      svg('svg', { class: 'spark', viewBox: `0 0 ${CHART_DAYS * W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': summary },
        ...days.map((day, i) => {
          const v = values[i];
          const height = v ? Math.max(2, (v / max) * H) : 1;
          return svg('rect', { x: i * W, y: H - height, width: W - 1, height, class: v ? (i === CHART_DAYS - 1 ? 'today' : null) : 'none', 'data-day': day },
            svg('title', {}, `${dayText(day)}: ${num(v)} ${unitText(unit, v)}`));
        })),
      h('p', { class: 'caption', 'aria-hidden': 'true' }, `Last ${CHART_DAYS} days: ${num(total)} ${unitText(unit, total)}`));
  }

  /** Move up / Move down among the provider's keys; a move the vault's order cannot make
   * (an unconfirmed key ahead of a confirmed one) is not offered. */
  #moveButtons(c, { ordered, index }, feedback) {
    const move = (to, dir, text) => {
      const changes = to >= 0 && to < ordered.length ? planMove(ordered, index, to) : null;
      return changes && h('button', {
        class: 'secondary', type: 'button', 'data-move': dir, 'aria-description': this.#keyName(c),
        onclick: (e) => this.#move(c, changes, to, ordered.length, dir, e.currentTarget, feedback),
      }, text);
    };
    const buttons = [move(index - 1, 'up', 'Move up'), move(index + 1, 'down', 'Move down')].filter(Boolean);
    return buttons.length ? h('div', { class: 'row' }, buttons) : null;
  }

  async #move(c, changes, to, n, dir, button, feedback) {
    button.disabled = true;
    for (const x of changes) {
      const r = await this.#call('PATCH', `/v1/credentials/${x.id}`, { priority: x.priority });
      if (!r.ok) {
        // Part of a renumbering may have landed: draw what the vault now holds.
        await this.#changed(`The order did not change as asked. ${explain(r.problem)}`, 'bad');
        return;
      }
    }
    // Focus stays on the key that moved, so it can be moved again from the keyboard.
    await this.#changed(`The ${this.#keyName(c)} is now ${to + 1} of ${n}${to === 0 ? ', tried first' : ''}.`, 'good', () => {
      const card = this.shadowRoot.querySelector(`[data-credential="${c.id}"]`);
      return card?.querySelector(`[data-move="${dir}"]`) ?? card?.querySelector('[data-move]');
    });
  }

  /** The budget form: a period, a unit, a limit; the vault's problems are shown beside the
   * field they name. */
  #openBudget(c, card, feedback) {
    card.querySelector('form')?.remove();
    const base = `${this.#id}-budget-${c.id}`;
    const shown = BUDGET_UNITS.find((u) => c.budget?.[u] != null) ?? this.#unitsOf(c).map((u) => (u === 'tokens' ? 'output_tokens' : u))[0];
    const field = (name, text, control) => {
      const error = h('p', { id: `${base}-${name}-error`, class: 'field-error' });
      return { name, control, error, el: [h('label', { for: control.id }, text), control, error] };
    };
    const period = field('period', 'Period', h('select', { id: `${base}-period` },
      ['day', 'month'].map((p) => h('option', { value: p, selected: (c.budget?.period ?? 'month') === p }, p === 'day' ? 'Per day' : 'Per month'))));
    const unit = field('unit', 'Unit', h('select', { id: `${base}-unit` },
      BUDGET_UNITS.map((u) => h('option', { value: u, selected: u === shown }, `${UNIT_TEXT[u][1][0].toUpperCase()}${UNIT_TEXT[u][1].slice(1)}`))));
    const limit = field('limit', 'Limit', h('input', { id: `${base}-limit`, type: 'number', min: '0', step: 'any', inputmode: 'decimal', required: true, value: c.budget?.[shown] ?? '' }));
    const problems = h('div', { 'aria-live': 'polite' });
    const button = h('button', { type: 'submit' }, 'Save budget');
    const form = h('form', { 'aria-label': 'Budget' },
      c.budget && BUDGET_UNITS.filter((u) => c.budget[u] != null).length > 1 ? h('p', { class: 'feedback info' }, 'Saving replaces every limit of the current budget with this one.') : null,
      period.el, unit.el, limit.el, problems,
      h('div', { class: 'row' }, button, h('button', { class: 'secondary', type: 'button', onclick: () => form.remove() }, 'Cancel')));
    const fields = [period, unit, limit];
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      for (const f of fields) {
        f.error.textContent = '';
        f.control.removeAttribute('aria-invalid');
        f.control.removeAttribute('aria-describedby');
      }
      problems.replaceChildren();
      const budget = { period: period.control.value, [unit.control.value]: Number(limit.control.value) };
      button.disabled = true;
      const r = await this.#call('PATCH', `/v1/credentials/${c.id}`, { budget });
      button.disabled = false;
      if (r.ok) {
        const n = budget[unit.control.value];
        this.#changed(`The ${this.#keyName(c)} now has a budget of ${num(n)} ${unitText(unit.control.value, n)} ${PER_PERIOD[budget.period]}.`);
        return;
      }
      // `budget.period` goes beside the period; a unit's limit, or the budget as a whole,
      // beside the limit; anything else under the form.
      const rest = [];
      for (const err of r.problem?.errors ?? []) {
        const f = err.field === 'budget.period' ? period : err.field === 'budget' || err.field?.startsWith('budget.') ? limit : null;
        if (!f) { rest.push(err); continue; }
        f.error.textContent = [f.error.textContent, `${f.el[0].textContent} ${err.message}.`].filter(Boolean).join(' ');
        f.control.setAttribute('aria-invalid', 'true');
        f.control.setAttribute('aria-describedby', f.error.id);
      }
      const invalid = fields.find((f) => f.error.textContent);
      if (!invalid || rest.length) problems.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain({ ...r.problem, errors: rest })));
      invalid?.control.focus();
    });
    card.append(form);
    limit.control.focus();
  }

  async #removeBudget(c, button, feedback) {
    button.disabled = true;
    const r = await this.#call('PATCH', `/v1/credentials/${c.id}`, { budget: null });
    button.disabled = false;
    if (!r.ok) {
      feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain(r.problem)));
      return;
    }
    this.#changed(`The budget on the ${this.#keyName(c)} was removed.`);
  }

  async #recheck(c, button, feedback) {
    button.disabled = true;
    feedback.replaceChildren(h('p', { class: 'feedback info' }, `Checking with ${this.#providerName(c.provider)}…`));
    const r = await this.#call('POST', `/v1/credentials/${c.id}/validate`);
    button.disabled = false;
    if (!r.ok) {
      feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain(r.problem, this.#providerName(c.provider))));
      return;
    }
    const name = this.#providerName(c.provider);
    const detail = r.body.status_detail ?? STATUS_TEXT[r.body.status];
    if (r.body.status === 'valid') this.#changed(`The ${name} key works.`);
    else if (['rate_limited', 'unreachable', 'provider_error'].includes(r.body.status)) {
      this.#changed(`${name} could not check the key now (${detail}). Try again in a minute.`, 'info');
    } else this.#changed(`The ${name} key does not work: ${detail}`, 'bad');
  }

  #openRotate(c, card, feedback) {
    card.querySelector('form')?.remove();
    const id = `${this.#id}-rotate-${c.id}`;
    const input = h('input', { id, type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
    const button = h('button', { type: 'submit' }, 'Save new key');
    const form = h('form', { 'aria-label': 'Rotate key' },
      h('label', { for: id }, `New ${this.#providerName(c.provider)} key`), input,
      h('div', { class: 'row' }, button, h('button', { class: 'secondary', type: 'button', onclick: () => form.remove() }, 'Cancel')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const key = input.value;
      input.value = '';
      button.disabled = true;
      feedback.replaceChildren(h('p', { class: 'feedback info' }, `Checking the new key with ${this.#providerName(c.provider)}…`));
      const r = await this.#call('PATCH', `/v1/credentials/${c.id}`, { api_key: key });
      button.disabled = false;
      if (!r.ok) {
        feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, `The old key stays. ${explain(r.problem, this.#providerName(c.provider))}`));
        return;
      }
      this.#changed('The new key works and replaced the old one.');
    });
    card.append(form);
    input.focus();
  }

  async #openModels(c, card, feedback) {
    card.querySelector('form')?.remove();
    const r = await this.#call('GET', `/v1/credentials/${c.id}/models`);
    if (!r.ok) {
      feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain(r.problem)));
      return;
    }
    card.append(this.#modelForm(c, r.body.models, feedback));
  }

  #modelForm(c, models, feedback) {
    const id = `${this.#id}-model-${c.id}`;
    const select = h('select', { id }, models.map((m) => h('option', { value: m.id, selected: m.id === c.model }, m.name === m.id ? m.id : `${m.name} (${m.id})`)));
    const form = h('form', { 'aria-label': 'Choose model' },
      h('label', { for: id }, 'Model'), select,
      h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Use this model')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const r = await this.#call('PATCH', `/v1/credentials/${c.id}`, { model: select.value });
      if (!r.ok) {
        feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain(r.problem)));
        return;
      }
      this.#changed(`The model is now ${select.value}.`);
    });
    return form;
  }

  #confirmDelete(c, card) {
    card.querySelector('[role=alertdialog]')?.remove();
    const title = `${this.#id}-del-${c.id}`;
    const cancel = h('button', { class: 'secondary', type: 'button', onclick: () => box.remove() }, 'Keep it');
    const box = h('div', { role: 'alertdialog', 'aria-labelledby': title, class: 'feedback bad' },
      h('p', { id: title }, `Delete this ${this.#providerName(c.provider)} key? Calls that use it will stop working.`),
      h('div', { class: 'row' },
        h('button', { class: 'danger', type: 'button', onclick: async () => {
          const r = await this.#call('DELETE', `/v1/credentials/${c.id}`);
          if (!r.ok) { box.replaceChildren(h('p', {}, explain(r.problem))); return; }
          this.#changed('The key was deleted.');
        } }, 'Delete key'),
        cancel));
    card.append(box);
    cancel.focus();
  }

  #addForm() {
    const pid = `${this.#id}-provider`;
    const feedback = h('div', { 'aria-live': 'polite' }, this.#noticeEl(this.#addNotice));
    const fields = h('div', {});
    const select = h('select', { id: pid, required: true },
      h('option', { value: '' }, 'Choose a provider'),
      this.#providers.map((p) => h('option', { value: p.id }, `${p.name} (${p.capabilities.map((c) => CAPABILITY_TEXT[c] ?? c).join(', ')})`)));
    const drawFields = () => {
      const p = this.#providers.find((x) => x.id === select.value);
      fields.replaceChildren();
      if (!p) return;
      for (const f of p.fields) {
        const id = `${this.#id}-add-${f.name}`;
        const text = { api_key: 'API key', region: 'Region (e.g. eastus)', base_url: 'Base URL' }[f.name] ?? f.name;
        fields.append(h('label', { for: id }, text, f.required ? '' : ' (optional)'),
          h('input', { id, name: f.name, type: f.secret ? 'password' : 'text', autocomplete: 'off', spellcheck: 'false', required: f.required }));
      }
      const lid = `${this.#id}-add-label`;
      fields.append(h('label', { for: lid }, 'Label (optional)'), h('input', { id: lid, name: 'label', type: 'text', maxlength: '100' }));
    };
    select.addEventListener('change', drawFields);
    const button = h('button', { type: 'submit' }, 'Check and save');
    const form = h('form', { 'aria-labelledby': `${this.#id}-add` },
      h('h2', { id: `${this.#id}-add` }, 'Add a key'),
      h('label', { for: pid }, 'Provider'), select, fields,
      h('div', { class: 'row' }, button), feedback);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = { provider: select.value };
      for (const input of fields.querySelectorAll('input')) {
        if (input.value.trim()) body[input.name] = input.value.trim();
      }
      // The key leaves the field as it is sent: it is never kept anywhere.
      for (const input of fields.querySelectorAll('input[type=password]')) input.value = '';
      const name = this.#providerName(select.value);
      button.disabled = true;
      feedback.replaceChildren(h('p', { class: 'feedback info', role: 'status' }, `Checking the key with ${name}…`));
      const r = await this.#call('POST', '/v1/credentials', body);
      button.disabled = false;
      if (!r.ok) {
        feedback.replaceChildren(h('p', { class: 'feedback bad', role: 'alert' }, explain(r.problem, name)));
        return;
      }
      this.#notice = null;
      this.#addNotice = { tone: 'good', text: `${name} accepted the key. It is saved${r.body.credential.key_hint && r.body.credential.key_hint !== '…' ? ` as ${r.body.credential.key_hint}` : ''}.` };
      await this.refresh();
      // Right after validation: pick the model the key will use.
      const card = this.shadowRoot.querySelector(`[data-credential="${r.body.credential.id}"]`);
      if (card && r.body.models?.length) card.append(this.#modelForm(r.body.credential, r.body.models, card.querySelector('[aria-live]')));
      this.dispatchEvent(new CustomEvent('byok-change', { bubbles: true, composed: true }));
    });
    return form;
  }

  #defaults() {
    const section = h('section', { 'aria-labelledby': `${this.#id}-defaults` }, h('h2', { id: `${this.#id}-defaults` }, 'Defaults'));
    for (const cap of Object.keys(CAPABILITY_TEXT)) {
      const usable = this.#credentials.filter((c) => this.#providers.find((p) => p.id === c.provider)?.capabilities.includes(cap));
      const current = this.#preferences[cap];
      const id = `${this.#id}-default-${cap}`;
      const select = h('select', { id, disabled: !usable.length },
        h('option', { value: '' }, usable.length ? 'None chosen' : 'Add a key that offers this first'),
        usable.map((c) => h('option', { value: c.id, selected: current?.credential_id === c.id }, `${this.#providerName(c.provider)}${c.label ? ` — ${c.label}` : ''} (${c.key_hint ?? 'no key'})`)));
      const form = h('form', { 'aria-label': `${CAPABILITY_TEXT[cap]} default` }, h('label', { for: id }, CAPABILITY_TEXT[cap]), select);
      // The default's model: one the provider lists for this capability, or the key's own.
      const models = current ? (this.#models.get(current.credential_id) ?? []).filter((m) => m.capabilities.includes(cap)) : [];
      let modelSelect = null;
      if (current && models.length) {
        const mid = `${id}-model`;
        modelSelect = h('select', { id: mid },
          h('option', { value: '' }, "The key's own model"),
          models.map((m) => h('option', { value: m.id, selected: current.model === m.id }, m.name === m.id ? m.id : `${m.name} (${m.id})`)));
        form.append(h('label', { for: mid }, `${CAPABILITY_TEXT[cap]} model`), modelSelect);
      }
      form.append(h('div', { class: 'row' }, h('button', { type: 'submit', disabled: !usable.length }, `Save ${CAPABILITY_TEXT[cap]} default`)));
      form.addEventListener('submit', async (e) => {
        e.preventDefault();
        if (!select.value) return;
        const change = { credential_id: select.value };
        // A model belongs to the key it was listed for: kept only if the key stays.
        if (modelSelect?.value && select.value === current?.credential_id) change.model = modelSelect.value;
        const r = await this.#call('PUT', `/v1/preferences/${cap}`, change);
        if (!r.ok) { this.#changed(explain(r.problem), 'bad'); return; }
        const what = select.selectedOptions[0].textContent;
        this.#changed(`${CAPABILITY_TEXT[cap]} now uses ${what}${change.model ? ` with the model ${change.model}` : ''}.`);
      });
      section.append(form);
    }
    return section;
  }

  #audit() {
    const body = h('tbody', {});
    const result = h('div', { 'aria-live': 'polite' });
    const section = h('section', { 'aria-labelledby': `${this.#id}-audit` },
      h('h2', { id: `${this.#id}-audit` }, 'Activity'),
      h('div', { class: 'row' },
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#loadAudit(body) }, 'Show activity'),
        h('button', { class: 'secondary', type: 'button', onclick: async () => {
          // The vault checks a bounded part of the chain per request: walk it to the end.
          let checked = 0;
          let r = await this.#call('GET', '/v1/audit/verify');
          while (r.ok && r.body.ok && r.body.next_cursor) {
            checked += r.body.checked;
            r = await this.#call('GET', `/v1/audit/verify?cursor=${encodeURIComponent(r.body.next_cursor)}`);
          }
          if (r.ok) checked += r.body.checked;
          result.replaceChildren(r.ok && r.body.ok
            ? h('p', { class: 'feedback good', role: 'status' }, `The activity log is intact: ${checked} entries verified.`)
            : h('p', { class: 'feedback bad', role: 'alert' }, r.ok ? `The activity log was altered at entry ${r.body.broken_seq}.` : explain(r.problem)));
        } }, 'Verify log')),
      result,
      h('table', {}, h('caption', { class: 'sr-only' }, 'Your recent activity'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'When'), h('th', { scope: 'col' }, 'What'), h('th', { scope: 'col' }, 'By'), h('th', { scope: 'col' }, 'Result'))),
        body));
    return section;
  }

  async #loadAudit(body) {
    const r = await this.#call('GET', '/v1/audit?limit=50');
    if (!r.ok) { this.#say(explain(r.problem)); return; }
    body.replaceChildren(...r.body.events.map((e) => h('tr', {},
      h('td', {}, new Date(e.at).toLocaleString()),
      h('td', {}, `${e.action}${e.provider ? ` (${this.#providerName(e.provider)})` : ''}`),
      h('td', {}, e.actor?.type === 'user' ? 'you' : `${e.actor?.type} ${e.actor?.id}`),
      h('td', {}, e.outcome === 'success' ? 'done' : `failed: ${e.reason}`))));
  }

  async #changed(message, tone = 'good', focusOn = null) {
    this.#notice = { tone, text: message };
    this.#addNotice = null;
    this.#tries.clear();
    this.#models.clear();
    await this.refresh();
    this.#say(message);
    // The control that was used is gone with the render: focus goes to what happened.
    (focusOn?.() ?? this.shadowRoot.querySelector('.notice'))?.focus();
    this.dispatchEvent(new CustomEvent('byok-change', { bubbles: true, composed: true }));
  }
}

customElements.define('byok-keys', ByokKeys);
