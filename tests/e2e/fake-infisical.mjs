// A loopback Infisical for the system-keys tests, answering with the shapes in
// shared/reference/providers.md ("Infisical"): Universal Auth login, the v3 raw secrets
// list, and error bodies `{reqId, statusCode, message, error}`.
//
// It checks what the real server checks: the client id and secret (401 "Invalid
// credentials"; three failures in 30 s lock the login for 300 s), the bearer token it issued
// (none: 401 "Token missing"; unknown or expired: 403 TokenError), the list's parameters
// (missing project or environment: 400; a boolean that is not `true`/`false`: 422; another
// project: 404 NotFound; another environment or path: 404 SecretPathNotFound).
//
// `mode(m)` makes it misbehave until set back to 'ok':
//   ok              the normal answers
//   503             every request answers 503
//   429             every request answers 429 RateLimitExceeded with retry-after
//                   (`mode('429', { retryAfter: 2 })`; default 60 s) and x-ratelimit-*
//   401-revoked     lists answer 401 "Failed to authorize: token has been revoked"
//   403-permission  lists answer 403 PermissionDenied
// and `expireTokens()` expires every token issued so far (the next list answers 403
// TokenError; a new login gets a working one).
import http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';

const json = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers });
  res.end(JSON.stringify(body));
};

const fail = (res, status, error, message, headers) =>
  json(res, status, { reqId: `req-${randomBytes(6).toString('hex')}`, statusCode: status, message, error }, headers);

const MODES = new Set(['ok', '503', '429', '401-revoked', '403-permission']);
const BOOLEANS = ['recursive', 'include_imports', 'expandSecretReferences', 'viewSecretValue'];
const HIDDEN = '<hidden-by-infisical>';
const LOCK_AFTER = 3;
const LOCK_WINDOW_MS = 30_000;
const LOCK_MS = 300_000;

