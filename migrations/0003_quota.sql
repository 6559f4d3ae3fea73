-- The quota controller's evidence and state.

-- Every 429 and 529 the real-time lane received, with what a support ticket needs.
CREATE TABLE throttle_events (
    id              INTEGER PRIMARY KEY,
    at              INTEGER NOT NULL,
    endpoint        TEXT    NOT NULL,             -- e.g. POST /v1/messages
    key_id          TEXT    NOT NULL,             -- the key's last four characters, never the key
    model           TEXT    NOT NULL,
    class           TEXT    NOT NULL,             -- the limit class (models sharing a limit)
    http_status     INTEGER NOT NULL,
    error_type      TEXT,
    message         TEXT,
    request_id      TEXT,
    retry_after_ms  INTEGER,
    headers         TEXT    NOT NULL,             -- the anthropic-ratelimit-* headers, as JSON
    input_estimate  INTEGER,
    max_tokens      INTEGER,
    concurrency     INTEGER
);
CREATE INDEX throttle_events_class ON throttle_events(class, at);

-- The controller's view of each class, written by the daemon every few seconds for the CLI.
CREATE TABLE quota_state (
    class           TEXT PRIMARY KEY,
    snapshot        TEXT    NOT NULL,             -- JSON: limits, capacity, level, remaining, concurrency
    key_id          TEXT    NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- A lane paused because the API refuses the account (key, spend cap, usage limit).
CREATE TABLE lane_pauses (
    lane            TEXT PRIMARY KEY,
    reason          TEXT    NOT NULL,
    since           INTEGER NOT NULL,
    until           INTEGER NOT NULL
);

-- What each call was sent with, for diagnosis.
ALTER TABLE attempts ADD COLUMN concurrency INTEGER;
ALTER TABLE attempts ADD COLUMN input_estimate INTEGER;
