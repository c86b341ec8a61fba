-- The lease sweep counts silent leases (docs/operations.md, Self-preservation) several
-- times a second. A live lease falls silent at its deadline minus half its TTL; indexed
-- by that moment, the count reads only the silent leases (normally none) instead of
-- every instance.
CREATE INDEX instances_silent_from ON instances ((lease_deadline_ms - ttl_ms / 2))
    WHERE lease_deadline_ms IS NOT NULL AND status IN ('passing', 'warning');
