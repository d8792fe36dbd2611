//! The memory store's execution history: compact records in a slab whose
//! fresh memory is touched off the claim path.
//!
//! At 100,000 fires a second the history is the one part of the store that
//! only grows (until the retention limit): 100,000 new records a second. As
//! boxed [`Execution`]s (a tenant and a node string each, in a per-task
//! B-tree) the process grew by about 30 MB a second (peak RSS), roughly 300
//! bytes a record, and profiles of the slow claim batches showed half their
//! samples in the kernel, zeroing the pages those records were first
//! written to, under the store's lock (`benches/README.md`).
//!
//! So the history is kept differently:
//! - a record ([`Hist`], 104 bytes) holds what an execution does not share
//!   with its task: no task id, no tenant (both come from the task), the
//!   node as an index into a table of names, error and output behind one
//!   pointer (allocated only when either is present), and no `duration_ms`
//!   (it is derived);
//! - records live in fixed chunks of [`CHUNK`] slots, found by index, and the
//!   slots of trimmed or deleted records are reused;
//! - once the first chunk is full, a background thread (`tickwheel-history`)
//!   allocates each next chunk and writes every page of it before the store
//!   needs it, keeping up to [`SPARE`] ready. A claim that fills a chunk
//!   takes a ready one from the thread's channel under the lock (which may
//!   wake the thread); if none is ready (the thread is behind, or could not
//!   be started) it allocates an untouched one itself.
//!
//! The chunks are never returned to the allocator while the store lives:
//! the history of deleted tasks is reused by new runs, not given back.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, sync_channel};

use chrono::{DateTime, Utc};

use crate::model::{Execution, ExecutionId, ExecutionStatus, TaskId, Trigger};

/// Records a chunk holds: about 850 KB of them.
pub(crate) const CHUNK: usize = 8192;

/// Chunks the background thread keeps ready (plus the one it holds while
/// the channel is full): at 100,000 fires a second, 0.33 s of history.
pub(crate) const SPARE: usize = 4;

/// Where a record lives in the [`History`].
pub(crate) type Slot = u32;

/// One execution, without what its task already holds.
#[derive(Debug, Clone)]
pub(crate) struct Hist {
    pub(crate) id: ExecutionId,
    pub(crate) scheduled_for: DateTime<Utc>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) lease_until: Option<DateTime<Utc>>,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    pub(crate) fence: u64,
    pub(crate) attempt: u32,
    /// Index into [`History::nodes`].
    node: u32,
    pub(crate) status: ExecutionStatus,
    pub(crate) trigger: Trigger,
    /// Error and output, absent when both are.
    text: Option<Box<Text>>,
}

#[derive(Debug, Clone, Default)]
struct Text {
    error: Option<String>,
    output: Option<String>,
}

impl Hist {
    /// What a slot holds before its first record: every page of a chunk is
    /// written with it.
    fn vacant() -> Self {
        Self {
            id: ExecutionId::from_uuid(uuid::Uuid::nil()),
            scheduled_for: DateTime::UNIX_EPOCH,
            started_at: DateTime::UNIX_EPOCH,
            finished_at: None,
            lease_until: None,
            retry_at: None,
            fence: 0,
            attempt: 0,
            node: 0,
            status: ExecutionStatus::Missed,
            trigger: Trigger::Schedule,
            text: None,
        }
    }

    /// The uniqueness key within the task, which also orders its history.
    pub(crate) fn key(&self) -> (DateTime<Utc>, u32) {
        (self.scheduled_for, self.attempt)
    }

    pub(crate) fn set_error(&mut self, error: Option<String>) {
        if error.is_some() || self.text.is_some() {
            self.text_mut(|t| t.error = error);
        }
    }

    pub(crate) fn set_output(&mut self, output: Option<String>) {
        if output.is_some() || self.text.is_some() {
            self.text_mut(|t| t.output = output);
        }
    }

