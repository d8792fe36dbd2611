//! PostgreSQL store for tickwheel: [`PgStore`], a [`Store`] on sqlx that
//! several scheduler processes share.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tickwheel::Error> {
//! use std::sync::Arc;
//! use tickwheel::{Scheduler, executor_fn};
//! use tickwheel_postgres::PgStore;
//!
//! let store = PgStore::builder()
//!     .schema("tickwheel")
//!     .retention(1000)
//!     .connect("postgres://app@db/app")
//!     .await?;
//! let scheduler = Scheduler::builder(Arc::new(store), executor_fn(|_run| async { Ok(None) }))
//!     .start();
//! # drop(scheduler);
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! Everything lives in one PostgreSQL schema (default `tickwheel`), created
//! by the embedded migrations ([`MIGRATOR`], applied by
//! [`PgStoreBuilder::connect`] and [`PgStoreBuilder::from_pool`] unless
//! turned off; [`migrate`] applies them by hand). Four tables:
//!
//! - `tasks`: every task field in its own column (policy and notification
//!   flattened), plus the engine state of the task: the ids of its running
//!   executions, the occurrence queued behind them (`overlap: queue_one`)
//!   and its execution count. Indexes: the due scan
//!   `(next_run, id) WHERE enabled AND next_run IS NOT NULL`, and
//!   `(tenant, id)` for listing.
//! - `executions`: unique `(task_id, scheduled_for, attempt)`, which also
//!   serves history (newest first is a backward scan) and retention; failed
//!   attempts by `(retry_at, id)` for retries. No index covers `status` or
//!   `lease_until`, and new pages keep a fifth free (`fillfactor = 80`), so
//!   a finish can be a HOT update (its new version on the same page, no new
//!   index entries) when its page still has room: 40% of the finishes of a
//!   12 s `storebench` run (before, the lease index ruled it out for all).
//! - `leases`: one row per running execution (its id, task and lease
//!   expiry), inserted with the execution and deleted when it ends, indexed
//!   by expiry for recovery. `executions.lease_until` stays the
//!   authoritative copy; a renewal writes both in one statement, and
//!   recovery deletes a lease row whose execution no longer runs. Migration
//!   3 moved the leases of running executions here. Nodes of a version
//!   before it do not write this table: stop every older node before a new
//!   one connects, or the runs they start are never recovered.
//! - `nodes`: the schedulers sharing the store and until when each is alive
//!   (`Store::heartbeat`); a row is deleted a day after it expires.
//!
//! # Atomicity
//!
//! Every decision about a task is taken under its row lock, from the row's
//! latest version, and a statement that locks several tasks locks them in id
//! order (`SELECT … ORDER BY id FOR UPDATE`) before it touches any of their
//! executions (and an execution's row before its `leases` row), so
//! concurrent statements cannot deadlock.
//!
//! - **Claims.** A batch of claims is one statement: it locks the tasks it
//!   can still win (a row that moved on while the statement waited for its
//!   lock is re-checked on its new version), compares `next_run` / `version`
//!   / the awaited retry, decides overlap from the running ids kept on the
//!   task row, ends replaced runs, inserts the `running`, `skipped` and
//!   `missed` executions, advances the tasks and trims old history — one
//!   round trip for the whole batch, whatever the kinds and policies. A
//!   losing claim writes nothing and reports the task as last committed
//!   (read through the `fresh_tasks` function, which runs with its own,
//!   newer snapshot). In a batch of scheduled claims only, a task whose row
//!   another statement holds locked is skipped (`SKIP LOCKED`) and reported
//!   lost as last committed, rather than waited for: nodes racing for the
//!   same due tasks then split them instead of queueing behind each other's
//!   commits, and the engine claims a skipped task again at once. Manual
//!   and retry claims always wait. Claims in one call that name the same
//!   task are applied one after the other (a statement changes a row only
//!   once). The exception to one round trip: a `replace` claim whose task
//!   lists a running execution the statement's snapshot cannot see (started
//!   by a statement that committed after the snapshot was taken) cannot end
//!   that run there. It is deferred, writing nothing, and sent again; the
//!   third try runs in a transaction that locks its tasks first, so its
//!   snapshot sees every such run. `skip` and `queue_one` claims whose task
//!   lists no visibly running execution are deferred the same way, so that
//!   an id listed as running with no execution behind it (which no snapshot
//!   would ever show finished) is dropped by the task's next claim instead
//!   of making every claim skip or queue; a finish's queued start still
//!   counts it, and [`Store::recover_expired`]'s check for stuck queues
//!   starts a queued occurrence held back only by such an id. Should a
//!   resend fail, the claims already applied stand and the deferred ones
//!   are answered as lost.
//! - **Running ids.** Only a task whose overlap policy looks at them (`skip`,
//!   `queue_one`, `replace`) keeps the ids of its running executions on its
//!   row; under `allow` (the default) a finish writes nothing but the
//!   execution row. A policy change away from `allow` rebuilds the list from
//!   the task's running executions, locked, so a finish in flight either
//!   commits first or waits. As a safety net, [`Store::recover_expired`]
//!   also starts queued occurrences that nothing runs ahead of any more.
//! - **Finishes.** Concurrent [`Store::finish`] calls are gathered into one
//!   statement (one round trip, one commit and WAL flush for all of them);
//!   each is fenced on its own, and each caller gets its own answer after
//!   the batch committed. Finishes of one task in one batch fold as if
//!   applied in order.
//! - `update_task` and `delete_task` lock the task row in a short
//!   transaction; delete removes the executions in a second statement, so it
//!   sees any a claim committed while the delete waited for the lock.
//! - [`Store::recover_expired`] locks the tasks of expired executions with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent recoverers never take over the
//!   same execution twice.
//!
//! Time comes from the caller only: no statement reads the database clock.
//!
//! # Change feed
//!
//! Writes to task definitions (create, update, delete, bulk create) send a
//! `NOTIFY` on the channel `tickwheel.<schema>` inside their transaction; a
//! payload is a small JSON object (well under PostgreSQL's 8000-byte limit:
//! the tenant, at most 200 bytes, is the only variable-length part). The
//! store's listener (one connection per [`PgStore`], opened by the first
//! [`Store::subscribe`]) fans them out to subscribers. When its connection
//! drops it reconnects with backoff and then sends [`Change::Resync`], so
//! engines rescan whatever they may have missed.
//!
//! # Errors
//!
//! A refused, lost or terminated connection, a pool timeout and a server
//! starting or shutting down are [`Error::Unavailable`] (the engine backs off
//! and retries); a deadlock or serialization failure is retried here a few
//! times first. A duplicate id is [`Error::Conflict`].
//!
//! # Stored text and times
//!
//! Strings are stored and returned verbatim (quotes, backslashes, control
//! characters, any Unicode) — every value is a bound parameter, never spliced
//! into SQL. PostgreSQL `text` cannot hold NUL (`\0`): a task whose string
//! fields contain one is refused with [`Error::Invalid`] naming the field;
//! in an execution's `error` and `output` (written by the executor, which
//! must not lose its result over it) each NUL is stored as U+FFFD.
//! Timestamps are kept to the microsecond (PostgreSQL `timestamptz`): what a
//! write returns is already cut to microseconds, so it equals what a read
//! returns.
//!
//! # Retention
//!
//! Each task keeps its newest `retention` executions (default 1000; running
//! executions and failed ones awaiting a retry are always kept). The task row
//! counts its executions; when a claim (or a finish that starts a queued
//! occurrence) takes the count past `retention + slack + phase` (slack =
//! retention / 10, at most 100; the task's phase is its id's last two bytes,
//! as a number, modulo slack + 1), the same statement deletes the oldest
//! finished ones down to `retention + phase`. So history is trimmed in
//! batches of at most slack + one claim's rows, each an index range at the
//! old end of one task's history: no table scan, no long lock, and no
//! unbounded growth between sweeps. Of its finished executions a task keeps
//! at least `retention` (when it has that many) and at most `retention + 2
//! × slack`; running ones, failed ones awaiting a retry and those the
//! trimming statement itself changes come on top. A statement cannot delete
//! a row it also changes, so the attempt a claim retries, the runs it
//! replaces and the runs a finish records are left for a later trim; which
//! old rows go first may therefore differ a little from the memory store.
//!
//! The phase spreads the trims of tasks that run in step. Without it, tasks
//! created together on one schedule reached the trigger count in the same
//! second and all trimmed at once, every slack + 1 runs: with 10,000 tasks
//! every second and retention 30, a burst of 40,000 deletes every 4 s,
//! during which the p99 lateness of 100 ms slices rose to 60–165 ms (115 ms
//! over 20 s). With it, about one task in slack + 1 trims in any one
//! second.
//!
//! Deleted rows become dead tuples that autovacuum reclaims; with the
//! default settings that keeps the tables near their live size.
//!
//! # Performance notes
//!
//! The due scan reads only the window it asks for. With 1M tasks due far in
//! the future, an idle node's scan of the next 5 s is an index range scan
//! that touches three index pages and returns nothing
//! (`benches/results-postgres.md` has the full `EXPLAIN (ANALYZE, BUFFERS)`):
//!
//! ```text
//! Limit (actual time=0.007..0.008 rows=0 loops=1)
//!   Buffers: shared hit=3
//!   ->  Index Scan using tasks_due on tasks (actual time=0.006..0.006 rows=0 loops=1)
//!         Index Cond: (next_run <= '2026-11-28 21:13:28.295235+00'::timestamp with time zone)
//!         Buffers: shared hit=3
//! Execution Time: 0.025 ms
//! ```
//!
//! Connections opened by [`PgStoreBuilder::connect`] use
//! `plan_cache_mode = force_generic_plan` (the statements are fixed; planning
//! the claim statement every time cost milliseconds) and
//! `enable_seqscan = off` (every statement reads by index, and a plan made
//! while a new schema's tables were empty must not stay a full scan for the
//! life of the connection) and `jit = off` (with the inflated cost
//! estimates of `enable_seqscan = off`, PostgreSQL JIT-compiled some of the
//! short statements on every call: a fifth of its CPU under load). A pool
//! passed to [`PgStoreBuilder::from_pool`] should set all three the same
//! way (`PgConnectOptions::options`).
//!
//! [`PgStore::create_tasks`] inserts tasks in bulk (`COPY … FROM STDIN` in
//! one transaction; 1M tasks in 7–9 s on the 2-core test machine) and sends
//! one [`Change::Resync`].
//!
//! [`Change::Resync`]: tickwheel::store::Change::Resync
//! [`Error::Unavailable`]: tickwheel::Error::Unavailable
//! [`Error::Invalid`]: tickwheel::Error::Invalid
//! [`Error::Conflict`]: tickwheel::Error::Conflict

