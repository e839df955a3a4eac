-- PostgreSQL form of ../0003_intents.sql.
CREATE TABLE intents (
    datastore TEXT  NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    name      TEXT  NOT NULL,
    body      BYTEA NOT NULL,
    PRIMARY KEY (datastore, name)
);
