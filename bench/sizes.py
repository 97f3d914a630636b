"""Bytes each table and its indexes take in a D1 (SQLite) database file, and per row.

    python3 bench/sizes.py path/to/db.sqlite

Prints one JSON object: for each table, its rows, its bytes with its indexes (pages in
use, from SQLite's dbstat) and the bytes per row.
"""
import json
import sqlite3
import sys

db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
owners = {name: tbl for name, tbl in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")}
used = {}
for name, size in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
    table = owners.get(name, name)
    used[table] = used.get(table, 0) + size
out = {}
for table in ("credentials", "audit_events", "audit_outbox", "preferences", "jobs"):
    rows = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    out[table] = {"rows": rows, "bytes": used.get(table, 0), "bytes_per_row": round(used.get(table, 0) / rows) if rows else None}
# Rows added through the API carry their provider's model list (the fake's lists are
# short; a real provider's can be tens of KB): its share is given apart.
with_models = db.execute("SELECT COUNT(*), AVG(LENGTH(models)) FROM credentials WHERE models IS NOT NULL").fetchone()
out["credentials"]["rows_with_models"] = with_models[0]
out["credentials"]["models_bytes_avg"] = round(with_models[1]) if with_models[1] else None
print(json.dumps(out))
