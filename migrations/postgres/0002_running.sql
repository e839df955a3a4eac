-- PostgreSQL form of ../0002_running.sql: the per-commit change log and the
-- snapshots. `replace` is a BOOLEAN (SQLite stores 0 or 1).
CREATE TABLE commits (
    datastore TEXT    NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    revision  BIGINT  NOT NULL,
    time_us   BIGINT  NOT NULL,
    replace   BOOLEAN NOT NULL,
    body      BYTEA   NOT NULL,
    PRIMARY KEY (datastore, revision)
);

CREATE TABLE snapshots (
    datastore TEXT   NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    revision  BIGINT NOT NULL,
    time_us   BIGINT NOT NULL,
    body      BYTEA  NOT NULL,
    PRIMARY KEY (datastore, revision)
);
