//! Affinity: schedulers sharing a store split the claiming between them.
//!
//! Without it every scheduler claims every occurrence and all but one claim
//! lose: correct (the claim is atomic), but with three nodes two thirds of
//! the store's claim work is wasted. With it:
//!
//! - Each scheduler heartbeats into the store ([`Store::heartbeat`]) every
//!   second (200 ms apart for the first few, so schedulers started
//!   together see each other at once) with a 3 s expiry, and gets back the
//!   names of the live nodes.
//! - Each task has one *owner* among them, chosen by rendezvous hashing of
//!   the task id with each node name: every node computes the same owner
//!   from the same list, and when a node joins or leaves only the tasks it
//!   gains or loses move.
//! - The owner claims the task's occurrences on time. The others keep the
//!   task on their wheel but, when it comes due, only advance their own copy
//!   of `next_run` (a *shadow* advance), without a store call.
//! - Any scheduler claims an occurrence whose jittered instant is
//!   `takeover_after` (default 2 s) in the past whoever owns it: every
//!   second each one reads the tasks whose stored `next_run` is that late
//!   (an indexed due scan, empty while owners keep up unless tasks carry a
//!   jitter longer than `takeover_after`) and claims the ones whose jittered
//!   instant is. Such a claim counts as on time up to the misfire grace plus
//!   `takeover_after` and a second. So a node that dies, stalls or cannot
//!   reach the store costs its tasks about `takeover_after` of lateness
//!   until its heartbeat expires, and never a lost occurrence.
//! - A task written through this process (`SchedulerHandle::refresh`) has
//!   its next occurrence claimed here whoever owns it, so a write fires on
//!   time on the node that made it even before the owner hears of it.
//!
//! Exactly-once never depends on any of this: views of the membership may
//! differ for a moment, two nodes may both think they own a task, and the
//! atomic claim still lets one of them win. A store without membership
//! (the default [`Store::heartbeat`] returns no names) and a lone scheduler
//! claim everything, as before.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::run::Shared;
use crate::model::{TaskId, mix64};
#[cfg(doc)]
use crate::store::Store;

/// How often a scheduler heartbeats.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat keeps a node in the membership.
pub(crate) const MEMBER_TTL: Duration = Duration::from_secs(3);
/// Heartbeats 200 ms apart at start, before the 1 s rhythm.
const QUICK_BEATS: u32 = 4;

/// The live nodes as this scheduler last saw them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Members {
    /// Seeds of the live nodes; empty when this node claims everything.
    seeds: Arc<[u64]>,
    mine: u64,
}

impl Members {
    /// Everything is this node's (alone, or no membership known).
    pub(crate) fn everything(node: &str) -> Self {
        Self {
            seeds: Arc::from([]),
            mine: seed(node),
        }
    }

    /// The split between `nodes` (this node's name is `node`).
    pub(crate) fn of(node: &str, nodes: &[String]) -> Self {
        let mine = seed(node);
        let mut seeds: Vec<u64> = nodes.iter().map(|n| seed(n)).collect();
        if !seeds.contains(&mine) {
            seeds.push(mine);
        }
        if seeds.len() < 2 {
            return Self::everything(node);
        }
        Self {
            seeds: seeds.into(),
            mine,
        }
    }

    /// Whether several nodes share the work.
    pub(crate) fn is_split(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// Number of nodes sharing the work (1 when not split).
    pub(crate) fn len(&self) -> usize {
        self.seeds.len().max(1)
    }

    /// Whether this node owns `task`: its score is the highest.
    pub(crate) fn owns(&self, task: TaskId) -> bool {
        if self.seeds.is_empty() {
            return true;
        }
        let h = task_hash(task);
        let mine = score(h, self.mine);
        self.seeds
            .iter()
            .all(|&s| s == self.mine || score(h, s) < mine)
    }
}

/// FNV-1a of a node name, finalized: stable across processes and builds.
pub(crate) fn seed(node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn task_hash(task: TaskId) -> u64 {
    let v = task.as_uuid().as_u128();
    mix64((v as u64) ^ mix64((v >> 64) as u64))
}

fn score(task: u64, node: u64) -> u64 {
    mix64(task ^ node)
}

impl Shared {
    /// The membership as last seen.
    pub(crate) fn members(&self) -> Members {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_members(&self, members: Members) {
        *self.members.lock().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// Heartbeats until `stop` (or the scheduler stops), keeping
    /// [`Shared::members`] current. While heartbeats fail for longer than
    /// the expiry, this node claims everything again: the others will have
    /// dropped it from their lists.
    pub(crate) async fn keep_membership(self: Arc<Self>, stop: CancellationToken) {
        let node = self.config.node.clone();
        let ttl = TimeDelta::from_std(MEMBER_TTL).unwrap_or(TimeDelta::seconds(3));
        let every = TimeDelta::from_std(HEARTBEAT_EVERY).unwrap_or(TimeDelta::seconds(1));
        let mut last_ok: Option<DateTime<Utc>> = None;
        // Schedulers started together first see only those that beat
        // before them: the first beats come quickly, so the split settles
        // in a fraction of a second rather than a whole heartbeat.
        let quick = TimeDelta::milliseconds(200);
        let mut beats = 0u32;
        loop {
            if self.is_stopping() {
                return;
            }
            let now = self.clock.now();
            match self.store.heartbeat(&node, now, now + ttl).await {
                Ok(nodes) => {
                    let members = Members::of(&node, &nodes);
                    if members.len() != self.members().len() {
                        tracing::info!(nodes = members.len(), "scheduler membership changed");
                    }
                    self.set_members(members);
                    last_ok = Some(now);
                }
                Err(err) => {
                    tracing::warn!(%err, "heartbeat failed; will retry");
                    if last_ok.is_none_or(|at| now - at >= ttl) {
                        self.set_members(Members::everything(&node));
                    }
                }
            }
            beats += 1;
            let pause = if beats < QUICK_BEATS { quick } else { every };
            tokio::select! {
                () = self.clock.sleep_until(now + pause) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn exactly_one_node_owns_each_task_and_the_split_is_even() {
        let nodes = names(3);
        let views: Vec<Members> = nodes.iter().map(|n| Members::of(n, &nodes)).collect();
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            let task = TaskId::new();
            let owners: Vec<usize> = (0..3).filter(|&i| views[i].owns(task)).collect();
            assert_eq!(owners.len(), 1, "one owner per task");
            counts[owners[0]] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven split: {counts:?}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_tasks() {
        let three = names(3);
        let two = names(2);
        for _ in 0..10_000 {
            let task = TaskId::new();
            for (i, node) in two.iter().enumerate() {
                let before = Members::of(node, &three).owns(task);
                let after = Members::of(node, &two).owns(task);
                if before {
                    assert!(after, "node {i} kept the task it owned");
                }
            }
        }
    }

    #[test]
    fn alone_or_without_membership_a_node_owns_everything() {
        let task = TaskId::new();
        assert!(Members::everything("a").owns(task));
        assert!(Members::of("a", &[]).owns(task));
        assert!(Members::of("a", &["a".to_owned()]).owns(task));
        assert!(!Members::of("a", &[]).is_split());
        // A list without this node still counts it.
        let m = Members::of("a", &["b".to_owned()]);
        assert!(m.is_split());
        assert_eq!(m.len(), 2);
    }
}
