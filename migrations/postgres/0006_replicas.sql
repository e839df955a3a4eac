-- Several netsyncd replicas on one database (`--replicas`, see
-- crates/server/src/replicas.rs and docs/DESIGN.md "Replicas").
--
-- Each replica's heartbeat: live replicas are those seen within the lease.
CREATE TABLE replicas (
    id   TEXT        NOT NULL PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL
);

-- Which replica syncs each datastore, under which fencing epoch, until when
-- (by the database's clock). owner NULL: free. The epoch grows by one at
-- every takeover; a write of the owner checks it in its own transaction.
CREATE TABLE leases (
    datastore TEXT        NOT NULL PRIMARY KEY REFERENCES datastores (name) ON DELETE CASCADE,
    owner     TEXT,
    epoch     BIGINT      NOT NULL,
    expires   TIMESTAMPTZ NOT NULL
);

-- The lease epoch each commit was written under (NULL outside replica mode).
ALTER TABLE commits ADD COLUMN epoch BIGINT;
