//! Cron evaluation, side by side with croner and the cron crate.
//!
//! ```text
//! cargo bench -p tickwheel-benches --bench schedule
//! ```
//!
//! Each `next_after` benchmark asks for the next fire time after one of 1024
//! start instants spread over 2024-2025 (cycled, so no single answer is
//! memorised by the branch predictor), in the expression's zone, and returns
//! a UTC instant. All three libraries are given the same instants; for croner
//! and the cron crate the start is a `DateTime<chrono_tz::Tz>`, which is how
//! a zoned search is asked of them. The cron crate needs a seconds field, so
//! its expressions carry a leading `0`.

use std::hint::black_box;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tickwheel::{Cron, Schedule};

struct Case {
    name: &'static str,
    expr: &'static str,
    tz: Tz,
}

const CASES: &[Case] = &[
    Case {
        name: "every_15_min",
        expr: "*/15 * * * *",
        tz: Tz::UTC,
    },
    Case {
        name: "weekdays_9am",
        expr: "0 9 * * MON-FRI",
        tz: Tz::UTC,
    },
    Case {
        name: "monthly",
        expr: "0 0 1 * *",
        tz: Tz::UTC,
    },
    Case {
        name: "0230_new_york",
        expr: "30 2 * * *",
        tz: Tz::America__New_York,
    },
    Case {
        name: "rare_feb29",
        expr: "0 0 29 2 *",
        tz: Tz::UTC,
    },
];

fn starts() -> Vec<DateTime<Utc>> {
    let base = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    // A fixed LCG so every run uses the same instants.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let offset = (x >> 33) % (2 * 365 * 86_400);
            DateTime::from_timestamp(base + offset as i64, 0).unwrap()
        })
        .collect()
}

fn next_after(c: &mut Criterion) {
    let starts = starts();
    for case in CASES {
        let mut group = c.benchmark_group(format!("next_after/{}", case.name));
        let zoned: Vec<DateTime<Tz>> = starts.iter().map(|t| t.with_timezone(&case.tz)).collect();

        let ours = Schedule::cron(case.expr, case.tz).unwrap();
        group.bench_function(BenchmarkId::new("tickwheel", case.expr), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(ours.next_after(black_box(starts[i])))
            })
        });

        let croner = croner::Cron::from_str(case.expr).unwrap();
        group.bench_function(BenchmarkId::new("croner", case.expr), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(
                    croner
                        .find_next_occurrence(black_box(&zoned[i]), false)
                        .map(|t| t.with_timezone(&Utc)),
                )
            })
        });

        let cron = cron::Schedule::from_str(&format!("0 {}", case.expr)).unwrap();
        group.bench_function(BenchmarkId::new("cron", case.expr), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(
                    cron.after(black_box(&zoned[i]))
                        .next()
                        .map(|t| t.with_timezone(&Utc)),
                )
            })
        });
        group.finish();
    }
}

fn parse(c: &mut Criterion) {
    for case in CASES {
        let mut group = c.benchmark_group(format!("parse/{}", case.name));
        group.bench_function(BenchmarkId::new("tickwheel", case.expr), |b| {
            b.iter(|| Cron::parse(black_box(case.expr)).unwrap())
        });
        group.bench_function(BenchmarkId::new("croner", case.expr), |b| {
            b.iter(|| croner::Cron::from_str(black_box(case.expr)).unwrap())
        });
        let with_seconds = format!("0 {}", case.expr);
        group.bench_function(BenchmarkId::new("cron", case.expr), |b| {
            b.iter(|| cron::Schedule::from_str(black_box(&with_seconds)).unwrap())
        });
        group.finish();
    }
    // The worst case we know of for the parser: every feature at once.
    let mut group = c.benchmark_group("parse/kitchen_sink");
    let expr = "*/7 5-55/5 1,2,3,9-17 L,LW,15W,1-3 JAN-MAR,OCT FRI#2,5L,MON-WED";
    group.bench_function(BenchmarkId::new("tickwheel", expr), |b| {
        b.iter(|| Cron::parse(black_box(expr)).unwrap())
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = next_after, parse }
criterion_main!(benches);
