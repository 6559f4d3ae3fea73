-- The operator's chores: pause and resume, retry, clean, and looking up one item.

-- `nightshift pause JOB | --tenant T`: a hold per job or tenant, until `resume`. Held items are
-- parked out of the lanes' ready indexes (`parked = 2`; a budget's deferral is 1) by every path
-- that makes an item pending (intake, a failed call, a batch sending it back, a retry, a budget's
-- period rolling over, the start's requeue): see `store::holds::PARK_IF_HELD`. (Not triggers: a
-- trigger on items made every insert and update open a statement journal, and halved intake.)
CREATE TABLE holds (
    id      INTEGER PRIMARY KEY,
    job_id  INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
    tenant  TEXT,
    by      TEXT    NOT NULL,                     -- who paused: "alice (uid 1000)"
    at      INTEGER NOT NULL,
    CHECK ((job_id IS NULL) <> (tenant IS NULL))
);
CREATE UNIQUE INDEX holds_job ON holds(job_id) WHERE job_id IS NOT NULL;
CREATE UNIQUE INDEX holds_tenant ON holds(tenant) WHERE tenant IS NOT NULL;





CREATE INDEX items_held ON items(job_id) WHERE parked = 2;

-- `nightshift retry JOB`: asks; the daemon carries it out (the items go back to the planner, their
-- result lines are retired, the job's results file is written again).
CREATE TABLE retry_requests (
    id       INTEGER PRIMARY KEY,
    job_name TEXT    NOT NULL,
    errored  INTEGER NOT NULL,                    -- 1: the errored items
    expired  INTEGER NOT NULL,                    -- 1: the expired items
    ids      TEXT,                                -- a JSON array of custom_ids, or NULL
    at       INTEGER NOT NULL,
    done_at  INTEGER,
    outcome  TEXT                                 -- what was done, for the CLI that asked
);

-- The result lines retried items had before (`nightshift item` shows them; the results file holds
-- only each item's latest).
CREATE TABLE retired_results (
    id         INTEGER PRIMARY KEY,
    item_id    INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    line       TEXT    NOT NULL,
    retired_at INTEGER NOT NULL
);
CREATE INDEX retired_results_item ON retired_results(item_id);

-- `nightshift clean`: a finished job leaves `status` (kept for `job`, `item`, the ledger).
ALTER TABLE jobs ADD COLUMN cleaned_at INTEGER;

-- Counts the times a job's results file was reset (written again from the start: a retry, a file
-- found lost). The results writer records what it appended only if the epoch it read the lines
-- in is still the job's, so lines appended across a reset never stay in the file.
ALTER TABLE jobs ADD COLUMN results_epoch INTEGER NOT NULL DEFAULT 0;

-- `nightshift item`: an item's billed calls.
CREATE INDEX ledger_item ON ledger(item_id);

-- `status`: items finished per job in the last minute (items/s and the ETA), a range of this
-- index instead of a pass over the job's items; an item enters it once, when it becomes final.
-- (Two comparisons, not an IN list: SQLite evaluates an index's WHERE on every insert, and an IN
-- list there cost intake a quarter of its speed.)
CREATE INDEX items_finished ON items(job_id, updated_at)
    WHERE state <> 'pending' AND state <> 'in_flight';
