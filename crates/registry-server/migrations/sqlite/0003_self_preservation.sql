-- Self-preservation; same shape as the Postgres schema (see there).
ALTER TABLE instances ADD COLUMN held_deadline_ms INTEGER;
CREATE INDEX instances_held_deadline ON instances (held_deadline_ms)
    WHERE held_deadline_ms IS NOT NULL;

ALTER TABLE registry_meta ADD COLUMN self_preservation_since_ms INTEGER;
ALTER TABLE registry_meta ADD COLUMN self_preservation_armed INTEGER NOT NULL DEFAULT 1;

CREATE TABLE self_preservation_changes (
    at_ms  INTEGER NOT NULL,
    active INTEGER NOT NULL
);
CREATE INDEX self_preservation_changes_at ON self_preservation_changes (at_ms);
