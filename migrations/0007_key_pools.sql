-- Migration 0007: several keys per provider, tried in order, each cooling down for a while
-- after the provider refused it for rate or quota.

-- The order of a user's keys for one provider (lower first), after the capability's default.
ALTER TABLE credentials ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- Until when (ms) the key is tried only after the user's others, and why: 'rate_limited'
-- (the provider's Retry-After, bounded) or 'quota_exhausted' (until the quota resets, or an
-- hour). Tried again after it, without anyone touching it.
ALTER TABLE credentials ADD COLUMN cooldown_until INTEGER;
ALTER TABLE credentials ADD COLUMN cooldown_reason TEXT;
