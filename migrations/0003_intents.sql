-- Intents: what controllers declared for each datastore. `body` is the
-- netsync.v1.Intent message as written (with its revision), protobuf-encoded.
CREATE TABLE intents (
    datastore TEXT NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    body      BLOB NOT NULL,
    PRIMARY KEY (datastore, name)
) STRICT;
