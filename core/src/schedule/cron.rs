//! The cron dialect: parser, compiled form and wall-clock search.
//!
//! A [`Cron`] is a parsed expression compiled to one bitset per field
//! (48 bytes, `Copy`). It knows nothing of time zones: [`Cron::next_match`]
//! finds the next matching *wall-clock* second, and the zone-aware search in
//! the parent module turns wall-clock time into instants.
//!
//! Bit layout: seconds and minutes use bits `0..60`, hours `0..24`, days of
//! month `1..=31`, months `1..=12`, days of week `0..7` with `0 = Sunday`.

use std::fmt;
use std::str::FromStr;

use super::ScheduleError;
use super::civil::{SECS_PER_DAY, civil_from_days, days_from_civil, days_in_month, weekday};

/// The last year [`Cron::next_match`] searches; later times are "never".
pub(crate) const MAX_YEAR: i32 = 9999;

/// One of the six fields of a cron expression, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// Seconds (first of six fields), `0-59`.
    Second,
    /// Minutes, `0-59`.
    Minute,
    /// Hours, `0-23`.
    Hour,
    /// Day of month, `1-31`, with `L`, `LW` and `nW`.
    DayOfMonth,
    /// Month, `1-12` or `JAN`-`DEC`.
    Month,
    /// Day of week, `0-7` (0 and 7 are Sunday) or `SUN`-`SAT`, with `nL` and `n#k`.
    DayOfWeek,
}

impl Field {
    fn min(self) -> u32 {
        match self {
            Field::DayOfMonth | Field::Month => 1,
            _ => 0,
        }
    }

    fn max(self) -> u32 {
        match self {
            Field::Second | Field::Minute => 59,
            Field::Hour => 23,
            Field::DayOfMonth => 31,
            Field::Month => 12,
            // 7 is accepted and folded onto 0 (Sunday).
            Field::DayOfWeek => 7,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a token of a cron field was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The field or a list item is empty (`1,,2`).
    Empty,
    /// Not a number where a number is required.
    NotANumber,
    /// Not a month name or number.
    NotAMonth,
    /// Not a day name or number.
    NotADay,
    /// A value outside the field's range.
    OutOfRange {
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
    },
    /// A range whose end is before its start (`5-1`).
    Reversed,
    /// A step of zero (`*/0`).
    ZeroStep,
    /// `n#k` with `k` outside `1-5` (or `L`).
    BadNth,
    /// A construct this field does not allow (`L` in the hour field, a step
    /// on `L`, …).
    NotAllowed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("is empty"),
            Reason::NotANumber => f.write_str("is not a number"),
            Reason::NotAMonth => f.write_str("is not a month name"),
            Reason::NotADay => f.write_str("is not a day name"),
            Reason::OutOfRange { min, max } => write!(f, "is out of range {min}-{max}"),
            Reason::Reversed => f.write_str("is a range that ends before it starts"),
            Reason::ZeroStep => f.write_str("has a step of 0"),
            Reason::BadNth => f.write_str("needs an occurrence #1 to #5 or #L"),
            Reason::NotAllowed => f.write_str("is not allowed in this field"),
        }
    }
}

