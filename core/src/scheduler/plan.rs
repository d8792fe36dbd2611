//! Pure decisions of the engine: what a claim for a due occurrence should
//! do under the misfire policy (jitter is [`Policy::jitter`]).

use chrono::{DateTime, Duration, Utc};

use crate::model::{Misfire, Policy, TaskId, Trigger};
use crate::schedule::Schedule;

/// Most missed occurrences run (`catch_up`) or recorded (`skip`) at once.
pub(crate) const MAX_CATCH_UP: usize = 100;

/// Most occurrences walked to find the latest missed one; a schedule that
/// fires every second and was down for 11 days stops here (and then runs
/// the occurrence it reached).
const MAX_WALK: usize = 1_000_000;

/// What to claim for a due occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The occurrence to run and why; `None` to only advance (misfire `skip`).
    pub(crate) run: Option<(DateTime<Utc>, Trigger)>,
    /// The task's `next_run` after the claim.
    pub(crate) next_run: Option<DateTime<Utc>>,
    /// Occurrences to record as `missed`.
    pub(crate) missed: Vec<DateTime<Utc>>,
}

/// Decides the claim for occurrence `at` of a task, seen at `now`.
///
/// On time (late by at most `grace` after its jittered instant), the
/// occurrence runs and `next_run` moves to the next occurrence. Late, the
/// misfire policy decides:
/// - `fire_once`: run the latest occurrence that has passed (trigger
///   `catch_up`), then continue with the next one (the first not yet due,
///   its jitter counted);
/// - `skip`: run nothing, record the passed occurrences (the newest 100) as
///   `missed`, continue with the first not yet due;
/// - `catch_up`: run each passed occurrence oldest first, at most the newest
///   100 (the older ones are recorded `missed`).
///
/// A one-time task runs late whatever its policy: skipping its only run
/// would leave it with nothing to do.
pub(crate) fn plan(
    schedule: &Schedule,
    policy: &Policy,
    task: TaskId,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Plan {
    let due = at + policy.jitter(task, at);
    if now - due <= grace {
        return Plan {
            run: Some((at, Trigger::Schedule)),
            next_run: schedule.next_after(at),
            missed: Vec::new(),
        };
    }
    if schedule.run_at().is_some() {
        return Plan {
            run: Some((at, Trigger::CatchUp)),
            next_run: None,
            missed: Vec::new(),
        };
    }
    // The passed occurrences, oldest first: `at`, then the ones whose
    // jittered instant is not after `now`. An occurrence whose time has come
    // but whose jittered instant has not is still ahead, so it is neither
    // run early nor skipped.
    let passed = std::iter::once(at)
        .chain(
            schedule
                .upcoming(at)
                .take_while(|t| *t + policy.jitter(task, *t) <= now),
        )
        .take(MAX_WALK);
    // The occurrence after the last passed one, unless the walk stopped at
    // MAX_WALK short of `now`: then the first one after `now`, so a very
    // long outage still ends in one catch-up.
    let after = |last: DateTime<Utc>| {
        let next = schedule.next_after(last);
        match next {
            Some(n) if n + policy.jitter(task, n) <= now => schedule.next_after(now),
            _ => next,
        }
    };
    match policy.misfire {
        Misfire::FireOnce => {
            let latest = passed.last().unwrap_or(at);
            Plan {
                run: Some((latest, Trigger::CatchUp)),
                next_run: after(latest),
                missed: Vec::new(),
            }
        }
        Misfire::Skip => {
            let missed = newest(passed, MAX_CATCH_UP);
            Plan {
                run: None,
                next_run: after(missed.last().copied().unwrap_or(at)),
                missed,
            }
        }
        Misfire::CatchUp => {
            // Run from the 100th newest passed occurrence (the oldest, if
            // fewer passed); record the ones before it.
            let first_run = newest(passed.clone(), MAX_CATCH_UP)
                .first()
                .copied()
                .unwrap_or(at);
            Plan {
                run: Some((first_run, Trigger::CatchUp)),
                next_run: schedule.next_after(first_run),
                missed: newest(passed.take_while(|t| *t < first_run), MAX_CATCH_UP),
            }
        }
    }
}

/// The last `n` items of an iterator, oldest first.
fn newest(items: impl Iterator<Item = DateTime<Utc>>, n: usize) -> Vec<DateTime<Utc>> {
    let mut ring = std::collections::VecDeque::with_capacity(n + 1);
    for t in items {
        if ring.len() == n {
            ring.pop_front();
        }
        ring.push_back(t);
    }
    ring.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(misfire: Misfire) -> Policy {
        Policy {
            misfire,
            ..Policy::default()
        }
    }

    const GRACE: Duration = Duration::seconds(5);

    fn jitter(task: TaskId, at: DateTime<Utc>, jitter_ms: u64) -> Duration {
        Policy {
            jitter_ms,
            ..Policy::default()
        }
        .jitter(task, at)
    }

    #[test]
    fn on_time_runs_and_advances() {
        let s = Schedule::parse("*/10 * * * *", "UTC").unwrap();
        let id = TaskId::new();
        let t = at("2030-01-01T00:10:00Z");
        for now in [t, t + Duration::seconds(5)] {
            let p = plan(&s, &policy(Misfire::Skip), id, t, now, GRACE);
            assert_eq!(p.run, Some((t, Trigger::Schedule)));
            assert_eq!(p.next_run, Some(at("2030-01-01T00:20:00Z")));
            assert!(p.missed.is_empty());
        }
    }

    #[test]
    fn fire_once_runs_the_latest_passed_occurrence() {
        let s = Schedule::parse("*/10 * * * *", "UTC").unwrap();
        let p = plan(
            &s,
            &policy(Misfire::FireOnce),
            TaskId::new(),
            at("2030-01-01T00:10:00Z"),
            at("2030-01-01T01:05:00Z"),
            GRACE,
        );
        assert_eq!(p.run, Some((at("2030-01-01T01:00:00Z"), Trigger::CatchUp)));
        assert_eq!(p.next_run, Some(at("2030-01-01T01:10:00Z")));
        assert!(p.missed.is_empty());
    }

    #[test]
    fn skip_records_missed_and_runs_nothing() {
        let s = Schedule::parse("*/10 * * * *", "UTC").unwrap();
        let p = plan(
            &s,
            &policy(Misfire::Skip),
            TaskId::new(),
            at("2030-01-01T00:10:00Z"),
            at("2030-01-01T00:45:00Z"),
            GRACE,
        );
        assert_eq!(p.run, None);
        assert_eq!(p.next_run, Some(at("2030-01-01T00:50:00Z")));
        assert_eq!(
            p.missed,
            ["00:10", "00:20", "00:30", "00:40"].map(|m| at(&format!("2030-01-01T{m}:00Z")))
        );
    }

    #[test]
    fn catch_up_runs_oldest_first_and_at_most_100() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        let start = at("2030-01-01T00:00:00Z");
        // 30 passed: run the oldest, next_run is the one after it.
        let p = plan(
            &s,
            &policy(Misfire::CatchUp),
            TaskId::new(),
            start,
            start + Duration::minutes(29),
            GRACE,
        );
        assert_eq!(p.run, Some((start, Trigger::CatchUp)));
        assert_eq!(p.next_run, Some(start + Duration::minutes(1)));
        // 151 passed: the 51 oldest are missed, the run starts at the 100th newest.
        let now = start + Duration::minutes(150);
        let p = plan(
            &s,
            &policy(Misfire::CatchUp),
            TaskId::new(),
            start,
            now,
            GRACE,
        );
        assert_eq!(
            p.run,
            Some((start + Duration::minutes(51), Trigger::CatchUp))
        );
        assert_eq!(p.missed.len(), 51);
        assert_eq!(p.missed[0], start);
        assert_eq!(*p.missed.last().unwrap(), start + Duration::minutes(50));
    }

    #[test]
    fn one_time_tasks_run_late_whatever_the_policy() {
        let t = at("2030-01-01T00:00:00Z");
        let s = Schedule::once(t);
        for m in [Misfire::Skip, Misfire::FireOnce, Misfire::CatchUp] {
            let p = plan(
                &s,
                &policy(m),
                TaskId::new(),
                t,
                t + Duration::hours(3),
                GRACE,
            );
            assert_eq!(p.run, Some((t, Trigger::CatchUp)), "policy={m:?}");
            assert_eq!(p.next_run, None);
        }
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let id = TaskId::new();
        let t = at("2030-01-01T00:00:00Z");
        assert_eq!(jitter(id, t, 0), Duration::zero());
        let a = jitter(id, t, 1000);
        assert_eq!(a, jitter(id, t, 1000), "same input, same offset");
        let offsets: Vec<i64> = (0..1000)
            .map(|i| jitter(id, t + Duration::seconds(i), 1000).num_milliseconds())
            .collect();
        assert!(offsets.iter().all(|o| (0..=1000).contains(o)));
        let distinct: std::collections::HashSet<_> = offsets.iter().collect();
        assert!(
            distinct.len() > 400,
            "offsets spread: {} distinct",
            distinct.len()
        );
    }

    /// Found under load: a late task with jitter ran, and skipped past, an
    /// occurrence whose time had come but whose jittered instant had not.
    #[test]
    fn late_runs_never_start_an_occurrence_before_its_jittered_instant() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        let start = at("2030-01-01T00:00:00Z");
        for m in [Misfire::FireOnce, Misfire::Skip, Misfire::CatchUp] {
            let p = Policy {
                jitter_ms: 1000,
                misfire: m,
                ..Policy::default()
            };
            for i in 0..200 {
                let id = TaskId::new();
                let now = start + Duration::milliseconds(10_000 + i * 37);
                let plan = plan(&s, &p, id, start, now, GRACE);
                if let Some((run, _)) = plan.run {
                    assert!(run + p.jitter(id, run) <= now, "{m:?}: ran {run} early");
                }
                for missed in &plan.missed {
                    assert!(
                        *missed + p.jitter(id, *missed) <= now,
                        "{m:?}: {missed} not due"
                    );
                }
                // Nothing due is jumped over: the occurrence after the last
                // one run or recorded is the new next_run, and it is ahead.
                let last = plan
                    .missed
                    .iter()
                    .chain(plan.run.iter().map(|(t, _)| t))
                    .max()
                    .copied()
                    .unwrap();
                let next = plan.next_run.unwrap();
                assert_eq!(Some(next), s.next_after(last), "{m:?}");
                if m != Misfire::CatchUp {
                    assert!(next + p.jitter(id, next) > now, "{m:?}: {next} is due");
                }
            }
        }
    }

    #[test]
    fn a_walk_cut_short_still_ends_in_one_catch_up() {
        // Every second, down for 20 days: more occurrences than MAX_WALK.
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        let start = at("2030-01-01T00:00:00Z");
        let now = start + Duration::days(20);
        for m in [Misfire::FireOnce, Misfire::Skip] {
            let p = plan(&s, &policy(m), TaskId::new(), start, now, GRACE);
            let next = p.next_run.unwrap();
            assert!(next > now, "{m:?}: next_run {next} is not after {now}");
        }
    }

    #[test]
    fn jitter_shifts_the_grace_window() {
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        let id = TaskId::new();
        let t = at("2030-01-01T00:01:00Z");
        let p = Policy {
            jitter_ms: 60_000,
            misfire: Misfire::Skip,
            ..Policy::default()
        };
        let due = t + jitter(id, t, p.jitter_ms);
        assert_eq!(
            plan(&s, &p, id, t, due + GRACE, GRACE).run,
            Some((t, Trigger::Schedule))
        );
    }
}
