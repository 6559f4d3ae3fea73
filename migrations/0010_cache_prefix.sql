-- The prefix an item marks for the prompt cache (`model::prompt_cache`): its key (a hash of the
-- blocks up to its last `cache_control`), its size in input-estimate units and the lifetime asked
-- for. NULL for an item that marks none. The real-time lane's quota controller charges ITPM only
-- the part of a call it expects the API not to read from the cache.
ALTER TABLE items ADD COLUMN cache_key INTEGER;
ALTER TABLE items ADD COLUMN cache_tokens INTEGER;
ALTER TABLE items ADD COLUMN cache_ttl_ms INTEGER;
-- 1 when `cache = "auto"` added the breakpoint (the item's `params` are then what is sent, not
-- the line as written).
ALTER TABLE items ADD COLUMN cache_added INTEGER NOT NULL DEFAULT 0;
-- The job's `cache` (auto | off), settled when it was taken in; NULL for jobs from before (off).
ALTER TABLE jobs ADD COLUMN cache TEXT;
