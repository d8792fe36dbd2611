-- Scheduler membership (Store::heartbeat): one row per scheduler node, alive
-- until `alive_until`. Rows of nodes gone for a day are deleted by the
-- heartbeats themselves.
CREATE TABLE nodes (
    node_id     text PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
