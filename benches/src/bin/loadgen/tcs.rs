//! The `tokio-cron-scheduler` engine: one `JobScheduler` per node, each job
//! a cron job whose id is the same on every node.
//!
//! Memory: the nodes share one `SimpleMetadataStore` behind a mutex, so
//! they see one `next_tick` per job. PostgreSQL: each node has its own
//! `PostgresMetadataStore` and `PostgresNotificationStore` (own
//! connections) on its default tables, in a schema made for this run.
//!
//! The job body is not told which tick it runs for, so every node's
//! metadata store is wrapped in [`NotingStore`], which notes the
//! `next_tick` of each due job that the scheduler's poll listed; the job
//! body reads the note for its job (see the harness docs for the limits).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex as AsyncMutex, RwLock};
use tokio_cron_scheduler::job::job_data_prost::{JobAndNextTick, JobStoredData};
use tokio_cron_scheduler::store::{DataStore, InitStore};
use tokio_cron_scheduler::{
    JobBuilder, JobScheduler, JobSchedulerError, MetaDataStorage, NotificationStore,
    PostgresMetadataStore, PostgresNotificationStore, PostgresStore, SimpleJobCode,
    SimpleMetadataStore, SimpleNotificationCode, SimpleNotificationStore,
};
use uuid::Uuid;

use crate::delayqueue::noop;
use crate::ledger::Ledger;
use crate::{Args, Audit, Started, StoreKind};

type Inner = Arc<AsyncMutex<Box<dyn MetaDataStorage + Send + Sync>>>;
/// Per node: job id → the due `next_tick` (seconds) its last poll listed.
type Notes = Arc<Mutex<HashMap<Uuid, u64>>>;
type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, JobSchedulerError>> + Send>>;

/// A metadata store that delegates to `inner` and notes the due ticks that
/// `list_next_ticks` returns.
struct NotingStore {
    inner: Inner,
    notes: Notes,
}

impl DataStore<JobStoredData> for NotingStore {
    fn get(&mut self, id: Uuid) -> Boxed<Option<JobStoredData>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.get(id);
            fut.await
        })
    }

    fn add_or_update(&mut self, data: JobStoredData) -> Boxed<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.add_or_update(data);
            fut.await
        })
    }

    fn delete(&mut self, guid: Uuid) -> Boxed<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.delete(guid);
            fut.await
        })
    }
}

impl InitStore for NotingStore {
    fn init(&mut self) -> Boxed<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.init();
            fut.await
        })
    }

    fn inited(&mut self) -> Boxed<bool> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.inited();
            fut.await
        })
    }
}

impl MetaDataStorage for NotingStore {
    fn list_next_ticks(&mut self) -> Boxed<Vec<JobAndNextTick>> {
        let inner = self.inner.clone();
        let notes = self.notes.clone();
        Box::pin(async move {
            let fut = inner.lock().await.list_next_ticks();
            let ticks = fut.await?;
            let now = Utc::now().timestamp();
            let mut notes = notes.lock().unwrap_or_else(|e| e.into_inner());
            for t in &ticks {
                if let Some(id) = &t.id
                    && t.next_tick > 0
                    && t.next_tick as i64 <= now
                {
                    notes.insert(id.into(), t.next_tick);
                }
            }
            Ok(ticks)
        })
    }

    fn set_next_and_last_tick(
        &mut self,
        guid: Uuid,
        next_tick: Option<DateTime<Utc>>,
        last_tick: Option<DateTime<Utc>>,
    ) -> Boxed<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner
                .lock()
                .await
                .set_next_and_last_tick(guid, next_tick, last_tick);
            fut.await
        })
    }

    fn time_till_next_job(&mut self) -> Boxed<Option<Duration>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let fut = inner.lock().await.time_till_next_job();
            fut.await
        })
    }
}

fn tcs_error(what: &str) -> impl FnOnce(JobSchedulerError) -> anyhow::Error + '_ {
    move |e| anyhow!("tokio-cron-scheduler: {what}: {e:?}")
}

