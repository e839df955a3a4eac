-- What replicas hand to a datastore's owner: unused on SQLite, which has no
-- replicas; the table exists so that both backends have the same schema
-- (see postgres/0008_handoffs.sql).
CREATE TABLE handoffs (
    datastore    TEXT    NOT NULL PRIMARY KEY REFERENCES datastores (name) ON DELETE CASCADE,
    intents      INTEGER NOT NULL DEFAULT 0,
    resyncs      INTEGER NOT NULL DEFAULT 0,
    resyncs_done INTEGER NOT NULL DEFAULT 0
);
