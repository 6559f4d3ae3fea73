-- Several routes (a key and a base URL each) and the organizations behind them.

-- Each route as the daemon last saw it, for `status`, `limits` and `diagnose`: the organization
-- its answers named, and whether it is paused (with why, whose limit it was, until when).
CREATE TABLE routes (
    name            TEXT PRIMARY KEY,
    key_id          TEXT    NOT NULL,             -- the key's last four characters, never the key
    host            TEXT    NOT NULL,             -- host[:port] of its base URL
    organization_id TEXT,                         -- NULL until an answer names it
    workspace_id    TEXT,
    grp             TEXT    NOT NULL,             -- the key its organization's quota is kept under
    state           TEXT    NOT NULL,             -- active | learning | paused | unreachable | deprioritised
    reason          TEXT,
    owner           TEXT,
    until           INTEGER,
    updated_at      INTEGER NOT NULL
);

-- Who owned each throttling answer, on which route, and what the verdict rests on.
ALTER TABLE throttle_events ADD COLUMN route TEXT NOT NULL DEFAULT 'default';
ALTER TABLE throttle_events ADD COLUMN host TEXT;
ALTER TABLE throttle_events ADD COLUMN organization_id TEXT;
ALTER TABLE throttle_events ADD COLUMN workspace_id TEXT;
ALTER TABLE throttle_events ADD COLUMN owner TEXT;
ALTER TABLE throttle_events ADD COLUMN evidence TEXT;
ALTER TABLE throttle_events ADD COLUMN reset_at INTEGER;
CREATE INDEX throttle_events_route ON throttle_events(route, model, id);

-- The route each attempt went on.
ALTER TABLE attempts ADD COLUMN route TEXT;

-- A batch belongs to the route that created it: polled, fetched and canceled with its key.
ALTER TABLE batches ADD COLUMN route TEXT NOT NULL DEFAULT 'default';

-- The quota's state per organization and class (it was per class: one route, named `default`).
CREATE TABLE quota_state_by_group (
    grp         TEXT    NOT NULL,
    class       TEXT    NOT NULL,
    snapshot    TEXT    NOT NULL,
    learned     TEXT,
    key_id      TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (grp, class)
);
INSERT INTO quota_state_by_group (grp, class, snapshot, learned, key_id, updated_at)
    SELECT 'route:default', class, snapshot, learned, key_id, updated_at FROM quota_state;
DROP TABLE quota_state;
ALTER TABLE quota_state_by_group RENAME TO quota_state;
