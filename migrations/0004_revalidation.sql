-- Migration 0004: the scheduled revalidation sweep.

-- When a sweep last queued the credential for a check (not a change of the row: the
-- version does not move). A claim older than an hour is due again, so a lost message
-- delays a check, never drops it.
ALTER TABLE credentials ADD COLUMN revalidation_queued_at INTEGER;