/// Creates the nodes and registers every job on each.
pub(crate) async fn start(args: &Args, created: &Arc<AtomicUsize>) -> Result<Started> {
    let ledger = Arc::new(Ledger::new());
    // Ids fixed per run and shared by the nodes: run prefix, job index.
    let run = Uuid::now_v7();
    let run_hi = run.as_u64_pair().0;
    let job_id = |job: u32| Uuid::from_u64_pair(run_hi, u64::from(job));
    // Sized so one second's activations fit (default 200).
    let channel_size = args.tasks.max(200);
    let shared_memory: Inner = Arc::new(AsyncMutex::new(Box::new(SimpleMetadataStore::default())));
    // Its DDL names constraints with fixed names (`pk_metadata`), which
    // must be unique in a schema: each run gets a schema of its own, set
    // as the connections' search path.
    let url = match &args.store_kind {
        StoreKind::Postgres(url) => {
            let schema = format!("tcs_{}", run.simple());
            let pool = sqlx::PgPool::connect(url).await?;
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await?;
            pool.close().await;
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}options=-c%20search_path%3D{schema}")
        }
        _ => String::new(),
    };
    let mut nodes = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let notes: Notes = Arc::default();
        let (inner, notifications): (Inner, Box<dyn NotificationStore + Send + Sync>) =
            match &args.store_kind {
                StoreKind::Memory => (
                    shared_memory.clone(),
                    Box::new(SimpleNotificationStore::default()),
                ),
                StoreKind::Postgres(_) => {
                    let connect = || Arc::new(RwLock::new(PostgresStore::Created(url.clone())));
                    (
                        Arc::new(AsyncMutex::new(Box::new(PostgresMetadataStore {
                            store: connect(),
                            init_tables: true,
                            table: "job".to_owned(),
                        }))),
                        Box::new(PostgresNotificationStore {
                            store: connect(),
                            init_tables: true,
                            table: "notification".to_owned(),
                            states_table: "notification_state".to_owned(),
                        }),
                    )
                }
                StoreKind::Redis(_) => unreachable!("refused by parse_args"),
            };
        let metadata = NotingStore {
            inner,
            notes: notes.clone(),
        };
        let sched = JobScheduler::new_with_storage_and_code(
            Box::new(metadata),
            notifications,
            Box::new(SimpleJobCode::default()),
            Box::new(SimpleNotificationCode::default()),
            channel_size,
        )
        .await
        .map_err(tcs_error("creating a scheduler"))?;
        for job in 0..args.tasks as u32 {
            let notes = notes.clone();
            let ledger = ledger.clone();
            let built = JobBuilder::new()
                .with_timezone(Utc)
                .with_cron_job_type()
                .with_job_id(job_id(job).into())
                .with_schedule(&args.schedule)
                .map_err(tcs_error("--schedule"))?
                .with_run_async(Box::new(move |id, _scheduler| {
                    let intended = notes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .copied();
                    let ledger = ledger.clone();
                    Box::pin(async move {
                        // No note: round the start down to its second.
                        let intended_s =
                            intended.map_or_else(|| Utc::now().timestamp(), |t| t as i64);
                        ledger.record_now(job, intended_s);
                        noop().await;
                    })
                }))
                .build()
                .map_err(tcs_error("building a job"))?;
            sched.add(built).await.map_err(tcs_error("adding a job"))?;
            created.fetch_add(1, Ordering::Relaxed);
        }
        nodes.push(sched);
    }
    for sched in &nodes {
        sched.start().await.map_err(tcs_error("starting"))?;
    }
    Ok(Started {
        audit: Audit::Ledger(ledger),
        stop: Box::pin(async move {
            for mut sched in nodes {
                let _ = tokio::time::timeout(Duration::from_secs(5), sched.shutdown()).await;
            }
        }),
        counters: Vec::new(),
    })
}
