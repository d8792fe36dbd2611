//! Table tests for the dialect and the daylight-saving rules. Expected times
//! were worked out by hand from the zone rules named beside each case.

use chrono::{DateTime, SecondsFormat, Utc};

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The next `n` fire times of `expr` in `tz` after `from`, as `…Z` strings.
fn next(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let schedule = Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"));
    schedule
        .upcoming(at(from))
        .take(n)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .collect()
}

fn check(cases: &[(&str, &str, &str, &[&str])]) {
    for &(expr, tz, from, want) in cases {
        let got = next(expr, tz, from, want.len());
        assert_eq!(got, want, "expr={expr:?} tz={tz} from={from}");
    }
}

#[test]
fn fields_lists_ranges_and_steps() {
    check(&[
        (
            "*/15 * * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-01T00:15:00Z",
                "2024-01-01T00:30:00Z",
                "2024-01-01T00:45:00Z",
                "2024-01-01T01:00:00Z",
            ],
        ),
        (
            "0 1,15 * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-01T01:00:00Z",
                "2024-01-01T15:00:00Z",
                "2024-01-02T01:00:00Z",
            ],
        ),
        (
            "0 9-11 * * *",
            "UTC",
            "2024-01-01T10:30:00Z",
            &["2024-01-01T11:00:00Z", "2024-01-02T09:00:00Z"],
        ),
        (
            "10-50/20 * * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-01T00:10:00Z",
                "2024-01-01T00:30:00Z",
                "2024-01-01T00:50:00Z",
                "2024-01-01T01:10:00Z",
            ],
        ),
        (
            "5/20 * * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-01T00:05:00Z",
                "2024-01-01T00:25:00Z",
                "2024-01-01T00:45:00Z",
                "2024-01-01T01:05:00Z",
            ],
        ),
        (
            "0 0 1 * *",
            "UTC",
            "2024-01-15T00:00:00Z",
            &["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"],
        ),
        (
            "0 12 * 2-3/1 *",
            "UTC",
            "2024-03-31T13:00:00Z",
            &["2025-02-01T12:00:00Z"],
        ),
        (
            "*/90 * * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-01T01:00:00Z"],
        ),
        // Six fields, seconds first.
        (
            "*/20 * * * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-01T00:00:20Z",
                "2024-01-01T00:00:40Z",
                "2024-01-01T00:01:00Z",
            ],
        ),
        (
            "30 0 9 * * *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-01T09:00:30Z", "2024-01-02T09:00:30Z"],
        ),
        (
            "59 59 23 31 12 *",
            "UTC",
            "2024-06-01T00:00:00Z",
            &["2024-12-31T23:59:59Z", "2025-12-31T23:59:59Z"],
        ),
        // Extra white space is fine.
        (
            "  0   9  *  * \t *  ",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-01T09:00:00Z"],
        ),
    ]);
}

#[test]
fn names_in_any_case_and_sunday_as_0_or_7() {
    check(&[
        // 2024-01-05 is a Friday.
        (
            "0 9 * * MON-FRI",
            "UTC",
            "2024-01-05T10:00:00Z",
            &["2024-01-08T09:00:00Z", "2024-01-09T09:00:00Z"],
        ),
        (
            "0 9 * * mon-Fri/2",
            "UTC",
            "2024-01-05T10:00:00Z",
            &[
                "2024-01-08T09:00:00Z",
                "2024-01-10T09:00:00Z",
                "2024-01-12T09:00:00Z",
                "2024-01-15T09:00:00Z",
            ],
        ),
        (
            "0 0 1 jan,Jul *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-07-01T00:00:00Z", "2025-01-01T00:00:00Z"],
        ),
        (
            "0 0 1 FEB-apr *",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-02-01T00:00:00Z",
                "2024-03-01T00:00:00Z",
                "2024-04-01T00:00:00Z",
                "2025-02-01T00:00:00Z",
            ],
        ),
        // 2024-01-07 and 2024-01-14 are Sundays.
        (
            "0 0 * * 0",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"],
        ),
        (
            "0 0 * * 7",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"],
        ),
        (
            "0 0 * * SUN",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"],
        ),
        (
            "0 0 * * FRI-SUN",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-05T00:00:00Z",
                "2024-01-06T00:00:00Z",
                "2024-01-07T00:00:00Z",
                "2024-01-12T00:00:00Z",
            ],
        ),
        (
            "0 0 * * 6-0",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-06T00:00:00Z",
                "2024-01-07T00:00:00Z",
                "2024-01-13T00:00:00Z",
            ],
        ),
        (
            "0 0 * * SUN-SUN",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"],
        ),
        (
            "0 0 * * 5-7",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-05T00:00:00Z",
                "2024-01-06T00:00:00Z",
                "2024-01-07T00:00:00Z",
                "2024-01-12T00:00:00Z",
            ],
        ),
        // `*/2` over days of week is Sun, Tue, Thu, Sat (0-6, not 0-7).
        (
            "0 0 * * */2",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-02T00:00:00Z",
                "2024-01-04T00:00:00Z",
                "2024-01-06T00:00:00Z",
                "2024-01-07T00:00:00Z",
            ],
        ),
    ]);
}

