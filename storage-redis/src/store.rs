//! [`RedisStore`]: the [`Store`] contract on Redis or Redis Cluster.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::{join_all, try_join_all};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ScriptInvocation, Value};
use tickwheel::model::{MAX_ERROR_BYTES, MAX_OUTPUT_BYTES, truncate};
use tickwheel::store::{
    Change, ChangeFeed, Claim, ClaimKind, ClaimOutcome, DEFAULT_RETENTION, ExecutionPage,
    ExecutionQuery, Finish, FinishOutcome, MAX_PAGE, Recovered, TaskPage,
};
use tickwheel::{Error, Execution, ExecutionId, ExecutionStatus, Store, Task, TaskId, TaskPatch};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::codec::{
    TASK_FIELDS, TaskFields, array, bytes, corrupt, exec_encoding, exec_from_member,
    exec_from_record, exec_from_reply, kept_aside, lease_member, member_parts, micros, name_of,
    opt_strings, overlay, parse_micros, record_tail, redis_error, strings, task_from_fields,
    trunc_exec, trunc_task,
};
use crate::conn::Conn;
use crate::feed::{self, Message};
use crate::scripts::{
    CLAIM_SCRIPT, CONF_SCRIPT, CREATE_SCRIPT, DELETE_SCRIPT, DUE_SCRIPT, FINISH_SCRIPT,
    HEARTBEAT_SCRIPT, HISTORY_SCRIPT, LAYOUT, RECOVER_SCRIPT, RENEW_SCRIPT, UPDATE_SCRIPT,
};

/// Default number of due-index partitions.
pub const DEFAULT_PARTITIONS: u16 = 16;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "tickwheel";

/// How long a claim batch is re-sent over a reconnecting connection before
/// the error is returned (re-sending is safe: see the `claim` script).
const CLAIM_RETRY_FOR: Duration = Duration::from_secs(5);

/// How many times an update re-reads a task that changed under it.
const UPDATE_ATTEMPTS: usize = 100;

/// Counts and offsets handed to scripts stay well inside the integers a
/// Lua number formats without an exponent.
const SCRIPT_COUNT_MAX: usize = 1_000_000_000;

/// Configuration of a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    prefix: String,
    retention: usize,
    partitions: u16,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            retention: DEFAULT_RETENTION,
            partitions: DEFAULT_PARTITIONS,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisStoreBuilder {
    /// Key prefix (default `tickwheel`): every key and the change channel
    /// start with it, so stores with different prefixes share a server
    /// without seeing each other. No `{` or `}` (it goes inside hash tags).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Ended executions kept per task (default 1000): the latest to end.
    /// Running ones and failed ones awaiting a retry are kept besides,
    /// whatever their number.
    pub fn retention(mut self, retention: usize) -> Self {
        self.retention = retention.max(1);
        self
    }

    /// Number of partitions of the due index (default 16, 1 to 1024). Every
    /// process sharing a prefix must use the same number: the first store
    /// to connect records it and later ones with another number are
    /// refused.
    pub fn partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions;
        self
    }

    /// How long connecting may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a reply may take before the call fails as
    /// [`Error::Unavailable`] (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    fn check(&self) -> Result<(), Error> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::invalid(
                "prefix",
                "must be non-empty and contain no `{` or `}`",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(Error::invalid("partitions", "must be 1 to 1024"));
        }
        Ok(())
    }

    /// Connects to one Redis server (`redis://[user:password@]host:port/[db]`).
    /// The connection reconnects by itself; calls made while it is down
    /// fail with [`Error::Unavailable`].
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a bad URL or option, [`Error::Unavailable`]
    /// if the server cannot be reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, Error> {
        self.check()?;
        let client = redis::Client::open(url).map_err(|e| Error::invalid("url", e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.response_timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(redis_error)?;
        RedisStore::start(self, Conn::Single(manager), vec![client]).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`: one
    /// or more `redis://host:port/`). Commands are routed by slot and
    /// follow resharding and failover.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_cluster<S: AsRef<str>>(self, urls: &[S]) -> Result<RedisStore, Error> {
        self.check()?;
        if urls.is_empty() {
            return Err(Error::invalid("urls", "give at least one cluster node"));
        }
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let clients = urls
            .iter()
            .map(|u| redis::Client::open(*u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("urls", e.to_string()))?;
        let cluster = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(3)
            .build()
            .map_err(|e| Error::invalid("urls", e.to_string()))?;
        let conn = cluster.get_async_connection().await.map_err(redis_error)?;
        RedisStore::start(self, Conn::Cluster(conn), clients).await
    }
}

/// A [`Store`] on Redis: tasks, executions and indexes in hashes and sorted
/// sets, every atomic step one Lua script. Cheap to clone (clones share the
/// connection and the change feed). See the [crate docs](crate) for the
/// key layout and the guarantees.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .field("partitions", &self.shared.bases.len())
            .field("retention", &self.shared.retention)
            .field("conn", &self.shared.conn)
            .finish()
    }
}

struct Shared {
    conn: Conn,
    /// Whether the server is a cluster: then a script call stays within
    /// one partition (one slot); on a single server a batch spans them.
    cluster: bool,
    prefix: String,
    /// `{prefix:pK}` for each partition K.
    bases: Vec<String>,
    retention: usize,
    channel: String,
    changes: broadcast::Sender<Change>,
    pubsub_clients: Vec<redis::Client>,
    /// The feed task's count of (re)subscriptions, once it is started.
    feed_ready: Mutex<Option<watch::Receiver<u64>>>,
    stop: CancellationToken,
    /// The partition and lease member of each execution this store started
    /// and that has not finished, so renew and finish go straight to it.
    owners: Mutex<HashMap<ExecutionId, Owner>>,
    /// Results waiting to be sent, batched (see `RedisStore::finish_batched`).
    finishes: Mutex<FinishQueue>,
    /// Task definitions read, by id: a lost claim for a task whose
    /// definition (`version`) is here gets only the bookkeeping fields back.
    /// A definition is immutable at a version, so an entry is never stale
    /// for its version; the map is emptied when it reaches `DEFS_MAX`.
    defs: Mutex<HashMap<TaskId, Arc<Task>>>,
}

/// Where a running execution this store started is: its partition and its
/// lease member (the key renew and finish look it up by).
struct Owner {
    partition: usize,
    member: String,
}

/// Most task definitions kept in `Shared::defs`.
const DEFS_MAX: usize = 200_000;

