-- Reconcile jobs, durable: at most one queued (running = 0) and one running
-- (running = 1) job per datastore. A job's Set is computed when it runs, from
-- the deviations then; the row only says which intents to apply even if they
-- are non-revertive, and which paths a deleted intent withdrew.
CREATE TABLE reconcile_jobs (
    datastore     TEXT    NOT NULL REFERENCES datastores (name) ON DELETE CASCADE,
    running       INTEGER NOT NULL,
    not_before_us INTEGER NOT NULL,
    apply         TEXT    NOT NULL, -- JSON array of intent names
    withdrawn     TEXT    NOT NULL, -- JSON array of canonical paths
    PRIMARY KEY (datastore, running)
) STRICT;
