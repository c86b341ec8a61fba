-- A group of changes (store/group_commit.rs) written by one statement in its own implicit
-- transaction, so that a group costs one round trip and its commit's flush instead of a
-- round trip per statement.
--
-- The group was planned from rows read without locks. `versions` holds, for every key of
-- the group in key order, the version of its row the plan started from (the row's xmin;
-- NULL when there was no row). The function takes the same locks as
-- `registry_lock_instances`, in the same order (advisory locks on the keys, then the rows
-- FOR UPDATE), then checks that every row is still the version planned from: if another
-- writer (a replica, a lease renewal) changed one meanwhile, it writes nothing and raises
-- SQLSTATE 'RG001', and the store plans the group again under locks. Otherwise it deletes
-- the rows of `deleted_*`, updates or inserts (`is_new`) the others, takes the group's indexes at the end (the
-- `registry_meta` row stays locked until commit, so groups commit in index order), appends
-- the events numbered from there (each body gets its index) and answers the first index
-- (NULL without events). Each statement of a VOLATILE function sees the rows committed
-- while it waited for a lock.
CREATE FUNCTION registry_write_group(
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
    PERFORM 1 FROM instances
        WHERE (instances.service, instances.id) IN (SELECT * FROM UNNEST(services, ids))
        ORDER BY instances.service, instances.id FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM UNNEST(services, ids, versions) AS k(service, id, version)
        LEFT JOIN instances i ON i.service = k.service AND i.id = k.id
        WHERE i.xmin::text IS DISTINCT FROM k.version) THEN
        RAISE EXCEPTION 'an instance of the group changed after it was read'
            USING ERRCODE = 'RG001';
    END IF;

    DELETE FROM instances
        WHERE (service, id) IN (SELECT * FROM UNNEST(deleted_services, deleted_ids));
    -- next_check_ms: none without a check; `now` for a new row or when asked (new or
    -- changed check); otherwise the schedule the check sweep keeps.
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

    IF event_count = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE registry_meta SET current_index = current_index + event_count WHERE id = 1
        RETURNING current_index INTO last_index;
    IF last_index IS NULL THEN
        RAISE EXCEPTION 'registry_meta has no row';
    END IF;
    INSERT INTO events (idx, at_ms, service, instance, kind, body)
        SELECT last_index - event_count + e.n, e.at_ms, e.service, e.instance, e.kind,
            jsonb_set(e.body::jsonb, '{index}', to_jsonb(last_index - event_count + e.n))
        FROM UNNEST(event_ats_ms, event_services, event_instances, event_kinds, event_bodies)
            WITH ORDINALITY AS e(at_ms, service, instance, kind, body, n);
    RETURN last_index - event_count + 1;
END;
$$;
