// The settings page's flows through the typed client, against a running vault:
// BYOK_BASE, BYOK_TOKEN (a user's), BYOK_KEY, BYOK_KEY2 (keys the fake ElevenLabs
// accepts) and BYOK_BAD_KEY (one it refuses). Exits non-zero with the step that failed.
import { VaultClient, type Answer } from './byok-client';

// Node's own, declared here rather than pulling in @types/node for two members.
declare const process: { env: Record<string, string | undefined>; exit(code: number): never };

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

function expectOk<T>(step: string, a: Answer<T>): T {
  if (!a.ok) throw new Error(`${step}: ${a.status} ${a.problem.code}`);
  return a.body;
}

async function main(): Promise<void> {
  const vault = new VaultClient(env('BYOK_BASE'), () => env('BYOK_TOKEN'));
  const providers = expectOk('providers', await vault.providers());
  if (!providers.providers.some((p) => p.id === 'elevenlabs')) throw new Error('no elevenlabs');

  const refused = await vault.add({ provider: 'elevenlabs', api_key: env('BYOK_BAD_KEY') });
  if (refused.ok || refused.problem.code !== 'invalid_api_key') throw new Error('a bad key was not refused');

  const created = expectOk('add', await vault.add({ provider: 'elevenlabs', api_key: env('BYOK_KEY'), label: 'Typed' }));
  const id = created.credential.id;
  if (!created.credential.key_hint?.startsWith('…')) throw new Error('the key is not masked');

  const models = expectOk('models', await vault.models(id));
  const model = models.models[0]?.id;
  if (!model) throw new Error('no models');
  expectOk('choose', await vault.choose('tts', { credential_id: id, model }));
  const prefs = expectOk('preferences', await vault.preferences());
  if (prefs.tts?.credential_id !== id) throw new Error('the default did not stick');

  const rotated = expectOk('rotate', await vault.change(id, { api_key: env('BYOK_KEY2') }));
  if (rotated.status !== 'valid') throw new Error(`rotated to ${rotated.status}`);
  expectOk('recheck', await vault.recheck(id));
  const listed = expectOk('list', await vault.list());
  if (!listed.credentials.some((c) => c.id === id)) throw new Error('not listed');

  expectOk('delete', await vault.remove(id));
  const gone = await vault.get(id);
  if (gone.ok || gone.status !== 404) throw new Error('still there after delete');

  // Events are chained off the request path (a queue consumer, about a second later).
  let page = expectOk('audit', await vault.audit());
  for (let i = 0; i < 60 && !page.events.some((e) => e.action === 'credential.deleted'); i++) {
    await new Promise((r) => setTimeout(r, 250));
    page = expectOk('audit', await vault.audit());
  }
  if (!page.events.some((e) => e.action === 'credential.deleted')) throw new Error('the delete was not audited');
  const verified = expectOk('verify', await vault.verify());
  if (!verified.ok) throw new Error('the audit chain does not verify');
  console.log(`flows ok: ${page.events.length} events, chain verified`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
