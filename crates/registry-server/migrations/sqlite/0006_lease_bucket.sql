-- Same column and indexes as the Postgres schema (see there), so that both stores find
-- due and silent leases by the same queries. SQLite rewrites an index whenever a column
-- it depends on is set, so here the bucket saves nothing and costs nothing.
ALTER TABLE instances ADD COLUMN lease_bucket_ms INTEGER
    GENERATED ALWAYS AS (lease_deadline_ms - lease_deadline_ms % MAX(ttl_ms / 100, 1)) VIRTUAL;

DROP INDEX instances_lease_deadline;
CREATE INDEX instances_lease_bucket ON instances (lease_bucket_ms)
    WHERE lease_bucket_ms IS NOT NULL;

DROP INDEX instances_silent_from;
CREATE INDEX instances_silent_from ON instances ((lease_bucket_ms - ttl_ms / 2))
    WHERE lease_bucket_ms IS NOT NULL AND status IN ('passing', 'warning');
