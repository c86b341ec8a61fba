-- An instance's own reaping time (`deregister_critical_after`), derived from the record
-- like the other columns; NULL: the registry's setting.
ALTER TABLE instances ADD COLUMN reap_after_ms BIGINT;
