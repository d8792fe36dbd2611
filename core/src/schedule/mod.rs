//! Schedules: cron expressions evaluated in an IANA time zone, and one-time
//! instants.
//!
//! # The cron dialect
//!
//! One parser, used everywhere tickwheel takes a schedule.
//!
//! | form | meaning |
//! |---|---|
//! | `min hour dom month dow` | five fields; seconds are `0` |
//! | `sec min hour dom month dow` | six fields, seconds first |
//! | `*` | every value of the field |
//! | `1,15` | a list; items may be any of the forms below |
//! | `1-5` | an inclusive range; the end may not come before the start |
//! | `*/15`, `10-50/5` | a step over the whole field or a range |
//! | `10/5` | a step from a value to the field's end (`10-59/5`) |
//! | `JAN`–`DEC`, `SUN`–`SAT` | month and day names, any case, also in ranges (`MON-FRI`) |
//! | day of week `0`–`7` | `0` and `7` are both Sunday; `*/2` steps over `0-6`; a range may end on Sunday (`FRI-SUN`, `5-0`) |
//! | `?` | same as `*`, in the two day fields only |
//! | `L` (day of month) | the last day of the month |
//! | `LW` (day of month) | the last weekday (Monday–Friday) of the month |
//! | `15W` (day of month) | the weekday nearest the 15th, never leaving the month: `1W` on a Saturday is Monday the 3rd, `31W` on a Sunday is Friday the 29th; a month without the day (`30W` in February) has no match |
//! | `5L`, `FRI#L` (day of week) | the last Friday of the month |
//! | `FRI#2` (day of week) | the second Friday; `#1`–`#5`, where a month without a fifth one has no match |
//!
//! Macros: `@yearly` and `@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`),
//! `@weekly` (`0 0 * * 0`), `@daily` and `@midnight` (`0 0 * * *`),
//! `@hourly` (`0 * * * *`). `@reboot` is not a time and is rejected.
//!
//! **The two day fields** follow Vixie cron: a day field is *restricted*
//! unless its text starts with `*` (or `?`), so `*/2` counts as
//! unrestricted. When both are restricted a day matches if either matches
//! (`0 0 1 * MON` = the 1st and every Monday); otherwise both must match
//! (`0 0 */2 * MON` = odd-numbered days that are Mondays).
//!
//! **Rejected at parse time**, with an error naming the field and token:
//! values out of range, unknown names, steps of 0, reversed ranges
//! (`FRI-MON`: write `FRI-SUN,MON`), empty list items, any field count but 5
//! or 6, and expressions that can never fire in any year (`0 0 30 2 *`).
//!
//! # Time zones and daylight saving
//!
//! A cron schedule is evaluated on the wall clock of its zone, following
//! Vixie cron:
//!
//! - A **fixed-time** expression (its minute and hour fields — and seconds,
//!   in six-field form — do not start with `*`) fires once per matching wall
//!   time. A wall time that does not exist (spring-forward gap) fires once, at
//!   the first instant after the gap; several such times collapse into that
//!   one run. A wall time that occurs twice (fall-back overlap) fires once, at
//!   the first of the two instants.
//! - An **interval** expression (minute or hour — or seconds — starting with
//!   `*`: `*/15 * * * *`, `0 * * * *`) follows elapsed time: in a gap the wall
//!   times that do not exist are not fired; in an overlap the repeated wall
//!   times fire in both passes.
//!
//! [`Schedule::next_after`] is strictly increasing: it never returns a time
//! at or before its argument. Fire times are whole seconds (UTC). The search
//! stops at 9999-12-31T23:59:59Z and returns `None` after it.
//!
//! Zone data comes from chrono-tz (the IANA tz database). Its tables end in
//! 2099: later dates keep the last offset it knows, so daylight saving is not
//! applied past 2099.
//!
//! # Examples
//!
//! ```
//! use chrono::{DateTime, Utc};
//! use tickwheel::Schedule;
//!
//! // 02:30 every day in New York. On 2024-03-10 the clocks jump from 02:00
//! // to 03:00, so that day's run happens at 03:00 EDT (07:00 UTC).
//! let schedule = Schedule::parse("30 2 * * *", "America/New_York")?;
//! let from: DateTime<Utc> = "2024-03-09T12:00:00Z".parse().unwrap();
//! let next: Vec<String> = schedule.upcoming(from).take(2).map(|t| t.to_rfc3339()).collect();
//! assert_eq!(next, ["2024-03-10T07:00:00+00:00", "2024-03-11T06:30:00+00:00"]);
//! # Ok::<(), tickwheel::ScheduleError>(())
//! ```

