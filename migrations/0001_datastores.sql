-- The datastore registry: one row per synced device.
-- `spec` is the declared part of a netsync.v1.Datastore (name, target, sync,
-- revert), protobuf-encoded, secrets included: protobuf keeps old rows readable
-- as the API grows fields. Status is live state and is never stored here.
CREATE TABLE datastores (
    name           TEXT    NOT NULL PRIMARY KEY,
    spec           BLOB    NOT NULL,
    create_time_us INTEGER NOT NULL
) STRICT;