const DOM_LAST: u8 = 1 << 0;
const DOM_LAST_WEEKDAY: u8 = 1 << 1;
const DOM_STAR: u8 = 1 << 2;
const DOW_STAR: u8 = 1 << 3;
const INTERVAL: u8 = 1 << 4;
const SIX_FIELDS: u8 = 1 << 5;
/// Every day of every month matches (no day-field work in the search).
const ALL_DAYS: u8 = 1 << 6;

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A compiled cron expression (no time zone).
///
/// See the [module docs](crate::schedule) for the dialect. Parse with
/// [`Cron::parse`] or [`str::parse`]; evaluate through
/// [`Schedule`](crate::Schedule), which adds the time zone.
///
/// # Examples
///
/// ```
/// use tickwheel::Cron;
///
/// let cron: Cron = "0 9 * * MON-FRI".parse()?;
/// assert!(!cron.is_interval());
/// assert!("*/15 * * * *".parse::<Cron>()?.is_interval());
/// # Ok::<(), tickwheel::ScheduleError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    /// `n#k` entries: bit `weekday * 5 + (k - 1)`.
    nth_weekdays: u64,
    hours: u32,
    days: u32,
    /// Days `n` of `nW` (nearest weekday).
    nearest_weekdays: u32,
    months: u16,
    weekdays: u8,
    /// Weekdays of `nL` (last such weekday of the month).
    last_weekdays: u8,
    flags: u8,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cron")
            .field("seconds", &format_args!("{:#x}", self.seconds))
            .field("minutes", &format_args!("{:#x}", self.minutes))
            .field("hours", &format_args!("{:#x}", self.hours))
            .field("days", &format_args!("{:#x}", self.days))
            .field(
                "nearest_weekdays",
                &format_args!("{:#x}", self.nearest_weekdays),
            )
            .field("months", &format_args!("{:#x}", self.months))
            .field("weekdays", &format_args!("{:#x}", self.weekdays))
            .field("last_weekdays", &format_args!("{:#x}", self.last_weekdays))
            .field("nth_weekdays", &format_args!("{:#x}", self.nth_weekdays))
            .field("flags", &format_args!("{:#x}", self.flags))
            .finish()
    }
}

impl FromStr for Cron {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cron::parse(s)
    }
}

impl Cron {
    /// Parses and compiles a cron expression.
    ///
    /// # Errors
    ///
    /// [`ScheduleError`] naming the field and the offending token, or
    /// [`ScheduleError::NeverFires`] for an expression no date can satisfy
    /// (`0 0 30 2 *`).
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let expanded = if let Some(name) = text.strip_prefix('@') {
            expand_macro(name).ok_or_else(|| ScheduleError::UnknownMacro {
                token: text.to_owned(),
            })?
        } else {
            text
        };

        let mut fields = [""; 6];
        let mut count = 0;
        for part in expanded.split_ascii_whitespace() {
            if count < 6 {
                fields[count] = part;
            }
            count += 1;
        }
        let (sec, rest) = match count {
            5 => ("0", &fields[..5]),
            6 => (fields[0], &fields[1..6]),
            found => return Err(ScheduleError::FieldCount { found }),
        };
        let (min, hour, dom, month, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);

        let mut cron = Cron {
            seconds: parse_plain(sec, Field::Second)?,
            minutes: parse_plain(min, Field::Minute)?,
            nth_weekdays: 0,
            hours: parse_plain(hour, Field::Hour)? as u32,
            days: 0,
            nearest_weekdays: 0,
            months: parse_plain(month, Field::Month)? as u16,
            weekdays: 0,
            last_weekdays: 0,
            flags: 0,
        };
        cron.parse_dom(dom)?;
        cron.parse_dow(dow)?;

