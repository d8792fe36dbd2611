//! [`Store`] for [`PgStore`](crate::PgStore).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tickwheel::model::{MAX_ERROR_BYTES, MAX_OUTPUT_BYTES, truncate};
use tickwheel::store::{
    ChangeFeed, Claim, ClaimKind, ClaimOutcome, ExecutionPage, ExecutionQuery, Finish,
    FinishOutcome, MAX_PAGE, Recovered, TaskPage,
};
use tickwheel::{
    Error, Execution, ExecutionId, ExecutionStatus, Overlap, Policy, Store, Task, TaskId,
    TaskPatch, TaskStatus, Trigger,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::{db_err, is_retryable_race, is_unique_violation};
use crate::feed::{self, Feed};
use crate::rows::{
    check_task, check_text, execution_from_row, i32_of, i64_of, micros, stored_execution,
    stored_task, task_from_row, text_of, without_nul,
};
use crate::sql::Sql;

/// Attempts of a statement that hit a deadlock or serialization failure.
const RACE_ATTEMPTS: usize = 3;
/// Statements a claim may take when deferred (see `sql::CLAIM`); the last
/// one runs after locking the claims' tasks, so it defers nothing.
const DEFER_ATTEMPTS: usize = 3;
/// Most finishes applied by one statement.
const FINISH_BATCH: usize = 256;
/// Most statements recording finishes at once.
const FINISH_WORKERS: u32 = 4;

/// How a claim statement runs.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// It may defer claims whose task lists a run it cannot see (see
    /// `sql::CLAIM`).
    Deferring,
    /// After locking the claims' tasks, in one transaction: nothing to defer.
    Locked,
}

/// What a claim statement made of one claim.
// Short-lived, one per claim of a batch: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Statement {
    Settled(ClaimOutcome),
    /// To send again; the outcome is the answer if it never is.
    Deferred(Claim, ClaimOutcome),
}
use Statement::{Deferred, Settled};

/// A finish, checked and converted, waiting for its batch.
#[derive(Debug)]
struct FinishJob {
    id: Uuid,
    fence: i64,
    status: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: DateTime<Utc>,
    error: Option<String>,
    output: Option<String>,
    retry_at: Option<DateTime<Utc>>,
    node: String,
    lease_until: DateTime<Utc>,
    queued_id: Uuid,
    reply: oneshot::Sender<Result<FinishOutcome, Error>>,
}

/// Records finishes in batches: whatever calls arrived while the previous
/// statement ran go into the next one, so concurrent runs share one round
/// trip and one commit (and its WAL flush). Each caller still gets its own
/// answer, after its batch committed. Ends when the store is dropped.
async fn finish_worker(
    pool: PgPool,
    sql: Arc<Sql>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<FinishJob>>>,
    (retention, trim_at): (i64, i64),
) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < FINISH_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let result = finish_batch(&pool, &sql, &batch, retention, trim_at).await;
        match result {
            Ok(mut outcomes) => {
                for job in batch.into_iter().rev() {
                    let outcome = outcomes.pop().unwrap_or_else(|| {
                        Err(crate::error::corrupt("finish returned too few rows"))
                    });
                    let _ = job.reply.send(outcome);
                }
            }
            Err(err) => {
                for job in batch {
                    let _ = job.reply.send(Err(replicate(&err)));
                }
            }
        }
    }
}

/// The same error for each caller of a failed batch.
fn replicate(err: &Error) -> Error {
    match err {
        Error::Unavailable { backend, source } => Error::Unavailable {
            backend,
            source: source.to_string().into(),
        },
        Error::Conflict { message } => Error::conflict(message.clone()),
        Error::Invalid { field, message } => Error::invalid(field.clone(), message.clone()),
        other => Error::Backend {
            backend: crate::error::BACKEND,
            source: other.to_string().into(),
        },
    }
}

async fn finish_batch(
    pool: &PgPool,
    sql: &Sql,
    batch: &[FinishJob],
    retention: i64,
    trim_at: i64,
) -> Result<Vec<Result<FinishOutcome, Error>>, Error> {
    let col = |f: &dyn Fn(&FinishJob) -> Uuid| batch.iter().map(f).collect::<Vec<_>>();
    let (ids, queued_ids) = (col(&|j| j.id), col(&|j| j.queued_id));
    let fences: Vec<i64> = batch.iter().map(|j| j.fence).collect();
    let statuses: Vec<&str> = batch.iter().map(|j| j.status.as_str()).collect();
    let finished_at: Vec<DateTime<Utc>> = batch.iter().map(|j| j.finished_at).collect();
    let started_at: Vec<Option<DateTime<Utc>>> = batch.iter().map(|j| j.started_at).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|j| j.error.as_deref()).collect();
    let outputs: Vec<Option<&str>> = batch.iter().map(|j| j.output.as_deref()).collect();
    let retry_at: Vec<Option<DateTime<Utc>>> = batch.iter().map(|j| j.retry_at).collect();
    let nodes: Vec<&str> = batch.iter().map(|j| j.node.as_str()).collect();
    let leases: Vec<DateTime<Utc>> = batch.iter().map(|j| j.lease_until).collect();
    let mut attempt = 0;
    let rows = loop {
        attempt += 1;
        let result = sqlx::query(&sql.finish)
            .bind(&ids)
            .bind(&fences)
            .bind(&statuses)
            .bind(&finished_at)
            .bind(&errors)
            .bind(&outputs)
            .bind(&retry_at)
            .bind(&nodes)
            .bind(&leases)
            .bind(&queued_ids)
            .bind(retention)
            .bind(trim_at)
            .bind(&started_at)
            .fetch_all(pool)
            .await;
        match result {
            Ok(rows) => break rows,
            Err(e) if attempt < RACE_ATTEMPTS && is_retryable_race(&e) => continue,
            Err(e) => return Err(db_err(e)),
        }
    };
    if rows.len() != batch.len() {
        return Err(crate::error::corrupt(format!(
            "finish returned {} rows for {} finishes",
            rows.len(),
            batch.len()
        )));
    }
    Ok(rows
        .iter()
        .zip(batch)
        .map(|(row, job)| {
            let finished: bool = row.try_get("finished").map_err(db_err)?;
            if !finished {
                return Err(Error::conflict(format!(
                    "execution {} is no longer running or was taken over",
                    job.id
                )));
            }
            let started: Option<Uuid> = row.try_get("id").map_err(db_err)?;
            Ok(FinishOutcome {
                started: match started {
                    Some(_) => Some(execution_from_row(row)?),
                    None => None,
                },
            })
        })
        .collect())
}

