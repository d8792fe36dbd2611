//! The statements, written once with `{s}` for the (quoted) schema.
//!
//! Every statement that decides something about a task first locks the task
//! row (`FOR UPDATE`, in id order when there are several) and decides from
//! that locked, latest version; executions of a task are touched only after
//! its row is locked. That single rule gives the atomicity the store
//! contract asks for and keeps concurrent statements free of deadlocks.

use crate::rows::{EXECUTION_COLUMNS, TASK_COLUMNS};

/// The statements of one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) insert_task: String,
    pub(crate) insert_tasks: String,
    pub(crate) notify: String,
    pub(crate) get_task: String,
    pub(crate) list_first: String,
    pub(crate) list_after: String,
    pub(crate) lock_task: String,
    pub(crate) update_task: String,
    pub(crate) delete_task: String,
    pub(crate) delete_executions: String,
    pub(crate) due_first: String,
    pub(crate) due_after: String,
    pub(crate) due_retries: String,
    pub(crate) claim: String,
    pub(crate) renew: String,
    pub(crate) finish: String,
    pub(crate) execution_state: String,
    pub(crate) expired_tasks: String,
    pub(crate) lock_tasks_skip_locked: String,
    pub(crate) abandon_expired: String,
    pub(crate) set_retry_at: String,
    pub(crate) recover_task: String,
    pub(crate) insert_started: String,
    pub(crate) history: String,
    pub(crate) history_by_status: String,
    pub(crate) history_total: String,
    pub(crate) history_total_by_status: String,
    pub(crate) task_exists: String,
}

