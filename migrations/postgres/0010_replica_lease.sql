-- Each replica's lease length: a replica starting with another length than
-- the live ones is refused (replicas.rs, check_peers).
ALTER TABLE replicas ADD COLUMN lease_ms BIGINT;
