-- Each datastore's uid: the identity of one incarnation, new at every
-- CreateDatastore, so that a datastore deleted and created again under the
-- same name (whose revisions restart at 1) is told apart from the old one.
-- Nullable only for rows stored before this column existed: Store::open gives
-- every row without one a random uid, once, before anything reads the table
-- (see store.rs, new_uid!); it is stable from then on.
ALTER TABLE datastores ADD COLUMN uid TEXT;
