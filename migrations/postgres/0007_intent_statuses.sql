-- PostgreSQL form of ../0007_intent_statuses.sql: each intent's status as
-- the owner of its datastore last recorded it (fenced by its lease, see
-- crates/server/src/status_record.rs), read by the other replicas and
-- restored by the next owner. A row goes with its intent; a rewrite of the
-- intent deletes it in the rewrite's transaction (PENDING everywhere at once).
CREATE TABLE intent_statuses (
    datastore        TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    state            TEXT   NOT NULL CHECK (state IN ('PENDING', 'APPLIED', 'FAILING')),
    applied_revision BIGINT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_error       TEXT   NOT NULL,
    PRIMARY KEY (datastore, name),
    FOREIGN KEY (datastore, name) REFERENCES intents (datastore, name) ON DELETE CASCADE
);

CREATE FUNCTION intent_statuses_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM intent_statuses WHERE datastore = NEW.datastore AND name = NEW.name;
    RETURN NULL;
END;
$$;

CREATE TRIGGER intent_statuses_reset AFTER UPDATE OF body ON intents
    FOR EACH ROW EXECUTE FUNCTION intent_statuses_reset();
