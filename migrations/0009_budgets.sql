-- Migration 0009: budgets. A user's own cap on a key, the operator's per-user overrides of
-- SYSTEM_KEY_BUDGETS, and the counters each budget is judged by in its period.

-- The user's cap on this key (JSON {"period","requests"?,…}); NULL: none.
ALTER TABLE credentials ADD COLUMN budget TEXT;

-- The operator's budgets on one user's system-key use (the SYSTEM_KEY_BUDGETS shape),
-- replacing the default for that user.
CREATE TABLE IF NOT EXISTS budget_overrides (
  user_id    TEXT PRIMARY KEY,
  budgets    TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);

-- What each budget has counted in a period: one row per scope ('system:<user>:<provider|*>'
-- or 'credential:<id>') and period ('2026-12-06' or '2026-12'). A call's reservation is
-- added by one conditional UPDATE, so parallel calls are judged one after another; what it
-- used is settled after its answer. `told` holds the thresholds already sent (1: 80 %,
-- 2: 100 %).
CREATE TABLE IF NOT EXISTS budget_use (
  scope         TEXT NOT NULL,
  period        TEXT NOT NULL,
  user_id       TEXT NOT NULL,
  requests      REAL NOT NULL DEFAULT 0,
  input_tokens  REAL NOT NULL DEFAULT 0,
  output_tokens REAL NOT NULL DEFAULT 0,
  characters    REAL NOT NULL DEFAULT 0,
  audio_seconds REAL NOT NULL DEFAULT 0,
  told          INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (scope, period)
);
CREATE INDEX IF NOT EXISTS budget_use_by_user ON budget_use (user_id, period);