mod civil;
mod cron;
mod zone;

pub use cron::{Cron, Field, Reason};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use civil::SECS_PER_DAY;
use zone::ZoneTable;

/// A schedule that cannot be built, with what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The expression is empty or only white space.
    #[error("schedule is empty")]
    Empty,
    /// Not 5 or 6 fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found {found}"
    )]
    FieldCount {
        /// How many fields the expression has.
        found: usize,
    },
    /// An `@` macro that does not exist (or `@reboot`).
    #[error(
        "{token:?} is not a known macro: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    UnknownMacro {
        /// The macro as written.
        token: String,
    },
    /// A field with a token that is not valid there.
    #[error("{field}: {token:?} {reason}")]
    InvalidField {
        /// The field the token is in.
        field: Field,
        /// The offending token.
        token: String,
        /// What is wrong with it.
        reason: Reason,
    },
    /// A well-formed expression that no date satisfies.
    #[error("{expr:?} can never fire: no month in it has a day that matches its day fields")]
    NeverFires {
        /// The expression as written.
        expr: String,
    },
    /// A time zone name that is not in the IANA database.
    #[error("timezone: {name:?} is not an IANA time zone name (for example \"Europe/London\")")]
    UnknownTimeZone {
        /// The name as written.
        name: String,
    },
}

/// Looks up an IANA time zone name (`"America/New_York"`, `"UTC"`).
///
/// # Errors
///
/// [`ScheduleError::UnknownTimeZone`] if the name is not in the database.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse().map_err(|_| ScheduleError::UnknownTimeZone {
        name: name.to_owned(),
    })
}

/// When a task fires: a cron expression in a time zone, or one instant.
///
/// `Copy` and 64 bytes (the compiled expression is 48 of them, the zone 2);
/// evaluating it allocates nothing (the zone's
/// transition table is built once per process on first use of the zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cron(Cron),
    Once(DateTime<Utc>),
}

impl Schedule {
    /// A cron schedule evaluated in `tz`.
    ///
    /// # Errors
    ///
    /// See [`Cron::parse`].
    pub fn cron(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
        Ok(Self::from_cron(Cron::parse(expr)?, tz))
    }

    /// A cron schedule in the zone named `timezone` (IANA name).
    ///
    /// # Errors
    ///
    /// See [`Cron::parse`] and [`parse_timezone`].
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let tz = parse_timezone(timezone)?;
        Self::cron(expr, tz)
    }

    /// A schedule from an already compiled expression.
    pub fn from_cron(cron: Cron, tz: Tz) -> Self {
        Self {
            kind: Kind::Cron(cron),
            tz,
        }
    }

    /// A one-time schedule firing at `at`.
    pub fn once(at: DateTime<Utc>) -> Self {
        Self {
            kind: Kind::Once(at),
            tz: Tz::UTC,
        }
    }

    /// The zone the schedule is evaluated in (UTC for one-time schedules).
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The cron expression, if this is a cron schedule.
    pub fn as_cron(&self) -> Option<&Cron> {
        match &self.kind {
            Kind::Cron(cron) => Some(cron),
            Kind::Once(_) => None,
        }
    }

    /// The instant of a one-time schedule.
    pub fn run_at(&self) -> Option<DateTime<Utc>> {
        match self.kind {
            Kind::Once(at) => Some(at),
            Kind::Cron(_) => None,
        }
    }

    /// The first fire time strictly after `t`, or `None` if there is none
    /// (a one-time schedule already past, or a cron schedule past
    /// 9999-12-31T23:59:59Z).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Once(at) => (*at > t).then_some(*at),
            Kind::Cron(cron) => {
                let secs = if self.tz == Tz::UTC {
                    cron.next_match(t.timestamp())?
                } else {
                    next_in_zone(cron, zone::table(self.tz), t.timestamp())?
                };
                // Keep every result printable as RFC 3339 (four-digit years).
                (secs <= LAST_INSTANT).then(|| DateTime::from_timestamp(secs, 0))?
            }
        }
    }

    /// The fire times strictly after `after`, in order.
    pub fn upcoming(&self, after: DateTime<Utc>) -> Upcoming {
        Upcoming {
            schedule: *self,
            after: Some(after),
        }
    }
}

