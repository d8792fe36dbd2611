//! Proleptic Gregorian calendar arithmetic on plain integers.
//!
//! Days are counted from 1970-01-01 (day 0), weekdays are `0 = Sunday` to
//! `6 = Saturday`, months are `1..=12`, days of month `1..=31`. The
//! algorithms are Howard Hinnant's `days_from_civil` / `civil_from_days`,
//! exact for every year an `i32` holds; they exist here so the cron search
//! never goes through chrono's checked, allocation-free but slower
//! constructors in its inner loop.

/// Seconds in a civil day; cron works on wall-clock time, where every day
/// has exactly this many seconds (daylight saving is handled separately).
pub(crate) const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of the civil date `y-m-d`.
pub(crate) const fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub(crate) const fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y as i32, m, d)
}

/// Weekday of a day count, `0 = Sunday`.
pub(crate) const fn weekday(days: i64) -> u32 {
    // 1970-01-01 was a Thursday.
    (days + 4).rem_euclid(7) as u32
}

pub(crate) const fn is_leap(y: i32) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

pub(crate) const fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate};

    #[test]
    fn round_trips_against_chrono_over_a_wide_range() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        // Every day from 1583 (first full Gregorian year) to 2500, plus a
        // sparse sample far out, agree with chrono.
        let mut days: Vec<i64> = (-141_714..194_000).collect();
        days.extend((-2_000_000..2_000_000).step_by(997));
        for z in days {
            let date = epoch + chrono::Days::new(0) + chrono::TimeDelta::days(z);
            let (y, m, d) = civil_from_days(z);
            assert_eq!(
                (y, m, d),
                (date.year(), date.month(), date.day()),
                "day={z}"
            );
            assert_eq!(days_from_civil(y, m, d), z, "day={z}");
            assert_eq!(weekday(z), date.weekday().num_days_from_sunday(), "day={z}");
            assert_eq!(days_in_month(y, m), date.num_days_in_month() as u32);
        }
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        for (y, leap) in [
            (1900, false),
            (2000, true),
            (2024, true),
            (2100, false),
            (2023, false),
        ] {
            assert_eq!(is_leap(y), leap, "year={y}");
        }
    }
}