        let star = |s: &str| s.starts_with('*');
        let day_star = |s: &str| s.starts_with('*') || s.starts_with('?');
        if day_star(dom) {
            cron.flags |= DOM_STAR;
        }
        if day_star(dow) {
            cron.flags |= DOW_STAR;
        }
        if star(min) || star(hour) || (count == 6 && star(sec)) {
            cron.flags |= INTERVAL;
        }
        if count == 6 {
            cron.flags |= SIX_FIELDS;
        }
        let (dom_all, dow_all) = (cron.days == 0xffff_fffe, cron.weekdays == 0x7f);
        if cron.flags & (DOM_STAR | DOW_STAR) != 0 {
            if dom_all && dow_all {
                cron.flags |= ALL_DAYS;
            }
        } else if dom_all || dow_all {
            cron.flags |= ALL_DAYS;
        }
        if !cron.can_fire() {
            return Err(ScheduleError::NeverFires {
                expr: text.to_owned(),
            });
        }
        Ok(cron)
    }

    /// Whether this is an *interval* expression: its minute or hour field
    /// (or, with six fields, its second field) starts with `*`.
    ///
    /// Interval expressions follow elapsed time across daylight-saving
    /// changes; all others are *fixed-time* (see the
    /// [module docs](crate::schedule)).
    pub fn is_interval(&self) -> bool {
        self.flags & INTERVAL != 0
    }

    /// Whether the expression was written with six fields (seconds first).
    pub fn has_seconds(&self) -> bool {
        self.flags & SIX_FIELDS != 0
    }

    /// Whether a wall-clock time (`year-month-day hour:minute:second`)
    /// matches, ignoring time zones.
    #[cfg(test)]
    pub(crate) fn matches_wall(
        &self,
        year: i32,
        month: u32,
        day: u32,
        h: u32,
        m: u32,
        s: u32,
    ) -> bool {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return false;
        }
        h < 24
            && m < 60
            && s < 60
            && self.months & (1 << month) != 0
            && self.day_mask(year, month) & (1 << day) != 0
            && self.hours & (1 << h) != 0
            && self.minutes & (1 << m) != 0
            && self.seconds & (1 << s) != 0
    }

    fn parse_dom(&mut self, text: &str) -> Result<(), ScheduleError> {
        let field = Field::DayOfMonth;
        for item in split_items(text, field)? {
            let upper = item.to_ascii_uppercase();
            match upper.as_str() {
                "?" => self.days |= bits(1, 31, 1) as u32,
                "L" => self.flags |= DOM_LAST,
                "LW" => self.flags |= DOM_LAST_WEEKDAY,
                _ if upper.len() > 1 && upper.ends_with('W') => {
                    let n = number(&upper[..upper.len() - 1], field, item, Reason::NotANumber)?;
                    check_range(n, field, item)?;
                    self.nearest_weekdays |= 1 << n;
                }
                _ => self.days |= parse_item(item, field)? as u32,
            }
        }
        Ok(())
    }

    fn parse_dow(&mut self, text: &str) -> Result<(), ScheduleError> {
        let field = Field::DayOfWeek;
        for item in split_items(text, field)? {
            let upper = item.to_ascii_uppercase();
            if upper == "?" {
                self.weekdays |= 0x7f;
            } else if let Some((day, nth)) = upper.split_once('#') {
                let wd = weekday_value(day, item)?;
                if nth == "L" {
                    self.last_weekdays |= 1 << wd;
                } else {
                    match nth.parse::<u32>() {
                        Ok(k @ 1..=5) => self.nth_weekdays |= 1 << (wd * 5 + k - 1),
                        _ => return Err(invalid(field, item, Reason::BadNth)),
                    }
                }
            } else if upper.len() > 1 && upper.ends_with('L') {
                let wd = weekday_value(&upper[..upper.len() - 1], item)?;
                self.last_weekdays |= 1 << wd;
            } else {
                let b = parse_item(item, field)?;
                // 7 is Sunday, like 0.
                self.weekdays |= ((b | (b >> 7)) & 0x7f) as u8;
            }
        }
        Ok(())
    }

    /// Whether some month in the expression's month set has a matching day
    /// in some year. Every combination of month length and weekday of the
    /// 1st occurs within the 400-year Gregorian cycle, so checking them all
    /// decides whether the expression can ever fire.
    fn can_fire(&self) -> bool {
        (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .any(|m| {
                let lengths: &[u32] = match m {
                    2 => &[28, 29],
                    4 | 6 | 9 | 11 => &[30],
                    _ => &[31],
                };
                lengths
                    .iter()
                    .any(|&len| (0..7).any(|wd1| self.day_mask_for(len, wd1) != 0))
            })
    }

    /// Days of `year-month` that match both day fields, as bits `1..=31`.
    #[inline]
    fn day_mask(&self, year: i32, month: u32) -> u64 {
        let len = days_in_month(year, month);
        if self.flags & ALL_DAYS != 0 {
            return ((1u64 << (len + 1)) - 1) & !1;
        }
        let wd1 = weekday(days_from_civil(year, month, 1));
        self.day_mask_for(len, wd1)
    }

    /// Days matching both day fields in a month of `len` days whose 1st is
    /// weekday `wd1` (`0 = Sunday`).
    fn day_mask_for(&self, len: u32, wd1: u32) -> u64 {
        let valid = ((1u64 << (len + 1)) - 1) & !1;
        let mut dom = u64::from(self.days);
        if self.flags & DOM_LAST != 0 {
            dom |= 1 << len;
        }
        if self.flags & DOM_LAST_WEEKDAY != 0 {
            let last_wd = (wd1 + len - 1) % 7;
            dom |= 1
                << match last_wd {
                    6 => len - 1,
                    0 => len - 2,
                    _ => len,
                };
        }
        let mut w = self.nearest_weekdays;
        while w != 0 {
            let d = w.trailing_zeros();
            w &= w - 1;
            if d <= len {
                dom |= 1 << nearest_weekday(d, len, wd1);
            }
        }

        // Weekday bits rotated so bit k means "day k+1", repeated weekly.
        let wk = u64::from(self.weekdays);
        let rotated = ((wk >> wd1) | (wk << (7 - wd1))) & 0x7f;
        let mut dow = (rotated * 0x1020_4081) << 1;
        let mut last = self.last_weekdays;
        while last != 0 {
            let wd = last.trailing_zeros();
            last &= last - 1;
            let last_wd = (wd1 + len - 1) % 7;
            dow |= 1 << (len - (last_wd + 7 - wd) % 7);
        }
        let mut nth = self.nth_weekdays;
        while nth != 0 {
            let bit = nth.trailing_zeros();
            nth &= nth - 1;
            let (wd, k) = (bit / 5, bit % 5);
            let day = 1 + (wd + 7 - wd1) % 7 + 7 * k;
            if day <= len {
                dow |= 1 << day;
            }
        }

        // Vixie cron: if either day field starts with `*`, both must match;
        // if both are restricted, either may.
        let days = if self.flags & (DOM_STAR | DOW_STAR) != 0 {
            dom & dow
        } else {
            dom | dow
        };
        days & valid
    }

    /// The first matching wall-clock second strictly after `after`, both as
    /// seconds since 1970-01-01T00:00:00 *local* time; `None` past
    /// [`MAX_YEAR`].
    pub(crate) fn next_match(&self, after: i64) -> Option<i64> {
        let start = after.checked_add(1)?;
        let sod = start.rem_euclid(SECS_PER_DAY) as u32;
        let (mut y, mut mo, mut d) = civil_from_days(start.div_euclid(SECS_PER_DAY));
        let (mut h, mut mi, mut s) = (sod / 3600, sod / 60 % 60, sod % 60);
        'month: loop {
            if y > MAX_YEAR {
                return None;
            }
            let months = u32::from(self.months) >> mo;
            if months == 0 {
                (y, mo, d, h, mi, s) = (y + 1, 1, 1, 0, 0, 0);
                continue;
            }
            let next_mo = mo + months.trailing_zeros();
            if next_mo != mo {
                (mo, d, h, mi, s) = (next_mo, 1, 0, 0, 0);
            }
            let days = self.day_mask(y, mo);
            'day: loop {
                let rest = days >> d;
                if rest == 0 {
                    (mo, d, h, mi, s) = (mo + 1, 1, 0, 0, 0);
                    if mo > 12 {
                        (y, mo) = (y + 1, 1);
                    }
                    continue 'month;
                }
                let next_d = d + rest.trailing_zeros();
                if next_d != d {
                    (d, h, mi, s) = (next_d, 0, 0, 0);
                }
                'hour: loop {
                    let rest = u64::from(self.hours) >> h;
                    if rest == 0 {
                        (d, h, mi, s) = (d + 1, 0, 0, 0);
                        continue 'day;
                    }
                    let next_h = h + rest.trailing_zeros();
                    if next_h != h {
                        (h, mi, s) = (next_h, 0, 0);
                    }
                    loop {
                        let rest = self.minutes >> mi;
                        if rest == 0 {
                            (h, mi, s) = (h + 1, 0, 0);
                            continue 'hour;
                        }
                        let next_mi = mi + rest.trailing_zeros();
                        if next_mi != mi {
                            (mi, s) = (next_mi, 0);
                        }
                        let rest = self.seconds >> s;
                        if rest == 0 {
                            (mi, s) = (mi + 1, 0);
                            continue;
                        }
                        s += rest.trailing_zeros();
                        let day = days_from_civil(y, mo, d);
                        return Some(day * SECS_PER_DAY + i64::from(h * 3600 + mi * 60 + s));
                    }
                }
            }
        }
    }
}

