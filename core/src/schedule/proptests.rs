//! Property tests for schedules: agreement with croner in UTC, agreement
//! with a brute-force oracle in random zones around real transitions, and a
//! parser that never panics. Case counts are bounded to keep the suite fast
//! in debug builds.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};
use proptest::prelude::*;

use super::civil::{SECS_PER_DAY, civil_from_days};
use super::*;

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// One list item over `lo..=hi`: a value, a range, a stepped range or a
/// stepped `*`; `names` (if any) may stand in for values.
fn item(
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
    star_step: bool,
) -> BoxedStrategy<String> {
    let name_base = if names.len() == 7 { 0 } else { 1 };
    let val = move |v: u32, use_name: bool| -> String {
        let i = v.checked_sub(name_base).map(|i| i as usize);
        match i.and_then(|i| names.get(i)) {
            Some(n) if use_name => n.to_string(),
            _ => v.to_string(),
        }
    };
    let single = (lo..=hi, any::<bool>()).prop_map(move |(v, n)| val(v, n));
    let range = (
        lo..=hi,
        lo..=hi,
        any::<bool>(),
        proptest::option::of(1..=(hi - lo + 1)),
    )
        .prop_map(move |(a, b, n, step)| {
            let (a, b) = (a.min(b), a.max(b));
            let base = format!("{}-{}", val(a, n), val(b, n));
            match step {
                Some(s) => format!("{base}/{s}"),
                None => base,
            }
        });
    if star_step {
        let star = (1..=(hi - lo + 1)).prop_map(|s| format!("*/{s}"));
        prop_oneof![3 => single, 2 => range, 1 => star].boxed()
    } else {
        prop_oneof![3 => single, 2 => range].boxed()
    }
}

fn list(items: BoxedStrategy<String>, star_weight: u32) -> BoxedStrategy<String> {
    prop_oneof![
        star_weight => Just("*".to_owned()),
        4 => proptest::collection::vec(items, 1..=3).prop_map(|v| v.join(",")),
    ]
    .boxed()
}

/// Expressions in the part of the dialect croner reads the same way: day
/// fields are exactly `*` or restricted without a leading `*`.
fn croner_compatible() -> impl Strategy<Value = String> {
    let dom_item = prop_oneof![4 => item(1, 31, &[], false), 1 => Just("L".to_owned())].boxed();
    let dow_item = prop_oneof![
        4 => item(0, 7, &DAY_NAMES, false),
        1 => (0..7usize, 1..=5u32).prop_map(|(d, k)| format!("{}#{k}", DAY_NAMES[d])),
    ]
    .boxed();
    (
        proptest::option::of(list(item(0, 59, &[], true), 1)),
        list(item(0, 59, &[], true), 1),
        list(item(0, 23, &[], true), 1),
        list(dom_item, 3),
        list(item(1, 12, &MONTH_NAMES, true), 3),
        list(dow_item, 3),
    )
        .prop_map(|(s, m, h, dom, mon, dow)| {
            let five = format!("{m} {h} {dom} {mon} {dow}");
            match s {
                Some(s) => format!("{s} {five}"),
                None => five,
            }
        })
}

/// Five-field expressions over the whole dialect (including `*/n` day
/// fields, `W`, `LW`, `nL`), biased towards firing often so that a
/// brute-force window of a few days sees several runs.
fn any_five_field() -> impl Strategy<Value = String> {
    let dom_item = prop_oneof![
        4 => item(1, 31, &[], true),
        1 => Just("L".to_owned()),
        1 => Just("LW".to_owned()),
        1 => (1..=31u32).prop_map(|d| format!("{d}W")),
    ]
    .boxed();
    let dow_item = prop_oneof![
        4 => item(0, 7, &DAY_NAMES, true),
        1 => (0..7usize, 1..=5u32).prop_map(|(d, k)| format!("{}#{k}", DAY_NAMES[d])),
        1 => (0..=7u32).prop_map(|d| format!("{d}L")),
    ]
    .boxed();
    (
        list(item(0, 59, &[], true), 1),
        list(item(0, 23, &[], true), 2),
        list(dom_item, 6),
        list(item(1, 12, &MONTH_NAMES, true), 8),
        list(dow_item, 6),
    )
        .prop_map(|(m, h, dom, mon, dow)| format!("{m} {h} {dom} {mon} {dow}"))
}