    fn text_mut(&mut self, change: impl FnOnce(&mut Text)) {
        let mut text = self.text.take().unwrap_or_default();
        change(&mut text);
        if text.error.is_some() || text.output.is_some() {
            self.text = Some(text);
        }
    }
}

/// Every task's execution records, and the names of the nodes that ran them.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Each of at most [`CHUNK`] records; only the last one has room.
    chunks: Vec<Vec<Hist>>,
    /// Slots whose record was removed.
    free: Vec<Slot>,
    nodes: Vec<Box<str>>,
    node_index: HashMap<Box<str>, u32>,
    prefault: Prefault,
}

#[derive(Debug, Default)]
enum Prefault {
    /// The first chunk is still filling.
    #[default]
    NotNeeded,
    /// Ready chunks come from the background thread.
    Running(Receiver<Vec<Hist>>),
    /// The thread could not be started: chunks are allocated in place.
    Unavailable,
}

impl History {
    /// Stores `e` (its task id and tenant are not kept) and returns its slot.
    pub(crate) fn insert(&mut self, e: &Execution) -> Slot {
        let record = Hist {
            id: e.id,
            scheduled_for: e.scheduled_for,
            started_at: e.started_at,
            finished_at: e.finished_at,
            lease_until: e.lease_until,
            retry_at: e.retry_at,
            fence: e.fence,
            attempt: e.attempt,
            node: self.node_id(&e.node),
            status: e.status,
            trigger: e.trigger,
            text: (e.error.is_some() || e.output.is_some()).then(|| {
                Box::new(Text {
                    error: e.error.clone(),
                    output: e.output.clone(),
                })
            }),
        };
        if let Some(slot) = self.free.pop() {
            *self.get_mut(slot) = record;
            return slot;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            let chunk = self.next_chunk();
            self.chunks.push(chunk);
        }
        let n = self.chunks.len() - 1;
        let last = &mut self.chunks[n];
        last.push(record);
        slot_of(n * CHUNK + last.len() - 1)
    }

