-- Each datastore's status (an encoded netsync.v1.DatastoreStatus) as the
-- replica that syncs it last published it, at most a lease round old: what
-- the other replicas show in GetDatastore and ListDatastores.
CREATE TABLE sync_status (
    datastore TEXT  NOT NULL PRIMARY KEY REFERENCES datastores (name) ON DELETE CASCADE,
    owner     TEXT  NOT NULL,
    status    BYTEA NOT NULL
);
