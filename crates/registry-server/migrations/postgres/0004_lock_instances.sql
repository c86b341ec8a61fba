-- A group of changes (store/group_commit.rs) locks and reads its instances in one round
-- trip instead of two: an advisory lock per key, taken in one order (the lock keys
-- sorted) so that two groups cannot deadlock, then the rows that exist, FOR UPDATE, in
-- key order. The advisory locks are what serialize two writers creating the same new
-- instance (there is no row to lock yet). The read must see a row the other writer
-- committed while this one waited for its lock: a VOLATILE function takes a fresh
-- snapshot for each statement it runs, where one statement doing both would read from a
-- snapshot taken before the wait.
CREATE FUNCTION registry_lock_instances(services text[], ids text[])
    RETURNS SETOF instances LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended(s || '/' || i, 0) AS k
        FROM UNNEST(services, ids) AS t(s, i) ORDER BY k) AS keys;
    RETURN QUERY
        SELECT instances.* FROM instances
        WHERE (instances.service, instances.id) IN (SELECT * FROM UNNEST(services, ids))
        ORDER BY instances.service, instances.id FOR UPDATE;
END;
$$;
