-- Migration 0004: the scheduled revalidation sweep, key-health notifications and
-- what master-key rotation looks up.

-- When a sweep last queued the credential for a check (not a change of the row: the
-- version does not move). A claim older than an hour is due again, so a lost message
-- delays a check, never drops it.
ALTER TABLE credentials ADD COLUMN revalidation_queued_at INTEGER;

-- Key-health notices waiting for delivery to NOTIFY_WEBHOOK_URL. The audit chainer writes
-- one per change of a credential's status, in the commit that chains its event (id is
-- the event's, and the webhook-id); delivery removes it, a failure moves next_attempt_at
-- on (a claimed notice is leased the same way).
CREATE TABLE notifications (
  id              TEXT PRIMARY KEY,
  user_id         TEXT NOT NULL,
  body            TEXT NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_error      TEXT,
  created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at);

-- Running jobs (the table is 0001's) are found by state, stalled ones by age.
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (state, updated_at);

-- Which master key version each row is sealed under: health and rotation ask it.
CREATE INDEX IF NOT EXISTS credentials_by_key_version ON credentials (key_version) WHERE key_version IS NOT NULL;
