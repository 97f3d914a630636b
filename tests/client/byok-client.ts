// A small typed client of byok-vault, written against the types openapi-typescript
// generates from the description the Worker serves (GET /v1/openapi.json). The end-to-end
// test generates `api.d.ts` beside this file, type-checks both with `tsc --strict`, and
// runs the main flows below against the running Worker: if the description drifts from
// what the code answers, this stops compiling or stops working.
import type { components, paths } from './api';

export type Credential = components['schemas']['Credential'];
export type NewCredential = components['schemas']['NewCredential'];
export type Problem = components['schemas']['Problem'];
type Json<T> = T extends { content: { 'application/json': infer B } } ? B : never;

export type Providers = Json<paths['/v1/providers']['get']['responses'][200]>;
export type CredentialList = Json<paths['/v1/credentials']['get']['responses'][200]>;
export type Created = Json<paths['/v1/credentials']['post']['responses'][201]>;
export type CredentialPatch = Json<NonNullable<paths['/v1/credentials/{id}']['patch']['requestBody']>>;
export type Models = Json<paths['/v1/credentials/{id}/models']['get']['responses'][200]>;
export type Preferences = Json<paths['/v1/preferences']['get']['responses'][200]>;
export type PreferenceChange = Json<NonNullable<paths['/v1/preferences/{capability}']['put']['requestBody']>>;
export type Capability = paths['/v1/preferences/{capability}']['parameters']['path']['capability'];
export type AuditPage = Json<paths['/v1/audit']['get']['responses'][200]>;
export type Verification = Json<paths['/v1/audit/verify']['get']['responses'][200]>;

/** An answer: the body the description promises for the status, or a problem. */
export type Answer<T> = { ok: true; status: number; body: T } | { ok: false; status: number; problem: Problem };

export class VaultClient {
  constructor(private readonly base: string, private readonly token: () => string) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<Answer<T>> {
    const init: RequestInit = { method, headers: { authorization: `Bearer ${this.token()}` } };
    if (body !== undefined) {
      init.headers = { ...init.headers, 'content-type': 'application/json' };
      init.body = JSON.stringify(body);
    }
    const res = await fetch(this.base + path, init);
    const text = await res.text();
    if (res.ok) return { ok: true, status: res.status, body: (text ? JSON.parse(text) : null) as T };
    return { ok: false, status: res.status, problem: JSON.parse(text) as Problem };
  }

  providers() { return this.call<Providers>('GET', '/v1/providers'); }
  list() { return this.call<CredentialList>('GET', '/v1/credentials'); }
  add(body: NewCredential) { return this.call<Created>('POST', '/v1/credentials', body); }
  get(id: string) { return this.call<Credential>('GET', `/v1/credentials/${id}`); }
  change(id: string, patch: CredentialPatch) { return this.call<Credential>('PATCH', `/v1/credentials/${id}`, patch); }
  recheck(id: string) { return this.call<Credential>('POST', `/v1/credentials/${id}/validate`); }
  models(id: string) { return this.call<Models>('GET', `/v1/credentials/${id}/models`); }
  remove(id: string) { return this.call<null>('DELETE', `/v1/credentials/${id}`); }
  preferences() { return this.call<Preferences>('GET', '/v1/preferences'); }
  choose(capability: Capability, change: PreferenceChange) {
    return this.call<unknown>('PUT', `/v1/preferences/${capability}`, change);
  }
  audit() { return this.call<AuditPage>('GET', '/v1/audit'); }
  verify() { return this.call<Verification>('GET', '/v1/audit/verify'); }
}
