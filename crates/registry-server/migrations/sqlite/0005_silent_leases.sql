-- Same index as the Postgres schema (see there): the silent leases found without reading
-- every instance.
CREATE INDEX instances_silent_from ON instances ((lease_deadline_ms - ttl_ms / 2))
    WHERE lease_deadline_ms IS NOT NULL AND status IN ('passing', 'warning');
