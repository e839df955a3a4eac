-- PostgreSQL form of ../0001_datastores.sql (the same table; see there for
-- what each column holds). BYTEA for BLOB, BIGINT for SQLite's INTEGER.
CREATE TABLE datastores (
    name           TEXT   NOT NULL PRIMARY KEY,
    spec           BYTEA  NOT NULL,
    create_time_us BIGINT NOT NULL
);
