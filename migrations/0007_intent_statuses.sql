-- Each intent's status (Intent.status) as the owner of its datastore last
-- recorded it, for the other replicas and for the next owner (replica mode,
-- see postgres/0007_intent_statuses.sql and docs/DESIGN.md "Replicas"). A
-- single netsyncd keeps statuses in memory and writes none; the table exists
-- on SQLite too so that both backends hold the same schema.
--
-- A row goes with its intent (DeleteIntent, DeleteDatastore through the
-- intent), and a rewrite of the intent (SetIntent) deletes it, in the
-- rewrite's own transaction: the new intent is PENDING on every replica at
-- once, until its owner records otherwise.
CREATE TABLE intent_statuses (
    datastore        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('PENDING', 'APPLIED', 'FAILING')),
    applied_revision INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    last_error       TEXT    NOT NULL,
    PRIMARY KEY (datastore, name),
    FOREIGN KEY (datastore, name) REFERENCES intents (datastore, name) ON DELETE CASCADE
) STRICT;

CREATE TRIGGER intent_statuses_reset AFTER UPDATE OF body ON intents
BEGIN
    DELETE FROM intent_statuses WHERE datastore = NEW.datastore AND name = NEW.name;
END;