/// `n` cases, or `PROPTEST_CASES` when set (for long local runs).
fn config(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ts(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

proptest! {
    #![proptest_config(config(400))]

    /// In UTC, where the dialects agree, the next five times equal croner's.
    #[test]
    fn utc_next_times_equal_crone(expr in croner_compatible(), from in 0i64..2_000_000_000) {
        // croner reads a range ending on SUN as ending on 7, so SUN-SUN is every day.
        prop_assume!(!expr.contains("SUN-SUN"));
        let Ok(ours) = Cron::parse(&expr) else {
            // Only "can never fire" may be rejected here; everything else is valid.
            prop_assert!(matches!(Cron::parse(&expr), Err(ScheduleError::NeverFires { .. })), "{expr}");
            return Ok(());
        };
        let theirs = croner::Cron::from_str(&expr).unwrap_or_else(|e| panic!("croner rejects {expr:?}: {e}"));
        let schedule = Schedule::from_cron(ours, Tz::UTC);
        let mut t = ts(from);
        for _ in 0..5 {
            let next = schedule.next_after(t);
            let want = theirs.find_next_occurrence(&t, false).ok();
            prop_assert_eq!(next, want, "expr={:?} after={}", expr, t);
            match next {
                Some(n) => t = n,
                None => break,
            }
        }
    }
}

/// All fire times in `(from, to]` by brute force over minutes (seconds for
/// six-field expressions), straight from
/// chrono-tz: interval expressions test every UTC minute's wall reading;
/// fixed-time expressions resolve every matching wall minute (first instant
/// of an ambiguous one, the first instant after the gap for a missing one).
fn oracle(cron: &Cron, tz: Tz, from: i64, to: i64) -> Vec<i64> {
    // Six-field expressions are searched second by second.
    let step = if cron.has_seconds() { 1 } else { 60 };
    let wall_matches = |wall: NaiveDateTime| {
        let secs = wall.and_utc().timestamp();
        let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
        cron.matches_wall(y, m, d, sod / 3600, sod / 60 % 60, sod % 60)
    };
    let mut out = BTreeSet::new();
    if cron.is_interval() {
        let mut x = from.div_euclid(step) * step;
        while x <= to {
            let wall = tz.from_utc_datetime(&ts(x).naive_utc()).naive_local();
            if x > from && wall_matches(wall) {
                out.insert(x);
            }
            x += step;
        }
    } else {
        let first = tz
            .from_utc_datetime(&ts(from).naive_utc())
            .naive_local()
            .and_utc()
            .timestamp();
        let last = tz
            .from_utc_datetime(&ts(to).naive_utc())
            .naive_local()
            .and_utc()
            .timestamp();
        let mut w = (first - SECS_PER_DAY).div_euclid(step) * step;
        while w <= last + SECS_PER_DAY {
            let wall = ts(w).naive_utc();
            if wall_matches(wall) {
                let instant = match tz.from_local_datetime(&wall) {
                    LocalResult::Single(x) => x.timestamp(),
                    LocalResult::Ambiguous(a, b) => a.timestamp().min(b.timestamp()),
                    LocalResult::None => GapInfo::new(&wall, &tz)
                        .and_then(|g| g.end)
                        .expect("a gap has an end")
                        .timestamp(),
                };
                if instant > from && instant <= to {
                    out.insert(instant);
                }
            }
            w += step;
        }
    }
    out.into_iter().collect()
}

fn zone_and_transition() -> impl Strategy<Value = (Tz, i64)> {
    (
        0..chrono_tz::TZ_VARIANTS.len(),
        any::<prop::sample::Index>(),
        0i64..3 * SECS_PER_DAY,
    )
        .prop_map(|(z, pick, before)| {
            let tz = chrono_tz::TZ_VARIANTS[z];
            let table = zone::table(tz);
            // A transition between 1975 and 2037 (or a plain date for zones without one).
            let candidates: Vec<i64> = (1..table.spans())
                .map(|i| table.start(i))
                .filter(|&a| (157_766_400..2_145_916_800).contains(&a))
                .collect();
            let anchor = if candidates.is_empty() {
                1_700_000_000
            } else {
                candidates[pick.index(candidates.len())]
            };
            (tz, anchor - before)
        })
}

proptest! {
    #![proptest_config(config(160))]

    /// Around real transitions of random zones, the fire times in a four-day
    /// window are exactly the brute-force oracle's.
    #[test]
    fn zoned_times_equal_brute_force_oracle(expr in any_five_field(), (tz, from) in zone_and_transition()) {
        let Ok(cron) = Cron::parse(&expr) else { return Ok(()) };
        // Whole-minute offsets only (true for every zone since 1972).
        prop_assume!(zone::table(tz).offset(zone::table(tz).span_of(from)) % 60 == 0);
        let to = from + 4 * SECS_PER_DAY;
        let want = oracle(&cron, tz, from, to);
        let schedule = Schedule::from_cron(cron, tz);
        let got: Vec<i64> = schedule
            .upcoming(ts(from))
            .map(|t| t.timestamp())
            .take_while(|&t| t <= to)
            .collect();
        prop_assert_eq!(got, want, "expr={:?} tz={} from={}", expr, tz, ts(from));
    }

}

proptest! {
    #![proptest_config(config(40))]

    /// Six-field expressions, second by second, in the hours around a transition.
    #[test]
    fn zoned_six_field_times_equal_brute_force_oracle(
        expr in any_five_field(),
        seconds in list(item(0, 59, &[], true), 1),
        (tz, from) in zone_and_transition(),
    ) {
        let Ok(cron) = Cron::parse(&format!("{seconds} {expr}")) else { return Ok(()) };
        prop_assume!(zone::table(tz).offset(zone::table(tz).span_of(from)) % 60 == 0);
        // `from` is up to three days before a transition; look at the 3 hours
        // before and after it.
        let transition = zone::table(tz).end(zone::table(tz).span_of(from));
        let from = if transition == i64::MAX { from } else { transition - 3 * 3600 };
        let to = from + 6 * 3600;
        let want = oracle(&cron, tz, from, to);
        let got: Vec<i64> = Schedule::from_cron(cron, tz)
            .upcoming(ts(from))
            .map(|t| t.timestamp())
            .take_while(|&t| t <= to)
            .collect();
        prop_assert_eq!(got, want, "expr={:?} tz={} from={}", format!("{seconds} {expr}"), tz, ts(from));
    }

}

proptest! {
    #![proptest_config(config(400))]

    /// The parser returns an error, never panics, on arbitrary text.
    #[test]
    fn parser_never_panics(s in "\\PC{0,40}") {
        let _ = Cron::parse(&s);
    }

    /// ... nor on text made of the dialect's own characters.
    #[test]
    fn parser_never_panics_on_cron_like_text(s in "[0-9*/,\\-LW#?@ a-zA-Z]{0,40}") {
        if let Ok(cron) = Cron::parse(&s) {
            // Whatever parses can be evaluated.
            let _ = Schedule::from_cron(cron, Tz::Europe__Berlin).next_after(ts(1_700_000_000));
        }
    }
}
