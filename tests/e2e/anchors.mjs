// The audit chain's anchors as the vault seals them, for tests that write a chain into D1
// by hand as a fixture (a chain the vault itself wrote), and to read verification answers.
import crypto from 'node:crypto';

/**
 * The seal the vault gives an anchor: `mac` ('s:' + a 128-bit HMAC-SHA256 tag, hex) under
 * a key derived with HKDF-SHA256 from master key `masterB64` (info `mac|audit-anchor`),
 * over length-prefixed parts; `mac_version` is the master key version.
 */
export function anchorSeal(masterB64, { kind = 'head', user, seq, hash, at, version = 1, strict = true }) {
  const key = Buffer.from(crypto.hkdfSync('sha256', Buffer.from(masterB64, 'base64'), Buffer.alloc(0), 'mac|audit-anchor', 32));
  const marker = strict ? 's' : 't';
  const mac = crypto.createHmac('sha256', key);
  for (const part of ['byok-vault/audit-anchor/v1', marker, kind, user, String(seq), hash, String(at)]) {
    const bytes = Buffer.from(part, 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64BE(BigInt(bytes.length));
    mac.update(len);
    mac.update(bytes);
  }
  return { mac: `${marker}:${mac.digest().subarray(0, 16).toString('hex')}`, mac_version: version };
}

/** A verification answer without what says how its ends were sealed: what it said before. */
export const verdict = ({ sealed, head, broken_reason, ...rest }) => rest;

/** The canonical JSON the vault hashes an event as: keys sorted at every depth, no spaces. */
export function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The event an `audit_events` row holds, as it was hashed (without its seq). */
export const eventOfRow = (r) => ({
  id: r.id, at: r.at, user_id: r.user_id, action: r.action, actor: { type: r.actor_type, id: r.actor_id },
  credential_id: r.credential_id, provider: r.provider, outcome: r.outcome, reason: r.reason,
  source: r.source, request_id: r.request_id, detail: r.detail == null ? null : JSON.parse(r.detail),
});

/** `events` linked into a chain after `start` as the vault links them: seq, prev_hash, hash. */
export function chainOf(events, start = { seq: 0, hash: '0'.repeat(64) }) {
  let prev = start;
  return events.map((event) => {
    const seq = prev.seq + 1;
    const hash = crypto.createHash('sha256').update(prev.hash).update(canonical({ ...event, seq })).digest('hex');
    const link = { event, seq, prev_hash: prev.hash, hash };
    prev = { seq, hash };
    return link;
  });
}

/** A value as an SQL literal. */
export const sqlValue = (v) => (v == null ? 'NULL' : typeof v === 'number' ? String(v) : `'${String(v).replaceAll("'", "''")}'`);

/**
 * What whoever can write D1 (and holds no master key) can do to a user's chain: read its
 * events, `edit` them, recompute every link from genesis and write them back. Returns where
 * the rewritten chain ends ({seq, hash}).
 */
export async function rewriteChain(vault, user, edit) {
  const rows = await vault.sql(`SELECT * FROM audit_events WHERE user_id = ${sqlValue(user)} ORDER BY seq`);
  const events = rows.map(eventOfRow);
  edit(events);
  const links = chainOf(events);
  await vault.sql(`DELETE FROM audit_events WHERE user_id = ${sqlValue(user)}`);
  for (const l of links) {
    const e = l.event;
    const values = [e.id, e.user_id, l.seq, e.at, e.action, e.actor.type, e.actor.id, e.credential_id, e.provider, e.outcome,
      e.reason, e.source, e.request_id, e.detail == null ? null : JSON.stringify(e.detail), l.prev_hash, l.hash];
    await vault.sql(`INSERT INTO audit_events (id, user_id, seq, at, action, actor_type, actor_id, credential_id, provider,
      outcome, reason, source, request_id, detail, prev_hash, hash) VALUES (${values.map(sqlValue).join(', ')})`);
  }
  return links.length ? { seq: links.at(-1).seq, hash: links.at(-1).hash } : { seq: 0, hash: '0'.repeat(64) };
}
