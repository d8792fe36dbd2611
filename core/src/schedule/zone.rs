//! UTC-offset transitions of an IANA zone, as a compact sorted table.
//!
//! chrono-tz answers "what is the offset at instant t" but does not expose
//! its transition list, and the cron search needs exactly that: the span of
//! instants over which the offset is constant, so that wall-clock time maps
//! to instants by one subtraction. [`table`] builds that list once per zone
//! (lazily, on first use, about a millisecond) by probing chrono-tz and
//! bisecting every change to the second, then keeps it for the life of the
//! process.
//!
//! Invariants:
//! - `at` is strictly increasing; `offset.len() == at.len() + 1`;
//!   `offset[i]` (seconds east of UTC) is in effect on `[at[i-1], at[i])`,
//!   with `at[-1] = -∞` and `at[len] = +∞`.
//! - Consecutive entries differ in offset: transitions that only move the
//!   split between standard time and DST (same total offset) are dropped,
//!   since wall-clock time does not move.
//!
//! Completeness rests on one property of the tz database, checked by the
//! tests below: every two offset changes of one zone are more than
//! [`PROBE_STEP`] apart (the closest pair in the data, America/Noronha in
//! October 2000 and Asia/Gaza's Ramadan rules, is 167 hours), so probing at
//! that step cannot step over a change and back. Between [`PROBE_FROM`] and
//! [`PROBE_TO`] the table is exact; chrono-tz itself has no transitions
//! after 2099 (its last offset continues), and none before 1800.

use std::sync::OnceLock;

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;

/// Probe spacing: less than the shortest span between two offset changes in
/// the tz database.
pub(crate) const PROBE_STEP: i64 = 5 * 86_400;
/// 1700-01-01T00:00:00Z, before every transition chrono-tz knows.
pub(crate) const PROBE_FROM: i64 = -8_520_336_000;
/// 2101-01-01T00:00:00Z, after every transition chrono-tz knows.
pub(crate) const PROBE_TO: i64 = 4_133_980_800;

/// The offset transitions of one zone.
#[derive(Debug)]
pub(crate) struct ZoneTable {
    /// Instants (Unix seconds) at which the offset changes.
    at: Box<[i64]>,
    /// Offsets in seconds east of UTC; `offset[i]` applies before `at[i]`.
    offset: Box<[i32]>,
    /// `bucket[b]` is the span index at `PROBE_FROM + b << BUCKET_SHIFT`:
    /// a lookup starts there and steps over the few transitions (at most
    /// eight, in practice one or two) inside the ~48-day bucket.
    bucket: Box<[u16]>,
}

const BUCKET_SHIFT: u32 = 22;

impl ZoneTable {
    /// Index of the span containing instant `t`.
    #[inline]
    pub(crate) fn span_of(&self, t: i64) -> usize {
        if t < PROBE_FROM {
            return 0;
        }
        let Some(&first) = self.bucket.get(((t - PROBE_FROM) >> BUCKET_SHIFT) as usize) else {
            return self.at.len();
        };
        let mut i = usize::from(first);
        while self.at.get(i).is_some_and(|&a| a <= t) {
            i += 1;
        }
        i
    }

    /// Number of spans (one more than the number of transitions).
    #[cfg(test)]
    pub(crate) fn spans(&self) -> usize {
        self.offset.len()
    }

    /// Offset (seconds east of UTC) in effect during span `i`.
    #[inline]
    pub(crate) fn offset(&self, i: usize) -> i64 {
        i64::from(self.offset[i])
    }

    /// First instant of span `i` (`i64::MIN` for the first).
    #[inline]
    pub(crate) fn start(&self, i: usize) -> i64 {
        if i == 0 { i64::MIN } else { self.at[i - 1] }
    }

    /// First instant after span `i` (`i64::MAX` for the last).
    #[inline]
    pub(crate) fn end(&self, i: usize) -> i64 {
        self.at.get(i).copied().unwrap_or(i64::MAX)
    }

    /// Offset in effect at instant `t`.
    #[cfg(test)]
    pub(crate) fn offset_at(&self, t: i64) -> i64 {
        self.offset(self.span_of(t))
    }

