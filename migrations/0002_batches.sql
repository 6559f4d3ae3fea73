-- The Message Batches lane.

-- One row per batch, recorded before it is sent (the intent), its API id right after.
CREATE TABLE batches (
    id                  INTEGER PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    api_id              TEXT UNIQUE,                  -- msgbatch_…; NULL until the create call answered
    -- submitting (intent recorded, no id yet) | in_progress | canceling | ended
    -- | failed (the API refused it; its items went back to the planner)
    state               TEXT    NOT NULL,
    request_count       INTEGER NOT NULL,
    bytes               INTEGER NOT NULL,
    intent_at           INTEGER NOT NULL,             -- recorded before the create call
    submitted_at        INTEGER,                      -- when the id was recorded
    api_created_at      INTEGER,
    ended_at            INTEGER,
    -- the API's request_counts as last seen
    processing          INTEGER NOT NULL DEFAULT 0,
    succeeded           INTEGER NOT NULL DEFAULT 0,
    errored             INTEGER NOT NULL DEFAULT 0,
    canceled            INTEGER NOT NULL DEFAULT 0,
    expired             INTEGER NOT NULL DEFAULT 0,
    -- 1 when a create call may have reached the API without its answer reaching us: the list
    -- endpoint is searched for it before anything is sent again
    create_unknown      INTEGER NOT NULL DEFAULT 0,
    create_sent_at      INTEGER,                      -- when the last create call went out
    refusals            INTEGER NOT NULL DEFAULT 0,   -- polls or downloads the API refused in a row
    next_action_at      INTEGER NOT NULL DEFAULT 0,   -- next create attempt or poll
    poll_interval_ms    INTEGER NOT NULL DEFAULT 0,
    results_applied_at  INTEGER,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    error               TEXT
);
CREATE INDEX batches_open ON batches(next_action_at) WHERE results_applied_at IS NULL AND state <> 'failed';
CREATE INDEX batches_job ON batches(job_id);

ALTER TABLE items ADD COLUMN batch_id INTEGER REFERENCES batches(id);
CREATE INDEX items_batch ON items(batch_id, custom_id) WHERE batch_id IS NOT NULL;
-- The real-time lane only looks at its own items; batch items wait in their own index.
DROP INDEX items_ready;
CREATE INDEX items_ready_realtime ON items(priority, id) WHERE state = 'pending' AND lane = 'realtime';
CREATE INDEX items_waiting_batch ON items(job_id, id) WHERE state = 'pending' AND lane = 'batch';

-- `nightshift cancel JOB` asks; the daemon (the only other writer) carries it out.
CREATE TABLE cancel_requests (
    id          INTEGER PRIMARY KEY,
    job_name    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    done_at     INTEGER
);

-- Set by `nightshift cancel`: pending items end canceled, the job's batches are canceled.
ALTER TABLE jobs ADD COLUMN canceled_at INTEGER;
-- 0 when the request uses a field the batch endpoint does not serve: it never goes to a batch.
ALTER TABLE items ADD COLUMN batch_ok INTEGER NOT NULL DEFAULT 1;

-- sha256 of the job file up to ingest_offset: a resumed intake checks the file did not change.
ALTER TABLE jobs ADD COLUMN ingest_prefix_hash TEXT;
