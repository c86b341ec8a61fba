-- Every committed event tells the other replicas to catch up (docs/architecture.md): each
-- replica LISTENs on `registry_events` and reads the events after its view's index when
-- told. The payload is the new index, so a replica that already has it (its own write)
-- skips the read.
--
-- A trigger rather than a `pg_notify` call in the store's code: every path that appends
-- an event (today `apply`, tomorrow an import or a manual repair) notifies, and none can
-- forget it. Postgres delivers notifications only when the transaction commits, and in
-- commit order; a rolled-back change notifies nobody. Event-appending transactions already
-- commit one at a time (the `registry_meta` row lock), so the queue lock NOTIFY takes at
-- commit adds no contention.
CREATE FUNCTION registry_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('registry_events', NEW.idx::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION registry_notify_event();
