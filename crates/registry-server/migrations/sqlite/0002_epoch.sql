-- The database's epoch: a random id made once, when the database is first initialised
-- (or, for a database created before this migration, when it takes it). Answers carry it
-- (`Registry-Epoch`, docs/api.md) so that a client can tell a registry that lost its
-- state (a new database file, which makes a new epoch) from one that merely moved on,
-- which indexes alone cannot. SQLite refuses a non-constant default in ADD COLUMN, so the
-- single row (made by migration 1) is filled by an UPDATE.
ALTER TABLE registry_meta ADD COLUMN epoch TEXT;
UPDATE registry_meta SET epoch = lower(hex(randomblob(16))) WHERE epoch IS NULL;