/// Nearest weekday (Mon-Fri) to day `d` within its month.
fn nearest_weekday(d: u32, len: u32, wd1: u32) -> u32 {
    match (wd1 + d - 1) % 7 {
        6 if d == 1 => d + 2,
        6 => d - 1,
        0 if d == len => d - 2,
        0 => d + 1,
        _ => d,
    }
}

fn expand_macro(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => return None,
    })
}

fn invalid(field: Field, token: &str, reason: Reason) -> ScheduleError {
    ScheduleError::InvalidField {
        field,
        token: token.to_owned(),
        reason,
    }
}

fn split_items(text: &str, field: Field) -> Result<std::str::Split<'_, char>, ScheduleError> {
    if text.split(',').any(str::is_empty) {
        return Err(invalid(field, text, Reason::Empty));
    }
    Ok(text.split(','))
}

/// A field without extensions (`L`, `W`, `#`): seconds to months.
fn parse_plain(text: &str, field: Field) -> Result<u64, ScheduleError> {
    let mut out = 0;
    for item in split_items(text, field)? {
        out |= parse_item(item, field)?;
    }
    Ok(out)
}

/// `*`, `a`, `a-b`, each optionally `/step`, and `a/step` (= `a-max/step`).
fn parse_item(item: &str, field: Field) -> Result<u64, ScheduleError> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            let n = number(step, field, item, Reason::NotANumber)?;
            if n == 0 {
                return Err(invalid(field, item, Reason::ZeroStep));
            }
            (range, Some(n))
        }
        None => (item, None),
    };
    let (lo, hi) = if range == "*" {
        (field.min(), field.max())
    } else if let Some((a, b)) = range.split_once('-') {
        if a.is_empty() || b.is_empty() {
            return Err(invalid(field, range, Reason::NotANumber));
        }
        let lo = value(a, field)?;
        let mut hi = value(b, field)?;
        if field == Field::DayOfWeek && hi == 0 && lo > 0 {
            // `FRI-SUN`: a range may end on Sunday written as 0 or SUN.
            hi = 7;
        }
        if hi < lo {
            return Err(invalid(field, range, Reason::Reversed));
        }
        (lo, hi)
    } else {
        let v = value(range, field)?;
        match step {
            Some(_) => (v, field.max()),
            None => (v, v),
        }
    };
    // `*/n` in day-of-week runs over 0-6 only: 7 is an alias, not an 8th day.
    let hi = if field == Field::DayOfWeek && range == "*" {
        6
    } else {
        hi
    };
    Ok(bits(lo, hi, step.unwrap_or(1)))
}