/// The task columns as written by an insert, `$1`…`$25` in [`TASK_COLUMNS`] order.
const TASK_VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
    $16, $17, $18, $19, $20, $21, $22, $23, $24, $25";

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let q = |text: &str| {
            text.replace("{s}", &s)
                .replace("{task_columns}", TASK_COLUMNS)
                .replace("{execution_columns}", EXECUTION_COLUMNS)
                .replace("{task_values}", TASK_VALUES)
        };
        Self {
            insert_task: q("WITH i AS (
                    INSERT INTO {s}.tasks ({task_columns}) VALUES ({task_values})
                    ON CONFLICT (id) DO NOTHING RETURNING id)
                SELECT pg_notify($26, $27) FROM i"),
            insert_tasks: q("INSERT INTO {s}.tasks ({task_columns})
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                    $6::text[], $7::text[], $8::timestamptz[], $9::text[], $10::bool[], $11::text[],
                    $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::int4[],
                    $18::int8[], $19::int8[], $20::int8[], $21::timestamptz[], $22::timestamptz[],
                    $23::timestamptz[], $24::timestamptz[], $25::int8[])"),
            notify: q("SELECT pg_notify($1, $2)"),
            get_task: q("SELECT {task_columns} FROM {s}.tasks WHERE id = $1 AND tenant = $2"),
            list_first: q("SELECT {task_columns} FROM {s}.tasks WHERE tenant = $1
                ORDER BY id LIMIT $2"),
            list_after: q("SELECT {task_columns} FROM {s}.tasks WHERE tenant = $1 AND id > $2
                ORDER BY id LIMIT $3"),
            lock_task: q("SELECT {task_columns} FROM {s}.tasks WHERE id = $1 AND tenant = $2
                FOR UPDATE"),
            update_task: q("UPDATE {s}.tasks SET name = $2, description = $3, agent = $4,
                    prompt = $5, schedule = $6, run_at = $7, timezone = $8, enabled = $9,
                    status = $10, channel_id = $11, notification_method = $12,
                    notification_destination = $13, misfire = $14, overlap = $15,
                    max_retries = $16, retry_backoff_ms = $17, timeout_ms = $18, jitter_ms = $19,
                    last_run = $20, next_run = $21, updated_at = $22, version = $23
                WHERE id = $1"),
            delete_task: q("DELETE FROM {s}.tasks WHERE id = $1 AND tenant = $2"),
            delete_executions: q("DELETE FROM {s}.executions WHERE task_id = $1"),
            due_first: q("SELECT {task_columns} FROM {s}.tasks
                WHERE enabled AND next_run IS NOT NULL AND next_run <= $1
                ORDER BY next_run, id LIMIT $2"),
            due_after: q("SELECT {task_columns} FROM {s}.tasks
                WHERE enabled AND next_run IS NOT NULL AND next_run <= $1
                    AND (next_run, id) > ($2, $3)
                ORDER BY next_run, id LIMIT $4"),
            due_retries: q("SELECT {execution_columns} FROM {s}.executions
                WHERE retry_at IS NOT NULL AND retry_at <= $1
                ORDER BY retry_at, id LIMIT $2"),
            claim: q(CLAIM),
            renew: q("UPDATE {s}.executions SET lease_until = $3
                WHERE id = $1 AND fence = $2 AND status = 'running'"),
            finish: q(FINISH),
            execution_state: q("SELECT status, fence FROM {s}.executions WHERE id = $1"),
            expired_tasks: q("SELECT DISTINCT task_id FROM (
                    SELECT task_id FROM {s}.executions
                    WHERE status = 'running' AND lease_until < $1
                    ORDER BY lease_until, id LIMIT $2) x"),
            lock_tasks_skip_locked: q("SELECT id, tenant, schedule, max_retries, retry_backoff_ms,
                    running, queued_for, queued_attempt, queued_trigger
                FROM {s}.tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED"),
            abandon_expired: q("UPDATE {s}.executions e SET status = 'abandoned',
                    fence = e.fence + 1, lease_until = NULL, finished_at = $2,
                    duration_ms = GREATEST(0, floor(extract(epoch FROM $2 - e.started_at) * 1000))::int8,
                    error = 'lease expired: its scheduler stopped renewing it'
                WHERE e.task_id = ANY($1) AND e.status = 'running' AND e.lease_until < $2
                RETURNING {execution_columns}"),
            set_retry_at: q("UPDATE {s}.executions e SET retry_at = v.at
                FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at) WHERE e.id = v.id"),
            recover_task: q("UPDATE {s}.tasks SET running = $2, status = COALESCE($3, status),
                    queued_for = CASE WHEN $4 THEN NULL ELSE queued_for END,
                    queued_attempt = CASE WHEN $4 THEN NULL ELSE queued_attempt END,
                    queued_trigger = CASE WHEN $4 THEN NULL ELSE queued_trigger END,
                    last_run = CASE WHEN $4 THEN $5 ELSE last_run END,
                    n_executions = n_executions + $6
                WHERE id = $1"),
            insert_started: q("INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for,
                    started_at, attempt, status, node, trigger, lease_until, fence)
                SELECT id, task_id, tenant, scheduled_for, $6, attempt, 'running', $7, trigger,
                    $8, 1
                FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int4[],
                    $9::text[]) AS v(id, task_id, tenant, scheduled_for, attempt, trigger)
                ON CONFLICT DO NOTHING RETURNING {execution_columns}"),
            history: q("SELECT {execution_columns} FROM {s}.executions WHERE task_id = $1
                ORDER BY scheduled_for DESC, attempt DESC LIMIT $2 OFFSET $3"),
            history_by_status: q("SELECT {execution_columns} FROM {s}.executions
                WHERE task_id = $1 AND status = $4
                ORDER BY scheduled_for DESC, attempt DESC LIMIT $2 OFFSET $3"),
            history_total: q("SELECT count(*) FROM {s}.executions WHERE task_id = $1"),
            history_total_by_status: q("SELECT count(*) FROM {s}.executions
                WHERE task_id = $1 AND status = $2"),
            task_exists: q("SELECT EXISTS (SELECT 1 FROM {s}.tasks WHERE id = $1 AND tenant = $2)"),
        }
    }
}

/// The claim batch: one statement, whatever the kinds and policies.
///
/// Inputs are parallel arrays, one element per claim (task ids distinct):
/// `$1` task, `$2` kind (0 scheduled, 1 retry, 2 manual), `$3` expected
/// `next_run`, `$4` expected version, `$5` new `next_run`, `$6` the failed
/// attempt (retry), `$7`…`$14` the execution to start (id NULL: none),
/// `$15` the claimer's node, `$16` its time, `$17` the message for replaced
/// runs; the missed occurrences as `$18` claim ordinal, `$19` instant,
/// `$20` id; `$21` retention, `$22` the count that triggers a trim.
///
/// Steps: lock the tasks (`l`), compare-and-set the awaited retries (`r`),
/// decide who won (`d`) and what the overlap policy makes of it (`o`), end
/// replaced runs (`x`), insert missed (`m`) and started / skipped (`ins`)
/// executions, trim old history (`tr`), advance the tasks (`u`); the final
/// select reports one row per claim with the locked task for losers.
const CLAIM: &str = "
WITH c AS (
    SELECT * FROM unnest($1::uuid[], $2::int2[], $3::timestamptz[], $4::int8[],
        $5::timestamptz[], $6::uuid[], $7::uuid[], $8::timestamptz[], $9::timestamptz[],
        $10::int4[], $11::text[], $12::text[], $13::timestamptz[], $14::int8[], $15::text[],
        $16::timestamptz[], $17::text[])
    WITH ORDINALITY AS c(task_id, kind, exp_next, exp_version, new_next, failed, exec_id,
        sched_for, started_at, attempt, exec_node, trig, lease_until, fence, node, now,
        replace_msg, i)
),
l AS (
    SELECT t.* FROM {s}.tasks t WHERE t.id IN (SELECT task_id FROM c) ORDER BY t.id FOR UPDATE
),
r AS (
    UPDATE {s}.executions e SET retry_at = NULL
    FROM c JOIN l ON l.id = c.task_id
    WHERE c.kind = 1 AND e.id = c.failed AND e.task_id = c.task_id AND e.retry_at IS NOT NULL
    RETURNING c.i
),
d AS (
    SELECT c.*, l.id AS found, l.tenant, l.overlap, l.running, l.queued_for, l.n_executions,
        (l.id IS NOT NULL AND CASE c.kind
            WHEN 0 THEN l.enabled AND l.next_run = c.exp_next AND l.version = c.exp_version
            WHEN 1 THEN EXISTS (SELECT 1 FROM r WHERE r.i = c.i)
            ELSE true END) AS won
    FROM c LEFT JOIN l ON l.id = c.task_id
),
o AS (
    SELECT d.*, CASE
        WHEN d.exec_id IS NULL THEN 'advanced'
        WHEN cardinality(d.running) = 0 OR d.overlap = 'allow' THEN 'started'
        WHEN d.overlap = 'queue_one' AND d.queued_for IS NULL THEN 'queued'
        WHEN d.overlap = 'replace' THEN 'replaced'
        ELSE 'skipped' END AS outcome
    FROM d WHERE d.won
),
x AS (
    UPDATE {s}.executions e SET status = 'abandoned', fence = e.fence + 1, lease_until = NULL,
        finished_at = o.started_at,
        duration_ms = GREATEST(0, floor(extract(epoch FROM o.started_at - e.started_at) * 1000))::int8,
        error = o.replace_msg
    FROM o WHERE o.outcome = 'replaced' AND e.id = ANY(o.running) AND e.status = 'running'
    RETURNING o.i, e.id
),
m AS (
    INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for, started_at, finished_at,
        duration_ms, attempt, status, node, trigger, fence)
    SELECT mm.id, o.task_id, o.tenant, mm.at, o.now, o.now, 0, 1, 'missed', o.node,
        'schedule', 1
    FROM unnest($18::int4[], $19::timestamptz[], $20::uuid[]) AS mm(ci, at, id)
    JOIN o ON o.i = mm.ci
    ON CONFLICT DO NOTHING
    RETURNING task_id
),
ins AS (
    INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for, started_at, finished_at,
        duration_ms, attempt, status, error, node, trigger, lease_until, fence)
    SELECT o.exec_id, o.task_id, o.tenant, o.sched_for, o.started_at,
        CASE WHEN o.outcome = 'skipped' THEN o.started_at END,
        CASE WHEN o.outcome = 'skipped' THEN 0 END,
        o.attempt,
        CASE WHEN o.outcome = 'skipped' THEN 'skipped' ELSE 'running' END,
        CASE WHEN o.outcome = 'skipped' THEN 'the previous run was still running' END,
        o.exec_node, o.trig,
        CASE WHEN o.outcome = 'skipped' THEN NULL ELSE o.lease_until END,
        o.fence
    FROM o WHERE o.outcome IN ('started', 'replaced', 'skipped')
    ON CONFLICT DO NOTHING
    RETURNING task_id, id, status
),
added AS (
    SELECT task_id, count(*) AS n,
        array_agg(id) FILTER (WHERE status = 'running') AS started
    FROM (SELECT task_id, id, status FROM ins
          UNION ALL SELECT task_id, NULL, 'missed' FROM m) z
    GROUP BY task_id
),
tr AS (
    DELETE FROM {s}.executions e USING (
        SELECT old.id, o.task_id
        FROM o LEFT JOIN added a ON a.task_id = o.task_id
        CROSS JOIN LATERAL (
            SELECT e2.id FROM {s}.executions e2
            -- Finished and not awaiting a retry as of the statement's
            -- snapshot: rows this statement itself changes (a retried
            -- attempt, replaced runs) cannot also be deleted by it, so they
            -- wait for a later trim.
            WHERE e2.task_id = o.task_id AND e2.status <> 'running' AND e2.retry_at IS NULL
            ORDER BY e2.scheduled_for, e2.attempt
            LIMIT GREATEST(0, o.n_executions + COALESCE(a.n, 0) - $21)) old
        WHERE o.n_executions + COALESCE(a.n, 0) > $22) z
    WHERE e.id = z.id
    RETURNING z.task_id
),
u AS (
    UPDATE {s}.tasks t SET
        next_run = CASE WHEN o.kind = 0 THEN o.new_next ELSE t.next_run END,
        last_run = CASE WHEN a.started IS NOT NULL THEN o.started_at ELSE t.last_run END,
        running = CASE WHEN o.outcome = 'replaced' THEN '{}'::uuid[] ELSE t.running END
            || COALESCE(a.started, '{}'::uuid[]),
        queued_for = CASE WHEN o.outcome = 'queued' THEN o.sched_for ELSE t.queued_for END,
        queued_attempt = CASE WHEN o.outcome = 'queued' THEN o.attempt ELSE t.queued_attempt END,
        queued_trigger = CASE WHEN o.outcome = 'queued' THEN o.trig ELSE t.queued_trigger END,
        n_executions = t.n_executions + COALESCE(a.n, 0)
            - (SELECT count(*) FROM tr WHERE tr.task_id = t.id)
    FROM o LEFT JOIN added a ON a.task_id = o.task_id
    WHERE t.id = o.task_id
    RETURNING t.id
)
SELECT d.i, d.found IS NOT NULL AS found, d.won, o.outcome,
    (SELECT ins.status FROM ins WHERE ins.id = d.exec_id) AS inserted,
    ARRAY(SELECT x.id FROM x WHERE x.i = d.i) AS replaced,
    l.*
FROM d LEFT JOIN o ON o.i = d.i LEFT JOIN l ON l.id = d.task_id
ORDER BY d.i";

/// Records a run's result (fenced), ends a one-time task, starts the queued
/// occurrence if nothing else of the task runs, trims history.
///
/// `$1` execution, `$2` fence, `$3` status, `$4` finished at, `$5` error,
/// `$6` output, `$7` retry at, `$8` node, `$9` lease for a queued start,
/// `$10` its id, `$11` retention, `$12` the count that triggers a trim.
const FINISH: &str = "
WITH l AS (
    SELECT t.* FROM {s}.tasks t
    WHERE t.id = (SELECT task_id FROM {s}.executions WHERE id = $1)
    FOR UPDATE
),
f AS (
    UPDATE {s}.executions e SET status = $3, fence = e.fence + 1, finished_at = $4,
        duration_ms = GREATEST(0, floor(extract(epoch FROM $4 - e.started_at) * 1000))::int8,
        error = $5, output = $6, lease_until = NULL, retry_at = $7
    FROM l WHERE e.id = $1 AND e.task_id = l.id AND e.status = 'running' AND e.fence = $2
    RETURNING e.task_id, e.trigger
),
take AS (
    SELECT l.* FROM l JOIN f ON true
    WHERE l.queued_for IS NOT NULL AND cardinality(array_remove(l.running, $1)) = 0
),
q AS (
    INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for, started_at, attempt,
        status, node, trigger, lease_until, fence)
    SELECT $10, take.id, take.tenant, take.queued_for, $4, take.queued_attempt, 'running', $8,
        take.queued_trigger, $9, 1
    FROM take
    ON CONFLICT DO NOTHING
    RETURNING {execution_columns}
),
tr AS (
    DELETE FROM {s}.executions e USING (
        SELECT old.id FROM l JOIN f ON true
        CROSS JOIN LATERAL (
            SELECT e2.id FROM {s}.executions e2
            -- As in the claim: the execution this statement finishes is
            -- trimmed by a later one.
            WHERE e2.task_id = l.id AND e2.status <> 'running' AND e2.retry_at IS NULL
            ORDER BY e2.scheduled_for, e2.attempt
            LIMIT GREATEST(0, l.n_executions + (SELECT count(*) FROM q) - $11)) old
        WHERE l.n_executions + (SELECT count(*) FROM q) > $12) z
    WHERE e.id = z.id
    RETURNING e.id
),
u AS (
    UPDATE {s}.tasks t SET
        running = array_remove(t.running, $1) || ARRAY(SELECT q.id FROM q),
        status = CASE WHEN t.schedule IS NULL AND f.trigger <> 'manual' AND $7 IS NULL
            THEN CASE WHEN $3 = 'succeeded' THEN 'completed' ELSE 'failed' END
            ELSE t.status END,
        queued_for = CASE WHEN EXISTS (SELECT 1 FROM take) THEN NULL ELSE t.queued_for END,
        queued_attempt = CASE WHEN EXISTS (SELECT 1 FROM take) THEN NULL ELSE t.queued_attempt END,
        queued_trigger = CASE WHEN EXISTS (SELECT 1 FROM take) THEN NULL ELSE t.queued_trigger END,
        last_run = CASE WHEN EXISTS (SELECT 1 FROM take) THEN $4 ELSE t.last_run END,
        n_executions = t.n_executions + (SELECT count(*) FROM q) - (SELECT count(*) FROM tr)
    FROM f WHERE t.id = f.task_id
    RETURNING t.id
)
SELECT (SELECT count(*) FROM f) AS finished, (SELECT count(*) FROM u) AS updated, q.*
FROM (SELECT 1) one LEFT JOIN q ON true";
