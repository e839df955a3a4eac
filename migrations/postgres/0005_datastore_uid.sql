-- PostgreSQL form of ../0005_datastore_uid.sql: each datastore's uid, given
-- at open to rows without one (store.rs, gen_random_uuid()).
ALTER TABLE datastores ADD COLUMN uid TEXT;