#[derive(Default)]
struct FinishQueue {
    jobs: Vec<FinishJob>,
    /// A task is sending batches; new jobs join its next one.
    flushing: bool,
}

/// One result waiting in the queue, with where its reply goes.
struct FinishJob {
    partition: usize,
    item: FinishItem,
    reply: oneshot::Sender<Result<Vec<Value>, Error>>,
}

/// A [`Finish`] encoded for the finish script (layout in `scripts::FINISH`).
struct FinishItem {
    /// The lease member, if this store started the execution and holds it
    /// with the finish's fence ("" if not).
    member: String,
    /// Its task when the member is known ("" if not).
    task: String,
    /// The record to store: whole when the member is known, else without
    /// the encoding, which the script appends.
    record: String,
    node: String,
    lease_until: i64,
    /// `t` (known member, tracked), `r` (a retry_at follows), `a` (texts
    /// kept aside follow), in that order; "" for none.
    flags: &'static str,
    /// "" if none or the run succeeded.
    retry_at: String,
    /// The error and output when kept aside ("" if in the record).
    aside: String,
}

impl FinishItem {
    fn new(f: Finish, member: Option<String>) -> Self {
        let error = f.error.map(|s| truncate(s, MAX_ERROR_BYTES));
        let output = f.output.map(|s| truncate(s, MAX_OUTPUT_BYTES));
        let retry_at = match f.status {
            ExecutionStatus::Succeeded => String::new(),
            _ => f.retry_at.map(micros).unwrap_or_default(),
        };
        let (tail, aside) = record_tail(error.as_deref(), output.as_deref());
        let mut record = format!(
            "{}|{}|{}|{}|{}|{retry_at}|{tail}",
            f.id,
            name_of(&f.status),
            f.fence + 1,
            f.finished_at.timestamp_micros(),
            f.started_at.map(micros).unwrap_or_default(),
        );
        let known = member
            .as_deref()
            .and_then(member_parts)
            .and_then(|(fence, tracked, c)| {
                (fence.parse() == Ok(f.fence)).then(|| {
                    record.push_str(c);
                    let task = c.split(' ').next().unwrap_or_default();
                    (task.to_owned(), tracked == "1")
                })
            });
        let (member, task, tracked) = match known {
            Some((task, tracked)) => (member.unwrap_or_default(), task, tracked),
            None => Default::default(),
        };
        let flags = match (tracked, !retry_at.is_empty(), !aside.is_empty()) {
            (false, false, false) => "",
            (false, false, true) => "a",
            (false, true, false) => "r",
            (false, true, true) => "ra",
            (true, false, false) => "t",
            (true, false, true) => "ta",
            (true, true, false) => "tr",
            (true, true, true) => "tra",
        };
        Self {
            member,
            task,
            record,
            node: f.node,
            lease_until: f.lease_until.timestamp_micros(),
            flags,
            retry_at,
            aside,
        }
    }

    /// Appends the item to a finish script call.
    fn encode(&self, inv: &mut ScriptInvocation<'static>) {
        inv.arg(&self.member)
            .arg(&self.task)
            .arg(&self.record)
            .arg(&self.node)
            .arg(self.lease_until)
            .arg(self.flags);
        if !self.retry_at.is_empty() {
            inv.arg(&self.retry_at);
        }
        if !self.aside.is_empty() {
            inv.arg(&self.aside);
        }
    }
}

/// Most items in one claim or finish script call, so one call never holds
/// the server for long.
const SCRIPT_BATCH: usize = 256;

