-- What the prompt cache saved per billed call, in millionths of a dollar: the call's cost had the
-- tokens it wrote to and read from the cache been plain input, less its cost (negative when a write
-- cost more than the reads saved; 0 for a model without a price, and for rows from before).
ALTER TABLE ledger ADD COLUMN cache_saved_micro_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenant_days ADD COLUMN cache_saved_micro_usd INTEGER NOT NULL DEFAULT 0;

DROP TRIGGER ledger_rolls_up;
CREATE TRIGGER ledger_rolls_up AFTER INSERT ON ledger
BEGIN
    INSERT INTO tenant_days (tenant, day, spent_micro_usd, requests, input_tokens, output_tokens,
                             cache_creation_input_tokens, cache_read_input_tokens, cache_saved_micro_usd)
    VALUES (new.tenant, strftime('%Y-%m-%d', new.at / 1000, 'unixepoch'), COALESCE(new.cost_micro_usd, 0), 1,
            new.input_tokens, new.output_tokens, new.cache_creation_input_tokens, new.cache_read_input_tokens,
            new.cache_saved_micro_usd)
    ON CONFLICT (tenant, day) DO UPDATE SET
        spent_micro_usd = spent_micro_usd + excluded.spent_micro_usd,
        requests = requests + 1,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        cache_read_input_tokens = cache_read_input_tokens + excluded.cache_read_input_tokens,
        cache_saved_micro_usd = cache_saved_micro_usd + excluded.cache_saved_micro_usd;
END;

-- The prompt cache per job (`job`, `status` and `status --watch` read it), kept by a trigger from
-- the ledger rows that used the cache (the others cost the trigger nothing but its WHEN).
CREATE TABLE job_cache_use (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    read_tokens     INTEGER NOT NULL,
    written_tokens  INTEGER NOT NULL,
    saved_micro_usd INTEGER NOT NULL
);

INSERT INTO job_cache_use
    SELECT job_id, SUM(cache_read_input_tokens), SUM(cache_creation_input_tokens), 0
    FROM ledger WHERE cache_read_input_tokens + cache_creation_input_tokens > 0 GROUP BY job_id;

CREATE TRIGGER ledger_cache_per_job AFTER INSERT ON ledger
WHEN new.cache_read_input_tokens + new.cache_creation_input_tokens > 0
BEGIN
    INSERT INTO job_cache_use
    VALUES (new.job_id, new.cache_read_input_tokens, new.cache_creation_input_tokens, new.cache_saved_micro_usd)
    ON CONFLICT (job_id) DO UPDATE SET
        read_tokens = read_tokens + excluded.read_tokens,
        written_tokens = written_tokens + excluded.written_tokens,
        saved_micro_usd = saved_micro_usd + excluded.saved_micro_usd;
END;
