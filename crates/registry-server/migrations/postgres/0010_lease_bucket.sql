-- Lease renewals are the most frequent write: every flush rewrites the row of each
-- instance that heartbeat since the last one. Postgres can rewrite a row in place of its
-- old version, touching no index ("HOT"), when no indexed column changes and the page has
-- room. The lease indexes were on the deadline itself, which every renewal moves, so every
-- renewal also wrote three index entries and left a dead row version for vacuum.
--
-- The lease indexes now hold the deadline rounded down to a hundredth of the TTL. A
-- renewal that keeps the lease within the same hundredth (an instance that heartbeats
-- more often than every hundredth of its TTL) changes no indexed column; the queries read
-- the index for this bucket and then test the exact deadline. The candidates beyond the
-- due ones are leases within a hundredth of a TTL of their moment: a live instance
-- heartbeating at a third of its TTL never is, and in a mass lapse only the leases about
-- to lapse within that hundredth are read ahead of their time.
ALTER TABLE instances ADD COLUMN lease_bucket_ms BIGINT
    GENERATED ALWAYS AS (lease_deadline_ms - lease_deadline_ms % GREATEST(ttl_ms / 100, 1)) STORED;

DROP INDEX instances_lease_deadline;
CREATE INDEX instances_lease_bucket ON instances (lease_bucket_ms)
    WHERE lease_bucket_ms IS NOT NULL;

DROP INDEX instances_silent_from;
CREATE INDEX instances_silent_from ON instances ((lease_bucket_ms - ttl_ms / 2))
    WHERE lease_bucket_ms IS NOT NULL AND status IN ('passing', 'warning');

-- Room on each page for the new versions of its rows. Pages written from now on keep it;
-- older pages gain it as their rows move.
ALTER TABLE instances SET (fillfactor = 80);
