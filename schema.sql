-- byok-vault D1 schema: the full current schema, for reading. Databases are created and
-- changed by the migrations in migrations/ (wrangler d1 migrations apply); a test proves
-- that applying them in order yields exactly this schema.
-- Timestamps are Unix milliseconds (INTEGER); JSON columns hold TEXT.

-- One row per stored key. The key itself exists only as AES-256-GCM ciphertext bound
-- (through the AAD) to user_id, id and provider; key_hint is its last 4 characters.
-- Every write is conditional on the version it read and moves it on by one.
CREATE TABLE IF NOT EXISTS credentials (
  id                   TEXT PRIMARY KEY,
  user_id              TEXT NOT NULL,
  provider             TEXT NOT NULL,
  label                TEXT,
  key_hint             TEXT,
  key_version          INTEGER,          -- master key version that sealed it
  nonce                TEXT,             -- base64, 12 bytes
  ciphertext           TEXT,             -- base64, ciphertext with the GCM tag
  fingerprint          TEXT,             -- "v<version>:" + HMAC-SHA256 hex, for duplicates
  params               TEXT NOT NULL DEFAULT '{}',
  model                TEXT,
  status               TEXT NOT NULL,
  status_detail        TEXT,
  warnings             TEXT NOT NULL DEFAULT '[]',
  quota                TEXT,
  models               TEXT,             -- cached model list from the last validation
  models_fetched_at    INTEGER,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_validated_at    INTEGER,
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL,
  import_batch_id      TEXT,
  version              INTEGER NOT NULL DEFAULT 0,
  last_used_at         INTEGER,          -- set by the audit chainer from credential.used
  revalidation_queued_at INTEGER,        -- when a sweep last queued it for a check
  dead_checks          INTEGER NOT NULL DEFAULT 0, -- scheduled checks in a row that found it dead
  priority             INTEGER NOT NULL DEFAULT 0, -- order among the user's keys (lower first)
  cooldown_until       INTEGER,                    -- skipped after the user's others until then (ms)
  cooldown_reason      TEXT,                       -- rate_limited | quota_exhausted
  budget               TEXT                        -- the user's cap on this key (JSON)
);
CREATE INDEX IF NOT EXISTS credentials_by_user ON credentials (user_id, created_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS credentials_fingerprint ON credentials (user_id, fingerprint)
  WHERE fingerprint IS NOT NULL;
CREATE INDEX IF NOT EXISTS credentials_by_last_validation ON credentials (last_validated_at);
CREATE INDEX IF NOT EXISTS credentials_by_import_batch ON credentials (import_batch_id)
  WHERE import_batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS credentials_by_key_version ON credentials (key_version) WHERE key_version IS NOT NULL;

-- The user's default credential and model per capability. Deleting a credential
-- clears the preferences that pointed at it.
CREATE TABLE IF NOT EXISTS preferences (
  user_id       TEXT NOT NULL,
  capability    TEXT NOT NULL CHECK (capability IN ('tts', 'stt', 'llm')),
  credential_id TEXT NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
  model         TEXT,
  updated_at    INTEGER NOT NULL,
  PRIMARY KEY (user_id, capability)
);

-- The tamper-evident audit log: per user, seq counts up from 1 and
-- hash = SHA-256(prev_hash || canonical JSON of the event).
CREATE TABLE IF NOT EXISTS audit_events (
  id            TEXT PRIMARY KEY,
  user_id       TEXT NOT NULL,
  seq           INTEGER NOT NULL,
  at            INTEGER NOT NULL,
  action        TEXT NOT NULL,
  actor_type    TEXT NOT NULL,
  actor_id      TEXT NOT NULL,
  credential_id TEXT,
  provider      TEXT,
  outcome       TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
  reason        TEXT,
  source        TEXT,
  request_id    TEXT,
  detail        TEXT,
  prev_hash     TEXT NOT NULL,
  hash          TEXT NOT NULL,
  UNIQUE (user_id, seq)
);
CREATE INDEX IF NOT EXISTS audit_events_by_user_time ON audit_events (user_id, at DESC, id DESC);

-- The transactional outbox: an operation writes its audit event here in the same D1
-- batch as its change; the chainers (queue consumer, cron) move pending rows into
-- audit_events. pos is the commit order.
CREATE TABLE IF NOT EXISTS audit_outbox (
  pos        INTEGER PRIMARY KEY AUTOINCREMENT,
  id         TEXT NOT NULL UNIQUE,
  user_id    TEXT NOT NULL,
  event      TEXT NOT NULL,
  created_at INTEGER NOT NULL
);

-- Where a user's chain starts after retention removed older events. Sealed like the
-- head (below).
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  user_id     TEXT PRIMARY KEY,
  seq         INTEGER NOT NULL,
  hash        TEXT NOT NULL,
  updated_at  INTEGER NOT NULL,
  mac         TEXT,
  mac_version INTEGER
);
CREATE INDEX IF NOT EXISTS audit_checkpoints_by_seal ON audit_checkpoints (mac_version, mac);

