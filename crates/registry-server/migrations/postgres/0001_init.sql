-- The registry's whole state. `instances.record` (the serde JSON of InstanceRecord) is the
-- truth; the other instance columns are derived from it on every write so that the
-- sweeps (leases, reaper, checks) find due rows through an index instead of parsing JSON.
CREATE TABLE instances (
    service           TEXT   NOT NULL,
    id                TEXT   NOT NULL,
    record            JSONB  NOT NULL,
    status            TEXT   NOT NULL,
    lease_deadline_ms BIGINT,
    ttl_ms            BIGINT NOT NULL,
    critical_since_ms BIGINT,
    check_interval_ms BIGINT,
    next_check_ms     BIGINT,
    PRIMARY KEY (service, id)
);

-- Partial: most instances have a live lease but few are critical or checked, and the
-- sweeps only ever look for rows where the column is set.
CREATE INDEX instances_lease_deadline ON instances (lease_deadline_ms) WHERE lease_deadline_ms IS NOT NULL;
CREATE INDEX instances_critical_since ON instances (critical_since_ms) WHERE critical_since_ms IS NOT NULL;
CREATE INDEX instances_next_check ON instances (next_check_ms) WHERE next_check_ms IS NOT NULL;

-- One row per change, `idx` being the global index; `body` is the serde JSON of the API's
-- Event. The other columns exist to filter without parsing the body.
CREATE TABLE events (
    idx      BIGINT PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    service  TEXT   NOT NULL,
    instance TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    body     JSONB  NOT NULL
);

CREATE INDEX events_service_idx ON events (service, idx);
CREATE INDEX events_at ON events (at_ms);

-- A single row. Its lock, taken by `UPDATE ... current_index + 1`, is what makes commits
-- happen in index order.
CREATE TABLE registry_meta (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    current_index       BIGINT  NOT NULL,
    last_alive_ms       BIGINT,
    recovered_ms        BIGINT,
    history_start_index BIGINT  NOT NULL,
    history_start_ms    BIGINT  NOT NULL
);

-- History begins when the database is created: nothing before can be answered.
INSERT INTO registry_meta (id, current_index, history_start_index, history_start_ms)
VALUES (1, 0, 0, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT);
