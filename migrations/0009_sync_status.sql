-- Replica mode: each datastore's status as its owner last published it, so
-- that every replica shows it (see postgres/0009_sync_status.sql). Never
-- written on SQLite, which has no replicas; the table exists so that both
-- backends have one schema.
CREATE TABLE sync_status (
    datastore TEXT NOT NULL PRIMARY KEY REFERENCES datastores (name) ON DELETE CASCADE,
    owner     TEXT NOT NULL,
    status    BLOB NOT NULL
);
