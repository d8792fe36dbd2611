-- tickwheel PostgreSQL store, initial schema. Runs with search_path set to
-- the store's schema, so every name below lands there.

CREATE TABLE tasks (
    id                       uuid PRIMARY KEY,
    tenant                   text NOT NULL,
    name                     text NOT NULL,
    description              text NOT NULL,
    agent                    text NOT NULL,
    prompt                   text NOT NULL,
    schedule                 text,
    run_at                   timestamptz,
    timezone                 text NOT NULL,
    enabled                  boolean NOT NULL,
    status                   text NOT NULL,
    channel_id               text,
    notification_method      text,
    notification_destination text,
    misfire                  text NOT NULL,
    overlap                  text NOT NULL,
    max_retries              integer NOT NULL,
    retry_backoff_ms         bigint NOT NULL,
    timeout_ms               bigint,
    jitter_ms                bigint NOT NULL,
    last_run                 timestamptz,
    next_run                 timestamptz,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    version                  bigint NOT NULL,
    -- Engine state, kept on the task row so every decision about a task is
    -- made under its row lock (see the crate docs):
    -- ids of the task's running executions, in start order (kept only
    -- while its overlap policy is not `allow`, the one that ignores them);
    running                  uuid[] NOT NULL DEFAULT '{}',
    -- the occurrence waiting for them (overlap: queue_one);
    queued_for               timestamptz,
    queued_attempt           integer,
    queued_trigger           text,
    -- how many executions the task has (drives the retention trim).
    n_executions             bigint NOT NULL DEFAULT 0
);

-- The engine's due scan: enabled tasks by (next_run, id), nothing else.
CREATE INDEX tasks_due ON tasks (next_run, id) WHERE enabled AND next_run IS NOT NULL;
-- Listing a tenant's tasks in id order.
CREATE INDEX tasks_tenant ON tasks (tenant, id);
-- Queued occurrences (overlap: queue_one), for recovery's sweep.
CREATE INDEX tasks_queued ON tasks (id) WHERE queued_for IS NOT NULL;

CREATE TABLE executions (
    id            uuid PRIMARY KEY,
    task_id       uuid NOT NULL,
    tenant        text NOT NULL,
    scheduled_for timestamptz NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    duration_ms   bigint,
    attempt       integer NOT NULL,
    status        text NOT NULL,
    error         text,
    output        text,
    node          text NOT NULL,
    trigger       text NOT NULL,
    lease_until   timestamptz,
    fence         bigint NOT NULL,
    retry_at      timestamptz,
    -- One execution per (task, occurrence, attempt); also serves history
    -- (newest first = a backward scan) and the retention trim (forward).
    CONSTRAINT executions_occurrence UNIQUE (task_id, scheduled_for, attempt)
);

-- Recovery: running executions by lease expiry.
CREATE INDEX executions_lease ON executions (lease_until, id) WHERE status = 'running';
-- Failed attempts awaiting a retry.
CREATE INDEX executions_retry ON executions (retry_at, id) WHERE retry_at IS NOT NULL;

-- The latest committed version of some tasks. A claim statement reads the
-- tasks it lost through this function: being VOLATILE (and having its own
-- search_path), it is never inlined and runs its query with a fresh snapshot,
-- so a claim that lost a race reports the winner's write, not the version
-- its own (older) snapshot shows.
CREATE FUNCTION fresh_tasks(ids uuid[]) RETURNS SETOF tasks
    LANGUAGE sql VOLATILE
    SET search_path FROM CURRENT
AS $$ SELECT * FROM tasks WHERE id = ANY (ids) $$;
