-- Batches pack for the prompt cache: a job's waiting batch items in prefix order (items sharing a
-- cached prefix side by side, so they go in the same batch), then line order. `pack_key` is the
-- prefix key, 0 for items that mark none (a column, so the packing query's cursor can seek on it).
ALTER TABLE items ADD COLUMN pack_key INTEGER GENERATED ALWAYS AS (COALESCE(cache_key, 0)) VIRTUAL;
CREATE INDEX items_waiting_batch_prefix ON items(job_id, priority, pack_key, id)
    WHERE state = 'pending' AND lane = 'batch' AND parked = 0;
