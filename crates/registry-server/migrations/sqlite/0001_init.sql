-- The registry's whole state; same shape as the Postgres schema (see there), with JSON
-- stored as TEXT.
CREATE TABLE instances (
    service           TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    record            TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    lease_deadline_ms INTEGER,
    ttl_ms            INTEGER NOT NULL,
    critical_since_ms INTEGER,
    check_interval_ms INTEGER,
    next_check_ms     INTEGER,
    PRIMARY KEY (service, id)
);

CREATE INDEX instances_lease_deadline ON instances (lease_deadline_ms) WHERE lease_deadline_ms IS NOT NULL;
CREATE INDEX instances_critical_since ON instances (critical_since_ms) WHERE critical_since_ms IS NOT NULL;
CREATE INDEX instances_next_check ON instances (next_check_ms) WHERE next_check_ms IS NOT NULL;

CREATE TABLE events (
    idx      INTEGER PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    service  TEXT    NOT NULL,
    instance TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    body     TEXT    NOT NULL
);

CREATE INDEX events_service_idx ON events (service, idx);
CREATE INDEX events_at ON events (at_ms);

CREATE TABLE registry_meta (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    current_index       INTEGER NOT NULL,
    last_alive_ms       INTEGER,
    recovered_ms        INTEGER,
    history_start_index INTEGER NOT NULL,
    history_start_ms    INTEGER NOT NULL
);

-- History begins when the database is created: nothing before can be answered.
INSERT INTO registry_meta (id, current_index, history_start_index, history_start_ms)
VALUES (1, 0, 0, CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER));