    fn build(tz: Tz) -> Self {
        let mut at = Vec::new();
        let mut offset = vec![chrono_offset(tz, PROBE_FROM)];
        let mut lo = PROBE_FROM;
        while lo < PROBE_TO {
            let current = *offset.last().expect("offset is never empty");
            let hi = (lo + PROBE_STEP).min(PROBE_TO);
            let next = chrono_offset(tz, hi);
            if next == current {
                lo = hi;
                continue;
            }
            // Bisect for the first second whose offset differs: `lo` has the
            // current offset, `hi` does not.
            let (mut good, mut bad) = (lo, hi);
            while bad - good > 1 {
                let mid = good + (bad - good) / 2;
                if chrono_offset(tz, mid) == current {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            at.push(bad);
            offset.push(chrono_offset(tz, bad));
            lo = bad;
        }
        debug_assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "transitions out of order zone={tz}"
        );
        let buckets = ((PROBE_TO - PROBE_FROM) >> BUCKET_SHIFT) as usize + 1;
        let bucket = if at.is_empty() {
            Box::default()
        } else {
            (0..buckets)
                .map(|b| {
                    let start = PROBE_FROM + ((b as i64) << BUCKET_SHIFT);
                    let i = at.partition_point(|&a| a <= start);
                    u16::try_from(i).expect("fewer than 65536 transitions in a zone")
                })
                .collect()
        };
        Self {
            at: at.into_boxed_slice(),
            offset: offset.into_boxed_slice(),
            bucket,
        }
    }
}

fn chrono_offset(tz: Tz, t: i64) -> i32 {
    let utc = DateTime::from_timestamp(t, 0).expect("probe range is within chrono's range");
    tz.offset_from_utc_datetime(&utc.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The transition table of `tz`, built on first use and then shared.
pub(crate) fn table(tz: Tz) -> &'static ZoneTable {
    static TABLES: OnceLock<Box<[OnceLock<ZoneTable>]>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        (0..chrono_tz::TZ_VARIANTS.len())
            .map(|_| OnceLock::new())
            .collect()
    });
    // `Tz` is a field-less enum whose discriminants number its variants.
    let slot = &tables[tz as usize];
    slot.get_or_init(|| ZoneTable::build(tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_has_no_transitions() {
        let t = table(Tz::UTC);
        assert_eq!(t.spans(), 1);
        assert_eq!(t.offset(0), 0);
        assert_eq!(t.span_of(0), 0);
    }

    #[test]
    fn new_york_2024_transitions_are_exact() {
        let t = table(Tz::America__New_York);
        // 2024-03-10T07:00:00Z: EST -> EDT; 2024-11-03T06:00:00Z: EDT -> EST.
        assert_eq!(t.offset_at(1_710_053_999), -5 * 3600);
        assert_eq!(t.offset_at(1_710_054_000), -4 * 3600);
        assert_eq!(t.offset_at(1_730_613_599), -4 * 3600);
        assert_eq!(t.offset_at(1_730_613_600), -5 * 3600);
        let i = t.span_of(1_710_054_000);
        assert_eq!(t.start(i), 1_710_054_000);
        assert_eq!(t.end(i), 1_730_613_600);
    }

    /// The completeness argument of the module docs: in every zone, offset
    /// changes are further apart than the probe step (so none was stepped
    /// over), and the table agrees with chrono-tz around every transition.
    #[test]
    fn every_zone_table_is_complete_and_agrees_with_chrono_tz() {
        for &tz in chrono_tz::TZ_VARIANTS.iter() {
            let t = table(tz);
            for w in t.at.windows(2) {
                assert!(
                    w[1] - w[0] > PROBE_STEP,
                    "zone={tz} transitions {} and {} closer than the probe step",
                    w[0],
                    w[1]
                );
            }
            for (i, &a) in t.at.iter().enumerate() {
                assert_eq!(
                    i64::from(chrono_offset(tz, a - 1)),
                    t.offset(i),
                    "zone={tz} at={a}"
                );
                assert_eq!(
                    i64::from(chrono_offset(tz, a)),
                    t.offset(i + 1),
                    "zone={tz} at={a}"
                );
                assert_ne!(t.offset(i), t.offset(i + 1), "zone={tz} at={a}");
            }
        }
    }

    #[test]
    fn bucketed_lookup_equals_binary_search() {
        for tz in [
            Tz::America__New_York,
            Tz::Australia__Lord_Howe,
            Tz::Asia__Gaza,
            Tz::UTC,
        ] {
            let t = table(tz);
            let mut x = PROBE_FROM - 86_400;
            while x < PROBE_TO + 86_400 {
                assert_eq!(
                    t.span_of(x),
                    t.at.partition_point(|&a| a <= x),
                    "zone={tz} t={x}"
                );
                x += 86_400 * 3 + 7_919;
            }
            for &a in t.at.iter() {
                for x in [a - 1, a, a + 1] {
                    assert_eq!(
                        t.span_of(x),
                        t.at.partition_point(|&a| a <= x),
                        "zone={tz} t={x}"
                    );
                }
            }
        }
    }

    /// A dense scan of the zones whose changes are closest together.
    #[test]
    fn dense_scan_of_zones_with_close_transitions() {
        for tz in [
            Tz::America__Noronha,
            Tz::America__Recife,
            Tz::Asia__Gaza,
            Tz::Asia__Hebron,
            Tz::Africa__Casablanca,
            Tz::Africa__Tunis,
            Tz::Europe__Simferopol,
        ] {
            let t = table(tz);
            // Every 3 hours from 1940 to 2080.
            let mut x = -946_771_200;
            while x < 3_471_292_800 {
                assert_eq!(
                    t.offset_at(x),
                    i64::from(chrono_offset(tz, x)),
                    "zone={tz} t={x}"
                );
                x += 3 * 3600;
            }
        }
    }
}
