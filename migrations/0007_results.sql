-- Result lines get a table of their own, appended once per item, in the order they are to go
-- into the job's results file; the file holds the job's lines up to `jobs.results_seq`.
-- Before, each line sat in its item's row (`items.result`, flagged `result_written` once in the
-- file): writing a line rewrote that wide row, and marking it written rewrote it again.
CREATE TABLE results (
    seq     INTEGER PRIMARY KEY,                  -- the order of the lines in the results file
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_id INTEGER NOT NULL UNIQUE REFERENCES items(id) ON DELETE CASCADE, -- once per item
    line    TEXT    NOT NULL
);
CREATE INDEX results_job ON results(job_id, seq);

-- The last line (`results.seq`) of the job in its results file, synced.
ALTER TABLE jobs ADD COLUMN results_seq INTEGER NOT NULL DEFAULT 0;

-- Lines already in a file first (in item order, as they were written), then the others.
INSERT INTO results (job_id, item_id, line)
    SELECT job_id, id, result FROM items WHERE result IS NOT NULL AND result_written = 1
    ORDER BY job_id, id;
UPDATE jobs SET results_seq = COALESCE((SELECT MAX(seq) FROM results WHERE job_id = jobs.id), 0);
INSERT INTO results (job_id, item_id, line)
    SELECT job_id, id, result FROM items WHERE result IS NOT NULL AND result_written = 0
    ORDER BY job_id, id;

DROP INDEX items_unwritten;
ALTER TABLE items DROP COLUMN result_written;
ALTER TABLE items DROP COLUMN result;