fn bits(lo: u32, hi: u32, step: u32) -> u64 {
    (lo..=hi)
        .step_by(step as usize)
        .fold(0, |acc, v| acc | 1 << v)
}

/// A single value of `field`: a number in range, or a month / day name.
fn value(text: &str, field: Field) -> Result<u32, ScheduleError> {
    let names: &[&str] = match field {
        Field::Month => &MONTH_NAMES,
        Field::DayOfWeek => &DAY_NAMES,
        _ => &[],
    };
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + u32::from(field == Field::Month));
    }
    let not_a = match field {
        Field::Month => Reason::NotAMonth,
        Field::DayOfWeek => Reason::NotADay,
        _ => Reason::NotANumber,
    };
    let n = number(text, field, text, not_a)?;
    check_range(n, field, text)?;
    Ok(n)
}

fn check_range(n: u32, field: Field, token: &str) -> Result<(), ScheduleError> {
    let (min, max) = (field.min(), field.max());
    if n < min || n > max {
        return Err(invalid(field, token, Reason::OutOfRange { min, max }));
    }
    Ok(())
}

/// Decimal digits only (no sign, no spaces); overflow counts as out of range.
fn number(text: &str, field: Field, token: &str, not_a: Reason) -> Result<u32, ScheduleError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        let token = if text.is_empty() { token } else { text };
        return Err(invalid(field, token, not_a));
    }
    Ok(text.parse::<u32>().unwrap_or(u32::MAX))
}

fn weekday_value(text: &str, item: &str) -> Result<u32, ScheduleError> {
    let wd = value(text, Field::DayOfWeek).map_err(|e| match e {
        ScheduleError::InvalidField { reason, .. } => invalid(Field::DayOfWeek, item, reason),
        other => other,
    })?;
    Ok(wd % 7)
}
