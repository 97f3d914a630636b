-- Migration 0002: row versions and the audit outbox.

-- Every write to a credential is conditional on the version it read and moves it on by
-- one, so a slow re-check can never write over a rotation that landed meanwhile.
ALTER TABLE credentials ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- The transactional outbox: an operation writes its audit event here in the same D1
-- batch as its change. The chainers (queue consumer, cron) move pending rows into
-- audit_events; pos is the commit order.
CREATE TABLE audit_outbox (
  pos        INTEGER PRIMARY KEY AUTOINCREMENT,
  id         TEXT NOT NULL UNIQUE,
  user_id    TEXT NOT NULL,
  event      TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