mod error;
mod feed;
mod rows;
mod sql;
mod store;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tickwheel::Error;
use tickwheel::store::DEFAULT_RETENTION;

use crate::error::db_err;

pub use sqlx::migrate::Migrator;
pub use tickwheel::Store;

/// The embedded migrations. They create unqualified names, so run them with
/// `search_path` set to the store's schema: [`migrate`] does that.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "tickwheel";

/// A [`Store`] on PostgreSQL. Cheap to clone (clones share the pool and the
/// change-feed listener).
///
/// Its background tasks (the finish batchers, and the change-feed listener
/// once something subscribes) run on the Tokio runtime the store was created
/// in, until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<store::Inner>,
}

/// Options of a [`PgStore`]: schema, retention, pool size.
#[derive(Debug, Clone)]
#[must_use]
pub struct PgStoreBuilder {
    schema: String,
    retention: usize,
    max_connections: u32,
    acquire_timeout: Duration,
    migrate: bool,
}

impl Default for PgStoreBuilder {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            retention: DEFAULT_RETENTION,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

impl PgStoreBuilder {
    /// The schema holding the tables (default `tickwheel`): letters, digits
    /// and `_`, at most 40 characters, not starting with a digit.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Executions kept per task (default 1000, at least 1; above 2^40 it
    /// means 2^40, which no table holds).
    pub fn retention(mut self, retention: usize) -> Self {
        self.retention = retention.max(1);
        self
    }

