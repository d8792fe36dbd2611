-- Leases move out of `executions` into a table of their own.
--
-- A finish changed `status` and `lease_until`, both covered by the partial
-- index `executions_lease`, so it could never be a HOT update: every finish
-- wrote a new row version on another page plus an entry in each of the
-- table's other indexes. With no index on either column, and room left in
-- each new page (fillfactor), a finish can be a HOT update: its new version
-- goes on the same page and no index changes.
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

-- Dropped first: it locks `executions` until this migration commits, so
-- the copy below sees every running execution, including those of claims
-- that were in flight, and none can start unseen before the commit.
DROP INDEX executions_lease;

INSERT INTO leases (execution_id, task_id, lease_until)
    SELECT id, task_id, lease_until FROM executions
    WHERE status = 'running' AND lease_until IS NOT NULL;
-- New pages keep a fifth free for the finished version of their rows.
ALTER TABLE executions SET (fillfactor = 80);
