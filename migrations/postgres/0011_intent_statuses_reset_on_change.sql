-- PostgreSQL form of ../0011_intent_statuses_reset_on_change.sql: the status
-- is reset when the intent's body changes, not when the same body is written
-- again.
DROP TRIGGER intent_statuses_reset ON intents;
CREATE TRIGGER intent_statuses_reset AFTER UPDATE OF body ON intents
    FOR EACH ROW WHEN (OLD.body IS DISTINCT FROM NEW.body)
    EXECUTE FUNCTION intent_statuses_reset();
