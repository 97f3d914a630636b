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
// changed.

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
    const [providers, credentials, preferences, health] = await Promise.all([
      this.#call('GET', '/v1/providers'),
      this.#call('GET', '/v1/credentials'),
      this.#call('GET', '/v1/preferences'),
      this.#call('GET', '/v1/health'),
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
    this.#draw([
      this.#sandbox ? h('p', { class: 'banner', role: 'note' }, 'Sandbox: this vault talks to stand-in providers, not the real ones. Keys here are test keys.') : null,
      h('section', { 'aria-labelledby': `${this.#id}-keys` },
        h('h2', { id: `${this.#id}-keys` }, 'Your provider keys'),
        h('div', { class: 'notice', tabindex: '-1' }, this.#noticeEl(this.#notice)),
        this.#credentials.length ? h('div', { class: 'cards' }, this.#credentials.map((c) => this.#card(c))) : this.#emptyState()),
      this.#addForm(),
      this.#defaults(),
      this.#audit(),
    ]);
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

  #card(c) {
    const status = c.status;
    const tone = status === 'valid' ? 'good' : ['rate_limited', 'unreachable', 'unverified'].includes(status) ? 'wait' : 'bad';
    const name = this.#providerName(c.provider);
    const feedback = h('div', { 'aria-live': 'polite' });
    const card = h('article', { class: 'card', 'aria-label': `${name} key ${c.label ?? ''}`.trim(), 'data-credential': c.id },
      h('h3', {}, name, c.label ? ` — ${c.label}` : ''),
      h('span', { class: `status ${tone}` }, STATUS_TEXT[status] ?? status),
      c.status_detail ? h('p', { class: 'feedback bad' }, c.status_detail) : null,
      h('dl', {},
        h('dt', {}, 'Key'), h('dd', { class: 'hint' }, c.key_hint ?? '—'),
        h('dt', {}, 'Model'), h('dd', {}, c.model ?? 'provider default'),
        h('dt', {}, 'Quota'), h('dd', {}, quotaText(c.quota)),
        h('dt', {}, 'Last check'), h('dd', {}, ago(c.last_validated_at)),
        h('dt', {}, 'Last use'), h('dd', {}, ago(c.last_used_at))),
      (c.warnings ?? []).map((w) => h('p', { class: 'feedback info' }, w)),
      feedback,
      h('div', { class: 'row' },
        h('button', { class: 'secondary', type: 'button', 'aria-description': `${name} ${c.key_hint ?? ''}`, onclick: (e) => this.#recheck(c, e.currentTarget, feedback) }, 'Re-check'),
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#openRotate(c, card, feedback) }, 'Rotate key'),
        h('button', { class: 'secondary', type: 'button', onclick: () => this.#openModels(c, card, feedback) }, 'Choose model'),
        h('button', { class: 'danger', type: 'button', onclick: () => this.#confirmDelete(c, card) }, 'Delete')));
    return card;
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

  async #changed(message, tone = 'good') {
    this.#notice = { tone, text: message };
    this.#addNotice = null;
    this.#models.clear();
    await this.refresh();
    this.#say(message);
    // The control that was used is gone with the render: focus goes to what happened.
    this.shadowRoot.querySelector('.notice')?.focus();
    this.dispatchEvent(new CustomEvent('byok-change', { bubbles: true, composed: true }));
  }
}

customElements.define('byok-keys', ByokKeys);
