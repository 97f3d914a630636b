// Test-only front worker: forwards every request to the vault over a service binding, and
// on POST /__inject/audit puts the request body on the vault's real local audit queue, so
// a test can deliver the same message twice. Never deployed.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === '/__inject/audit' && request.method === 'POST') {
      await env.AUDIT_QUEUE.send(await request.text());
      return new Response(null, { status: 202 });
    }
    return env.VAULT.fetch(request);
  },
};
