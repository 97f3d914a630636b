// A stand-in for the ElevenLabs API, answering with the shapes in
// shared/reference/providers.md. What it does is chosen by the key's prefix:
//   sk_valid_…        200 subscription and models
//   sk_invalid_…      401 invalid_api_key
//   sk_noperm_…       401 missing_permissions on /v1/user/subscription, models fine
//   sk_ipblocked_…    403 (IP allow-list)
//   sk_ratelimited_…  first call 429 too_many_concurrent_requests with Retry-After: 1, then valid
//   sk_longwait_…     429 with Retry-After: 60 (does not fit the deadline)
//   sk_flaky_…        first call 503, then valid
//   sk_slow_…         never answers
import http from 'node:http';

export const SUBSCRIPTION = {
  tier: 'creator', status: 'active', character_count: 1200, character_limit: 10000,
  can_extend_character_limit: true, allowed_to_extend_character_limit: false,
  next_character_count_reset_unix: 1796083200, voice_slots_used: 1, voice_limit: 30,
  professional_voice_limit: 1, can_extend_voice_limit: false, can_use_instant_voice_cloning: true,
  can_use_professional_voice_cloning: true, currency: 'usd', billing_period: 'monthly_period',
};

export const MODELS = [
  {
    model_id: 'eleven_multilingual_v2', name: 'Eleven Multilingual v2', can_be_finetuned: true,
    can_do_text_to_speech: true, can_do_voice_conversion: false, can_use_style: true,
    can_use_speaker_boost: true, serves_pro_voices: false, token_cost_factor: 1,
    description: 'Our most life-like, emotionally rich mode', requires_alpha_access: false,
    max_characters_request_free_user: 10000, max_characters_request_subscribed_user: 10000,
    maximum_text_length_per_request: 10000, languages: [{ language_id: 'en', name: 'English' }],
  },
  {
    model_id: 'eleven_flash_v2_5', name: 'Eleven Flash v2.5', can_do_text_to_speech: true,
    can_do_voice_conversion: false, languages: [{ language_id: 'en', name: 'English' }],
  },
];

const detail = (status, message) => JSON.stringify({ detail: { status, message } });

export function startFakeElevenLabs() {
  const seen = new Map(); // key -> number of requests
  const requests = [];
  const hanging = new Set();
  const server = http.createServer((req, res) => {
    const key = req.headers['xi-api-key'] ?? '';
    const count = (seen.get(key) ?? 0) + 1;
    seen.set(key, count);
    requests.push({ method: req.method, path: req.url, key, at: Date.now() });
    const json = (status, body, headers = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
    const ok = () => {
      if (req.url === '/v1/user/subscription') return json(200, SUBSCRIPTION);
      if (req.url === '/v1/models') return json(200, MODELS);
      return json(404, detail('not_found', 'Not found'));
    };
    const kind = key.split('_')[1];
    if (req.method !== 'GET') return json(405, detail('method_not_allowed', 'Method not allowed'));
    switch (kind) {
      case 'valid': return ok();
      case 'invalid': return json(401, detail('invalid_api_key', 'Invalid API key'));
      case 'noperm':
        if (req.url === '/v1/user/subscription') {
          return json(401, detail('missing_permissions', 'The API key you used is missing the permission user_read to execute this operation.'));
        }
        return ok();
      case 'ipblocked': return json(403, detail('ip_not_allowed', 'Requests from this IP address are not allowed for this API key.'));
      case 'ratelimited':
        if (count === 1) {
          return json(429, detail('too_many_concurrent_requests', 'Too many concurrent requests. Your current subscription is associated with a maximum of 2 concurrent requests.'),
            { 'retry-after': '1', 'current-concurrent-requests': '3', 'maximum-concurrent-requests': '2' });
        }
        return ok();
      case 'longwait': return json(429, detail('system_busy', 'The system is experiencing heavy traffic, please try again later.'), { 'retry-after': '60' });
      case 'flaky':
        if (count === 1) return json(503, detail('service_unavailable', 'Service temporarily unavailable'));
        return ok();
      case 'slow': hanging.add(res); return undefined;
      default: return json(401, detail('invalid_api_key', 'Invalid API key'));
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        url: `http://127.0.0.1:${port}`,
        requests,
        callsFor: (key) => requests.filter((r) => r.key === key),
        close: () => new Promise((done) => {
          for (const res of hanging) res.destroy();
          server.closeAllConnections?.();
          server.close(() => done());
        }),
      });
    });
  });
}
