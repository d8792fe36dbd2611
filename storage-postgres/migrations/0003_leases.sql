-- Leases move out of `executions` into a table of their own.
--
-- A finish changed `status` and `lease_until`, both covered by the partial
-- index `executions_lease`, so it could never be a HOT update: every finish
-- wrote a new row version on another page plus entries in both of the
-- table's other indexes. With no index on either column, and room left in
-- each page (fillfactor), a finish rewrites the row in place.
--
-- `leases` holds one row per running execution (inserted with it, deleted
-- when it ends), so recovery's scan by expiry reads running executions
-- only. `executions.lease_until` stays the authoritative copy; a renewal
-- writes both in one statement.
CREATE TABLE leases (
    execution_id uuid PRIMARY KEY,
    task_id      uuid NOT NULL,
    lease_until  timestamptz NOT NULL
);
CREATE INDEX leases_expiry ON leases (lease_until);

INSERT INTO leases (execution_id, task_id, lease_until)
    SELECT id, task_id, lease_until FROM executions
    WHERE status = 'running' AND lease_until IS NOT NULL;

DROP INDEX executions_lease;
-- New pages keep a fifth free for the finished version of their rows.
ALTER TABLE executions SET (fillfactor = 80);
