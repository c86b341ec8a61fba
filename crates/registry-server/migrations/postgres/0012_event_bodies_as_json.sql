-- Event bodies are stored as `json`, the text the registry wrote (checked to be JSON),
-- instead of `jsonb`. Nothing looks inside a stored body: every reader takes it whole, as
-- text. As `jsonb`, each appended body was parsed into a tree, its keys sorted and the
-- tree written in binary, then parsed again by `jsonb_set` to put in its index: about
-- two fifths of Postgres's time to append an event (docs/performance.md, "Changes made
-- for speed"). The registry serializes each event with the index 0, its first field, so
-- every body begins `{"index":0,`; `registry_write_group` (migration 0011 otherwise)
-- writes the event's index in place of that 0, as text, and refuses a body that does not
-- begin so.
--
-- The column's rewrite holds the table's lock for as long as it takes to copy the
-- history kept (about a second per 100,000 events).
ALTER TABLE events ALTER COLUMN body TYPE json USING body::json;

CREATE OR REPLACE FUNCTION registry_write_group(
    services text[], ids text[], versions text[],
    deleted_services text[], deleted_ids text[],
    is_new bool[], row_services text[], row_ids text[], records text[], statuses text[],
    lease_deadlines_ms bigint[], ttls_ms bigint[], critical_sinces_ms bigint[],
    check_intervals_ms bigint[], nows_ms bigint[], reschedule_checks bool[],
    held_deadlines_ms bigint[], reap_afters_ms bigint[],
    event_ats_ms bigint[], event_services text[], event_instances text[], event_kinds text[],
    event_bodies text[])
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    event_count bigint := coalesce(cardinality(event_bodies), 0);
    last_index bigint;
BEGIN
    PERFORM count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended(s || '/' || i, 0) AS k
        FROM UNNEST(services, ids) AS t(s, i) ORDER BY k) AS keys;
    -- Rows planned as absent need no row lock: if one exists after all, the check below
    -- fails the group whether or not it was locked.
    IF cardinality(array_remove(versions, NULL)) > 0 THEN
        PERFORM 1 FROM instances
            WHERE (instances.service, instances.id) IN (SELECT * FROM UNNEST(services, ids))
            ORDER BY instances.service, instances.id FOR UPDATE;
    END IF;
    IF EXISTS (
        SELECT 1 FROM UNNEST(services, ids, versions) AS k(service, id, version)
        LEFT JOIN instances i ON i.service = k.service AND i.id = k.id
        WHERE i.xmin::text IS DISTINCT FROM k.version) THEN
        RAISE EXCEPTION 'an instance of the group changed after it was read'
            USING ERRCODE = 'RG001';
    END IF;

    IF cardinality(deleted_ids) > 0 THEN
        DELETE FROM instances
            WHERE (service, id) IN (SELECT * FROM UNNEST(deleted_services, deleted_ids));
    END IF;
    -- next_check_ms: none without a check; `now` for a new row or when asked (new or
    -- changed check); otherwise the schedule the check sweep keeps.
    IF false = ANY(is_new) THEN
        UPDATE instances AS i SET
            record = r.record::jsonb, status = r.status,
            lease_deadline_ms = r.lease_deadline_ms, ttl_ms = r.ttl_ms,
            critical_since_ms = r.critical_since_ms, check_interval_ms = r.check_interval_ms,
            held_deadline_ms = r.held_deadline_ms, reap_after_ms = r.reap_after_ms,
            next_check_ms = CASE
                WHEN r.check_interval_ms IS NULL THEN NULL
                WHEN r.reschedule_check THEN r.now_ms
                ELSE COALESCE(i.next_check_ms, r.now_ms) END
        FROM UNNEST(is_new, row_services, row_ids, records, statuses, lease_deadlines_ms, ttls_ms,
                critical_sinces_ms, check_intervals_ms, nows_ms, reschedule_checks,
                held_deadlines_ms, reap_afters_ms)
            AS r(is_new, service, id, record, status, lease_deadline_ms, ttl_ms, critical_since_ms,
                check_interval_ms, now_ms, reschedule_check, held_deadline_ms, reap_after_ms)
        WHERE NOT r.is_new AND i.service = r.service AND i.id = r.id;
    END IF;
    IF true = ANY(is_new) THEN
        INSERT INTO instances (service, id, record, status, lease_deadline_ms, ttl_ms,
                critical_since_ms, check_interval_ms, next_check_ms, held_deadline_ms, reap_after_ms)
            SELECT r.service, r.id, r.record::jsonb, r.status, r.lease_deadline_ms, r.ttl_ms,
                r.critical_since_ms, r.check_interval_ms,
                CASE WHEN r.check_interval_ms IS NULL THEN NULL ELSE r.now_ms END,
                r.held_deadline_ms, r.reap_after_ms
            FROM UNNEST(is_new, row_services, row_ids, records, statuses, lease_deadlines_ms,
                    ttls_ms, critical_sinces_ms, check_intervals_ms, nows_ms, held_deadlines_ms,
                    reap_afters_ms)
                AS r(is_new, service, id, record, status, lease_deadline_ms, ttl_ms, critical_since_ms,
                    check_interval_ms, now_ms, held_deadline_ms, reap_after_ms)
            WHERE r.is_new;
    END IF;

    IF event_count = 0 THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM UNNEST(event_bodies) AS b WHERE left(b, 11) <> '{"index":0,') THEN
        RAISE EXCEPTION 'an event body does not begin with {"index":0,';
    END IF;
    UPDATE registry_meta SET current_index = current_index + event_count WHERE id = 1
        RETURNING current_index INTO last_index;
    IF last_index IS NULL THEN
        RAISE EXCEPTION 'registry_meta has no row';
    END IF;
    INSERT INTO events (idx, at_ms, service, instance, kind, body)
        SELECT last_index - event_count + e.n, e.at_ms, e.service, e.instance, e.kind,
            ('{"index":' || (last_index - event_count + e.n) || substr(e.body, 11))::json
        FROM UNNEST(event_ats_ms, event_services, event_instances, event_kinds, event_bodies)
            WITH ORDINALITY AS e(at_ms, service, instance, kind, body, n);
    RETURN last_index - event_count + 1;
END;
$$;