    pub(crate) fn get(&self, slot: Slot) -> &Hist {
        let i = slot as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> &mut Hist {
        let i = slot as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Frees `slot` for reuse.
    pub(crate) fn remove(&mut self, slot: Slot) {
        // Drops the text now rather than when the slot is reused.
        self.get_mut(slot).text = None;
        self.free.push(slot);
    }

    /// The record in `slot` as the execution of `task_id` in `tenant`.
    pub(crate) fn execution(&self, slot: Slot, task_id: TaskId, tenant: &str) -> Execution {
        let h = self.get(slot);
        let text = h.text.as_deref();
        Execution {
            id: h.id,
            task_id,
            tenant: tenant.to_owned(),
            scheduled_for: h.scheduled_for,
            started_at: h.started_at,
            finished_at: h.finished_at,
            duration_ms: h
                .finished_at
                .map(|to| u64::try_from((to - h.started_at).num_milliseconds()).unwrap_or(0)),
            attempt: h.attempt,
            status: h.status,
            error: text.and_then(|t| t.error.clone()),
            output: text.and_then(|t| t.output.clone()),
            node: self
                .nodes
                .get(h.node as usize)
                .map_or_else(String::new, |n| n.to_string()),
            trigger: h.trigger,
            lease_until: h.lease_until,
            fence: h.fence,
            retry_at: h.retry_at,
        }
    }

    fn node_id(&mut self, node: &str) -> u32 {
        if let Some(&id) = self.node_index.get(node) {
            return id;
        }
        let id = u32::try_from(self.nodes.len()).expect("fewer than 2^32 scheduler node names");
        self.nodes.push(node.into());
        self.node_index.insert(node.into(), id);
        id
    }

    /// An empty chunk with room for [`CHUNK`] records: a ready one from the
    /// background thread when there is one.
    fn next_chunk(&mut self) -> Vec<Hist> {
        match &self.prefault {
            Prefault::NotNeeded if self.chunks.is_empty() => {
                // Grows as it fills: a small store never holds a whole chunk.
                return Vec::new();
            }
            Prefault::NotNeeded => {
                self.prefault = start_prefaulting();
            }
            Prefault::Running(_) | Prefault::Unavailable => {}
        }
        if let Prefault::Running(ready) = &self.prefault
            && let Ok(chunk) = ready.try_recv()
        {
            return chunk;
        }
        Vec::with_capacity(CHUNK)
    }
}

fn slot_of(index: usize) -> Slot {
    // 2^32 records would be over 400 GB of history.
    Slot::try_from(index).expect("fewer than 2^32 executions in a memory store")
}

/// Starts the thread that prepares chunks; it stops when the store (the
/// receiver) is dropped.
fn start_prefaulting() -> Prefault {
    let (ready, receiver) = sync_channel(SPARE);
    let spawned = std::thread::Builder::new()
        .name("tickwheel-history".to_owned())
        .spawn(move || while ready.send(touched_chunk()).is_ok() {});
    match spawned {
        Ok(_) => Prefault::Running(receiver),
        Err(_) => Prefault::Unavailable,
    }
}

/// An empty chunk whose memory has been written, so the kernel has already
/// backed every page of it.
fn touched_chunk() -> Vec<Hist> {
    let mut chunk = Vec::with_capacity(CHUNK);
    chunk.resize(CHUNK, Hist::vacant());
    std::hint::black_box(&mut chunk);
    chunk.clear();
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewTask;

    fn execution(n: u32, node: &str) -> Execution {
        let now = DateTime::from_timestamp(1_893_456_000, 0).unwrap();
        let task = NewTask::cron("n", "a", "* * * * *")
            .validate("tenant", now)
            .unwrap();
        let mut e = Execution::start(&task, now, n, Trigger::Schedule, node, now, now);
        e.task_id = task.id;
        e
    }

    #[test]
    fn round_trips_an_execution() {
        let mut history = History::default();
        let mut e = execution(1, "node-a");
        let slot = history.insert(&e);
        assert_eq!(history.execution(slot, e.task_id, "tenant"), e);

        e.status = ExecutionStatus::Failed;
        e.finished_at = Some(e.started_at + chrono::Duration::milliseconds(1500));
        e.duration_ms = Some(1500);
        e.error = Some("boom".into());
        e.output = Some("partial".into());
        e.lease_until = None;
        e.retry_at = Some(e.started_at);
        e.fence = 2;
        let slot = history.insert(&e);
        assert_eq!(history.execution(slot, e.task_id, "tenant"), e);

        let h = history.get_mut(slot);
        h.set_error(None);
        h.set_output(None);
        assert!(h.text.is_none(), "no text kept when there is none");
    }

    #[test]
    fn reuses_freed_slots_and_fills_chunks_across_the_prefaulter() {
        let mut history = History::default();
        let slots: Vec<Slot> = (0..CHUNK as u32 * 3 + 5)
            .map(|n| history.insert(&execution(n, if n % 2 == 0 { "a" } else { "b" })))
            .collect();
        assert_eq!(history.chunks.len(), 4);
        assert!(
            history.chunks.iter().all(|c| c.capacity() == CHUNK),
            "every chunk has room for exactly CHUNK records"
        );
        assert_eq!(history.nodes.len(), 2, "node names are interned");
        for (n, slot) in slots.iter().enumerate() {
            assert_eq!(history.get(*slot).attempt, n as u32);
        }
        history.remove(slots[10]);
        let again = history.insert(&execution(99_999, "c"));
        assert_eq!(again, slots[10]);
        assert_eq!(history.get(again).attempt, 99_999);
        assert_eq!(history.chunks.len(), 4, "a freed slot is used first");
    }

    #[test]
    fn a_record_is_compact() {
        let size = std::mem::size_of::<Hist>();
        assert!(size <= 112, "Hist is {size} bytes");
    }
}