/// The largest retention applied (a larger one means the same: unlimited).
const MAX_RETENTION: usize = 1 << 40;

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    retention: usize,
    /// The execution count past which a claim or finish trims history.
    trim_at: usize,
    sql: Arc<Sql>,
    feed: Feed,
    /// Finishes waiting for a batch (see [`finish_worker`]).
    finishes: mpsc::UnboundedSender<FinishJob>,
}

impl Inner {
    /// Must be called inside a tokio runtime: it starts the finish workers.
    pub(crate) fn new(pool: PgPool, schema: &str, retention: usize, max_connections: u32) -> Self {
        // More than anyone can keep, and far from i64's end, so that the
        // trim arithmetic in SQL (counts minus retention, minus the phase)
        // cannot overflow.
        let retention = retention.min(MAX_RETENTION);
        let slack = (retention / 10).min(100);
        let trim_at = retention + slack;
        let sql = Arc::new(Sql::new(schema));
        let (finishes, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let retention_args = (
            i64::try_from(retention).unwrap_or(i64::MAX),
            i64::try_from(trim_at).unwrap_or(i64::MAX),
        );
        for _ in 0..(max_connections / 4).clamp(1, FINISH_WORKERS) {
            tokio::spawn(finish_worker(
                pool.clone(),
                sql.clone(),
                rx.clone(),
                retention_args,
            ));
        }
        Self {
            pool,
            schema: schema.to_owned(),
            retention,
            trim_at,
            sql,
            feed: Feed::new(format!("tickwheel.{schema}")),
            finishes,
        }
    }

    fn retention_args(&self) -> (i64, i64) {
        (
            i64::try_from(self.retention).unwrap_or(i64::MAX),
            i64::try_from(self.trim_at).unwrap_or(i64::MAX),
        )
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Binds the 25 task columns in `TASK_COLUMNS` order.
fn bind_task<'q>(
    q: Query<'q, Postgres, PgArguments>,
    t: &Task,
) -> Result<Query<'q, Postgres, PgArguments>, Error> {
    let (method, destination) = match &t.notification {
        Some(n) => (Some(text_of(&n.method)), Some(n.destination.clone())),
        None => (None, None),
    };
    let timeout_ms = t
        .policy
        .timeout_ms
        .map(|v| i64_of(v, "policy.timeout_ms"))
        .transpose()?;
    Ok(q.bind(t.id.as_uuid())
        .bind(t.tenant.clone())
        .bind(t.name.clone())
        .bind(t.description.clone())
        .bind(t.agent.clone())
        .bind(t.prompt.clone())
        .bind(t.schedule.clone())
        .bind(t.run_at)
        .bind(t.timezone.clone())
        .bind(t.enabled)
        .bind(text_of(&t.status))
        .bind(t.channel_id.clone())
        .bind(method)
        .bind(destination)
        .bind(text_of(&t.policy.misfire))
        .bind(text_of(&t.policy.overlap))
        .bind(i32_of(t.policy.max_retries, "policy.max_retries")?)
        .bind(i64_of(
            t.policy.retry_backoff_ms,
            "policy.retry_backoff_ms",
        )?)
        .bind(timeout_ms)
        .bind(i64_of(t.policy.jitter_ms, "policy.jitter_ms")?)
        .bind(t.last_run)
        .bind(t.next_run)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(i64_of(t.version, "version")?))
}

fn upsert_payload(t: &Task) -> String {
    feed::upserted(&t.tenant, t.id, t.next_run.filter(|_| t.enabled), t.version)
}

/// The claims of one statement: parallel arrays (see `sql::CLAIM`).
#[derive(Default)]
struct ClaimArrays {
    task_id: Vec<Uuid>,
    kind: Vec<i16>,
    exp_next: Vec<Option<DateTime<Utc>>>,
    exp_version: Vec<Option<i64>>,
    new_next: Vec<Option<DateTime<Utc>>>,
    failed: Vec<Option<Uuid>>,
    exec_id: Vec<Option<Uuid>>,
    sched_for: Vec<Option<DateTime<Utc>>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    attempt: Vec<Option<i32>>,
    exec_node: Vec<Option<String>>,
    trig: Vec<Option<String>>,
    lease_until: Vec<Option<DateTime<Utc>>>,
    fence: Vec<Option<i64>>,
    node: Vec<String>,
    now: Vec<DateTime<Utc>>,
    replace_msg: Vec<Option<String>>,
    missed_claim: Vec<i32>,
    missed_at: Vec<DateTime<Utc>>,
    missed_id: Vec<Uuid>,
}

impl ClaimArrays {
    fn push(&mut self, ordinal: i32, c: &Claim) -> Result<(), Error> {
        check_text("node", &c.node)?;
        self.task_id.push(c.task_id.as_uuid());
        let (kind, exp_next, exp_version, new_next, failed) = match &c.kind {
            ClaimKind::Scheduled {
                expected_next_run,
                expected_version,
                new_next_run,
            } => (
                0,
                Some(*expected_next_run),
                Some(i64_of(*expected_version, "expected_version")?),
                *new_next_run,
                None,
            ),
            ClaimKind::Retry { failed } => (1, None, None, None, Some(failed.as_uuid())),
            // Manual, and any kind added later, start without a condition.
            _ => (2, None, None, None, None),
        };
        self.kind.push(kind);
        self.exp_next.push(exp_next);
        self.exp_version.push(exp_version);
        self.new_next.push(new_next);
        self.failed.push(failed);
        match &c.execution {
            Some(e) => {
                check_text("node", &e.node)?;
                self.exec_id.push(Some(e.id.as_uuid()));
                self.sched_for.push(Some(e.scheduled_for));
                self.started_at.push(Some(e.started_at));
                self.attempt.push(Some(i32_of(e.attempt, "attempt")?));
                self.exec_node.push(Some(e.node.clone()));
                self.trig.push(Some(text_of(&e.trigger)));
                self.lease_until.push(e.lease_until);
                self.fence.push(Some(i64_of(e.fence, "fence")?));
                self.replace_msg.push(Some(format!(
                    "replaced by the run for {}",
                    e.scheduled_for.to_rfc3339()
                )));
            }
            None => {
                self.exec_id.push(None);
                self.sched_for.push(None);
                self.started_at.push(None);
                self.attempt.push(None);
                self.exec_node.push(None);
                self.trig.push(None);
                self.lease_until.push(None);
                self.fence.push(None);
                self.replace_msg.push(None);
            }
        }
        self.node.push(c.node.clone());
        self.now.push(c.now);
        for at in &c.missed {
            self.missed_claim.push(ordinal);
            self.missed_at.push(*at);
            self.missed_id.push(ExecutionId::new().as_uuid());
        }
        Ok(())
    }
}

/// The answer to one claim from its result row.
fn outcome_of(row: &PgRow, claim: Claim) -> Result<ClaimOutcome, Error> {
    let get_err = |e: sqlx::Error| crate::error::corrupt(format!("claim result: {e}"));
    let won: bool = row.try_get("won").map_err(get_err)?;
    let lost = |row: &PgRow, advanced: bool| -> Result<ClaimOutcome, Error> {
        let found: Option<Uuid> = row.try_get("id").map_err(get_err)?;
        if found.is_none() {
            return Ok(ClaimOutcome::Lost { current: None });
        }
        let mut current = task_from_row(row)?;
        if let (true, ClaimKind::Scheduled { new_next_run, .. }) = (advanced, &claim.kind) {
            current.next_run = new_next_run.map(micros);
        }
        Ok(ClaimOutcome::Lost {
            current: Some(Box::new(current)),
        })
    };
    if !won {
        return lost(row, false);
    }
    let outcome: Option<String> = row.try_get("outcome").map_err(get_err)?;
    let inserted: Option<String> = row.try_get("inserted").map_err(get_err)?;
    let execution = claim.execution.clone().map(stored_execution);
    Ok(match (outcome.as_deref(), inserted.as_deref(), execution) {
        (Some("advanced"), ..) => ClaimOutcome::Advanced,
        (Some("queued"), ..) => ClaimOutcome::Queued,
        (Some("started"), Some("running"), Some(e)) => ClaimOutcome::Started(e),
        (Some("replaced"), Some("running"), Some(e)) => {
            let replaced: Vec<Uuid> = row.try_get("replaced").map_err(get_err)?;
            let replaced: Vec<ExecutionId> =
                replaced.into_iter().map(ExecutionId::from_uuid).collect();
            if replaced.is_empty() {
                ClaimOutcome::Started(e)
            } else {
                ClaimOutcome::Replaced {
                    started: e,
                    replaced,
                }
            }
        }
        (Some("skipped"), Some("skipped"), Some(mut e)) => {
            e.status = ExecutionStatus::Skipped;
            e.lease_until = None;
            e.finished_at = Some(e.started_at);
            e.duration_ms = Some(0);
            e.error = Some("the previous run was still running".to_owned());
            ClaimOutcome::Skipped(e)
        }
        // The execution's key was taken: the bookkeeping stands, nothing starts.
        _ => lost(row, true)?,
    })
}

impl Inner {
    /// Claims with distinct tasks: one statement, then one more for those it
    /// deferred, and so on (at most [`DEFER_ATTEMPTS`]; the last locks the
    /// tasks first and defers nothing).
    ///
    /// Once the first statement has committed its outcomes stand: if a later
    /// one fails, the claims it was to settle are answered as the deferring
    /// statement read their tasks (lost), and the engine claims them again.
    async fn claim_round(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error> {
        // Every entry is set by the first statement, which answers each claim.
        let mut out = vec![ClaimOutcome::Lost { current: None }; claims.len()];
        let mut pending: Vec<(usize, Claim)> = claims.into_iter().enumerate().collect();
        for attempt in 1..=DEFER_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let pass = if attempt == DEFER_ATTEMPTS {
                Pass::Locked
            } else {
                Pass::Deferring
            };
            let (index, batch): (Vec<usize>, Vec<Claim>) = pending.into_iter().unzip();
            let results = match self.claim_statement(batch, pass).await {
                Ok(results) => results,
                Err(e) if attempt == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(%e, "a deferred claim could not be sent again; reported lost");
                    break;
                }
            };
            pending = Vec::new();
            for (i, result) in index.into_iter().zip(results) {
                out[i] = match result {
                    Settled(outcome) => outcome,
                    Deferred(claim, meanwhile) => {
                        pending.push((i, claim));
                        meanwhile
                    }
                };
            }
        }
        Ok(out)
    }

