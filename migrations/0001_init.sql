-- nightshift schema, version 1. Times are Unix milliseconds (UTC).

-- One row per job file taken in from jobs_dir.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,      -- the file's stem; names the results file
    source_path     TEXT    NOT NULL,             -- where the file was found
    -- job defaults (sidecar <name>.toml); lines may override them
    tenant          TEXT    NOT NULL,
    priority        TEXT    NOT NULL,
    mode            TEXT    NOT NULL,
    deadline        TEXT,                         -- as written (RFC 3339 or a duration from intake)
    created_at      INTEGER NOT NULL,
    -- intake progress: lines and bytes taken so far, committed with the items of each chunk
    ingest_lines    INTEGER NOT NULL DEFAULT 0,
    ingest_offset   INTEGER NOT NULL DEFAULT 0,
    ingested_at     INTEGER,                      -- NULL while the file is still being read
    content_hash    TEXT,                         -- sha256 of the file, set when ingested
    note            TEXT,                         -- e.g. "the file is empty"
    -- the results file: how much of it is committed (anything past this after a crash is cut off)
    results_bytes   INTEGER NOT NULL DEFAULT 0,
    results_lines   INTEGER NOT NULL DEFAULT 0,
    finished_at     INTEGER                       -- every item final and its result written
);

-- One row per line of a job file.
CREATE TABLE items (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    line_no         INTEGER NOT NULL,
    custom_id       TEXT,                         -- NULL when unreadable or a repeat
    params          TEXT,                         -- the request body as written; NULL for invalid lines
    model           TEXT,
    max_tokens      INTEGER,
    input_estimate  INTEGER,                      -- estimated input tokens
    tenant          TEXT    NOT NULL,
    priority        INTEGER NOT NULL,             -- 0 interactive, 1 high, 2 normal, 3 nightly
    mode            TEXT    NOT NULL,             -- auto | batch | realtime
    deadline_at     INTEGER,
    lane            TEXT,                         -- realtime | batch
    lane_reason     TEXT,
    state           TEXT    NOT NULL,             -- pending | in_flight | succeeded | errored | expired | canceled
    attempts        INTEGER NOT NULL DEFAULT 0,   -- calls sent
    failures        INTEGER NOT NULL DEFAULT 0,   -- failed calls that count toward max_attempts
    not_before      INTEGER NOT NULL DEFAULT 0,   -- earliest next send (backoff, retry-after)
    error           TEXT,                         -- why it errored, for people
    result          TEXT,                         -- the results-file line, set with the final state
    result_written  INTEGER NOT NULL DEFAULT 0,   -- 1 once that line is in the results file
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX items_custom_id ON items(job_id, custom_id) WHERE custom_id IS NOT NULL;
CREATE INDEX items_job_state ON items(job_id, state);
CREATE INDEX items_ready ON items(priority, id) WHERE state = 'pending';
CREATE INDEX items_unwritten ON items(job_id, id) WHERE result IS NOT NULL AND result_written = 0;

-- One row per call sent (or about to be sent) for an item.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,             -- 1 for the first call of the item
    lane            TEXT    NOT NULL,
    model           TEXT,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    -- succeeded | rate_limited | retryable | fatal | unknown (sent, no answer: it may have run)
    -- | not_sent; NULL while in flight
    outcome         TEXT,
    http_status     INTEGER,
    request_id      TEXT,
    retry_after_ms  INTEGER,
    error           TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER
);
CREATE INDEX attempts_item ON attempts(item_id);
CREATE INDEX attempts_open ON attempts(item_id) WHERE outcome IS NULL;

-- Files in jobs_dir that could not be taken as jobs, and why.
CREATE TABLE rejected_files (
    id              INTEGER PRIMARY KEY,
    file_name       TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    at              INTEGER NOT NULL
);
