// End to end: RS256 and ES256 user tokens checked by the Worker (WebCrypto under workerd)
// against a JWKS served by a test issuer on loopback, beside HS256.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startVault } from './harness.mjs';

const b64url = (b) => Buffer.from(b).toString('base64url');

function keyPair(kind) {
  const { privateKey, publicKey } = kind === 'rsa'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { privateKey, jwk: publicKey.export({ format: 'jwk' }) };
}

function sign(alg, kid, privateKey, claims) {
  const input = `${b64url(JSON.stringify({ alg, kid, typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  const sig = alg === 'RS256'
    ? crypto.sign('sha256', Buffer.from(input), privateKey)
    : crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(sig)}`;
}

/** An identity provider publishing its keys; `publish` changes what it serves. */
function startIssuer() {
  let keys = [];
  let fetches = 0;
  const server = http.createServer((req, res) => {
    fetches += 1;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys }));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/.well-known/jwks.json`,
    publish: (k) => { keys = k; },
    fetches: () => fetches,
    close: () => new Promise((done) => { server.closeAllConnections?.(); server.close(() => done()); }),
  })));
}

describe('RS256 and ES256 tokens via AUTH_JWKS_URL', () => {
  let issuer;
  let vault;
  const rsa = keyPair('rsa');
  const ec = keyPair('ec');
  const later = keyPair('rsa');
  const exp = () => Math.floor(Date.now() / 1000) + 600;

  before(async () => {
    issuer = await startIssuer();
    issuer.publish([{ ...rsa.jwk, kid: 'rsa-1', use: 'sig', alg: 'RS256' }, { ...ec.jwk, kid: 'ec-1', use: 'sig' }]);
    vault = await startVault({ vars: { AUTH_JWKS_URL: issuer.url, AUTH_ISSUER: 'https://id.example', AUTH_AUDIENCE: 'byok' } });
  });
  after(async () => {
    await vault?.stop();
    await issuer?.close();
  });

  const list = (token) => vault.request('GET', '/v1/credentials', { token });
  const claims = (sub) => ({ sub, exp: exp(), iss: 'https://id.example', aud: 'byok' });

  test('tokens signed with the published RSA and EC keys are accepted', async () => {
    assert.equal((await list(sign('RS256', 'rsa-1', rsa.privateKey, claims('u_rs')))).status, 200);
    assert.equal((await list(sign('ES256', 'ec-1', ec.privateKey, claims('u_es')))).status, 200);
    assert.equal(issuer.fetches(), 1, 'the key set is cached');
  });

  test('a forged signature, a wrong issuer or audience, or an expired token is 401', async () => {
    const forged = sign('RS256', 'rsa-1', later.privateKey, claims('admin'));
    assert.equal((await list(forged)).status, 401);
    assert.equal((await list(sign('ES256', 'ec-1', ec.privateKey, { ...claims('u'), iss: 'https://evil' }))).status, 401);
    assert.equal((await list(sign('ES256', 'ec-1', ec.privateKey, { ...claims('u'), aud: 'other' }))).status, 401);
    assert.equal((await list(sign('RS256', 'rsa-1', rsa.privateKey, { ...claims('u'), exp: 1000 }))).status, 401);
  });

  test('a key published after start is found with one refetch', async () => {
    issuer.publish([{ ...rsa.jwk, kid: 'rsa-1', use: 'sig' }, { ...later.jwk, kid: 'rsa-2', use: 'sig' }]);
    await new Promise((r) => setTimeout(r, 10_500)); // past the refetch rate limit
    const before = issuer.fetches();
    const r = await list(sign('RS256', 'rsa-2', later.privateKey, claims('u_new')));
    assert.equal(r.status, 200, r.text);
    assert.equal(issuer.fetches(), before + 1);
  });

  test('HS256 still works beside them', async () => {
    assert.equal((await list(vault.token('u_hs', { iss: 'https://id.example', aud: 'byok' }))).status, 200);
  });
});
