-- Cache writes by lifetime: `cache_creation_input_tokens` stays the total, and this the part of it
-- written for an hour (priced 2× input, against 1.25× for 5 minutes), as the answer's
-- `usage.cache_creation` split it. Rows from before were priced as 5-minute writes.
ALTER TABLE ledger ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0;
