//! The in-process run ledger of the peers and of the bare `DelayQueue`:
//! one entry per run (job index, intended second, start instant), appended
//! by the job body and read once by the audit after the engines stopped.
//!
//! Appends go to one of a few mutex-guarded shards picked by job index, so
//! that tens of thousands of runs a second on two cores do not queue on a
//! single lock.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

const SHARDS: usize = 16;

/// One run of one job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// Job index, `0..tasks`.
    pub(crate) job: u32,
    /// The occurrence the run is for, in whole seconds since the epoch.
    pub(crate) intended_s: i64,
    /// When the job body started.
    pub(crate) started: DateTime<Utc>,
}

/// Every run recorded so far.
#[derive(Debug)]
pub(crate) struct Ledger {
    shards: Vec<Mutex<Vec<Run>>>,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Records a run that starts now.
    pub(crate) fn record_now(&self, job: u32, intended_s: i64) {
        self.record(Run {
            job,
            intended_s,
            started: Utc::now(),
        });
    }

    /// Records a run.
    pub(crate) fn record(&self, run: Run) {
        let shard = &self.shards[run.job as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner()).push(run);
    }

    /// A copy of every run recorded so far, in no particular order.
    pub(crate) fn runs(&self) -> Vec<Run> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}
