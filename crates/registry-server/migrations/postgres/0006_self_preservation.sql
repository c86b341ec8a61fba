-- Self-preservation (docs/operations.md, Self-preservation). `held_deadline_ms` is derived
-- from the record like the other columns: the deadline of a lease whose lapse is held
-- (NULL otherwise), so held leases are found through an index when the mode ends.
ALTER TABLE instances ADD COLUMN held_deadline_ms BIGINT;
CREATE INDEX instances_held_deadline ON instances (held_deadline_ms)
    WHERE held_deadline_ms IS NOT NULL;

-- The mode is the database's, so every replica on it agrees: `since` is set while it is
-- on; `armed` is false after it ended at its maximum, until the silent share has once
-- fallen below the threshold. Replicas switch it by a conditional UPDATE.
ALTER TABLE registry_meta
    ADD COLUMN self_preservation_since_ms BIGINT,
    ADD COLUMN self_preservation_armed BOOLEAN NOT NULL DEFAULT TRUE;

-- When the mode went on and off, for `GET /v1/status?at=`.
CREATE TABLE self_preservation_changes (
    at_ms  BIGINT  NOT NULL,
    active BOOLEAN NOT NULL
);
CREATE INDEX self_preservation_changes_at ON self_preservation_changes (at_ms);