export function startFakeInfisical({ clientId, clientSecret, projectId, environment, secretPath = '/', expiresIn = 2592000 }) {
  const secrets = new Map(); // name -> { value, hidden, version, id }
  const imported = new Map(); // name -> value, served as one import from /shared
  const tokens = new Map(); // token -> expires at (ms)
  const counts = { logins: 0, lists: 0 };
  const requests = [];
  const failedLogins = [];
  let lockedUntil = 0;
  let current = 'ok';
  let retryAfter = 60;

  const secretShape = (name, s, env, path) => ({
    id: s.id,
    _id: s.id,
    workspace: projectId,
    environment: env,
    version: s.version,
    type: 'shared',
    secretKey: name,
    secretValue: s.hidden ? HIDDEN : s.value,
    secretValueHidden: s.hidden,
    secretComment: '',
    secretReminderNote: null,
    secretReminderRepeatDays: null,
    skipMultilineEncoding: false,
    secretPath: path,
    tags: [],
    createdAt: s.createdAt,
    updatedAt: new Date().toISOString(),
  });

  function login(req, res, body) {
    counts.logins += 1;
    let creds;
    try {
      creds = JSON.parse(body);
    } catch {
      return fail(res, 422, 'ValidationFailure', 'Body is not valid JSON');
    }
    if (typeof creds?.clientId !== 'string' || typeof creds?.clientSecret !== 'string') {
      return fail(res, 422, 'ValidationFailure', JSON.stringify([{ code: 'invalid_type', expected: 'string', received: 'undefined', path: ['clientId'], message: 'Required' }]));
    }
    const now = Date.now();
    if (now < lockedUntil) {
      return fail(res, 401, 'UnauthorizedError', 'This identity auth method is temporarily locked, please try again later');
    }
    if (creds.clientId !== clientId || creds.clientSecret !== clientSecret) {
      failedLogins.push(now);
      while (failedLogins.length && failedLogins[0] < now - LOCK_WINDOW_MS) failedLogins.shift();
      if (failedLogins.length >= LOCK_AFTER) lockedUntil = now + LOCK_MS;
      return fail(res, 401, 'UnauthorizedError', 'Invalid credentials');
    }
    const accessToken = `eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.${randomBytes(24).toString('base64url')}.${randomBytes(16).toString('base64url')}`;
    tokens.set(accessToken, now + expiresIn * 1000);
    return json(res, 200, { accessToken, expiresIn, accessTokenMaxTTL: 2592000, tokenType: 'Bearer' });
  }

  function list(req, res, query) {
    counts.lists += 1;
    const auth = req.headers.authorization ?? '';
    if (!auth) return fail(res, 401, 'UnauthorizedError', 'Token missing');
    const token = auth.replace(/^Bearer /, '');
    const expires = tokens.get(token);
    if (!auth.startsWith('Bearer ') || expires === undefined || Date.now() >= expires) {
      return fail(res, 403, 'TokenError', 'Your token has expired. Please re-authenticate.');
    }
    if (current === '401-revoked') return fail(res, 401, 'UnauthorizedError', 'Failed to authorize: token has been revoked');
    if (current === '403-permission') return fail(res, 403, 'PermissionDenied', 'You are not allowed to readValue on secrets');
    const project = query.get('workspaceId') ?? query.get('projectId');
    const env = query.get('environment');
    if (!project || !env) return fail(res, 400, 'BadRequest', 'Missing project id or environment');
    for (const name of BOOLEANS) {
      const v = query.get(name);
      if (v !== null && v !== 'true' && v !== 'false') {
        return fail(res, 422, 'ValidationFailure', JSON.stringify([{ code: 'invalid_enum_value', options: ['true', 'false'], path: [name], message: "Invalid enum value. Expected 'true' | 'false'" }]));
      }
    }
    const path = query.get('secretPath') ?? '/';
    if (project !== projectId) return fail(res, 404, 'NotFound', `Project with ID '${project}' not found`);
    if (env !== environment || path !== secretPath) {
      return fail(res, 404, 'SecretPathNotFound', `Folder with path '${path}' in environment with slug '${env}' not found`);
    }
    const imports = query.get('include_imports') === 'true' && imported.size
      ? [{ secretPath: '/shared', environment, folderId: 'f-shared', secrets: [...imported].map(([name, s]) => secretShape(name, s, environment, '/shared')) }]
      : [];
    return json(res, 200, {
      secrets: [...secrets].map(([name, s]) => secretShape(name, s, environment, path)),
      imports,
    });
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://fake');
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push({ method: req.method, path: url.pathname, query: url.search, headers: req.headers, at: Date.now() });
      const isLogin = req.method === 'POST' && url.pathname === '/api/v1/auth/universal-auth/login';
      const isList = req.method === 'GET' && url.pathname === '/api/v3/secrets/raw';
      if (!isLogin && !isList) {
        return fail(res, 404, 'NotFound', `Route ${req.method}:${url.pathname} not found`);
      }
      if (current === '503') {
        if (isLogin) counts.logins += 1; else counts.lists += 1;
        return fail(res, 503, 'ServiceUnavailable', 'Service temporarily unavailable, please try again later');
      }
      if (current === '429') {
        if (isLogin) counts.logins += 1; else counts.lists += 1;
        return fail(res, 429, 'RateLimitExceeded', `Rate limit exceeded. Please try again in ${retryAfter} seconds`, {
          'retry-after': String(retryAfter),
          'x-ratelimit-limit': '60',
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset': String(retryAfter),
        });
      }
      return isLogin ? login(req, res, body) : list(req, res, url.searchParams);
    });
  });

  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      const base = `http://127.0.0.1:${port}`;
      resolve({
        base,
        counts,
        requests,
        /** The vars that point the vault at this fake, as this identity. */
        vars: () => ({
          SYSTEM_KEYS_SOURCE: 'infisical',
          INFISICAL_HOST: base,
          INFISICAL_CLIENT_ID: clientId,
          INFISICAL_CLIENT_SECRET: clientSecret,
          INFISICAL_PROJECT_ID: projectId,
          INFISICAL_ENVIRONMENT: environment,
          INFISICAL_SECRET_PATH: secretPath,
        }),
        /** Creates or rotates a secret at the identity's environment and path. */
        setSecret(name, value) {
          const old = secrets.get(name);
          secrets.set(name, {
            value,
            hidden: old?.hidden ?? false,
            version: (old?.version ?? 0) + 1,
            id: old?.id ?? randomUUID(),
            createdAt: old?.createdAt ?? new Date().toISOString(),
          });
        },
        /** Sets a secret in a folder the path imports (ranks below the path's own). */
        setImportedSecret(name, value) {
          imported.set(name, { value, hidden: false, version: 1, id: randomUUID(), createdAt: new Date().toISOString() });
        },
        deleteSecret: (name) => secrets.delete(name),
        /** The identity may list the secret but not read its value (as without readValue). */
        hideSecret(name) {
          const s = secrets.get(name);
          if (s) s.hidden = true;
        },
        mode(m, { retryAfter: secs = 60 } = {}) {
          if (!MODES.has(m)) throw new Error(`unknown fake Infisical mode ${m}`);
          current = m;
          retryAfter = secs;
        },
        expireTokens() {
          for (const t of tokens.keys()) tokens.set(t, 0);
        },
        stop: () => new Promise((done) => {
          server.closeAllConnections?.();
          server.close(() => done());
        }),
      });
    });
  });
}