-- Where each user's chain ends: moved in the same transaction as the rows it covers,
-- so removing the newest events is detected too. Sealed: `mac` is 's:' or 't:' and a
-- 128-bit HMAC tag (hex) under a key derived from master key `mac_version`, over the
-- anchor's kind, user, seq, hash and updated_at, or 'broken' (it follows an anchor whose
-- seal did not verify); both NULL only for an anchor written before seals existed.
CREATE TABLE IF NOT EXISTS audit_heads (
  user_id     TEXT PRIMARY KEY,
  seq         INTEGER NOT NULL,
  hash        TEXT NOT NULL,
  updated_at  INTEGER NOT NULL,
  mac         TEXT,
  mac_version INTEGER
);
CREATE INDEX IF NOT EXISTS audit_heads_by_seal ON audit_heads (mac_version, mac);

-- The legacy window: one row while anchors written before seals existed may remain
-- ('open', then 'closing' and 'closed' as the cron finds none left). No row: there never
-- were any, and an anchor without a seal is a break.
CREATE TABLE IF NOT EXISTS audit_legacy (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  state      TEXT NOT NULL CHECK (state IN ('open', 'closing', 'closed')),
  updated_at INTEGER NOT NULL
);

-- Queue messages the audit consumers could not chain, kept as they arrived.
CREATE TABLE IF NOT EXISTS audit_dead_letters (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  body        TEXT NOT NULL,
  reason      TEXT NOT NULL,
  received_at INTEGER NOT NULL
);

-- Long-running work (master key rewrap, imports, revalidation sweeps) and its progress.
CREATE TABLE IF NOT EXISTS jobs (
  id         TEXT PRIMARY KEY,
  kind       TEXT NOT NULL,
  state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
  total      INTEGER NOT NULL DEFAULT 0,
  done       INTEGER NOT NULL DEFAULT 0,
  failed     INTEGER NOT NULL DEFAULT 0,
  cursor     TEXT,
  params     TEXT,
  error      TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (state, updated_at);

-- Key-health notices waiting for delivery to NOTIFY_WEBHOOK_URL (one per change of a
-- credential's status, written by the audit chainer while the credential exists; id is
-- the event's and the webhook-id). Delivery removes a notice; a failure moves
-- next_attempt_at on; deleting the credential removes its notices in the same transaction.
CREATE TABLE IF NOT EXISTS notifications (
  id              TEXT PRIMARY KEY,
  user_id         TEXT NOT NULL,
  body            TEXT NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_error      TEXT,
  created_at      INTEGER NOT NULL,
  credential_id   TEXT
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at);
CREATE INDEX IF NOT EXISTS notifications_by_credential ON notifications (credential_id)
  WHERE credential_id IS NOT NULL;

-- Budgets: the operator's per-user overrides of SYSTEM_KEY_BUDGETS, and each budget's
-- counters per period (see migrations/0009_budgets.sql).
CREATE TABLE IF NOT EXISTS budget_overrides (
  user_id    TEXT PRIMARY KEY,
  budgets    TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
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