    /// Most connections of the pool [`connect`](Self::connect) opens
    /// (default 16). The change-feed listener uses one more.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a call waits for a free connection before failing with
    /// `Unavailable` (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Whether to apply the migrations on start (default true).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Connects to `url` with a new pool, applies the migrations, and
    /// returns the store.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the store starts its background tasks).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a bad URL or schema name,
    /// [`Error::Unavailable`] if the server cannot be reached, or the
    /// migration's error.
    pub async fn connect(self, url: &str) -> Result<PgStore, Error> {
        check_schema(&self.schema)?;
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| Error::invalid("url", e.to_string()))?;
        // The store's statements are fixed and their best plans do not
        // depend on the values bound: a generic plan saves the planning
        // (milliseconds for the claim statement) on every call. Every one of
        // them reads by index; without `enable_seqscan = off` a plan made
        // while a table was still empty (a new schema) scans it whole for
        // as long as the connection lives. JIT compilation is off: these are
        // short statements, and the cost estimates `enable_seqscan = off`
        // inflates made PostgreSQL JIT-compile some of them on every call
        // (a fifth of the server's CPU under load, in LLVM).
        let options = options
            .options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
                ("jit", "off"),
            ])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            // A dead connection fails one call (Unavailable, retried by the
            // engine); pinging before every use would double the round trips.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        self.from_pool(pool).await
    }

    /// A store on an existing pool (migrated unless turned off). Give the
    /// pool's connections the settings [`connect`](Self::connect) uses (see
    /// the crate docs, "Performance notes").
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the store starts its background tasks).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a bad schema name, or the migration's error.
    pub async fn from_pool(self, pool: PgPool) -> Result<PgStore, Error> {
        check_schema(&self.schema)?;
        if self.migrate {
            migrate(&pool, &self.schema).await?;
        }
        Ok(PgStore {
            inner: Arc::new(store::Inner::new(
                pool.clone(),
                &self.schema,
                self.retention,
                pool.options().get_max_connections(),
            )),
        })
    }
}

