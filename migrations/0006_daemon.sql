-- Facts the running daemon publishes for the CLI (e.g. where its metrics are served).
CREATE TABLE daemon_facts (
    key        TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
