// Writes public/openapi.json (served at GET /v1/openapi.json through the Worker's static
// assets) from docs/openapi.yaml, the one source of the API description. Writes only when
// the content changed, so `wrangler dev` (which watches the assets) does not reload for
// nothing.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import YAML from 'yaml';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const source = path.join(root, 'docs', 'openapi.yaml');
const target = path.join(root, 'public', 'openapi.json');
const json = `${JSON.stringify(YAML.parse(fs.readFileSync(source, 'utf8')), null, 1)}\n`;
let current = null;
try { current = fs.readFileSync(target, 'utf8'); } catch { /* first build */ }
if (current !== json) {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.writeFileSync(target, json);
  console.log(`[build] wrote public/openapi.json (${json.length} bytes)`);
}