/// Iterator over a schedule's fire times; see [`Schedule::upcoming`].
#[derive(Debug, Clone)]
pub struct Upcoming {
    schedule: Schedule,
    after: Option<DateTime<Utc>>,
}

impl Iterator for Upcoming {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        let next = self.schedule.next_after(self.after?);
        self.after = next;
        next
    }
}

impl std::iter::FusedIterator for Upcoming {}

/// 9999-12-31T23:59:59Z: the last fire time a cron schedule returns.
const LAST_INSTANT: i64 = 253_402_300_799;

/// More than any two UTC offsets of the tz database differ by (local mean
/// times reach -15:56 and +15:13); used to skip spans safely.
const MAX_SHIFT: i64 = 2 * SECS_PER_DAY;

/// The first fire instant strictly after `t` (Unix seconds) of `cron` on the
/// wall clock described by `table`.
///
/// Walks the zone's constant-offset spans from the one holding `t`. Within a
/// span, wall time is instant + offset, so the next matching wall time gives
/// the candidate directly. The daylight-saving rules appear at span edges:
/// a fixed-time expression skips the wall times a span repeats from the one
/// before it (the second pass of an overlap) and fires at the transition
/// instant when its next wall time falls in a gap.
fn next_in_zone(cron: &Cron, table: &ZoneTable, t: i64) -> Option<i64> {
    let fixed = !cron.is_interval();
    let mut i = table.span_of(t);
    loop {
        let offset = table.offset(i);
        let (start, end) = (table.start(i), table.end(i));
        let from = t.saturating_add(1).max(start);
        let mut after = from + offset - 1;
        if fixed && i > 0 {
            // Wall times below `start + previous offset` already occurred
            // (and fired) in the previous span.
            after = after.max(start + table.offset(i - 1) - 1);
        }
        let wall = cron.next_match(after)?;
        let at = wall - offset;
        if at < end {
            debug_assert!(at > t, "next_after went backwards t={t} at={at}");
            return Some(at);
        }
        // `wall` is past this span, so `end` is finite and span `i + 1` exists.
        if fixed && wall < end + table.offset(i + 1) {
            // The wall time does not exist: it is in the gap of a forward jump.
            return Some(end);
        }
        // No wall time between `after` and `wall` matches. Every span of the
        // tz database lasts longer than 2 * MAX_SHIFT (the shortest, 167 h,
        // is checked by zone.rs's tests), which the next two claims rely on.
        // A later span that
        // starts more than MAX_SHIFT after `t` reads wall times above `after`
        // (a backward jump right after `t` could revisit earlier ones), and
        // one that ends before `at - MAX_SHIFT` reads wall times below
        // `wall`: such spans hold no fire time and are skipped in one step.
        let skip_to = at - MAX_SHIFT;
        i = if skip_to > end && end > t.saturating_add(MAX_SHIFT) {
            table.span_of(skip_to)
        } else {
            i + 1
        };
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
