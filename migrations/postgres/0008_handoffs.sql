-- What replicas that do not sync a datastore hand to its owner (see
-- crates/server/src/handoff.rs and docs/DESIGN.md "Replicas"): counters,
-- so that the owner finds what it has not picked up yet even after a lost
-- notification, by comparing them with what it saw or did.
--
-- intents:      moved by every intent write and delete (on any replica).
-- resyncs:      moved by every Resync asked of a replica that did not sync it.
-- resyncs_done: the `resyncs` an owner has done (written by the owner, fenced).
CREATE TABLE handoffs (
    datastore    TEXT   NOT NULL PRIMARY KEY REFERENCES datastores (name) ON DELETE CASCADE,
    intents      BIGINT NOT NULL DEFAULT 0,
    resyncs      BIGINT NOT NULL DEFAULT 0,
    resyncs_done BIGINT NOT NULL DEFAULT 0
);