#[test]
fn macros() {
    check(&[
        (
            "@yearly",
            "UTC",
            "2024-03-01T00:00:00Z",
            &["2025-01-01T00:00:00Z"],
        ),
        (
            "@annually",
            "UTC",
            "2024-03-01T00:00:00Z",
            &["2025-01-01T00:00:00Z"],
        ),
        (
            "@monthly",
            "UTC",
            "2024-03-01T00:00:00Z",
            &["2024-04-01T00:00:00Z"],
        ),
        (
            "@weekly",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"],
        ),
        (
            "@daily",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-02T00:00:00Z"],
        ),
        (
            "@midnight",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-02T00:00:00Z"],
        ),
        (
            "@HOURLY",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-01T01:00:00Z"],
        ),
    ]);
    assert!(Cron::parse("@hourly").unwrap().is_interval());
    assert!(!Cron::parse("@daily").unwrap().is_interval());
}

#[test]
fn vixie_day_of_month_and_day_of_week() {
    check(&[
        // Both restricted: the 1st OR any Monday (2024-01-01 is a Monday).
        (
            "0 0 1 * MON",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-08T00:00:00Z",
                "2024-01-15T00:00:00Z",
                "2024-01-22T00:00:00Z",
                "2024-01-29T00:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-02-05T00:00:00Z",
            ],
        ),
        // `*/2` is unrestricted: odd days AND Mondays.
        (
            "0 0 */2 * MON",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-15T00:00:00Z",
                "2024-01-29T00:00:00Z",
                "2024-02-05T00:00:00Z",
                "2024-02-19T00:00:00Z",
            ],
        ),
        // Day-of-week `*/2` is unrestricted: the 13th AND Sun/Tue/Thu/Sat.
        (
            "0 0 13 * */2",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-13T00:00:00Z",
                "2024-02-13T00:00:00Z",
                "2024-04-13T00:00:00Z",
            ],
        ),
        // `?` is `*`.
        (
            "0 0 ? * MON",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-08T00:00:00Z"],
        ),
        (
            "0 0 13 * ?",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-13T00:00:00Z", "2024-02-13T00:00:00Z"],
        ),
    ]);
}

