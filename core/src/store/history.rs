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
//! - records live in a [`Slab`]: fixed chunks found by index, slots of
//!   trimmed or deleted records reused, and each next chunk's memory touched
//!   by a background thread (`tickwheel-history`) before a claim needs it.
//!   At 100,000 fires a second, [`SPARE`](super::slab::SPARE) ready chunks
//!   are 0.33 s of history.
//!
//! The history of deleted tasks is reused by new runs, not given back to
//! the allocator.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::slab::{Slab, Slot, Vacant};
use crate::model::{Execution, ExecutionId, ExecutionStatus, TaskId, Trigger};

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

impl Vacant for Hist {
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
}

impl Hist {
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
#[derive(Debug)]
pub(crate) struct History {
    records: Slab<Hist>,
    nodes: Vec<Box<str>>,
    node_index: HashMap<Box<str>, u32>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            records: Slab::new("tickwheel-history"),
            nodes: Vec::new(),
            node_index: HashMap::new(),
        }
    }
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
        self.records.insert(record)
    }

    pub(crate) fn get(&self, slot: Slot) -> &Hist {
        self.records.get(slot)
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> &mut Hist {
        self.records.get_mut(slot)
    }

    /// Frees `slot` for reuse (its text is dropped now).
    pub(crate) fn remove(&mut self, slot: Slot) {
        self.records.remove(slot);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewTask;
    use crate::store::slab::CHUNK;

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
    fn interns_node_names_and_frees_a_removed_record_with_its_text() {
        let mut history = History::default();
        let slots: Vec<Slot> = (0..CHUNK as u32 + 5)
            .map(|n| history.insert(&execution(n, if n % 2 == 0 { "a" } else { "b" })))
            .collect();
        assert_eq!(history.nodes.len(), 2, "node names are interned");
        for (n, slot) in slots.iter().enumerate() {
            assert_eq!(history.get(*slot).attempt, n as u32);
        }
        history.get_mut(slots[10]).set_error(Some("boom".into()));
        history.remove(slots[10]);
        assert!(history.get(slots[10]).text.is_none(), "the text is dropped");
        let again = history.insert(&execution(99_999, "c"));
        assert_eq!(again, slots[10], "a freed slot is used first");
        assert_eq!(history.get(again).attempt, 99_999);
        assert_eq!(history.execution(again, TaskId::new(), "t").node, "c");
    }

    #[test]
    fn a_record_is_compact() {
        let size = std::mem::size_of::<Hist>();
        assert!(size <= 112, "Hist is {size} bytes");
    }
}
