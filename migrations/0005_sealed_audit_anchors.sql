-- Migration 0005: the audit chains' anchors are sealed.
--
-- Each user's head (where the chain ends) and retention checkpoint (where its stored part
-- starts) carries a MAC under a key derived from the master key, over its kind, its user,
-- seq, hash and updated_at: `mac` is 's:' or 't:' and a 128-bit tag (hex), or 'broken'
-- (it follows an anchor whose seal did not verify); `mac_version` is the master key
-- version of the tag. Anchors written before this migration have neither: a migration
-- cannot compute a MAC. They are sealed as they are by the cron (trust on first use)
-- while the legacy window below is open.
ALTER TABLE audit_heads ADD COLUMN mac TEXT;
ALTER TABLE audit_heads ADD COLUMN mac_version INTEGER;
ALTER TABLE audit_checkpoints ADD COLUMN mac TEXT;
ALTER TABLE audit_checkpoints ADD COLUMN mac_version INTEGER;

-- By seal: which versions anchors need (health), and what the cron still has to seal.
CREATE INDEX IF NOT EXISTS audit_heads_by_seal ON audit_heads (mac_version, mac);
CREATE INDEX IF NOT EXISTS audit_checkpoints_by_seal ON audit_checkpoints (mac_version, mac);

-- The legacy window: one row while anchors written before seals existed may remain
-- ('open', then 'closing' and 'closed' as the cron finds none left). No row: there never
-- were any, and an anchor without a seal is a break.
CREATE TABLE audit_legacy (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  state      TEXT NOT NULL CHECK (state IN ('open', 'closing', 'closed')),
  updated_at INTEGER NOT NULL
);
INSERT INTO audit_legacy (id, state, updated_at)
  SELECT 1, 'open', CAST(strftime('%s', 'now') AS INTEGER) * 1000
  WHERE EXISTS (SELECT 1 FROM audit_heads) OR EXISTS (SELECT 1 FROM audit_checkpoints);
