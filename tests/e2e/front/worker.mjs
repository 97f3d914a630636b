// Test-only front worker, never deployed. It forwards every request to the vault over a
// service binding and, on its own paths, lets a test
//   POST /__test/sql     run one SQL statement on the vault's local D1 ({"sql","params"?}
//                        → rows; params bound in order), through the same running instance
//                        (no second process on the file);
//   POST /__inject/audit put the request body on the vault's real local audit queue.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === '/__test/sql' && request.method === 'POST') {
      const { sql, params = [] } = await request.json();
      try {
        const { results } = await env.DB.prepare(sql).bind(...params).all();
        return Response.json({ results });
      } catch (e) {
        return Response.json({ error: String(e?.message ?? e) }, { status: 500 });
      }
    }
    if (url.pathname === '/__inject/audit' && request.method === 'POST') {
      await env.AUDIT_QUEUE.send(await request.text());
      return new Response(null, { status: 202 });
    }
    return env.VAULT.fetch(request);
  },
};
