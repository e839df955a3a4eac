-- PostgreSQL form of ../0004_reconcile_jobs.sql: at most one queued
-- (running = false) and one running (running = true) job per datastore.
CREATE TABLE reconcile_jobs (
    datastore     TEXT    NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    running       BOOLEAN NOT NULL,
    not_before_us BIGINT  NOT NULL,
    apply         TEXT    NOT NULL, -- JSON array of intent names
    withdrawn     TEXT    NOT NULL, -- JSON array of canonical paths
    PRIMARY KEY (datastore, running)
);
