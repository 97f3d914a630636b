// Prints an HS256 user token signed with AUTH_JWT_SECRET from .dev.vars, for local use.
// Usage: node scripts/dev-token.mjs [user-id] [hours]
import crypto from 'node:crypto';
import fs from 'node:fs';

const [sub = 'dev-user', hours = '24'] = process.argv.slice(2);
const vars = Object.fromEntries(
  fs.readFileSync(new URL('../.dev.vars', import.meta.url), 'utf8')
    .split('\n').filter((l) => l.includes('=') && !l.startsWith('#'))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
);
if (!vars.AUTH_JWT_SECRET) throw new Error('.dev.vars has no AUTH_JWT_SECRET');
const b64url = (s) => Buffer.from(s).toString('base64url');
const now = Math.floor(Date.now() / 1000);
const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify({ sub, iat: now, exp: now + Number(hours) * 3600 }))}`;
const sig = crypto.createHmac('sha256', vars.AUTH_JWT_SECRET).update(input).digest('base64url');
process.stdout.write(`${input}.${sig}\n`);
