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