#[test]
fn last_nearest_weekday_and_nth_extensions() {
    check(&[
        (
            "0 0 L * *",
            "UTC",
            "2024-01-15T00:00:00Z",
            &[
                "2024-01-31T00:00:00Z",
                "2024-02-29T00:00:00Z",
                "2024-03-31T00:00:00Z",
                "2024-04-30T00:00:00Z",
            ],
        ),
        (
            "0 0 L 2 *",
            "UTC",
            "2024-03-01T00:00:00Z",
            &["2025-02-28T00:00:00Z"],
        ),
        // 2024-03-31 and 2024-06-30 are Sundays.
        (
            "0 0 LW * *",
            "UTC",
            "2024-03-01T00:00:00Z",
            &[
                "2024-03-29T00:00:00Z",
                "2024-04-30T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-06-28T00:00:00Z",
            ],
        ),
        // 2024-06-15 is a Saturday, 2024-09-15 a Sunday.
        (
            "0 0 15W * *",
            "UTC",
            "2024-05-01T00:00:00Z",
            &[
                "2024-05-15T00:00:00Z",
                "2024-06-14T00:00:00Z",
                "2024-07-15T00:00:00Z",
                "2024-08-15T00:00:00Z",
                "2024-09-16T00:00:00Z",
            ],
        ),
        // 1W on Saturday 2024-06-01 is Monday the 3rd; on Sunday 2024-09-01, Monday the 2nd.
        (
            "0 0 1W * *",
            "UTC",
            "2024-05-15T00:00:00Z",
            &[
                "2024-06-03T00:00:00Z",
                "2024-07-01T00:00:00Z",
                "2024-08-01T00:00:00Z",
                "2024-09-02T00:00:00Z",
            ],
        ),
        // 31W on Sunday 2024-03-31 is Friday the 29th; Saturday 2024-08-31 gives Friday the 30th;
        // months without a 31st never match.
        (
            "0 0 31W * *",
            "UTC",
            "2024-03-01T00:00:00Z",
            &[
                "2024-03-29T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-07-31T00:00:00Z",
                "2024-08-30T00:00:00Z",
            ],
        ),
        (
            "0 0 * * 5L",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-26T00:00:00Z",
                "2024-02-23T00:00:00Z",
                "2024-03-29T00:00:00Z",
            ],
        ),
        (
            "0 0 * * FRI#L",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-26T00:00:00Z",
                "2024-02-23T00:00:00Z",
                "2024-03-29T00:00:00Z",
            ],
        ),
        (
            "0 0 * * fri#2",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-12T00:00:00Z",
                "2024-02-09T00:00:00Z",
                "2024-03-08T00:00:00Z",
            ],
        ),
        (
            "0 0 * * 5#5",
            "UTC",
            "2024-01-01T00:00:00Z",
            &[
                "2024-03-29T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-08-30T00:00:00Z",
                "2024-11-29T00:00:00Z",
            ],
        ),
        (
            "0 0 * * 7L",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2024-01-28T00:00:00Z", "2024-02-25T00:00:00Z"],
        ),
        // Both day fields restricted: the 10th OR the first Monday.
        (
            "0 0 10 * MON#1",
            "UTC",
            "2024-01-02T00:00:00Z",
            &[
                "2024-01-10T00:00:00Z",
                "2024-02-05T00:00:00Z",
                "2024-02-10T00:00:00Z",
                "2024-03-04T00:00:00Z",
            ],
        ),
        (
            "0 0 1,L * *",
            "UTC",
            "2024-01-15T00:00:00Z",
            &[
                "2024-01-31T00:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-02-29T00:00:00Z",
            ],
        ),
    ]);
}

#[test]
fn rare_schedules_are_found_and_impossible_ones_rejected() {
    check(&[
        (
            "0 0 29 2 *",
            "UTC",
            "2025-01-01T00:00:00Z",
            &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
        ),
        // 2100 is not a leap year.
        (
            "0 0 29 2 *",
            "UTC",
            "2096-03-01T00:00:00Z",
            &["2104-02-29T00:00:00Z"],
        ),
        // A fifth Friday in February needs a leap year whose Feb 1st is a Friday.
        (
            "0 0 * 2 FRI#5",
            "UTC",
            "2024-01-01T00:00:00Z",
            &["2036-02-29T00:00:00Z"],
        ),
    ]);
    for expr in [
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 31W 2 *",
        "0 0 30-31 2 *",
    ] {
        assert!(
            matches!(Cron::parse(expr), Err(ScheduleError::NeverFires { .. })),
            "{expr} accepted"
        );
    }
}

