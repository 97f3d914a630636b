-- Migration 0008: metered usage, counted per user, UTC day, key, source and model.

-- One row per user, day (YYYY-MM-DD, UTC), provider, key, source and model; each call
-- served adds to its row in one upsert (requests + 1, its usage added), so concurrent
-- calls never lose a count. credential_id is the user's credential ('' for the operator's
-- system key: the key is part of the row's identity, never null); it is only a value, so
-- deleting the credential keeps its usage. model is '' when not known. incomplete counts
-- the calls whose usage did not arrive whole (their partial counts are added all the same).
CREATE TABLE IF NOT EXISTS usage (
  user_id       TEXT NOT NULL,
  day           TEXT NOT NULL,
  provider      TEXT NOT NULL,
  credential_id TEXT NOT NULL,
  source        TEXT NOT NULL CHECK (source IN ('user', 'system')),
  model         TEXT NOT NULL DEFAULT '',
  requests      INTEGER NOT NULL DEFAULT 0,
  input_tokens  INTEGER NOT NULL DEFAULT 0,
  output_tokens INTEGER NOT NULL DEFAULT 0,
  characters    INTEGER NOT NULL DEFAULT 0,
  audio_seconds REAL NOT NULL DEFAULT 0,
  incomplete    INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, day, provider, credential_id, source, model)
);
-- A user's days are the primary key's prefix; the operators' reads over every user go by day.
CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day, source);
