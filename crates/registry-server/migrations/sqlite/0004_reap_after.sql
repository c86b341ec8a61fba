-- Same as the Postgres migration 0007 (see there).
ALTER TABLE instances ADD COLUMN reap_after_ms INTEGER;
