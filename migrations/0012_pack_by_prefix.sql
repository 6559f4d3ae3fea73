-- Batches pack for the prompt cache: a job's waiting batch items in prefix order (items sharing a
-- cached prefix side by side, so they go in the same batch), then line order. Items that mark no
-- prefix sort as key 0.
CREATE INDEX items_waiting_batch_prefix ON items(job_id, priority, COALESCE(cache_key, 0), id)
    WHERE state = 'pending' AND lane = 'batch';
