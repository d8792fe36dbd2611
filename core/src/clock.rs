//! Where engine code gets the time.
//!
//! Every read of "now" in tickwheel goes through a [`Clock`], and so does
//! every wait for a moment in time, so tests can drive time with a
//! [`ManualClock`] instead of sleeping. Times are wall-clock UTC
//! ([`DateTime<Utc>`]): schedules are defined on the wall clock, and several
//! processes sharing a store must agree on it (keep hosts NTP-synchronised).
//!
//! [`SystemClock`] waits with tokio timers, so its sleeps need a tokio
//! runtime with the time driver enabled (`enable_time`/`enable_all`). A sleep is a wait of the remaining
//! duration, measured when the sleep starts: if the system clock is stepped
//! while it waits, the waiter wakes early or late by the step and is expected
//! to read [`Clock::now`] again, which is what the engine does.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

/// The future returned by [`Clock::sleep_until`].
pub type SleepFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time and of waits for a moment in it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// A future that completes once [`now`](Clock::now) is at or past
    /// `deadline` (at once if it already is).
    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture;
}

/// The operating system's clock, with tokio timers for waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// # Panics
    ///
    /// The returned future panics when polled outside a tokio runtime with
    /// the time driver enabled (unless the deadline has already passed).
    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture {
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// A clock that moves only when told to; clones share one time.
///
/// Sleepers wake when [`set`](ManualClock::set) or
/// [`advance`](ManualClock::advance) reaches their deadline. Time may also be
/// set backwards, to test how code copes with a clock step.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickwheel::{Clock, ManualClock};
///
/// let clock = ManualClock::new("2030-01-01T00:00:00Z".parse().unwrap());
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now().to_rfc3339(), "2030-01-01T00:01:30+00:00");
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Sets the time, waking every sleeper whose deadline is reached.
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    /// Moves the time forward by `d`, waking every sleeper whose deadline is
    /// reached.
    ///
    /// # Panics
    ///
    /// If `d` is too large to add to the current time (beyond year 262143).
    pub fn advance(&self, d: Duration) {
        let d = TimeDelta::from_std(d).expect("advance by a duration chrono can represent");
        self.now.send_modify(|t| {
            *t = t
                .checked_add_signed(d)
                .expect("manual clock advanced past chrono's range");
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; if the last
            // one is dropped nobody can advance time, so the sleep never ends.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn manual_sleep_wakes_when_time_reaches_the_deadline() {
        let clock = ManualClock::new(at("2030-01-01T00:00:00Z"));
        let sleeper = tokio::spawn(clock.sleep_until(at("2030-01-01T00:00:10Z")));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke at its deadline")
            .unwrap();
    }

    #[tokio::test]
    async fn manual_sleep_in_the_past_completes_at_once() {
        let clock = ManualClock::new(at("2030-01-01T00:00:00Z"));
        tokio::time::timeout(
            Duration::from_secs(5),
            clock.sleep_until(at("2029-12-31T00:00:00Z")),
        )
        .await
        .expect("past deadline is immediate");
    }

    #[tokio::test]
    async fn clones_share_one_time() {
        let a = ManualClock::new(at("2030-01-01T00:00:00Z"));
        let b = a.clone();
        b.set(at("2031-01-01T00:00:00Z"));
        assert_eq!(a.now(), at("2031-01-01T00:00:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_sleep_completes() {
        let clock = SystemClock;
        let deadline = clock.now() + TimeDelta::milliseconds(50);
        clock.sleep_until(deadline).await;
        // The paused tokio clock auto-advances; what matters is completion.
    }
}
