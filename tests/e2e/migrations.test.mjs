// The schema's two descriptions agree: applying migrations/ in order (what dev, tests and
// deploys do) yields exactly the schema schema.sql spells out, table by table, column by
// column, index by index. Runs wrangler's local D1, no Worker needed.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { applyMigrations, localSql } from './harness.mjs';

const dirs = [];
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

/** Every table's columns, indexes (with their columns and WHERE) and foreign keys. */
async function describeSchema(state) {
  const own = "m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_cf_%' AND m.name != 'd1_migrations'";
  const [columns, indexes, keys] = await localSql(state, {
    all: true,
    command: [
      `SELECT m.name AS tbl, p.cid, p.name, p.type, p."notnull" AS nn, p.dflt_value AS dflt, p.pk FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table' AND ${own} ORDER BY m.name, p.cid`,
      `SELECT m.name AS tbl, l.name, l."unique" AS uniq, l.origin, l.partial, (SELECT group_concat(i.name, ',') FROM pragma_index_info(l.name) i) AS cols, (SELECT sql FROM sqlite_master s WHERE s.name = l.name) AS sql FROM sqlite_master m JOIN pragma_index_list(m.name) l WHERE m.type = 'table' AND ${own} ORDER BY m.name, l.name`,
      `SELECT m.name AS tbl, f."table" AS target, f."from" AS col, f."to" AS ref, f.on_delete FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f WHERE m.type = 'table' AND ${own} ORDER BY m.name, f.id`,
    ].join(';\n'),
  });
  // Auto-indexes are named after their table and a counter, which differ with the order
  // of statements; what identifies them is their table and columns.
  const normal = indexes.map((i) => (i.origin === 'pk' || i.origin === 'u' ? { ...i, name: `(auto ${i.origin})` } : i));
  return { columns, indexes: normal, keys };
}

test('applying the migrations in order yields exactly schema.sql', async () => {
  const fromMigrations = await mkdtemp(path.join(os.tmpdir(), 'byok-migrations-'));
  const fromSchema = await mkdtemp(path.join(os.tmpdir(), 'byok-schema-'));
  dirs.push(fromMigrations, fromSchema);
  await applyMigrations(fromMigrations);
  await localSql(fromSchema, { file: 'schema.sql' });
  const a = await describeSchema(fromMigrations);
  const b = await describeSchema(fromSchema);
  assert.ok(a.columns.some((c) => c.tbl === 'credentials' && c.name === 'version'), 'the description reads the columns');
  assert.ok(a.columns.some((c) => c.tbl === 'audit_outbox'));
  assert.deepEqual(a, b);
});
