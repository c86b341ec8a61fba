-- The database's epoch: a random id made once, when the database is first initialised
-- (or, for a database created before this migration, when it takes it), and shared by
-- every replica on it. Answers carry it (`Registry-Epoch`, docs/api.md) so that a client
-- can tell a registry that lost its state (a new database, which makes a new epoch) from
-- one that merely moved on, which indexes alone cannot: a fresh database's index can pass
-- the old one within seconds. Added, filled, then made required: the single row exists
-- since migration 1.
ALTER TABLE registry_meta ADD COLUMN epoch TEXT;
UPDATE registry_meta SET epoch = gen_random_uuid()::text WHERE epoch IS NULL;
ALTER TABLE registry_meta ALTER COLUMN epoch SET NOT NULL;
