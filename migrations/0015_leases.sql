-- Leases (issue 17): what each daemon holds, so several daemons can share one store (PostgreSQL;
-- SQLite keeps one daemon, but runs the same statements).

-- The daemons working on this store; each heartbeats its row while it runs, and deletes it when it
-- stops in order. Its id names it in every lease: the host and its data_dir, the same across
-- restarts, so a restarted daemon takes back its own leases at once.
CREATE TABLE daemons (
    id              TEXT    PRIMARY KEY,
    host            TEXT    NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    heartbeat_at    INTEGER NOT NULL,
    -- what its routes reach (a JSON array of organization keys and `route:<name>`s): each
    -- daemon paces itself to 1/N of an organization N live daemons reach
    reach           TEXT    NOT NULL DEFAULT '[]'
);

-- The daemon that took the job file in; it keeps the job's results file.
ALTER TABLE jobs ADD COLUMN taken_in_by TEXT;

-- The lease of an in-flight item: the daemon calling for it, until when (renewed at each
-- heartbeat), and the fencing token raised at each claim and takeover; an outcome is recorded
-- only with the current token.
ALTER TABLE items ADD COLUMN lease_owner TEXT;
ALTER TABLE items ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE items ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
CREATE INDEX items_lease ON items(lease_owner, lease_expires_at) WHERE lease_owner IS NOT NULL;

-- A batch belongs to one daemon at a time, under the same kind of lease.
ALTER TABLE batches ADD COLUMN lease_owner TEXT;
ALTER TABLE batches ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE batches ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
CREATE INDEX batches_lease ON batches(lease_owner, lease_expires_at) WHERE lease_owner IS NOT NULL;

-- Which result lines the results file of their job holds (1), in place of the cursor
-- `jobs.results_seq` (no longer kept): with several daemons writing lines at once, `seq` is not
-- the order in which they commit, and a cursor could pass a line committed late.
ALTER TABLE results ADD COLUMN written INTEGER NOT NULL DEFAULT 0;
UPDATE results SET written = 1
    WHERE seq <= (SELECT j.results_seq FROM jobs j WHERE j.id = results.job_id);
CREATE INDEX results_unwritten ON results(job_id, seq) WHERE written = 0;
