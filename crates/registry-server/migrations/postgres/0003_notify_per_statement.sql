-- One notification per statement instead of one per event: changes are now written in
-- groups (store/group_commit.rs), one INSERT appending many events, and a replica told
-- the highest new index reads all of them in one catch-up. Postgres still delivers the
-- notification only at commit, and in commit order.
DROP TRIGGER events_notify ON events;

CREATE OR REPLACE FUNCTION registry_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('registry_events', (SELECT MAX(idx)::text FROM appended));
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION registry_notify_event();