    /// One claim statement: per claim its outcome, or the claim back with
    /// what to answer if it is never settled.
    async fn claim_statement(
        &self,
        claims: Vec<Claim>,
        pass: Pass,
    ) -> Result<Vec<Statement>, Error> {
        let mut a = ClaimArrays::default();
        for (i, c) in claims.iter().enumerate() {
            a.push(i32::try_from(i + 1).unwrap_or(i32::MAX), c)?;
        }
        let (retention, trim_at) = self.retention_args();
        let all_scheduled = claims
            .iter()
            .all(|c| matches!(c.kind, ClaimKind::Scheduled { .. }));
        let mut attempt = 0;
        let mut careful = false;
        let rows = loop {
            attempt += 1;
            let sql = if careful {
                &self.sql.claim_careful
            } else if all_scheduled {
                &self.sql.claim_skip_locked
            } else {
                &self.sql.claim
            };
            let query = sqlx::query(sql)
                .bind(&a.task_id)
                .bind(&a.kind)
                .bind(&a.exp_next)
                .bind(&a.exp_version)
                .bind(&a.new_next)
                .bind(&a.failed)
                .bind(&a.exec_id)
                .bind(&a.sched_for)
                .bind(&a.started_at)
                .bind(&a.attempt)
                .bind(&a.exec_node)
                .bind(&a.trig)
                .bind(&a.lease_until)
                .bind(&a.fence)
                .bind(&a.node)
                .bind(&a.now)
                .bind(&a.replace_msg)
                .bind(&a.missed_claim)
                .bind(&a.missed_at)
                .bind(&a.missed_id)
                .bind(retention)
                .bind(trim_at)
                .bind(matches!(pass, Pass::Deferring));
            let result = match pass {
                Pass::Deferring => query.fetch_all(&self.pool).await,
                Pass::Locked => self.locked(&a.task_id, query).await,
            };
            match result {
                Ok(rows) => break rows,
                Err(e) if !careful && is_unique_violation(&e) => careful = true,
                Err(e) if attempt < RACE_ATTEMPTS && is_retryable_race(&e) => continue,
                Err(e) => return Err(db_err(e)),
            }
        };
        if rows.len() != claims.len() {
            return Err(crate::error::corrupt(format!(
                "claim returned {} rows for {} claims",
                rows.len(),
                claims.len()
            )));
        }
        rows.iter()
            .zip(claims)
            .map(|(row, claim)| {
                let again: bool = row
                    .try_get("again")
                    .map_err(|e| crate::error::corrupt(format!("claim result: {e}")))?;
                Ok(if again {
                    // A deferred row is not won: its outcome is the task as
                    // read, lost.
                    let meanwhile = outcome_of(row, claim.clone())?;
                    Deferred(claim, meanwhile)
                } else {
                    Settled(outcome_of(row, claim)?)
                })
            })
            .collect()
    }