/// The same error again, for every item of a failed batch.
fn same_error(e: &Error) -> Error {
    if e.is_transient() {
        Error::Unavailable {
            backend: crate::codec::BACKEND,
            source: e.to_string().into(),
        }
    } else {
        Error::Backend {
            backend: crate::codec::BACKEND,
            source: e.to_string().into(),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisStore {
    /// Options for a store: prefix, retention, partitions, timeouts.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// A store with the default options on one server.
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder().connect(url).await
    }

    /// A store with the default options on a Redis Cluster.
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect_cluster`].
    pub async fn connect_cluster<S: AsRef<str>>(urls: &[S]) -> Result<Self, Error> {
        Self::builder().connect_cluster(urls).await
    }

    async fn start(
        options: RedisStoreBuilder,
        conn: Conn,
        pubsub_clients: Vec<redis::Client>,
    ) -> Result<Self, Error> {
        let prefix = options.prefix;
        let bases = (0..options.partitions)
            .map(|k| format!("{{{prefix}:p{k}}}"))
            .collect();
        let (changes, _) = broadcast::channel(4096);
        let store = Self {
            shared: Arc::new(Shared {
                cluster: matches!(conn, Conn::Cluster(_)),
                conn,
                channel: format!("{prefix}:changes"),
                prefix,
                bases,
                retention: options.retention,
                changes,
                pubsub_clients,
                feed_ready: Mutex::new(None),
                stop: CancellationToken::new(),
                owners: Mutex::new(HashMap::new()),
                finishes: Mutex::new(FinishQueue::default()),
                defs: Mutex::new(HashMap::new()),
            }),
        };
        store.check_partitions(options.partitions).await?;
        Ok(store)
    }

    /// Records the partition count for the prefix, or checks it against the
    /// one recorded.
    async fn check_partitions(&self, partitions: u16) -> Result<(), Error> {
        let key = format!("{{{}}}:conf", self.shared.prefix);
        let mut inv = CONF_SCRIPT.prepare_invoke();
        inv.key(&key).arg(partitions).arg(LAYOUT);
        let (recorded, layout): (String, String) = self.eval(&inv).await?;
        if layout != LAYOUT {
            return Err(Error::invalid(
                "prefix",
                format!(
                    "prefix {:?} holds data in an earlier key layout than this version's \
                     ({LAYOUT}); delete its keys or use another prefix",
                    self.shared.prefix
                ),
            ));
        }
        if recorded != partitions.to_string() {
            return Err(Error::invalid(
                "partitions",
                format!(
                    "prefix {:?} was set up with {recorded} partitions, not {partitions}",
                    self.shared.prefix
                ),
            ));
        }
        Ok(())
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    fn partitions(&self) -> usize {
        self.shared.bases.len()
    }

    /// The partition of a task: the low 64 bits of its id (random in a
    /// UUIDv7) modulo the partition count.
    fn partition(&self, id: TaskId) -> usize {
        let (_, low) = id.as_uuid().as_u64_pair();
        (low % self.partitions() as u64) as usize
    }

    fn base(&self, p: usize) -> &str {
        &self.shared.bases[p]
    }

    /// The scheduler membership set (its own hash slot).
    fn members_key(&self) -> String {
        format!("{{{}:nodes}}", self.shared.prefix)
    }

    fn task_key(&self, p: usize, id: TaskId) -> String {
        format!("{}:t:{id}", self.base(p))
    }

    /// A script call on partition `p` with the common arguments set.
    fn invocation(&self, script: &'static Script, p: usize) -> ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        inv.key(format!("{}:due", self.base(p)))
            .arg(self.base(p))
            .arg(self.shared.retention);
        inv
    }

    async fn eval<T: redis::FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'static>,
    ) -> Result<T, Error> {
        let mut conn = self.shared.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(redis_error)
    }

    fn remember(&self, id: ExecutionId, partition: usize, member: String) {
        self.owners().insert(id, Owner { partition, member });
    }

    fn forget(&self, id: ExecutionId) {
        self.owners().remove(&id);
    }

    /// Forgets execution `id`, which is no longer running as its holder
    /// knew it (`taken`: another fence took it over), and says so.
    fn not_running(&self, id: ExecutionId, taken: bool) -> Error {
        self.forget(id);
        Error::conflict(if taken {
            format!("execution {id} was taken over")
        } else {
            format!("execution {id} is no longer running")
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, Owner>> {
        // The map holds plain data; a panic elsewhere cannot break it.
        self.shared.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn defs(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<Task>>> {
        // Plain data; a panic elsewhere cannot break it.
        self.shared.defs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `task`'s definition for lost claims.
    fn keep_def(&self, task: &Task) {
        let mut defs = self.defs();
        if defs.len() >= DEFS_MAX && !defs.contains_key(&task.id) {
            defs.clear();
        }
        defs.insert(task.id, Arc::new(task.clone()));
    }

    /// Partitions to try for an execution, with its lease member in each:
    /// its known partition and member, or every partition and "" (the
    /// script then scans the partition's leases for it).
    fn partitions_of(&self, id: ExecutionId) -> Vec<(usize, String)> {
        match self.owners().get(&id) {
            Some(o) => vec![(o.partition, o.member.clone())],
            None => (0..self.partitions()).map(|p| (p, String::new())).collect(),
        }
    }

    /// The task's fields, tenant and revision; `None` if it does not exist.
    async fn read_task(&self, id: TaskId) -> Result<Option<(Task, Vec<u8>, Vec<u8>)>, Error> {
        let p = self.partition(id);
        let mut conn = self.shared.conn.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.task_key(p, id))
            .arg(&TASK_FIELDS)
            .arg("tn")
            .arg("rv")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let [fields @ .., Some(tenant), Some(rv)] = &values[..] else {
            return Ok(None);
        };
        let task = task_from_fields(fields)?;
        if let Some(task) = &task {
            self.keep_def(task);
        }
        Ok(task.map(|task| (task, tenant.clone(), rv.clone())))
    }

    /// Reads tasks by id, grouped by partition; missing ones are left out.
    async fn read_tasks(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, Task>, Error> {
        let mut groups: Vec<Vec<TaskId>> = vec![Vec::new(); self.partitions()];
        for &id in ids {
            groups[self.partition(id)].push(id);
        }
        let reads = groups
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(p, ids)| async move {
                let mut pipe = redis::pipe();
                for &id in &ids {
                    pipe.cmd("HMGET")
                        .arg(self.task_key(p, id))
                        .arg(&TASK_FIELDS);
                }
                let mut conn = self.shared.conn.clone();
                let rows: Vec<Vec<Option<Vec<u8>>>> =
                    pipe.query_async(&mut conn).await.map_err(redis_error)?;
                let mut tasks = Vec::with_capacity(rows.len());
                for row in rows {
                    if let Some(task) = task_from_fields(&row)? {
                        self.keep_def(&task);
                        tasks.push(task);
                    }
                }
                Ok::<_, Error>(tasks)
            });
        Ok(try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .map(|t| (t.id, t))
            .collect())
    }

    fn change_message(task: &Task) -> String {
        Message::Upserted {
            t: task.tenant.clone(),
            id: task.id,
            nr: task
                .next_run
                .filter(|_| task.enabled)
                .map(|t| t.timestamp_micros()),
            v: task.version,
        }
        .encode()
    }

    /// The script call a partition's items go in: their own partition's in
    /// a cluster, one for all on a single server.
    fn group_of(&self, p: usize) -> usize {
        if self.shared.cluster { p } else { 0 }
    }

    /// Runs the claims `idx` in one call routed to partition `p`,
    /// re-sending the same call (marked as a re-send) while the connection
    /// is being re-established. `encodings` holds each claim's execution
    /// encoding (`exec_encoding`, "" without one).
    async fn claim_group(
        &self,
        p: usize,
        claims: &[Claim],
        encodings: &[String],
        idx: &[usize],
    ) -> Result<Vec<Value>, Error> {
        let deadline = tokio::time::Instant::now() + CLAIM_RETRY_FOR;
        let mut delay = Duration::from_millis(20);
        let mut resend = false;
        loop {
            match self.claim_call(p, claims, encodings, idx, resend).await {
                Err(err)
                    if err.is_transient() && tokio::time::Instant::now() + delay < deadline =>
                {
                    tracing::debug!(%err, "claim failed; re-sending");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                    resend = true;
                }
                other => return other,
            }
        }
    }

    /// One claim script call for the claims `idx`, routed to partition `p`
    /// (`resend`: the call repeats one whose reply was lost).
    async fn claim_call(
        &self,
        p: usize,
        claims: &[Claim],
        encodings: &[String],
        idx: &[usize],
        resend: bool,
    ) -> Result<Vec<Value>, Error> {
        let mut inv = self.invocation(&CLAIM_SCRIPT, p);
        let groups = partition_runs(idx, |&i| self.partition(claims[i].task_id));
        inv.arg(if resend { "1" } else { "0" }).arg(groups.len());
        for (partition, run) in groups {
            inv.arg(self.base(partition)).arg(run.len());
            for &i in run {
                let claim = &claims[i];
                let known = self.defs().get(&claim.task_id).map(|t| t.version);
                encode_claim(&mut inv, known, claim, &encodings[i]);
            }
        }
        let reply = array(self.eval::<Value>(&inv).await?)?;
        if reply.len() != idx.len() {
            return Err(corrupt("claim: one reply per claim expected"));
        }
        Ok(reply)
    }

    /// The outcome of one claim (`c`: its execution's encoding) from its
    /// script reply; `None` for a lost claim whose definition, left out of
    /// the reply, is no longer kept here (the caller reads the task).
    fn claim_outcome(
        &self,
        p: usize,
        claim: Claim,
        c: &str,
        reply: Value,
    ) -> Result<Option<ClaimOutcome>, Error> {
        let items = array(reply)?;
        let Some(kind) = items.first().map(bytes).transpose()?.flatten() else {
            return Err(corrupt("empty claim reply"));
        };
        let rest = &items[1..];
        let started = |claim: Claim, tracked: bool| -> Result<Execution, Error> {
            let e = claim
                .execution
                .map(trunc_exec)
                .ok_or_else(|| corrupt("started without an execution"))?;
            self.remember(e.id, p, lease_member(e.id, e.fence, tracked, c));
            Ok(e)
        };
        Ok(Some(match kind.as_slice() {
            b"S" => ClaimOutcome::Started(started(claim, !rest.is_empty())?),
            b"K" => match strings(rest)?.as_slice() {
                [rec] => ClaimOutcome::Skipped(exec_from_record(rec, None)?),
                _ => return Err(corrupt("bad skipped reply")),
            },
            b"Q" => ClaimOutcome::Queued,
            b"A" => ClaimOutcome::Advanced,
            b"R" => ClaimOutcome::Replaced {
                started: started(claim, true)?,
                replaced: strings(rest)?
                    .iter()
                    .map(|id| {
                        std::str::from_utf8(id)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| corrupt("bad execution id"))
                    })
                    .collect::<Result<_, _>>()?,
            },
            b"L" => {
                let fields = opt_strings(rest)?;
                let current = match fields.first() {
                    // Left out: the definition kept here is current.
                    Some(Some(d)) if d.is_empty() => {
                        let def = self.defs().get(&claim.task_id).cloned();
                        match def {
                            Some(def) => Some(overlay((*def).clone(), &fields)?),
                            None => return Ok(None),
                        }
                    }
                    _ => {
                        let task = task_from_fields(&fields)?;
                        if let Some(task) = &task {
                            self.keep_def(task);
                        }
                        task
                    }
                };
                ClaimOutcome::Lost {
                    current: current.map(Box::new),
                }
            }
            other => {
                return Err(corrupt(format!(
                    "unknown claim reply {:?}",
                    String::from_utf8_lossy(other)
                )));
            }
        }))
    }

    /// Keys of `limit` smallest entries across partitions, each partition
    /// read in sorted chunks by `fetch(partition, after, n)` (which returns
    /// at most `n` entries after `after`, in order). Every partition that
    /// may still hold a smaller entry is read before one is taken, so the
    /// result is the global order.
    async fn merge_partitions<K, F, Fut>(
        &self,
        start: Option<K>,
        limit: usize,
        fetch: F,
    ) -> Result<Vec<K>, Error>
    where
        K: Ord + Clone,
        F: Fn(usize, Option<K>, usize) -> Fut,
        Fut: Future<Output = Result<Vec<K>, Error>>,
    {
        struct Part<K> {
            buf: VecDeque<K>,
            after: Option<K>,
            done: bool,
        }
        let parts = self.partitions();
        let chunk = (limit / parts * 2 + 16).min(limit.max(1));
        let mut state: Vec<Part<K>> = (0..parts)
            .map(|_| Part {
                buf: VecDeque::new(),
                after: start.clone(),
                done: false,
            })
            .collect();
        let mut out = Vec::with_capacity(limit.min(MAX_PAGE * 4));
        while out.len() < limit {
            let need: Vec<usize> = (0..parts)
                .filter(|&p| state[p].buf.is_empty() && !state[p].done)
                .collect();
            if !need.is_empty() {
                let fetched = try_join_all(
                    need.iter()
                        .map(|&p| fetch(p, state[p].after.clone(), chunk)),
                )
                .await?;
                for (p, keys) in need.into_iter().zip(fetched) {
                    let part = &mut state[p];
                    part.done = keys.len() < chunk;
                    if let Some(last) = keys.last() {
                        part.after = Some(last.clone());
                    }
                    part.buf.extend(keys);
                }
            }
            let Some(p) = (0..parts)
                .filter(|&p| !state[p].buf.is_empty())
                .min_by(|&a, &b| state[a].buf[0].cmp(&state[b].buf[0]))
            else {
                break;
            };
            if let Some(k) = state[p].buf.pop_front() {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Runs an idempotent call, again (twice at most, shortly after) if it
    /// failed on a connection being re-established.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut delays = [Duration::from_millis(30), Duration::from_millis(200)].into_iter();
        loop {
            match call().await {
                Err(err) if err.is_transient() => match delays.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }

    /// Queues a result for partition `p` and waits for its reply. Results
    /// queued while a batch is on the wire go together in the next one
    /// (group commit): one script call per batch on a single server, one
    /// per partition in a cluster.
    async fn finish_batched(&self, p: usize, item: FinishItem) -> Result<Vec<Value>, Error> {
        let (tx, rx) = oneshot::channel();
        let start_flusher = {
            let mut q = self.finish_queue();
            q.jobs.push(FinishJob {
                partition: p,
                item,
                reply: tx,
            });
            !std::mem::replace(&mut q.flushing, true)
        };
        if start_flusher {
            tokio::spawn(self.clone().flush_finishes());
        }
        rx.await.map_err(|_| Error::Unavailable {
            backend: crate::codec::BACKEND,
            source: "the result batch was dropped".into(),
        })?
    }

    fn finish_queue(&self) -> std::sync::MutexGuard<'_, FinishQueue> {
        // Plain data; a panic elsewhere cannot break it.
        self.shared
            .finishes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sends queued results until the queue is empty.
    async fn flush_finishes(self) {
        loop {
            let jobs = {
                let mut q = self.finish_queue();
                if q.jobs.is_empty() {
                    q.flushing = false;
                    return;
                }
                std::mem::take(&mut q.jobs)
            };
            let mut groups: Vec<Vec<FinishJob>> =
                (0..self.partitions()).map(|_| Vec::new()).collect();
            for job in jobs {
                groups[self.group_of(job.partition)].push(job);
            }
            // A partition's results next to each other: the script
            // switches key bases only between them.
            for jobs in &mut groups {
                jobs.sort_by_key(|job| job.partition);
            }
            let mut batches = Vec::new();
            for (p, mut jobs) in groups.into_iter().enumerate() {
                while !jobs.is_empty() {
                    let rest = jobs.split_off(jobs.len().min(SCRIPT_BATCH));
                    batches.push((p, std::mem::replace(&mut jobs, rest)));
                }
            }
            let this = &self;
            join_all(batches.into_iter().map(|(p, jobs)| async move {
                let mut inv = this.invocation(&FINISH_SCRIPT, p);
                let groups = partition_runs(&jobs, |job| job.partition);
                inv.arg(groups.len());
                for (partition, run) in groups {
                    inv.arg(this.base(partition)).arg(run.len());
                    for job in run {
                        job.item.encode(&mut inv);
                    }
                }
                let replies = this
                    .eval::<Value>(&inv)
                    .await
                    .and_then(array)
                    .and_then(|r| {
                        if r.len() == jobs.len() {
                            Ok(r)
                        } else {
                            Err(corrupt("finish: one reply per result expected"))
                        }
                    });
                match replies {
                    Ok(replies) => {
                        for (job, reply) in jobs.into_iter().zip(replies) {
                            let _ = job.reply.send(array(reply));
                        }
                    }
                    Err(err) => {
                        for job in jobs {
                            let _ = job.reply.send(Err(same_error(&err)));
                        }
                    }
                }
            }))
            .await;
        }
    }

    /// Spawns the change-feed task on first use; its readiness counter.
    fn feed_ready(&self) -> watch::Receiver<u64> {
        let mut guard = self
            .shared
            .feed_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = guard.as_ref() {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(0);
        tokio::spawn(feed::run(
            self.shared.pubsub_clients.clone(),
            self.shared.channel.clone(),
            self.shared.changes.clone(),
            tx,
            self.shared.stop.clone(),
        ));
        *guard = Some(rx.clone());
        rx
    }
}

fn id_text(bytes: &[u8]) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("id is not text"))
}

fn parse_task_id(s: &str) -> Result<TaskId, Error> {
    s.parse().map_err(|_| corrupt(format!("bad task id {s:?}")))
}

fn clamp(n: usize) -> usize {
    n.min(SCRIPT_COUNT_MAX)
}

/// The idempotent calls, run by the trait methods through `retrying`.
impl RedisStore {
    async fn get_task_once(&self, tenant: &str, id: TaskId) -> Result<Task, Error> {
        match self.read_task(id).await? {
            Some((task, owner, _)) if owner == tenant.as_bytes() => Ok(task),
            _ => Err(Error::task_not_found(id)),
        }
    }

    async fn list_tasks_once(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error> {
        let limit = page.limit.min(MAX_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = self
            .merge_partitions(
                page.after.map(|id| id.to_string()),
                limit,
                |p, after, n| async move {
                    let key = format!("{}:tn:{tenant}", self.base(p));
                    let min = match after {
                        Some(id) => format!("({id}"),
                        None => "-".to_owned(),
                    };
                    let mut conn = self.shared.conn.clone();
                    redis::cmd("ZRANGEBYLEX")
                        .arg(key)
                        .arg(min)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(n)
                        .query_async::<Vec<String>>(&mut conn)
                        .await
                        .map_err(redis_error)
                },
            )
            .await?;
        let ids: Vec<TaskId> = ids
            .iter()
            .map(|s| parse_task_id(s))
            .collect::<Result<_, _>>()?;
        let mut tasks = self.read_tasks(&ids).await?;
        Ok(ids
            .iter()
            .filter_map(|id| tasks.remove(id))
            .filter(|t| t.tenant == tenant)
            .collect())
    }

    async fn due_tasks_once(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let horizon_us = horizon.timestamp_micros();
        let start = after.map(|(t, id)| (t.timestamp_micros(), id.to_string()));
        let keys = self
            .merge_partitions(start, limit, |p, after, n| async move {
                let mut inv = self.invocation(&DUE_SCRIPT, p);
                match &after {
                    Some((t, id)) => inv.arg(t.to_string()).arg(id),
                    None => inv.arg("").arg(""),
                };
                inv.arg(horizon_us.to_string()).arg(clamp(n));
                let flat = strings(&array(self.eval::<Value>(&inv).await?)?)?;
                flat.chunks(2)
                    .map(|pair| match pair {
                        [id, score] => Ok((parse_micros(score)?.timestamp_micros(), id_text(id)?)),
                        _ => Err(corrupt("odd due page")),
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await?;
        let ids: Vec<TaskId> = keys
            .iter()
            .map(|(_, id)| parse_task_id(id))
            .collect::<Result<_, _>>()?;
        let mut tasks = self.read_tasks(&ids).await?;
        // A task claimed or changed since its index entry was read is
        // returned as it is now, if it still belongs in the window.
        Ok(ids
            .iter()
            .filter_map(|id| tasks.remove(id))
            .filter(|t| {
                t.enabled
                    && t.next_run.is_some_and(|next| {
                        next <= horizon && after.is_none_or(|a| (next, t.id) > a)
                    })
            })
            .collect())
    }

    async fn due_retries_once(
        &self,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Execution>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let horizon_us = horizon.timestamp_micros().to_string();
        let reads = (0..self.partitions()).map(|p| {
            let horizon_us = horizon_us.clone();
            async move {
                let mut conn = self.shared.conn.clone();
                let records: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                    .arg(format!("{}:retry", self.base(p)))
                    .arg("-inf")
                    .arg(horizon_us)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(clamp(limit))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                // The texts kept aside, for the records that need them.
                let kept = records
                    .iter()
                    .map(|rec| kept_aside(rec))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut pipe = redis::pipe();
                for (id, task) in kept.iter().flatten() {
                    pipe.cmd("HGET")
                        .arg(format!("{}:o:{}", self.base(p), id_text(task)?))
                        .arg(*id);
                }
                let texts: Vec<Option<Vec<u8>>> = if kept.iter().any(Option::is_some) {
                    pipe.query_async(&mut conn).await.map_err(redis_error)?
                } else {
                    Vec::new()
                };
                let mut texts = texts.into_iter();
                let mut out = Vec::with_capacity(records.len());
                for (rec, kept) in records.iter().zip(&kept) {
                    let text = match kept {
                        None => None,
                        Some(_) => match texts.next().flatten() {
                            Some(text) => Some(text),
                            // Its task was deleted between the two reads:
                            // the retry is gone with it.
                            None => continue,
                        },
                    };
                    out.push(exec_from_record(rec, text.as_deref())?);
                }
                Ok::<_, Error>(out)
            }
        });
        let mut all: Vec<Execution> = try_join_all(reads).await?.into_iter().flatten().collect();
        all.sort_by_key(|e| (e.retry_at, e.id));
        all.truncate(limit);
        Ok(all)
    }

    async fn renew_lease_once(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error> {
        let tries = self
            .partitions_of(id)
            .into_iter()
            .map(|(p, member)| async move {
                let mut inv = self.invocation(&RENEW_SCRIPT, p);
                inv.arg(id.to_string())
                    .arg(fence)
                    .arg(micros(until))
                    .arg(member);
                strings(&array(self.eval::<Value>(&inv).await?)?)
            });
        let answers = try_join_all(tries).await?;
        let mut taken = false;
        for reply in answers {
            match reply.as_slice() {
                [ok, member] if ok == b"ok" => {
                    // The member may have been rewritten (a policy switch
                    // made its end update its task). Only an entry still
                    // here is updated: a finish may have removed it since.
                    let member = id_text(member)?;
                    if let Some(o) = self.owners().get_mut(&id) {
                        o.member = member;
                    }
                    return Ok(());
                }
                [taken_] if taken_ == b"taken" => taken = true,
                [gone] if gone == b"gone" => {}
                _ => return Err(corrupt("bad renew reply")),
            }
        }
        // A fenced run is cancelled without a finish: forget it now.
        Err(self.not_running(id, taken))
    }

    async fn executions_once(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error> {
        let p = self.partition(task_id);
        let mut inv = self.invocation(&HISTORY_SCRIPT, p);
        inv.arg(task_id.to_string())
            .arg(tenant)
            .arg(clamp(query.offset))
            .arg(clamp(query.limit))
            .arg(query.status.map(|s| name_of(&s)).unwrap_or_default());
        let reply = array(self.eval::<Value>(&inv).await?)?;
        let mut items = reply.into_iter();
        let total = match items.next() {
            Some(Value::Int(n)) => usize::try_from(n).unwrap_or(0),
            Some(v) if bytes(&v)?.as_deref() == Some(b"notfound".as_slice()) => {
                return Err(Error::task_not_found(task_id));
            }
            _ => return Err(corrupt("bad history reply")),
        };
        let executions = items
            .map(|v| exec_from_reply(&strings(&array(v)?)?))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExecutionPage { executions, total })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_task(&self, task: Task) -> Result<Task, Error> {
        let task = trunc_task(task);
        let p = self.partition(task.id);
        let f = TaskFields::of(&task)?;
        let mut inv = self.invocation(&CREATE_SCRIPT, p);
        inv.arg(task.id.to_string())
            .arg(f.d)
            .arg(&task.tenant)
            .arg(f.next_run)
            .arg(f.last_run)
            .arg(f.version)
            .arg(f.enabled)
            .arg(f.status)
            .arg(f.overlap)
            .arg(f.max_retries)
            .arg(f.backoff_ms)
            .arg(f.is_cron)
            .arg(f.bookkeeping)
            .arg(&self.shared.channel)
            .arg(Self::change_message(&task));
        match self.eval::<String>(&inv).await?.as_str() {
            "ok" => {
                self.keep_def(&task);
                Ok(task)
            }
            "exists" => Err(Error::conflict(format!("task {} already exists", task.id))),
            other => Err(corrupt(format!("create: {other}"))),
        }
    }

    async fn get_task(&self, tenant: &str, id: TaskId) -> Result<Task, Error> {
        self.retrying(|| self.get_task_once(tenant, id)).await
    }

    async fn list_tasks(&self, tenant: &str, page: TaskPage) -> Result<Vec<Task>, Error> {
        self.retrying(|| self.list_tasks_once(tenant, page)).await
    }

    async fn due_tasks(
        &self,
        after: Option<(DateTime<Utc>, TaskId)>,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.retrying(|| self.due_tasks_once(after, horizon, limit))
            .await
    }

    async fn due_retries(
        &self,
        horizon: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Execution>, Error> {
        self.retrying(|| self.due_retries_once(horizon, limit))
            .await
    }

    async fn renew_lease(
        &self,
        id: ExecutionId,
        fence: u64,
        until: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.retrying(|| self.renew_lease_once(id, fence, until))
            .await
    }

    async fn executions(
        &self,
        tenant: &str,
        task_id: TaskId,
        query: ExecutionQuery,
    ) -> Result<ExecutionPage, Error> {
        self.retrying(|| self.executions_once(tenant, task_id, query))
            .await
    }

    async fn update_task(
        &self,
        tenant: &str,
        id: TaskId,
        patch: &TaskPatch,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Task, Error> {
        let p = self.partition(id);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some((old, owner, rv)) = self.read_task(id).await? else {
                return Err(Error::task_not_found(id));
            };
            if owner != tenant.as_bytes() {
                return Err(Error::task_not_found(id));
            }
            if let Some(expected) = expected_version.filter(|v| *v != old.version) {
                return Err(Error::conflict(format!(
                    "task {id} is at version {}, not {expected}",
                    old.version
                )));
            }
            let updated = trunc_task(patch.apply(&old, now)?);
            let f = TaskFields::of(&updated)?;
            let mut inv = self.invocation(&UPDATE_SCRIPT, p);
            inv.arg(id.to_string())
                .arg(tenant)
                .arg(rv)
                .arg(old.next_run.map(micros).unwrap_or_default())
                .arg(f.d)
                .arg(f.next_run)
                .arg(f.version)
                .arg(f.enabled)
                .arg(f.status)
                .arg(f.overlap)
                .arg(f.max_retries)
                .arg(f.backoff_ms)
                .arg(f.is_cron)
                .arg(f.bookkeeping)
                .arg(&self.shared.channel)
                .arg(Self::change_message(&updated));
            match self.eval::<String>(&inv).await?.as_str() {
                "ok" => {
                    self.keep_def(&updated);
                    return Ok(updated);
                }
                "notfound" => return Err(Error::task_not_found(id)),
                "retry" => continue,
                other => return Err(corrupt(format!("update: {other}"))),
            }
        }
        Err(Error::conflict(format!(
            "task {id} kept changing while being updated"
        )))
    }

    async fn delete_task(&self, tenant: &str, id: TaskId) -> Result<(), Error> {
        let p = self.partition(id);
        let mut inv = self.invocation(&DELETE_SCRIPT, p);
        inv.arg(id.to_string())
            .arg(tenant)
            .arg(&self.shared.channel)
            .arg(Message::Deleted { id }.encode());
        match self.eval::<String>(&inv).await?.as_str() {
            "ok" => Ok(()),
            "notfound" => Err(Error::task_not_found(id)),
            other => Err(corrupt(format!("delete: {other}"))),
        }
    }

    async fn claim(&self, claims: Vec<Claim>) -> Result<Vec<ClaimOutcome>, Error> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.partitions()];
        for (i, c) in claims.iter().enumerate() {
            groups[self.group_of(self.partition(c.task_id))].push(i);
        }
        // Items of one partition next to each other: the script switches
        // key bases only between them.
        for idx in &mut groups {
            idx.sort_by_key(|&i| self.partition(claims[i].task_id));
        }
        // Each execution's encoding, written once: sent with the claim
        // (again if re-sent) and kept in its lease member.
        let encodings: Vec<String> = claims
            .iter()
            .map(|c| c.execution.as_ref().map(exec_encoding).unwrap_or_default())
            .collect();
        let calls = groups
            .iter()
            .enumerate()
            .flat_map(|(p, idx)| idx.chunks(SCRIPT_BATCH).map(move |chunk| (p, chunk)))
            .map(|(p, idx)| {
                let (claims, encodings) = (&claims, &encodings);
                async move {
                    let reply = self.claim_group(p, claims, encodings, idx).await?;
                    Ok::<_, Error>((idx, reply))
                }
            })
            .collect::<Vec<_>>();
        let replies = try_join_all(calls).await?;
        let mut slots: Vec<Option<Value>> = (0..claims.len()).map(|_| None).collect();
        for (idx, reply) in replies {
            for (&i, r) in idx.iter().zip(reply) {
                slots[i] = Some(r);
            }
        }
        let mut outcomes = Vec::with_capacity(claims.len());
        for ((claim, c), reply) in claims.into_iter().zip(&encodings).zip(slots) {
            let reply = reply.ok_or_else(|| corrupt("claim without a reply"))?;
            let id = claim.task_id;
            let outcome = match self.claim_outcome(self.partition(id), claim, c, reply)? {
                Some(outcome) => outcome,
                None => ClaimOutcome::Lost {
                    current: self.read_task(id).await?.map(|(t, ..)| Box::new(t)),
                },
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn finish(&self, f: Finish) -> Result<FinishOutcome, Error> {
        if f.status == ExecutionStatus::Running {
            return Err(Error::invalid(
                "status",
                "a finished execution cannot be running",
            ));
        }
        let id = f.id;
        let mut parts = self.partitions_of(id);
        let answers: Vec<(usize, Vec<Value>)> = if let [(p, ref mut member)] = parts[..] {
            let item = FinishItem::new(f, Some(std::mem::take(member)));
            vec![(p, self.finish_batched(p, item).await?)]
        } else {
            // Started through another store instance: ask every partition.
            let item = &FinishItem::new(f, None);
            try_join_all(parts.into_iter().map(|(p, _)| async move {
                let mut inv = self.invocation(&FINISH_SCRIPT, p);
                inv.arg(1).arg(self.base(p)).arg(1);
                item.encode(&mut inv);
                let reply = array(self.eval::<Value>(&inv).await?)?;
                let first = reply
                    .into_iter()
                    .next()
                    .ok_or_else(|| corrupt("empty finish reply"))?;
                Ok::<_, Error>((p, array(first)?))
            }))
            .await?
        };
        let mut taken = false;
        for (p, reply) in answers {
            let kind = reply.first().map(bytes).transpose()?.flatten();
            match kind.as_deref() {
                Some(b"OK") => {
                    self.forget(id);
                    let started = match strings(&reply[1..])?.as_slice() {
                        [] => None,
                        [member, lease] => {
                            let e = exec_from_member(member, lease)?;
                            self.remember(e.id, p, id_text(member)?);
                            Some(e)
                        }
                        _ => return Err(corrupt("bad finish reply")),
                    };
                    return Ok(FinishOutcome { started });
                }
                Some(b"C") => {
                    taken |= reply.get(1).map(bytes).transpose()?.flatten().as_deref()
                        == Some(b"taken".as_slice());
                }
                _ => return Err(corrupt("unknown finish reply")),
            }
        }
        Err(self.not_running(id, taken))
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        node: &str,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recovered, Error> {
        let mut out = Recovered::default();
        if limit == 0 {
            return Ok(out);
        }
        let now_us = micros(now);
        let counts = join_all((0..self.partitions()).map(|p| {
            let now_us = &now_us;
            async move {
                let mut conn = self.shared.conn.clone();
                redis::cmd("ZCOUNT")
                    .arg(format!("{}:leases", self.base(p)))
                    .arg("-inf")
                    .arg(format!("({now_us}"))
                    .query_async::<usize>(&mut conn)
                    .await
                    .map_err(redis_error)
            }
        }))
        .await;
        let mut remaining = limit;
        for (p, count) in counts.into_iter().enumerate() {
            let count = count?;
            if count == 0 || remaining == 0 {
                continue;
            }
            let n = count.min(remaining).min(MAX_PAGE);
            let mut inv = self.invocation(&RECOVER_SCRIPT, p);
            inv.arg(&now_us).arg(node).arg(micros(lease_until)).arg(n);
            for entry in array(self.eval::<Value>(&inv).await?)? {
                match strings(&array(entry)?)?.as_slice() {
                    [kind, rec] if kind == b"A" => {
                        let e = exec_from_record(rec, None)?;
                        self.forget(e.id);
                        remaining = remaining.saturating_sub(1);
                        out.abandoned.push(e);
                    }
                    [kind, member, lease] if kind == b"S" => {
                        let e = exec_from_member(member, lease)?;
                        self.remember(e.id, p, id_text(member)?);
                        out.started.push(e);
                    }
                    _ => return Err(corrupt("unknown recover reply")),
                }
            }
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        node: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>, Error> {
        let mut inv = HEARTBEAT_SCRIPT.prepare_invoke();
        inv.key(self.members_key())
            .arg(node)
            .arg(micros(now))
            .arg(micros(until));
        let mut live: Vec<String> = self.retrying(|| self.eval(&inv)).await?;
        live.sort_unstable();
        Ok(live)
    }

    async fn leave(&self, node: &str) -> Result<(), Error> {
        let mut conn = self.shared.conn.clone();
        redis::cmd("ZREM")
            .arg(self.members_key())
            .arg(node)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<ChangeFeed, Error> {
        let rx = self.shared.changes.subscribe();
        let mut ready = self.feed_ready();
        match tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|g| *g > 0)).await {
            Ok(Ok(_)) => Ok(ChangeFeed::new(rx)),
            _ => Err(Error::Unavailable {
                backend: crate::codec::BACKEND,
                source: "could not subscribe to the change channel".into(),
            }),
        }
    }
}

/// Appends one claim to a claim script call (layout in `scripts::CLAIM`).
fn encode_claim(
    inv: &mut ScriptInvocation<'static>,
    known_version: Option<u64>,
    c: &Claim,
    encoding: &str,
) {
    inv.arg(c.task_id.to_string());
    match &c.kind {
        ClaimKind::Scheduled {
            expected_next_run,
            expected_version,
            new_next_run,
        } => {
            inv.arg(if known_version == Some(*expected_version) {
                "S"
            } else {
                "T"
            })
            .arg(expected_next_run.timestamp_micros())
            .arg(expected_version);
            match new_next_run {
                Some(t) => inv.arg(t.timestamp_micros()),
                None => inv.arg(""),
            };
            if known_version != Some(*expected_version) {
                match known_version {
                    Some(v) => inv.arg(v),
                    None => inv.arg(""),
                };
            }
        }
        ClaimKind::Retry { failed } => {
            inv.arg("R").arg(failed.to_string());
        }
        // `ClaimKind::Manual`, the only other kind.
        _ => {
            inv.arg("M");
        }
    }
    inv.arg(c.missed.len() * 2 + usize::from(c.execution.is_some()));
    if !c.missed.is_empty() {
        inv.arg(c.now.timestamp_micros()).arg(&c.node);
        for at in &c.missed {
            inv.arg(ExecutionId::new().to_string())
                .arg(at.timestamp_micros());
        }
    }
    if let Some(e) = &c.execution {
        inv.arg(e.id.to_string())
            .arg(e.scheduled_for.timestamp_micros())
            .arg(format!("{:010}", e.attempt))
            .arg(e.started_at.timestamp_micros())
            .arg(e.fence)
            .arg(e.lease_until.map(micros).unwrap_or_default())
            .arg(encoding);
    }
}

/// `items` (ordered by partition) as runs of one partition each, with
/// that partition: a script call switches key bases once per run.
fn partition_runs<T>(items: &[T], partition: impl Fn(&T) -> usize) -> Vec<(usize, &[T])> {
    let mut runs = Vec::new();
    let mut rest = items;
    while let Some(first) = rest.first() {
        let p = partition(first);
        let len = rest.iter().take_while(|item| partition(item) == p).count();
        let (run, tail) = rest.split_at(len);
        runs.push((p, run));
        rest = tail;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickwheel::{NewTask, Overlap, Policy, Trigger};

    /// The first reply word of each claim of a call.
    fn kinds(reply: Vec<Value>) -> Vec<Vec<u8>> {
        reply
            .into_iter()
            .map(|r| bytes(&array(r).unwrap()[0]).unwrap().unwrap())
            .collect()
    }

    /// A claim re-sent after its reply was lost is answered as the first
    /// time (started, or skipped with the same record); sent again without
    /// the re-send mark it loses. Needs the single test server
    /// (`TICKWHEEL_TEST_REDIS_URL`; skipped without it, a failure under
    /// `CI=true`). A unit test, not in `tests/`, because it drives the
    /// crate-private `claim_call`; so it repeats `tests/common`'s
    /// `env_or_skip` rather than sharing it.
    #[tokio::test]
    async fn a_resent_claim_is_answered_as_first_applied() {
        let Ok(url) = std::env::var("TICKWHEEL_TEST_REDIS_URL") else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "TICKWHEEL_TEST_REDIS_URL is not set and CI=true"
            );
            eprintln!("SKIPPED: TICKWHEEL_TEST_REDIS_URL is not set");
            return;
        };
        let prefix = format!("test-resend-{}", ExecutionId::new());
        let store = RedisStore::builder()
            .prefix(prefix)
            .connect(&url)
            .await
            .unwrap();
        let mut input = NewTask::cron("r", "a", "* * * * *");
        input.policy = Some(Policy {
            overlap: Overlap::Skip,
            ..Policy::default()
        });
        let task = store
            .create_task(input.validate("resend", Utc::now()).unwrap())
            .await
            .unwrap();
        let claim = |at: DateTime<Utc>, next: DateTime<Utc>| Claim {
            task_id: task.id,
            kind: ClaimKind::Scheduled {
                expected_next_run: at,
                expected_version: task.version,
                new_next_run: Some(next),
            },
            execution: Some(Execution::start(
                &task,
                at,
                1,
                Trigger::Schedule,
                "n",
                at,
                at + chrono::Duration::seconds(30),
            )),
            missed: Vec::new(),
            node: "n".into(),
            now: at,
        };
        let at = task.next_run.unwrap();
        let next = at + chrono::Duration::seconds(60);
        // The first starts a run, the second is skipped while it runs.
        let claims = [
            claim(at, next),
            claim(next, next + chrono::Duration::seconds(60)),
        ];
        let p = store.partition(task.id);
        let encodings: Vec<String> = claims
            .iter()
            .map(|c| exec_encoding(c.execution.as_ref().unwrap()))
            .collect();
        for i in 0..2 {
            let first = store
                .claim_call(p, &claims, &encodings, &[i], false)
                .await
                .unwrap();
            let again = store
                .claim_call(p, &claims, &encodings, &[i], true)
                .await
                .unwrap();
            assert_eq!(kinds(first.clone()), kinds(again.clone()));
            if i == 1 {
                let record = |reply: Vec<Value>| {
                    let items = array(reply.into_iter().next().unwrap()).unwrap();
                    exec_from_record(&strings(&items[1..]).unwrap()[0], None).unwrap()
                };
                assert_eq!(record(first), record(again), "the same skipped record");
            }
            let stale = store
                .claim_call(p, &claims, &encodings, &[i], false)
                .await
                .unwrap();
            assert_eq!(kinds(stale), vec![b"L".to_vec()]);
        }
    }
}
