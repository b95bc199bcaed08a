-- The id of this Herald installation: one database, one set of JetStream
-- streams. The api stamps it on the streams it provisions, and every process
-- refuses to use streams stamped with another installation's id, so two
-- installations on one NATS server cannot take each other's work
-- (docs/OPERATIONS.md, "Several installations on one NATS server").
CREATE TABLE installation (
    -- Always true: the table holds exactly one row.
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO installation DEFAULT VALUES;