#[test]
fn search_ends_at_year_9999() {
    let s = Schedule::parse("0 0 1 1 *", "UTC").unwrap();
    assert_eq!(
        s.next_after(at("9998-06-01T00:00:00Z")),
        Some(at("9999-01-01T00:00:00Z"))
    );
    assert_eq!(s.next_after(at("9999-01-01T00:00:00Z")), None);
    let ny = Schedule::parse("0 0 1 1 *", "America/New_York").unwrap();
    assert_eq!(ny.next_after(at("9999-06-01T00:00:00Z")), None);
    // West of UTC the last local seconds of 9999 are already year 10000 in
    // UTC: they are not returned.
    let every_second = Schedule::parse("* * * * * *", "America/New_York").unwrap();
    let last: Vec<_> = every_second.upcoming(at("9999-12-31T23:59:57Z")).collect();
    assert_eq!(
        last,
        [at("9999-12-31T23:59:58Z"), at("9999-12-31T23:59:59Z")]
    );
}

#[test]
fn errors_name_the_field_and_the_token() {
    let cases = [
        ("* * * * MOM", r#"day-of-week: "MOM" is not a day name"#),
        ("60 * * * *", r#"minute: "60" is out of range 0-59"#),
        ("* 24 * * *", r#"hour: "24" is out of range 0-23"#),
        ("* * 0 * *", r#"day-of-month: "0" is out of range 1-31"#),
        ("* * * 13 *", r#"month: "13" is out of range 1-12"#),
        ("* * * JANUARY *", r#"month: "JANUARY" is not a month name"#),
        ("* * * * 8", r#"day-of-week: "8" is out of range 0-7"#),
        ("61 * * * * *", r#"second: "61" is out of range 0-59"#),
        ("*/0 * * * *", r#"minute: "*/0" has a step of 0"#),
        (
            "5-1 * * * *",
            r#"minute: "5-1" is a range that ends before it starts"#,
        ),
        (
            "* * * * FRI-MON",
            r#"day-of-week: "FRI-MON" is a range that ends before it starts"#,
        ),
        ("1,,2 * * * *", r#"minute: "1,,2" is empty"#),
        ("a * * * *", r#"minute: "a" is not a number"#),
        ("-1 * * * *", r#"minute: "-1" is not a number"#),
        ("1-x * * * *", r#"minute: "x" is not a number"#),
        ("*/x * * * *", r#"minute: "x" is not a number"#),
        ("L * * * *", r#"minute: "L" is not a number"#),
        ("* * 32W * *", r#"day-of-month: "32W" is out of range 1-31"#),
        (
            "* * * * FRI#6",
            r#"day-of-week: "FRI#6" needs an occurrence #1 to #5 or #L"#,
        ),
        ("* * * * FRX#2", r#"day-of-week: "FRX#2" is not a day name"#),
        ("* * * * L", r#"day-of-week: "L" is not a day name"#),
        (
            "99999999999 * * * *",
            r#"minute: "99999999999" is out of range 0-59"#,
        ),
        ("", "schedule is empty"),
        ("   ", "schedule is empty"),
        (
            "* * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found 4",
        ),
        (
            "* * * * * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found 7",
        ),
        (
            "@reboot",
            r#""@reboot" is not a known macro: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"#,
        ),
        (
            "0 0 30 2 *",
            r#""0 0 30 2 *" can never fire: no month in it has a day that matches its day fields"#,
        ),
    ];
    for (expr, want) in cases {
        match Cron::parse(expr) {
            Ok(c) => panic!("{expr:?} accepted as {c:?}"),
            Err(e) => assert_eq!(e.to_string(), want, "expr={expr:?}"),
        }
    }
    assert_eq!(
        Schedule::parse("* * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string(),
        r#"timezone: "Mars/Olympus" is not an IANA time zone name (for example "Europe/London")"#
    );
}

#[test]
fn one_time_schedules_fire_once() {
    let s = Schedule::once(at("2030-05-01T12:00:00.250Z"));
    assert_eq!(
        s.next_after(at("2030-05-01T11:00:00Z")),
        Some(at("2030-05-01T12:00:00.250Z"))
    );
    assert_eq!(s.next_after(at("2030-05-01T12:00:00.250Z")), None);
    assert_eq!(s.upcoming(at("2020-01-01T00:00:00Z")).count(), 1);
    assert_eq!(s.run_at(), Some(at("2030-05-01T12:00:00.250Z")));
    assert!(s.as_cron().is_none());
}

#[test]
fn sub_second_start_still_yields_a_later_time() {
    let s = Schedule::parse("* * * * * *", "UTC").unwrap();
    assert_eq!(
        s.next_after(at("2030-01-01T00:00:00.999Z")),
        Some(at("2030-01-01T00:00:01Z"))
    );
    assert_eq!(
        s.next_after(at("1969-12-31T23:59:59.5Z")),
        Some(at("1970-01-01T00:00:00Z"))
    );
}

#[test]
fn compiled_form_is_compact() {
    // The figures quoted in benches/README.md.
    assert_eq!(size_of::<Cron>(), 48);
    assert_eq!(size_of::<Schedule>(), 64);
    assert_eq!(size_of::<Tz>(), 2);
}

// ---- Daylight saving -------------------------------------------------------

/// America/New_York 2024: 2024-03-10 02:00 EST (07:00Z) jumps to 03:00 EDT;
/// 2024-11-03 02:00 EDT (06:00Z) falls back to 01:00 EST.
#[test]
fn new_york_gap_and_overlap() {
    let ny = "America/New_York";
    check(&[
        // Fixed times in the gap fire once at its end, 03:00 EDT.
        (
            "30 2 * * *",
            ny,
            "2024-03-09T12:00:00Z",
            &["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"],
        ),
        (
            "0,30 2 * * *",
            ny,
            "2024-03-09T12:00:00Z",
            &[
                "2024-03-10T07:00:00Z",
                "2024-03-11T06:00:00Z",
                "2024-03-11T06:30:00Z",
            ],
        ),
        (
            "30 2,3 * * *",
            ny,
            "2024-03-09T12:00:00Z",
            &[
                "2024-03-10T07:00:00Z",
                "2024-03-10T07:30:00Z",
                "2024-03-11T06:30:00Z",
            ],
        ),
        (
            "0 2,3 * * *",
            ny,
            "2024-03-09T12:00:00Z",
            &["2024-03-10T07:00:00Z", "2024-03-11T06:00:00Z"],
        ),
        (
            "0 30 2 * * *",
            ny,
            "2024-03-09T12:00:00Z",
            &["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"],
        ),
        // Interval expressions skip the wall times that do not exist.
        (
            "*/30 * * * *",
            ny,
            "2024-03-10T06:00:00Z",
            &[
                "2024-03-10T06:30:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T07:30:00Z",
            ],
        ),
        (
            "0 * * * *",
            ny,
            "2024-03-10T05:30:00Z",
            &[
                "2024-03-10T06:00:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T08:00:00Z",
            ],
        ),
        (
            "* 2 * * *",
            ny,
            "2024-03-10T00:00:00Z",
            &["2024-03-11T06:00:00Z", "2024-03-11T06:01:00Z"],
        ),
        // Fixed times in the overlap fire once, in the first pass (EDT).
        (
            "30 1 * * *",
            ny,
            "2024-11-03T04:00:00Z",
            &["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"],
        ),
        (
            "0 1 * * *",
            ny,
            "2024-11-03T04:00:00Z",
            &["2024-11-03T05:00:00Z", "2024-11-04T06:00:00Z"],
        ),
        (
            "0 30 1 * * *",
            ny,
            "2024-11-03T04:00:00Z",
            &["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"],
        ),
        // ... also when asked from inside the second pass.
        (
            "45 1 * * *",
            ny,
            "2024-11-03T06:10:00Z",
            &["2024-11-04T06:45:00Z"],
        ),
        // Interval expressions fire in both passes.
        (
            "*/30 * * * *",
            ny,
            "2024-11-03T04:45:00Z",
            &[
                "2024-11-03T05:00:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:00:00Z",
            ],
        ),
        (
            "30 * * * *",
            ny,
            "2024-11-03T04:45:00Z",
            &[
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:30:00Z",
            ],
        ),
        (
            "45 * * * *",
            ny,
            "2024-11-03T06:10:00Z",
            &["2024-11-03T06:45:00Z", "2024-11-03T07:45:00Z"],
        ),
        (
            "*/20 * 1 * * *",
            ny,
            "2024-11-03T05:59:30Z",
            &[
                "2024-11-03T05:59:40Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T06:00:20Z",
            ],
        ),
    ]);
}

/// Europe/London 2024: 2024-03-31 01:00 GMT jumps to 02:00 BST (at 01:00Z);
/// 2024-10-27 02:00 BST falls back to 01:00 GMT (at 01:00Z).
#[test]
fn london_gap_and_overlap() {
    let lon = "Europe/London";
    check(&[
        (
            "30 1 * * *",
            lon,
            "2024-03-30T12:00:00Z",
            &["2024-03-31T01:00:00Z", "2024-04-01T00:30:00Z"],
        ),
        (
            "0 1 * * *",
            lon,
            "2024-03-30T12:00:00Z",
            &["2024-03-31T01:00:00Z", "2024-04-01T00:00:00Z"],
        ),
        (
            "*/30 * * * *",
            lon,
            "2024-03-31T00:00:00Z",
            &[
                "2024-03-31T00:30:00Z",
                "2024-03-31T01:00:00Z",
                "2024-03-31T01:30:00Z",
            ],
        ),
        (
            "30 1 * * *",
            lon,
            "2024-10-26T12:00:00Z",
            &["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"],
        ),
        (
            "*/30 * * * *",
            lon,
            "2024-10-26T23:45:00Z",
            &[
                "2024-10-27T00:00:00Z",
                "2024-10-27T00:30:00Z",
                "2024-10-27T01:00:00Z",
                "2024-10-27T01:30:00Z",
                "2024-10-27T02:00:00Z",
            ],
        ),
    ]);
}

/// Australia/Lord_Howe (30-minute daylight saving, +10:30 / +11):
/// 2024-10-06 02:00 jumps to 02:30 (at 2024-10-05T15:30Z); 2024-04-07 02:00
/// falls back to 01:30 (at 2024-04-06T15:00Z).
#[test]
fn lord_howe_half_hour_shift() {
    let lh = "Australia/Lord_Howe";
    check(&[
        (
            "15 2 * * *",
            lh,
            "2024-10-05T00:00:00Z",
            &["2024-10-05T15:30:00Z", "2024-10-06T15:15:00Z"],
        ),
        (
            "0 2 * * *",
            lh,
            "2024-10-05T00:00:00Z",
            &["2024-10-05T15:30:00Z", "2024-10-06T15:00:00Z"],
        ),
        (
            "30 2 * * *",
            lh,
            "2024-10-05T00:00:00Z",
            &["2024-10-05T15:30:00Z", "2024-10-06T15:30:00Z"],
        ),
        (
            "*/15 * * * *",
            lh,
            "2024-10-05T15:00:00Z",
            &[
                "2024-10-05T15:15:00Z",
                "2024-10-05T15:30:00Z",
                "2024-10-05T15:45:00Z",
            ],
        ),
        (
            "45 1 * * *",
            lh,
            "2024-04-06T12:00:00Z",
            &["2024-04-06T14:45:00Z", "2024-04-07T15:15:00Z"],
        ),
        (
            "*/15 * * * *",
            lh,
            "2024-04-06T14:20:00Z",
            &[
                "2024-04-06T14:30:00Z",
                "2024-04-06T14:45:00Z",
                "2024-04-06T15:00:00Z",
                "2024-04-06T15:15:00Z",
                "2024-04-06T15:30:00Z",
            ],
        ),
    ]);
}

/// Asia/Kathmandu moved from +05:30 to +05:45 at 1986-01-01 00:00 local
/// (1985-12-31T18:30Z): a 15-minute gap and no daylight saving.
#[test]
fn kathmandu_quarter_hour_gap() {
    let ktm = "Asia/Kathmandu";
    check(&[
        (
            "0 0 * * *",
            ktm,
            "1985-12-31T00:00:00Z",
            &["1985-12-31T18:30:00Z", "1986-01-01T18:15:00Z"],
        ),
        (
            "10 0 * * *",
            ktm,
            "1985-12-31T00:00:00Z",
            &["1985-12-31T18:30:00Z", "1986-01-01T18:25:00Z"],
        ),
        (
            "*/15 * * * *",
            ktm,
            "1985-12-31T18:00:00Z",
            &[
                "1985-12-31T18:15:00Z",
                "1985-12-31T18:30:00Z",
                "1985-12-31T18:45:00Z",
            ],
        ),
        // Today's +05:45: quarter hours on the wall are quarter hours in UTC too.
        (
            "0 9 * * *",
            ktm,
            "2024-06-01T00:00:00Z",
            &["2024-06-01T03:15:00Z"],
        ),
    ]);
}

/// Midnight transitions and a skipped day.
#[test]
fn sao_paulo_midnight_and_apia_skipped_day() {
    let sp = "America/Sao_Paulo";
    let apia = "Pacific/Apia";
    check(&[
        // 2018-11-04 00:00 -03 jumped to 01:00 -02 (03:00Z).
        (
            "0 0 * * *",
            sp,
            "2018-11-03T12:00:00Z",
            &["2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"],
        ),
        // 2019-02-17 00:00 -02 fell back to 2019-02-16 23:00 -03 (02:00Z).
        (
            "30 23 * * *",
            sp,
            "2019-02-16T12:00:00Z",
            &["2019-02-17T01:30:00Z", "2019-02-18T02:30:00Z"],
        ),
        (
            "30 23 * * *",
            sp,
            "2019-02-17T02:10:00Z",
            &["2019-02-18T02:30:00Z"],
        ),
        // Samoa skipped 2011-12-30 (-10 to +14 at 2011-12-30T10:00Z).
        (
            "0 12 * * *",
            apia,
            "2011-12-29T00:00:00Z",
            &[
                "2011-12-29T22:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T22:00:00Z",
            ],
        ),
        (
            "0 * * * *",
            apia,
            "2011-12-30T08:30:00Z",
            &[
                "2011-12-30T09:00:00Z",
                "2011-12-30T10:00:00Z",
                "2011-12-30T11:00:00Z",
            ],
        ),
    ]);
}

/// A two-hour fall-back that crosses a month boundary backwards: at
/// 1991-03-01T02:00Z La Rioja went from -02 to -04, so the wall clock went
/// from March 1st 00:00 back to February 28th 22:00. An interval job for
/// February fires again for those two hours.
#[test]
fn fall_back_into_the_previous_month() {
    check(&[(
        "* * * 2 *",
        "America/Argentina/La_Rioja",
        "1991-03-01T01:59:59Z",
        &["1991-03-01T02:00:00Z", "1991-03-01T02:01:00Z"],
    )]);
}

#[test]
fn fixed_zone_without_transitions() {
    check(&[(
        "0 9 * * *",
        "Etc/GMT+5",
        "2024-01-01T00:00:00Z",
        &["2024-01-01T14:00:00Z"],
    )]);
}

#[test]
fn next_after_is_strictly_increasing_through_years_of_transitions() {
    for (expr, tz, from) in [
        ("*/7 * * * *", "Australia/Lord_Howe", "2010-01-01T00:00:00Z"),
        ("30 1,2 * * *", "America/New_York", "2010-01-01T00:00:00Z"),
        ("0 0 * * *", "America/Sao_Paulo", "2010-01-01T00:00:00Z"),
        // Six-field schedules across each London change of 2010.
        ("*/13 */5 * * * *", "Europe/London", "2010-03-27T00:00:00Z"),
        ("*/13 */5 * * * *", "Europe/London", "2010-10-30T00:00:00Z"),
        ("*/7 * * * *", "Australia/Lord_Howe", "2010-04-03T00:00:00Z"),
    ] {
        let s = Schedule::parse(expr, tz).unwrap();
        let mut prev = at(from);
        for t in s.upcoming(prev).take(20_000) {
            assert!(t > prev, "expr={expr} tz={tz} {t} after {prev}");
            prev = t;
        }
    }
}
