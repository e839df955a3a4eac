-- The lease epoch a commit was written under: always NULL on SQLite, which
-- has no replicas; the column exists so that both backends take the same
-- INSERT (see postgres/0006_replicas.sql).
ALTER TABLE commits ADD COLUMN epoch INTEGER;