impl PgStore {
    /// Options for a store.
    pub fn builder() -> PgStoreBuilder {
        PgStoreBuilder::default()
    }

    /// Connects to `url` with the default options (schema `tickwheel`,
    /// retention 1000) and applies the migrations.
    ///
    /// # Errors
    ///
    /// As [`PgStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// A store on an existing pool with the default options, migrated.
    ///
    /// # Errors
    ///
    /// As [`PgStoreBuilder::from_pool`].
    pub async fn from_pool(pool: PgPool) -> Result<Self, Error> {
        Self::builder().from_pool(pool).await
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }
}

fn check_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 40
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "schema",
            "must be 1 to 40 ASCII letters, digits or _, not starting with a digit",
        ))
    }
}

/// Creates `schema` if needed and applies [`MIGRATOR`] inside it. Safe to
/// run from several processes at once (the migrator takes an advisory lock).
///
/// # Errors
///
/// [`Error::Invalid`] for a bad schema name, [`Error::Unavailable`] if the
/// server cannot be reached, [`Error::Backend`] if a migration fails.
///
/// [`Error::Backend`]: tickwheel::Error::Backend
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<(), Error> {
    check_schema(schema)?;
    let mut conn = pool.acquire().await.map_err(db_err)?;
    // Concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide on the
    // catalog's unique index: serialise it on an advisory lock.
    let create = format!(
        "SELECT pg_advisory_lock(hashtext('tickwheel.migrate')); \
         CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         SELECT pg_advisory_unlock(hashtext('tickwheel.migrate')); \
         SET search_path TO \"{schema}\""
    );
    let result = async {
        sqlx::raw_sql(&create)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        MIGRATOR.run(&mut *conn).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_err(e),
            other => Error::Backend {
                backend: error::BACKEND,
                source: Box::new(other),
            },
        })
    }
    .await;
    // The connection's search_path was changed: do not hand it back.
    let _ = conn.detach().close().await;
    result
}
