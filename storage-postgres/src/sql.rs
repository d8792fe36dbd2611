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
    pub(crate) copy_tasks: String,
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
    pub(crate) claim_careful: String,
    pub(crate) claim_skip_locked: String,
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
    pub(crate) running_of: String,
    pub(crate) set_running: String,
    pub(crate) stuck_queues: String,
    pub(crate) live_running: String,
    pub(crate) heartbeat: String,
    pub(crate) leave: String,
    /// Locks tasks `$1` in id order (the last try of a deferred claim).
    pub(crate) lock_tasks: String,
}

/// A task's trim phase before the modulo (crate docs, "Retention"): the
/// last two bytes of its id `ID`, as a number.
const TRIM_PHASE: &str = "(get_byte(uuid_send(ID), 14) * 256 + get_byte(uuid_send(ID), 15))";

/// The task columns as written by an insert, `$1`…`$25` in [`TASK_COLUMNS`] order.
const TASK_VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
    $16, $17, $18, $19, $20, $21, $22, $23, $24, $25";

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let e_columns = EXECUTION_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let q = |text: &str| {
            text.replace("{s}", &s)
                .replace("{e_execution_columns}", &e_columns)
                .replace("{task_columns}", TASK_COLUMNS)
                .replace("{execution_columns}", EXECUTION_COLUMNS)
                .replace("{task_values}", TASK_VALUES)
                .replace("{phase o.task_id}", &TRIM_PHASE.replace("ID", "o.task_id"))
                .replace("{phase l.id}", &TRIM_PHASE.replace("ID", "l.id"))
        };
        Self {
            insert_task: q("WITH i AS (
                    INSERT INTO {s}.tasks ({task_columns}) VALUES ({task_values})
                    ON CONFLICT (id) DO NOTHING RETURNING id)
                SELECT pg_notify($26, $27) FROM i"),
            copy_tasks: q("COPY {s}.tasks ({task_columns}) FROM STDIN"),
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
            delete_executions: q("WITH d AS (
                    DELETE FROM {s}.executions WHERE task_id = $1 RETURNING id, status)
                DELETE FROM {s}.leases
                WHERE execution_id IN (SELECT id FROM d WHERE status = 'running')"),
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
            // Inserting without ON CONFLICT is cheaper (no speculative
            // insertion); a batch that hits a taken key fails as a whole and
            // is run again as the careful variant, which skips such rows.
            claim: q(&CLAIM.replace("ON CONFLICT DO NOTHING", "")),
            claim_careful: q(CLAIM),
            // For batches of scheduled claims only: a task another statement
            // holds is skipped (reported lost, as last committed) instead of
            // waited for, so nodes racing for the same due tasks do not
            // queue behind each other's commits.
            claim_skip_locked: q(&CLAIM
                .replace("ON CONFLICT DO NOTHING", "")
                .replace("FOR UPDATE OF t", "FOR UPDATE OF t SKIP LOCKED")),
            // Both copies of the lease in one statement; the upsert also
            // mends a missing `leases` row.
            renew: q("WITH e AS (
                    UPDATE {s}.executions SET lease_until = $3
                    WHERE id = $1 AND fence = $2 AND status = 'running'
                    RETURNING id, task_id)
                INSERT INTO {s}.leases (execution_id, task_id, lease_until)
                    SELECT id, task_id, $3 FROM e
                ON CONFLICT (execution_id) DO UPDATE SET lease_until = EXCLUDED.lease_until"),
            finish: q(FINISH),
            execution_state: q("SELECT status, fence FROM {s}.executions WHERE id = $1"),
            // A `leases` row whose execution is no longer running is deleted,
            // not reported. Such rows are rare: a renewal that re-creates a
            // missing row can race a finish whose snapshot predates it.
            expired_tasks: q("WITH x AS (
                    SELECT l.execution_id, l.task_id, e.status
                    FROM {s}.leases l LEFT JOIN {s}.executions e ON e.id = l.execution_id
                    WHERE l.lease_until < $1
                    ORDER BY l.lease_until, l.execution_id LIMIT $2),
                gone AS (
                    DELETE FROM {s}.leases WHERE execution_id IN (
                        SELECT execution_id FROM x WHERE status IS DISTINCT FROM 'running'))
                SELECT DISTINCT task_id FROM x WHERE status = 'running'"),
            lock_tasks_skip_locked: q("SELECT id, tenant, schedule, max_retries, retry_backoff_ms,
                    running, queued_for, queued_attempt, queued_trigger
                FROM {s}.tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED"),
            abandon_expired: q("WITH a AS (UPDATE {s}.executions e SET status = 'abandoned',
                    fence = e.fence + 1, lease_until = NULL, finished_at = $2,
                    duration_ms = GREATEST(0, floor(extract(epoch FROM $2 - e.started_at) * 1000))::int8,
                    error = 'lease expired: its scheduler stopped renewing it'
                -- Found through `leases` (by expiry), not through the
                -- task's whole history.
                FROM {s}.leases l
                WHERE l.lease_until < $2 AND l.task_id = ANY($1) AND e.id = l.execution_id
                    AND e.status = 'running' AND e.lease_until < $2
                RETURNING {e_execution_columns}),
                gone AS (DELETE FROM {s}.leases WHERE execution_id IN (SELECT id FROM a))
                SELECT * FROM a"),
            set_retry_at: q("UPDATE {s}.executions e SET retry_at = v.at
                FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at) WHERE e.id = v.id"),
            recover_task: q("UPDATE {s}.tasks SET running = $2, status = COALESCE($3, status),
                    queued_for = CASE WHEN $4 THEN NULL ELSE queued_for END,
                    queued_attempt = CASE WHEN $4 THEN NULL ELSE queued_attempt END,
                    queued_trigger = CASE WHEN $4 THEN NULL ELSE queued_trigger END,
                    last_run = CASE WHEN $4 THEN $5 ELSE last_run END,
                    n_executions = n_executions + $6
                WHERE id = $1"),
            insert_started: q("WITH i AS (INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for,
                    started_at, attempt, status, node, trigger, lease_until, fence)
                SELECT id, task_id, tenant, scheduled_for, $6, attempt, 'running', $7, trigger,
                    $8, 1
                FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int4[],
                    $9::text[]) AS v(id, task_id, tenant, scheduled_for, attempt, trigger)
                ON CONFLICT DO NOTHING RETURNING {execution_columns}),
                l AS (INSERT INTO {s}.leases (execution_id, task_id, lease_until)
                    SELECT id, task_id, lease_until FROM i)
                SELECT * FROM i"),
            history: q("SELECT {execution_columns} FROM {s}.executions WHERE task_id = $1
                ORDER BY scheduled_for DESC, attempt DESC LIMIT $2 OFFSET $3"),
            history_by_status: q("SELECT {execution_columns} FROM {s}.executions
                WHERE task_id = $1 AND status = $4
                ORDER BY scheduled_for DESC, attempt DESC LIMIT $2 OFFSET $3"),
            history_total: q("SELECT count(*) FROM {s}.executions WHERE task_id = $1"),
            history_total_by_status: q("SELECT count(*) FROM {s}.executions
                WHERE task_id = $1 AND status = $2"),
            task_exists: q("SELECT EXISTS (SELECT 1 FROM {s}.tasks WHERE id = $1 AND tenant = $2)"),
            running_of: q("SELECT id FROM {s}.executions WHERE task_id = $1 AND status = 'running'
                ORDER BY started_at, id FOR UPDATE"),
            set_running: q("UPDATE {s}.tasks SET running = $2 WHERE id = $1"),
            // Candidates only (re-checked under the lock by `live_running`):
            // a listed id this snapshot does not show running (finished, not
            // visible yet, or with no execution at all) does not rule a task out.
            stuck_queues: q("SELECT t.id FROM {s}.tasks t
                WHERE t.queued_for IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM unnest(t.running) r JOIN {s}.executions e
                        ON e.id = r AND e.status = 'running')
                ORDER BY t.id LIMIT $1"),
            // Run under the task's lock in a statement of its own, whose
            // snapshot sees every run started before the lock was granted
            // (see `CLAIM`): exactly the listed ids that run.
            live_running: q("SELECT r FROM unnest($1::uuid[]) r WHERE EXISTS (
                    SELECT 1 FROM {s}.executions e WHERE e.id = r AND e.status = 'running')"),
            // One round trip: record this node, forget nodes gone for a day,
            // list the live ones (this one included, whatever its `until`).
            heartbeat: q("WITH up AS (
                    INSERT INTO {s}.nodes (node_id, alive_until) VALUES ($1, $3)
                    ON CONFLICT (node_id) DO UPDATE SET alive_until = EXCLUDED.alive_until),
                gone AS (
                    DELETE FROM {s}.nodes WHERE alive_until < $2 - interval '1 day' AND node_id <> $1)
                SELECT n FROM (
                    SELECT node_id AS n FROM {s}.nodes WHERE alive_until > $2 AND node_id <> $1
                    UNION SELECT $1::text) live
                ORDER BY n COLLATE \"C\""),
            leave: q("DELETE FROM {s}.nodes WHERE node_id = $1"),
            lock_tasks: q("SELECT 1 FROM {s}.tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
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
/// `$20` id; `$21` retention, `$22` the count that triggers a trim (each
/// task's phase added to both, see the crate docs' Retention); `$23`
/// whether a claim may be deferred (below).
///
/// A `replace` claim whose task row lists a running execution this
/// statement's snapshot cannot see cannot end that run: it was started by a
/// statement (a claim, or a finish starting a queued occurrence) that
/// committed after the snapshot was taken, whether or not this one waited
/// for the lock, and an `UPDATE` here does not see its row. Such a claim is
/// deferred (`again`): nothing is written for it (it is reported as lost,
/// with the task as last committed, in case it is never sent again), and
/// the caller sends it again. The last try (`$23` false) runs after
/// locking the tasks in an earlier statement of its transaction, so its
/// snapshot sees every such run. That rests on a rule every writer keeps:
/// a statement that starts a run, or changes a task's `running`, holds the
/// task's row lock until it commits (the claim, a finish or recovery
/// starting a queued occurrence, a policy change). A listed id with no
/// execution row at all is deferred too, and dropped from the list by that
/// last try: there, `live` is what the snapshot shows running. `skip` and
/// `queue_one` claims are deferred only when no listed run is visibly
/// running (otherwise their outcome is already known); without that, a
/// stray id would make every claim of the task skip or queue. (A finish's
/// queued start still counts a stray id as running; recovery's check for
/// stuck queues, under the lock, does not, and starts the queued
/// occurrence.)
///
/// Steps: lock the tasks (`l`), pick the claims to defer (`g`),
/// compare-and-set the awaited retries (`r`), decide who won (`d`) and
/// what the overlap policy makes of it (`o`), end
/// replaced runs (`x`), insert missed (`m`) and started / skipped (`ins`)
/// executions, trim old history (`tr`), advance the tasks (`u`); the final
/// select reports one row per claim, with the task as now committed for
/// those that report it.
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
    -- Only rows the claim can still win are locked (a loser writes nothing,
    -- so a statement that wins nothing commits without a WAL flush); a row
    -- changed while we waited for its lock is re-checked on its new version.
    SELECT t.* FROM {s}.tasks t JOIN c ON c.task_id = t.id
    WHERE c.kind <> 0 OR (t.enabled AND t.next_run = c.exp_next AND t.version = c.exp_version)
    ORDER BY t.id FOR UPDATE OF t
),
g AS (
    -- Claims whose task lists a running execution this snapshot cannot see
    -- (committed after it was taken): deferred, see above.
    SELECT c.i FROM c JOIN l ON l.id = c.task_id
    WHERE $23::bool AND c.exec_id IS NOT NULL AND l.overlap <> 'allow'
        AND EXISTS (SELECT 1 FROM unnest(l.running) r WHERE NOT EXISTS (
            SELECT 1 FROM {s}.executions e WHERE e.id = r))
        AND (l.overlap = 'replace' OR NOT EXISTS (
            SELECT 1 FROM unnest(l.running) r JOIN {s}.executions e
                ON e.id = r AND e.status = 'running'))
),
r AS (
    UPDATE {s}.executions e SET retry_at = NULL
    FROM c JOIN l ON l.id = c.task_id
    WHERE c.kind = 1 AND e.id = c.failed AND e.task_id = c.task_id AND e.retry_at IS NOT NULL
        AND c.i NOT IN (SELECT i FROM g)
    RETURNING c.i
),
d AS (
    -- `live`: the task's running executions. Ids in the (locked, latest)
    -- row stay unless the snapshot shows that execution finished: one
    -- inserted by a statement that committed after our snapshot is not in
    -- it, but is running. On the last try (tasks locked before the
    -- snapshot) the snapshot sees every run: only those it shows running.
    SELECT c.*, l.tenant, l.overlap, l.queued_for, l.n_executions,
        ARRAY(SELECT r FROM unnest(l.running) r WHERE CASE WHEN $23::bool
            THEN NOT EXISTS (SELECT 1 FROM {s}.executions e
                WHERE e.id = r AND e.status <> 'running')
            ELSE EXISTS (SELECT 1 FROM {s}.executions e
                WHERE e.id = r AND e.status = 'running') END) AS live,
        (l.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM g WHERE g.i = c.i) AND CASE c.kind
            WHEN 0 THEN l.enabled AND l.next_run = c.exp_next AND l.version = c.exp_version
            WHEN 1 THEN EXISTS (SELECT 1 FROM r WHERE r.i = c.i)
            ELSE true END) AS won,
        EXISTS (SELECT 1 FROM g WHERE g.i = c.i) AS again
    FROM c LEFT JOIN l ON l.id = c.task_id
),
o AS (
    SELECT d.*, CASE
        WHEN d.exec_id IS NULL THEN 'advanced'
        WHEN d.overlap = 'allow' OR cardinality(d.live) = 0 THEN 'started'
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
    FROM o WHERE o.outcome = 'replaced' AND e.id = ANY(o.live) AND e.status = 'running'
    RETURNING o.i, e.id
),
xl AS (
    DELETE FROM {s}.leases WHERE execution_id IN (SELECT id FROM x)
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
    RETURNING task_id, id, status, lease_until
),
il AS (
    INSERT INTO {s}.leases (execution_id, task_id, lease_until)
    SELECT id, task_id, lease_until FROM ins
    WHERE status = 'running' AND lease_until IS NOT NULL
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
        -- Executions past the task's keep level (retention plus its phase).
        CROSS JOIN LATERAL (SELECT o.n_executions + COALESCE(a.n, 0) - $21
            - {phase o.task_id} % ($22 - $21 + 1) AS n) over
        CROSS JOIN LATERAL (
            SELECT e2.id FROM {s}.executions e2
            -- Finished and not awaiting a retry as of the statement's
            -- snapshot: rows this statement itself changes (a retried
            -- attempt, replaced runs) cannot also be deleted by it, so they
            -- wait for a later trim.
            WHERE e2.task_id = o.task_id AND e2.status <> 'running' AND e2.retry_at IS NULL
            ORDER BY e2.scheduled_for, e2.attempt
            LIMIT GREATEST(0, over.n)) old
        WHERE over.n > $22 - $21) z
    WHERE e.id = z.id
    RETURNING z.task_id
),
u AS (
    UPDATE {s}.tasks t SET
        next_run = CASE WHEN o.kind = 0 THEN o.new_next ELSE t.next_run END,
        last_run = CASE WHEN a.started IS NOT NULL THEN o.started_at ELSE t.last_run END,
        -- Only a task whose overlap policy looks at them keeps its running
        -- ids (`allow` never does; see update_task for a policy change).
        running = CASE
            WHEN o.overlap = 'allow' THEN '{}'::uuid[]
            WHEN o.outcome = 'replaced' THEN COALESCE(a.started, '{}'::uuid[])
            ELSE o.live || COALESCE(a.started, '{}'::uuid[]) END,
        queued_for = CASE WHEN o.outcome = 'queued' THEN o.sched_for ELSE t.queued_for END,
        queued_attempt = CASE WHEN o.outcome = 'queued' THEN o.attempt ELSE t.queued_attempt END,
        queued_trigger = CASE WHEN o.outcome = 'queued' THEN o.trig ELSE t.queued_trigger END,
        n_executions = t.n_executions + COALESCE(a.n, 0)
            - (SELECT count(*) FROM tr WHERE tr.task_id = t.id)
    FROM o LEFT JOIN added a ON a.task_id = o.task_id
    WHERE t.id = o.task_id
    RETURNING t.id
),
stale AS (
    SELECT ARRAY(
        SELECT d2.task_id FROM d d2 LEFT JOIN ins i2 ON i2.id = d2.exec_id
        WHERE NOT d2.won OR (d2.exec_id IS NOT NULL AND i2.id IS NULL)) AS ids
)
SELECT d.i, d.won, d.again, o.outcome, i.status AS inserted,
    ARRAY(SELECT x.id FROM x WHERE x.i = d.i) AS replaced,
    cur.*
FROM d LEFT JOIN o ON o.i = d.i LEFT JOIN ins i ON i.id = d.exec_id
    -- The task as it is now, for the claims that report it (lost ones, and
    -- won ones whose execution key was taken).
    -- The function is not called at all when there are none (a one-time
    -- filter): a call took 0.27 ms in a sampled plan, as long as claiming
    -- five tasks.
    LEFT JOIN (SELECT f.* FROM {s}.fresh_tasks((SELECT ids FROM stale)) f
        WHERE cardinality((SELECT ids FROM stale)) > 0) cur
        ON cur.id = d.task_id
ORDER BY d.i";

/// Records runs' results (each fenced), ends one-time tasks, starts queued
/// occurrences whose task has nothing else running, trims history: one
/// statement for a batch of finishes.
///
/// Inputs are parallel arrays, one element per finish: `$1` execution,
/// `$2` fence, `$3` status, `$4` finished at, `$5` error, `$6` output,
/// `$7` retry at, `$8` node, `$9` lease for a queued start, `$10` its id;
/// then `$11` retention and `$12` the count that triggers a trim (plus each
/// task's phase, as in the claim); `$13` the
/// actual start of each run (NULL: as claimed).
///
/// Finishes of the same task are folded as if applied in order: the task's
/// status is settled by the last one that settles it, and a queued
/// occurrence starts for the last one (the one that leaves nothing running).
const FINISH: &str = "
WITH f0 AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::timestamptz[], $5::text[],
        $6::text[], $7::timestamptz[], $8::text[], $9::timestamptz[], $10::uuid[],
        $13::timestamptz[])
    WITH ORDINALITY AS f0(id, fence, status, finished_at, error, output, retry_at, node,
        lease_until, queued_id, started_at, i)
),
-- Only tasks whose state a finish changes are locked: those that keep
-- running ids (overlap other than `allow`), one-time tasks (their status),
-- and tasks with a queued occurrence. A recurring `allow` task's finish
-- touches nothing but its execution row.
l AS (
    SELECT t.* FROM {s}.tasks t
    WHERE t.id IN (SELECT e.task_id FROM {s}.executions e WHERE e.id IN (SELECT id FROM f0))
        AND (t.overlap <> 'allow' OR t.schedule IS NULL OR t.queued_for IS NOT NULL)
    ORDER BY t.id FOR UPDATE
),
f AS (
    UPDATE {s}.executions e SET status = f0.status, fence = e.fence + 1,
        started_at = COALESCE(f0.started_at, e.started_at), finished_at = f0.finished_at,
        duration_ms = GREATEST(0, floor(extract(epoch FROM
            f0.finished_at - COALESCE(f0.started_at, e.started_at)) * 1000))::int8,
        error = f0.error, output = f0.output, lease_until = NULL, retry_at = f0.retry_at
    FROM f0
    WHERE e.id = f0.id AND e.status = 'running' AND e.fence = f0.fence
        -- Every task lock is taken before the first execution row is.
        AND (SELECT count(*) FROM l) >= 0
    RETURNING f0.i, e.id, e.task_id, e.trigger, f0.status, f0.retry_at
),
fl AS (
    DELETE FROM {s}.leases WHERE execution_id IN (SELECT id FROM f)
),
g AS (
    SELECT f.task_id, array_agg(f.id) AS ids, max(f.i) AS last_i,
        (array_agg(CASE WHEN f.status = 'succeeded' THEN 'completed' ELSE 'failed' END
            ORDER BY f.i DESC) FILTER (WHERE f.trigger <> 'manual' AND f.retry_at IS NULL))[1]
            AS settled
    FROM f JOIN l ON l.id = f.task_id GROUP BY f.task_id
),
take AS (
    SELECT l.id, l.tenant, l.queued_for, l.queued_attempt, l.queued_trigger, f0.i,
        f0.queued_id, f0.finished_at, f0.node, f0.lease_until
    FROM l JOIN g ON g.task_id = l.id JOIN f0 ON f0.i = g.last_i
    WHERE l.queued_for IS NOT NULL
        AND NOT EXISTS (
            SELECT 1 FROM unnest(l.running) r
            WHERE r <> ALL (g.ids) AND NOT EXISTS (
                SELECT 1 FROM {s}.executions e WHERE e.id = r AND e.status <> 'running'))
),
q AS (
    INSERT INTO {s}.executions (id, task_id, tenant, scheduled_for, started_at, attempt,
        status, node, trigger, lease_until, fence)
    SELECT queued_id, id, tenant, queued_for, finished_at, queued_attempt, 'running', node,
        queued_trigger, lease_until, 1
    FROM take
    ON CONFLICT DO NOTHING
    RETURNING {execution_columns}
),
ql AS (
    INSERT INTO {s}.leases (execution_id, task_id, lease_until)
    SELECT id, task_id, lease_until FROM q
),
tr AS (
    DELETE FROM {s}.executions e USING (
        SELECT old.id, l.id AS task_id FROM l JOIN g ON g.task_id = l.id
        CROSS JOIN LATERAL (SELECT count(*) AS n FROM q WHERE q.task_id = l.id) added
        CROSS JOIN LATERAL (SELECT l.n_executions + added.n - $11
            - {phase l.id} % ($12 - $11 + 1) AS n) over
        CROSS JOIN LATERAL (
            -- As in the claim: what this statement finishes is trimmed by
            -- a later one.
            SELECT e2.id FROM {s}.executions e2
            WHERE e2.task_id = l.id AND e2.status <> 'running' AND e2.retry_at IS NULL
            ORDER BY e2.scheduled_for, e2.attempt
            LIMIT GREATEST(0, over.n)) old
        WHERE over.n > $12 - $11) z
    WHERE e.id = z.id
    RETURNING z.task_id
),
u AS (
    UPDATE {s}.tasks t SET
        running = CASE WHEN t.overlap = 'allow' THEN '{}'::uuid[] ELSE
            ARRAY(SELECT r FROM unnest(t.running) r WHERE r <> ALL (g.ids))
            || ARRAY(SELECT q.id FROM q WHERE q.task_id = t.id) END,
        status = CASE WHEN t.schedule IS NULL AND g.settled IS NOT NULL THEN g.settled
            ELSE t.status END,
        queued_for = CASE WHEN take.id IS NOT NULL THEN NULL ELSE t.queued_for END,
        queued_attempt = CASE WHEN take.id IS NOT NULL THEN NULL ELSE t.queued_attempt END,
        queued_trigger = CASE WHEN take.id IS NOT NULL THEN NULL ELSE t.queued_trigger END,
        last_run = CASE WHEN take.id IS NOT NULL THEN take.finished_at ELSE t.last_run END,
        n_executions = t.n_executions + (SELECT count(*) FROM q WHERE q.task_id = t.id)
            - (SELECT count(*) FROM tr WHERE tr.task_id = t.id)
    FROM g LEFT JOIN take ON take.id = g.task_id
    WHERE t.id = g.task_id
    RETURNING t.id
)
SELECT f0.i, f.i IS NOT NULL AS finished, q.*
FROM f0 LEFT JOIN f ON f.i = f0.i
    LEFT JOIN take ON take.i = f0.i
    LEFT JOIN q ON q.id = take.queued_id
ORDER BY f0.i";
