-- The ledger: one row per billed call (a real-time answer, or a batch result line that succeeded),
-- written in the same transaction as the item's final state, so ledger and results never disagree.
CREATE TABLE ledger (
    id                          INTEGER PRIMARY KEY,
    at                          INTEGER NOT NULL,
    tenant                      TEXT    NOT NULL,
    job_id                      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_id                     INTEGER NOT NULL,
    model                       TEXT    NOT NULL,
    lane                        TEXT    NOT NULL,     -- realtime | batch
    input_tokens                INTEGER NOT NULL,
    output_tokens               INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens     INTEGER NOT NULL,
    -- millionths of a US dollar, so sums are exact; NULL when the model has no price (flagged)
    cost_micro_usd              INTEGER,
    request_id                  TEXT,                 -- request-id, or the batch id
    retry_of_unknown            INTEGER NOT NULL      -- 1: an earlier call of this item had an unknown outcome
);
CREATE INDEX ledger_at ON ledger(at);
CREATE INDEX ledger_tenant_at ON ledger(tenant, at);
CREATE INDEX ledger_job ON ledger(job_id);
