-- Migration 0006: the sweep's back-off for dead keys, and key-health notices that go with
-- their credential.

-- Scheduled checks in a row that found the key dead (invalid_key, needs_reconfiguration).
-- The sweep waits longer after each (1, 2, 4, 8, 16 days) and stops after six, until the
-- key's user acts (a re-check, a rotation, any change) or a check finds it working.
ALTER TABLE credentials ADD COLUMN dead_checks INTEGER NOT NULL DEFAULT 0;

-- Which credential a notice is about: deleting a credential (its user's DELETE, an import
-- rollback) removes its notices not yet delivered, in the same transaction.
ALTER TABLE notifications ADD COLUMN credential_id TEXT;
UPDATE notifications SET credential_id = json_extract(body, '$.credential_id');
CREATE INDEX IF NOT EXISTS notifications_by_credential ON notifications (credential_id)
  WHERE credential_id IS NOT NULL;
