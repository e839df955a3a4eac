-- Running, persisted: a per-commit change log plus occasional full snapshots.
-- Restart loads the newest snapshot and replays the log after it; WatchSync
-- replays the log. Bodies are lz4-compressed protobuf: `commits.body` is a
-- netsync.v1.Commit (the net change), `snapshots.body` a GetRunningResponse
-- holding every leaf.
CREATE TABLE commits (
    datastore TEXT    NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    revision  INTEGER NOT NULL,
    time_us   INTEGER NOT NULL,
    replace   INTEGER NOT NULL,
    body      BLOB    NOT NULL,
    PRIMARY KEY (datastore, revision)
) STRICT;

CREATE TABLE snapshots (
    datastore TEXT    NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    revision  INTEGER NOT NULL,
    time_us   INTEGER NOT NULL,
    body      BLOB    NOT NULL,
    PRIMARY KEY (datastore, revision)
) STRICT;