    /// `query` (a claim statement) in a transaction that first locks
    /// `tasks` in id order, as the statement itself does: its snapshot is
    /// then taken after every claim that held them committed.
    async fn locked(
        &self,
        tasks: &[Uuid],
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Each statement its own snapshot, whatever the server's default.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.sql.lock_tasks)
            .bind(tasks)
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn start_state(&self, id: ExecutionId, fence: u64) -> Result<Error, Error> {
        let row = sqlx::query(&self.sql.execution_state)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(match row {
            Some(row) => {
                let status: String = row.try_get("status").map_err(db_err)?;
                let current: i64 = row.try_get("fence").map_err(db_err)?;
                if status == "running" && u64::try_from(current).ok() == Some(fence) {
                    Error::invalid("status", "a finished execution cannot be running")
                } else {
                    Error::conflict(format!("execution {id} was taken over"))
                }
            }
            None => Error::conflict(format!("execution {id} is no longer running")),
        })
    }
}

/// Splits claims into rounds in which every task appears once, keeping
/// order: a statement changes a row only once, and claims in one call are
/// applied as if one after the other.
fn rounds(claims: Vec<Claim>) -> Vec<Vec<(usize, Claim)>> {
    let mut rounds: Vec<Vec<(usize, Claim)>> = Vec::new();
    let mut round_of: HashMap<TaskId, usize> = HashMap::new();
    for (i, c) in claims.into_iter().enumerate() {
        let r = round_of.get(&c.task_id).map_or(0, |r| r + 1);
        round_of.insert(c.task_id, r);
        if rounds.len() <= r {
            rounds.push(Vec::new());
        }
        rounds[r].push((i, c));
    }
    rounds
}

impl crate::PgStore {
    /// Inserts many tasks at once and sends one
    /// [`Change::Resync`](tickwheel::store::Change::Resync) at the end: the
    /// bulk path for loading large task sets. The tasks stream in through
    /// `COPY … FROM STDIN` in one transaction, so a duplicate id fails the
    /// whole call. Each task is checked as [`Store::create_task`] does.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a string with NUL, [`Error::Conflict`] for a
    /// duplicate id, [`Error::Unavailable`] if the server cannot be reached.
    pub async fn create_tasks(&self, tasks: Vec<Task>) -> Result<Vec<Task>, Error> {
        let inner = &self.inner;
        let tasks: Vec<Task> = tasks.into_iter().map(stored_task).collect();
        for t in &tasks {
            check_task(t)?;
        }
        let mut tx = inner.pool.begin().await.map_err(db_err)?;
        let mut copy = tx
            .copy_in_raw(&inner.sql.copy_tasks)
            .await
            .map_err(db_err)?;
        let mut buf = String::with_capacity(1 << 20);
        for t in &tasks {
            copy_row(&mut buf, t)?;
            if buf.len() >= 1 << 20 {
                if let Err(e) = copy.send(buf.as_bytes()).await {
                    let _ = copy.abort("send failed").await;
                    return Err(db_err(e));
                }
                buf.clear();
            }
        }
        if !buf.is_empty()
            && let Err(e) = copy.send(buf.as_bytes()).await
        {
            let _ = copy.abort("send failed").await;
            return Err(db_err(e));
        }
        copy.finish().await.map_err(db_err)?;
        sqlx::query(&inner.sql.notify)
            .bind(inner.feed.channel())
            .bind(feed::resync())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(tasks)
    }
}

/// Appends one task as a line of `COPY` text format, columns in
/// `TASK_COLUMNS` order.
fn copy_row(buf: &mut String, t: &Task) -> Result<(), Error> {
    use std::fmt::Write;

    fn text(buf: &mut String, value: &str) {
        for c in value.chars() {
            match c {
                '\\' => buf.push_str("\\\\"),
                '\n' => buf.push_str("\\n"),
                '\r' => buf.push_str("\\r"),
                '\t' => buf.push_str("\\t"),
                c => buf.push(c),
            }
        }
    }
    fn opt_text(buf: &mut String, value: Option<&str>) {
        match value {
            Some(v) => text(buf, v),
            None => buf.push_str("\\N"),
        }
    }
    fn time(buf: &mut String, value: Option<DateTime<Utc>>) {
        match value {
            Some(v) => buf.push_str(&v.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            None => buf.push_str("\\N"),
        }
    }
    let (method, destination) = match &t.notification {
        Some(n) => (Some(text_of(&n.method)), Some(n.destination.as_str())),
        None => (None, None),
    };
    // Writing to a String cannot fail.
    let _ = write!(buf, "{}\t", t.id);
    text(buf, &t.tenant);
    buf.push('\t');
    text(buf, &t.name);
    buf.push('\t');
    text(buf, &t.description);
    buf.push('\t');
    text(buf, &t.agent);
    buf.push('\t');
    text(buf, &t.prompt);
    buf.push('\t');
    opt_text(buf, t.schedule.as_deref());
    buf.push('\t');
    time(buf, t.run_at);
    buf.push('\t');
    text(buf, &t.timezone);
    buf.push_str(if t.enabled { "\tt\t" } else { "\tf\t" });
    text(buf, &text_of(&t.status));
    buf.push('\t');
    opt_text(buf, t.channel_id.as_deref());
    buf.push('\t');
    opt_text(buf, method.as_deref());
    buf.push('\t');
    opt_text(buf, destination);
    let _ = write!(
        buf,
        "\t{}\t{}\t{}\t{}\t",
        text_of(&t.policy.misfire),
        text_of(&t.policy.overlap),
        i32_of(t.policy.max_retries, "policy.max_retries")?,
        i64_of(t.policy.retry_backoff_ms, "policy.retry_backoff_ms")?,
    );
    match t.policy.timeout_ms {
        Some(ms) => {
            let _ = write!(buf, "{}", i64_of(ms, "policy.timeout_ms")?);
        }
        None => buf.push_str("\\N"),
    }
    let _ = write!(
        buf,
        "\t{}\t",
        i64_of(t.policy.jitter_ms, "policy.jitter_ms")?
    );
    time(buf, t.last_run);
    buf.push('\t');
    time(buf, t.next_run);
    buf.push('\t');
    time(buf, Some(t.created_at));
    buf.push('\t');
    time(buf, Some(t.updated_at));
    let _ = writeln!(buf, "\t{}", i64_of(t.version, "version")?);
    Ok(())
}

#[async_trait]
impl Store for crate::PgStore {
    async fn create_task(&self, task: Task) -> Result<Task, Error> {
        let inner = &self.inner;
        let task = stored_task(task);
        check_task(&task)?;
        let inserted = bind_task(sqlx::query(&inner.sql.insert_task), &task)?
            .bind(inner.feed.channel())
            .bind(upsert_payload(&task))
            .fetch_optional(&inner.pool)
            .await
            .map_err(db_err)?;
        match inserted {
            Some(_) => Ok(task),
            None => Err(Error::conflict(format!("task {} already exists", task.id))),
        }
    }

    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Task, Error> {
        let row = sqlx::query(&self.inner.sql.get_task)
            .bind(id.as_uuid())
            .bind(tenant)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db_err)?;
        match row {
            Some(row) => task_from_row(&row),
            None => Err(Error::task_not_found(id)),
        }
    }

    async fn list_tasks(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error> {
        let n = limit(page.limit.min(MAX_PAGE));
        let rows = match page.after {
            Some(after) => {
                sqlx::query(&self.inner.sql.list_after)
                    .bind(tenant)
                    .bind(after.as_uuid())
                    .bind(n)
                    .fetch_all(&self.inner.pool)
                    .await
            }
            None => {
                sqlx::query(&self.inner.sql.list_first)
                    .bind(tenant)
                    .bind(n)
                    .fetch_all(&self.inner.pool)
                    .await
            }
        }
        .map_err(db_err)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn update_task(
        &self,
        tenant: &str,
        id: TaskId,
        patch: &TaskPatch,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Task, Error> {
        let inner = &self.inner;
        let mut tx = inner.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(&inner.sql.lock_task)
            .bind(id.as_uuid())
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::task_not_found(id))?;
        let old = task_from_row(&row)?;
        if let Some(expected) = expected_version.filter(|v| *v != old.version) {
            return Err(Error::conflict(format!(
                "task {id} is at version {}, not {expected}",
                old.version
            )));
        }
        let updated = stored_task(patch.apply(&old, now)?);
        check_task(&updated)?;
        let t = &updated;
        let (method, destination) = match &t.notification {
            Some(n) => (Some(text_of(&n.method)), Some(n.destination.clone())),
            None => (None, None),
        };
        sqlx::query(&inner.sql.update_task)
            .bind(t.id.as_uuid())
            .bind(&t.name)
            .bind(&t.description)
            .bind(&t.agent)
            .bind(&t.prompt)
            .bind(&t.schedule)
            .bind(t.run_at)
            .bind(&t.timezone)
            .bind(t.enabled)
            .bind(text_of(&t.status))
            .bind(&t.channel_id)
            .bind(method)
            .bind(destination)
            .bind(text_of(&t.policy.misfire))
            .bind(text_of(&t.policy.overlap))
            .bind(i32_of(t.policy.max_retries, "policy.max_retries")?)
            .bind(i64_of(
                t.policy.retry_backoff_ms,
                "policy.retry_backoff_ms",
            )?)
            .bind(
                t.policy
                    .timeout_ms
                    .map(|v| i64_of(v, "policy.timeout_ms"))
                    .transpose()?,
            )
            .bind(i64_of(t.policy.jitter_ms, "policy.jitter_ms")?)
            .bind(t.last_run)
            .bind(t.next_run)
            .bind(t.updated_at)
            .bind(i64_of(t.version, "version")?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // Running ids are kept only for policies other than `allow`: a task
        // leaving `allow` learns them from its executions (locked, so a
        // finish in flight either commits first or waits for us).
        let was_allow = old.policy.overlap == Overlap::Allow;
        let is_allow = t.policy.overlap == Overlap::Allow;
        if was_allow != is_allow {
            let running: Vec<Uuid> = if is_allow {
                Vec::new()
            } else {
                sqlx::query_scalar(&inner.sql.running_of)
                    .bind(t.id.as_uuid())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?
            };
            sqlx::query(&inner.sql.set_running)
                .bind(t.id.as_uuid())
                .bind(&running)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(&inner.sql.notify)
            .bind(inner.feed.channel())
            .bind(upsert_payload(t))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(updated)
    }

    async fn delete_task(&self, tenant: &str, id: TaskId) -> Result<(), Error> {
        let inner = &self.inner;
        let mut tx = inner.pool.begin().await.map_err(db_err)?;
        let deleted = sqlx::query(&inner.sql.delete_task)
            .bind(id.as_uuid())
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if deleted.rows_affected() == 0 {
            return Err(Error::task_not_found(id));
        }
        // A separate statement, so it sees executions a claim committed
        // while the delete waited for the task's row lock.
        sqlx::query(&inner.sql.delete_executions)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(&inner.sql.notify)
            .bind(inner.feed.channel())
            .bind(feed::deleted(id))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn due_tasks(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<Task>, Error> {
        let rows = match after {
            Some((at, id)) => {
                sqlx::query(&self.inner.sql.due_after)
                    .bind(horizon)
                    .bind(at)
                    .bind(id.as_uuid())
                    .bind(limit(n))
                    .fetch_all(&self.inner.pool)
                    .await
            }
            None => {
                sqlx::query(&self.inner.sql.due_first)
                    .bind(horizon)
                    .bind(limit(n))
                    .fetch_all(&self.inner.pool)
                    .await
            }
        }
        .map_err(db_err)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn due_retries(&self, horizon: DateTime<Utc>, n: usize) -> Result<Vec<Execution>, Error> {
        let rows = sqlx::query(&self.inner.sql.due_retries)
            .bind(horizon)
            .bind(limit(n))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn claim(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error> {
        let n = claims.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut rounds = rounds(claims);
        if rounds.len() == 1 {
            let round = rounds.pop().unwrap_or_default();
            return self
                .inner
                .claim_round(round.into_iter().map(|(_, c)| c).collect())
                .await;
        }
        let mut out: Vec<Option<ClaimOutcome>> = vec![None; n];
        for round in rounds {
            let (index, claims): (Vec<usize>, Vec<Claim>) = round.into_iter().unzip();
            for (i, outcome) in index.into_iter().zip(self.inner.claim_round(claims).await?) {
                out[i] = Some(outcome);
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(ClaimOutcome::Lost { current: None }))
            .collect())
    }

    async fn renew_lease(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error> {
        let done = sqlx::query(&self.inner.sql.renew)
            .bind(id.as_uuid())
            .bind(i64_of(fence, "fence")?)
            .bind(until)
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(Error::conflict(format!(
                "execution {id} is no longer running or was taken over"
            )));
        }
        Ok(())
    }

    async fn finish(&self, f: Finish) -> Result<FinishOutcome, Error> {
        let inner = &self.inner;
        if !f.status.is_final() {
            return Err(inner.start_state(f.id, f.fence).await?);
        }
        check_text("node", &f.node)?;
        let (reply, answer) = oneshot::channel();
        let job = FinishJob {
            id: f.id.as_uuid(),
            fence: i64_of(f.fence, "fence")?,
            status: text_of(&f.status),
            started_at: f.started_at,
            finished_at: f.finished_at,
            error: f.error.map(|s| truncate(without_nul(s), MAX_ERROR_BYTES)),
            output: f.output.map(|s| truncate(without_nul(s), MAX_OUTPUT_BYTES)),
            retry_at: f
                .retry_at
                .filter(|_| f.status != ExecutionStatus::Succeeded),
            node: f.node,
            lease_until: f.lease_until,
            queued_id: ExecutionId::new().as_uuid(),
            reply,
        };
        let gone = || Error::Unavailable {
            backend: crate::error::BACKEND,
            source: "the store's finish workers stopped".into(),
        };
        inner.finishes.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        node: &str,
        lease_until: DateTime<Utc>,
        n: usize,
    ) -> Result<Recovered, Error> {
        let inner = &self.inner;
        check_text("node", node)?;
        let expired: Vec<Uuid> = sqlx::query_scalar(&inner.sql.expired_tasks)
            .bind(now)
            .bind(limit(n))
            .fetch_all(&inner.pool)
            .await
            .map_err(db_err)?;
        // Queued occurrences with nothing left running: a finish that raced
        // with a change of the task's overlap policy may have missed one.
        let stuck: Vec<Uuid> = sqlx::query_scalar(&inner.sql.stuck_queues)
            .bind(limit(n))
            .fetch_all(&inner.pool)
            .await
            .map_err(db_err)?;
        if expired.is_empty() && stuck.is_empty() {
            return Ok(Recovered::default());
        }
        let mut candidates = expired;
        candidates.extend(&stuck);
        let mut tx = inner.pool.begin().await.map_err(db_err)?;
        // Tasks another recoverer (or a claim) holds are left for the next
        // round: their expired executions are being taken care of.
        let locked = sqlx::query(&inner.sql.lock_tasks_skip_locked)
            .bind(&candidates)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut tasks = HashMap::new();
        for row in &locked {
            let get_err = |e: sqlx::Error| crate::error::corrupt(format!("task row: {e}"));
            let id: Uuid = row.try_get("id").map_err(get_err)?;
            let policy = Policy {
                max_retries: u32::try_from(row.try_get::<i32, _>("max_retries").map_err(get_err)?)
                    .unwrap_or(0),
                retry_backoff_ms: u64::try_from(
                    row.try_get::<i64, _>("retry_backoff_ms").map_err(get_err)?,
                )
                .unwrap_or(1000)
                .max(1),
                ..Policy::default()
            };
            let queued_trigger: Option<String> = row.try_get("queued_trigger").map_err(get_err)?;
            tasks.insert(
                id,
                RecoverTask {
                    tenant: row.try_get("tenant").map_err(get_err)?,
                    one_time: row
                        .try_get::<Option<String>, _>("schedule")
                        .map_err(get_err)?
                        .is_none(),
                    policy,
                    running: row.try_get("running").map_err(get_err)?,
                    queued_for: row.try_get("queued_for").map_err(get_err)?,
                    queued_attempt: row.try_get("queued_attempt").map_err(get_err)?,
                    queued_trigger,
                    failed: false,
                },
            );
        }
        let ids: Vec<Uuid> = tasks.keys().copied().collect();
        let rows = sqlx::query(&inner.sql.abandon_expired)
            .bind(&ids)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut out = Recovered::default();
        let (mut retry_ids, mut retry_ats) = (Vec::new(), Vec::new());
        for row in &rows {
            let mut e = execution_from_row(row)?;
            let Some(task) = tasks.get_mut(&e.task_id.as_uuid()) else {
                continue;
            };
            if e.attempt <= task.policy.max_retries {
                let backoff =
                    chrono::TimeDelta::from_std(task.policy.backoff(e.attempt)).unwrap_or_default();
                let at = micros(now + backoff);
                e.retry_at = Some(at);
                retry_ids.push(e.id.as_uuid());
                retry_ats.push(at);
            }
            task.running.retain(|r| *r != e.id.as_uuid());
            if task.one_time && e.trigger != Trigger::Manual && e.retry_at.is_none() {
                task.failed = true;
            }
            out.abandoned.push(e);
        }
        if !retry_ids.is_empty() {
            sqlx::query(&inner.sql.set_retry_at)
                .bind(&retry_ids)
                .bind(&retry_ats)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let touched: std::collections::HashSet<Uuid> = out
            .abandoned
            .iter()
            .map(|e| e.task_id.as_uuid())
            .chain(stuck.iter().copied().filter(|id| tasks.contains_key(id)))
            .collect();
        for id in touched {
            let Some(task) = tasks.get_mut(&id) else {
                continue;
            };
            // Under the task's lock, in a statement of its own: the ids of
            // executions that still run.
            task.running = sqlx::query_scalar(&inner.sql.live_running)
                .bind(&task.running)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            let mut took_queue = false;
            let mut added = 0i64;
            if let (Some(at), true) = (task.queued_for, task.running.is_empty()) {
                took_queue = true;
                let new_id = ExecutionId::new().as_uuid();
                let trigger = task
                    .queued_trigger
                    .clone()
                    .unwrap_or_else(|| "schedule".to_owned());
                let started = sqlx::query(&inner.sql.insert_started)
                    .bind(vec![new_id])
                    .bind(vec![id])
                    .bind(vec![task.tenant.clone()])
                    .bind(vec![at])
                    .bind(vec![task.queued_attempt.unwrap_or(1)])
                    .bind(now)
                    .bind(node)
                    .bind(lease_until)
                    .bind(vec![trigger])
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                for row in &started {
                    let e = execution_from_row(row)?;
                    task.running.push(e.id.as_uuid());
                    added += 1;
                    out.started.push(e);
                }
            }
            sqlx::query(&inner.sql.recover_task)
                .bind(id)
                .bind(&task.running)
                .bind(task.failed.then(|| text_of(&TaskStatus::Failed)))
                .bind(took_queue)
                .bind(now)
                .bind(added)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn executions(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error> {
        let inner = &self.inner;
        let exists: bool = sqlx::query_scalar(&inner.sql.task_exists)
            .bind(task_id.as_uuid())
            .bind(tenant)
            .fetch_one(&inner.pool)
            .await
            .map_err(db_err)?;
        if !exists {
            return Err(Error::task_not_found(task_id));
        }
        let (rows, total) = match query.status {
            Some(status) => {
                let status = text_of(&status);
                let rows = sqlx::query(&inner.sql.history_by_status)
                    .bind(task_id.as_uuid())
                    .bind(limit(query.limit))
                    .bind(limit(query.offset))
                    .bind(&status)
                    .fetch_all(&inner.pool)
                    .await
                    .map_err(db_err)?;
                let total: i64 = sqlx::query_scalar(&inner.sql.history_total_by_status)
                    .bind(task_id.as_uuid())
                    .bind(&status)
                    .fetch_one(&inner.pool)
                    .await
                    .map_err(db_err)?;
                (rows, total)
            }
            None => {
                let rows = sqlx::query(&inner.sql.history)
                    .bind(task_id.as_uuid())
                    .bind(limit(query.limit))
                    .bind(limit(query.offset))
                    .fetch_all(&inner.pool)
                    .await
                    .map_err(db_err)?;
                let total: i64 = sqlx::query_scalar(&inner.sql.history_total)
                    .bind(task_id.as_uuid())
                    .fetch_one(&inner.pool)
                    .await
                    .map_err(db_err)?;
                (rows, total)
            }
        };
        Ok(ExecutionPage {
            executions: rows
                .iter()
                .map(execution_from_row)
                .collect::<Result<_, _>>()?,
            total: usize::try_from(total).unwrap_or(0),
        })
    }

    async fn subscribe(&self) -> Result<ChangeFeed, Error> {
        self.inner.feed.subscribe(&self.inner.pool).await
    }

    async fn heartbeat(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>, Error> {
        if node.contains('\0') {
            return Err(Error::invalid("node", "must not contain NUL"));
        }
        sqlx::query_scalar(&self.inner.sql.heartbeat)
            .bind(node)
            .bind(now)
            .bind(until)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)
    }

    async fn leave(&self, node: &str) -> Result<(), Error> {
        sqlx::query(&self.inner.sql.leave)
            .bind(node)
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// What recovery needs of a locked task.
struct RecoverTask {
    tenant: String,
    one_time: bool,
    policy: Policy,
    running: Vec<Uuid>,
    queued_for: Option<DateTime<Utc>>,
    queued_attempt: Option<i32>,
    queued_trigger: Option<String>,
    /// A one-time task whose run ended without a retry: it failed.
    failed: bool,
}
