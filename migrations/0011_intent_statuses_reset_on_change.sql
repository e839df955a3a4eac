-- A status goes with the version of the intent it is about: reset when the
-- intent's body changes, not when the same body is written again (a retried
-- SetIntent would lose an APPLIED status that nothing records again).
DROP TRIGGER intent_statuses_reset;
CREATE TRIGGER intent_statuses_reset AFTER UPDATE OF body ON intents
WHEN OLD.body IS NOT NEW.body
BEGIN
    DELETE FROM intent_statuses WHERE datastore = NEW.datastore AND name = NEW.name;
END;
