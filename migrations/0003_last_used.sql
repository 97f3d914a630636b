-- Migration 0003: when each key was last used.

-- Maintained off the request path: the audit chainer sets it from `credential.used`
-- events (never moving it back), without touching the row version, so a use never
-- conflicts with the user's own changes.
ALTER TABLE credentials ADD COLUMN last_used_at INTEGER;
