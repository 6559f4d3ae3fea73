-- Facts the running daemon publishes for the CLI (e.g. where its metrics are served).
CREATE TABLE daemon_facts (
    key        TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Recurring jobs: a template job file with a cron schedule (see src/schedule.rs).
CREATE TABLE schedules (
    name          TEXT    PRIMARY KEY,            -- the template's job name; runs are <name>-<time>
    expr          TEXT    NOT NULL,               -- the cron expression as written
    timezone      TEXT,                           -- IANA name; NULL: the machine's zone
    template_path TEXT    NOT NULL,               -- the kept copy of the job file
    defaults_toml TEXT    NOT NULL,               -- the sidecar each run gets
    next_run_at   INTEGER,                        -- NULL: never fires again
    last_run_at   INTEGER,
    last_job      TEXT,
    runs          INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

-- Items a budget holds until its next period are parked: left out of the lanes' ready indexes, so
-- a large held backlog costs nothing per dispatch round; each lane unparks them when their time
-- comes (`items_parked`).
ALTER TABLE items ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
DROP INDEX items_ready_realtime;
CREATE INDEX items_ready_realtime ON items(priority, id)
    WHERE state = 'pending' AND lane = 'realtime' AND parked = 0;
-- By class too, so the batch lane seeks the classes whose time window is open.
DROP INDEX items_waiting_batch;
CREATE INDEX items_waiting_batch ON items(job_id, priority, id)
    WHERE state = 'pending' AND lane = 'batch' AND parked = 0;
CREATE INDEX items_parked ON items(not_before) WHERE parked = 1;
