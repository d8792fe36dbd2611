#!/usr/bin/env python3
"""Independent reference oracle for cron "next fire times".

Vixie-cron dialect with Quartz-like extensions (L, LW, nW, nL, X#k) and
Vixie daylight-saving semantics.  Python 3.11 stdlib only (zoneinfo reads the
system tzdata in /usr/share/zoneinfo).

Deliberately brute force.  Two enumeration strategies:

* fixed-time jobs (no '*'-leading second/minute/hour field): walk local
  calendar days one by one, for every matching day try every (h, m, s) in the
  time sets, and resolve each local wall time to ONE UTC instant:
    - exists once          -> that instant
    - exists twice (fold)  -> the earlier instant
    - does not exist (gap) -> the transition instant (first instant after gap)
  Fire times are a set (several gap times collapse into one fire).

* interval jobs: walk UTC instants second by second, skipping only over
  stretches whose wall-clock reading provably cannot match (rest of a
  non-matching day/hour/minute, never skipping across a UTC-offset change),
  and fire at every instant whose wall reading matches.

Public API:  next_times(expr, tz, from_utc, count) -> list[datetime (UTC)]
CLI:         python3 oracle.py [--tz ZONE] [--from RFC3339] [--count N] 'EXPR'
"""
from __future__ import annotations

import argparse
import calendar
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc

# Search horizon, applied per fire (from `from`, then from each fire found):
# give up if no further fire within this many years.  `0 0 29 2 *` needs up
# to 8 years (2096 -> 2104); `0 0 29 2 */7`-like AND combos up to 28 (40 over
# a century boundary).
HORIZON_YEARS = 50

# Any UTC offset ever used is within +-16h (LMT offsets included).  Used only
# for conservative pre-filtering / stop conditions in the fixed-time walk.
MAX_ABS_OFFSET = 16 * 3600

MONTH_NAMES = {n: i + 1 for i, n in enumerate(
    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
DOW_NAMES = {n: i for i, n in enumerate("SUN MON TUE WED THU FRI SAT".split())}

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    pass


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

_NUM_RE = re.compile(r"^[0-9]+$")


def _num(tok: str, lo: int, hi: int, names: dict | None, what: str) -> int:
    if _NUM_RE.match(tok):
        v = int(tok)
    elif names is not None and tok.upper() in names:
        v = names[tok.upper()]
    else:
        raise CronError(f"bad value {tok!r} in {what} field")
    if not lo <= v <= hi:
        raise CronError(f"{what} value {v} out of range {lo}-{hi}")
    return v


def _plain_item(item: str, lo: int, hi: int, names, what: str, allow_q: bool) -> set[int]:
    """`*`, `*/s`, `a`, `a-b`, `a-b/s`, `a/s` (= a-hi/s)."""
    if "/" in item:
        base, step_s = item.split("/", 1)
        if not _NUM_RE.match(step_s):
            raise CronError(f"bad step {step_s!r} in {what} field")
        step = int(step_s)
        if step < 1:
            raise CronError(f"step must be >= 1 in {what} field")
    else:
        base, step = item, None
    if base == "*" or (allow_q and base == "?"):
        a, b = lo, hi
    elif "-" in base:
        a_s, b_s = base.split("-", 1)
        a = _num(a_s, lo, hi, names, what)
        b = _num(b_s, lo, hi, names, what)
        if a > b:
            raise CronError(f"reversed range {base!r} in {what} field")
    else:
        a = _num(base, lo, hi, names, what)
        b = hi if step is not None else a
    return set(range(a, b + 1, step or 1))


@dataclass(frozen=True)
class Schedule:
    text: str
    seconds: frozenset
    minutes: frozenset
    hours: frozenset
    months: frozenset
    dom_values: frozenset          # plain day numbers 1..31
    dom_last: bool                 # L
    dom_last_weekday: bool         # LW
    dom_nearest: frozenset         # N for NW
    dow_values: frozenset          # 0..6, Sunday = 0
    dow_last: frozenset            # weekday for nL / X#L
    dow_nth: frozenset             # (weekday, k) for X#k
    dom_restricted: bool
    dow_restricted: bool
    interval: bool
    six_fields: bool

    # ---- day-level matching -------------------------------------------
    def dom_matches(self, d: date) -> bool:
        last = calendar.monthrange(d.year, d.month)[1]
        if d.day in self.dom_values:
            return True
        if self.dom_last and d.day == last:
            return True
        if self.dom_last_weekday and d == _last_weekday(d.year, d.month):
            return True
        for n in self.dom_nearest:
            if d == _nearest_weekday(d.year, d.month, n):
                return True
        return False

    def dow_matches(self, d: date) -> bool:
        wd = (d.weekday() + 1) % 7          # Python Mon=0 -> cron Sun=0
        if wd in self.dow_values:
            return True
        last = calendar.monthrange(d.year, d.month)[1]
        if wd in self.dow_last and d.day + 7 > last:
            return True
        if (wd, (d.day - 1) // 7 + 1) in self.dow_nth:
            return True
        return False

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        if self.dom_restricted and self.dow_restricted:
            return self.dom_matches(d) or self.dow_matches(d)
        return self.dom_matches(d) and self.dow_matches(d)


def _last_weekday(y: int, m: int) -> date:
    d = date(y, m, calendar.monthrange(y, m)[1])
    while d.weekday() >= 5:
        d -= timedelta(days=1)
    return d


def _nearest_weekday(y: int, m: int, n: int) -> date | None:
    last = calendar.monthrange(y, m)[1]
    if n > last:
        return None
    d = date(y, m, n)
    if d.weekday() == 5:                      # Saturday
        return d + timedelta(days=2) if n == 1 else d - timedelta(days=1)
    if d.weekday() == 6:                      # Sunday
        return d - timedelta(days=2) if n == last else d + timedelta(days=1)
    return d


_DOW_LAST_RE = re.compile(r"^([0-9A-Za-z]+)L$", re.I)
_DOW_NTH_RE = re.compile(r"^([0-9A-Za-z]+)#([0-9]+|L)$", re.I)
_DOM_W_RE = re.compile(r"^([0-9]+)W$", re.I)


def parse(expr: str) -> Schedule:
    text = expr.strip()
    if not text:
        raise CronError("empty expression")
    if text.startswith("@"):
        key = text.lower()
        if key not in MACROS:
            raise CronError(f"unknown macro {text!r}")
        text = MACROS[key]
    fields = text.split()
    if len(fields) == 5:
        six = False
        sec_f = "0"
        min_f, hour_f, dom_f, mon_f, dow_f = fields
    elif len(fields) == 6:
        six = True
        sec_f, min_f, hour_f, dom_f, mon_f, dow_f = fields
    else:
        raise CronError(f"expected 5 or 6 fields, got {len(fields)}")

    def simple(ftext, lo, hi, names, what):
        out = set()
        for item in ftext.split(","):
            if not item:
                raise CronError(f"empty list item in {what} field")
            out |= _plain_item(item, lo, hi, names, what, allow_q=False)
        return frozenset(out)

    seconds = simple(sec_f, 0, 59, None, "second")
    minutes = simple(min_f, 0, 59, None, "minute")
    hours = simple(hour_f, 0, 23, None, "hour")
    months = simple(mon_f, 1, 12, MONTH_NAMES, "month")

    # day of month
    dom_values, dom_last, dom_lw, dom_near = set(), False, False, set()
    if dom_f == "?":
        dom_values = set(range(1, 32))
    else:
        for item in dom_f.split(","):
            if not item:
                raise CronError("empty list item in day-of-month field")
            up = item.upper()
            if up == "L":
                dom_last = True
            elif up == "LW":
                dom_lw = True
            elif _DOM_W_RE.match(item):
                dom_near.add(_num(_DOM_W_RE.match(item).group(1), 1, 31, None, "day-of-month"))
            else:
                dom_values |= _plain_item(item, 1, 31, None, "day-of-month", allow_q=False)

    # day of week (0..7, 7 == Sunday)
    dow_values, dow_last, dow_nth = set(), set(), set()
    if dow_f == "?":
        dow_values = set(range(7))
    else:
        for item in dow_f.split(","):
            if not item:
                raise CronError("empty list item in day-of-week field")
            m_nth = _DOW_NTH_RE.match(item)
            m_last = _DOW_LAST_RE.match(item)
            if m_nth:
                wd = _num(m_nth.group(1), 0, 7, DOW_NAMES, "day-of-week") % 7
                k = m_nth.group(2).upper()
                if k == "L":
                    dow_last.add(wd)
                else:
                    k = int(k)
                    if not 1 <= k <= 5:
                        raise CronError(f"#{k} out of range 1-5")
                    dow_nth.add((wd, k))
            elif m_last:
                dow_last.add(_num(m_last.group(1), 0, 7, DOW_NAMES, "day-of-week") % 7)
            else:
                dow_values |= {v % 7 for v in _plain_item(item, 0, 7, DOW_NAMES, "day-of-week", allow_q=False)}

    def restricted(f):
        return not (f.startswith("*") or f == "?")

    time_fields = (sec_f, min_f, hour_f) if six else (min_f, hour_f)
    sched = Schedule(
        text=expr,
        seconds=seconds, minutes=minutes, hours=hours, months=months,
        dom_values=frozenset(dom_values), dom_last=dom_last,
        dom_last_weekday=dom_lw, dom_nearest=frozenset(dom_near),
        dow_values=frozenset(dow_values), dow_last=frozenset(dow_last),
        dow_nth=frozenset(dow_nth),
        dom_restricted=restricted(dom_f), dow_restricted=restricted(dow_f),
        interval=any(f.startswith("*") for f in time_fields),
        six_fields=six,
    )
    # Reject schedules that can never fire.  The day/month pattern depends
    # only on (leap year?, weekday of Jan 1); 2000..2027 covers all 14 combos.
    d, end = date(2000, 1, 1), date(2028, 1, 1)
    while d < end:
        if sched.day_matches(d):
            break
        d += timedelta(days=1)
    else:
        raise CronError("expression never fires")
    return sched


# --------------------------------------------------------------------------
# Time-zone helpers (all UTC instants are integer POSIX seconds)
# --------------------------------------------------------------------------

def _wall(ts: int, tz: ZoneInfo) -> datetime:
    """Naive local wall-clock reading at UTC instant ts."""
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None, fold=0)


def _offset(ts: int, tz: ZoneInfo) -> int:
    return int(datetime.fromtimestamp(ts, tz).utcoffset().total_seconds())


def transitions(tz: str, y0: int, y1: int) -> list[int]:
    """UTC instants (POSIX s) of every offset change in [y0, y1], per system tzdata."""
    zone = ZoneInfo(tz)
    t = int(datetime(y0, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(y1 + 1, 1, 1, tzinfo=UTC).timestamp())
    off = _offset(t, zone)
    res = []
    while t < end:
        n = t + 6 * 3600
        if _offset(n, zone) != off:
            lo, hi = t, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(mid, zone) == off:
                    lo = mid
                else:
                    hi = mid
            res.append(hi)
            off = _offset(hi, zone)
        t = n
    return res


def resolve_fixed(local: datetime, tz: ZoneInfo) -> int:
    """UTC instant at which a fixed-time job with wall time `local` fires."""
    cands = []
    tries = []
    for fold in (0, 1):
        u = int(local.replace(tzinfo=tz, fold=fold).timestamp())
        tries.append(u)
        if _wall(u, tz) == local:
            cands.append(u)
    if cands:
        return min(cands)                    # first of the two in an overlap
    # Nonexistent (gap).  Find the first instant whose wall reading is > local,
    # i.e. the transition instant.  Between min(tries) and max(tries) the wall
    # reading goes from < local to > local.
    lo, hi = min(tries), max(tries)
    assert _wall(lo, tz) < local < _wall(hi, tz), (local, tz, lo, hi)
    while hi - lo > 1:                        # invariant: wall(lo) < local < wall(hi)
        mid = (lo + hi) // 2
        if _wall(mid, tz) > local:
            hi = mid
        else:
            lo = mid
    return hi


def _advance(t: int, delta: int, tz: ZoneInfo) -> int:
    """t + delta, but never jump across a UTC-offset change: if the offset
    changes in (t, t+delta], return the first instant with the new offset."""
    target = t + delta
    off0 = _offset(t, tz)
    if _offset(target, tz) == off0:
        return target
    lo, hi = t, target                        # offset(lo) == off0 != offset(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(mid, tz) == off0:
            lo = mid
        else:
            hi = mid
    return hi


# --------------------------------------------------------------------------
# Enumeration
# --------------------------------------------------------------------------

def _fixed_fires(s: Schedule, tz: ZoneInfo, after: float, count: int) -> list[int]:
    tods = sorted((h, m, sec) for h in s.hours for m in s.minutes for sec in s.seconds)
    d = _wall(int(after), tz).date() - timedelta(days=2)
    horizon = timedelta(days=366 * HORIZON_YEARS)
    end = d + horizon
    fires: set[int] = set()
    while d <= end:
        day_start_naive = calendar.timegm(d.timetuple())   # local midnight read as UTC
        if len(fires) >= count:
            kth = sorted(fires)[count - 1]
            # every local time on day d or later resolves to >= naive - 16h
            if day_start_naive - MAX_ABS_OFFSET > kth:
                break
        if s.day_matches(d):
            for (h, m, sec) in tods:
                naive = day_start_naive + h * 3600 + m * 60 + sec
                if naive + MAX_ABS_OFFSET <= after:
                    continue                   # resolves to <= after for sure
                u = resolve_fixed(datetime(d.year, d.month, d.day, h, m, sec), tz)
                if u > after:
                    fires.add(u)
                    end = max(end, d + horizon)
        d += timedelta(days=1)
    return sorted(fires)[:count]


def _interval_fires(s: Schedule, tz: ZoneInfo, after: float, count: int) -> list[int]:
    t = int(after // 1) + 1                   # first whole second strictly after
    horizon = 366 * 86400 * HORIZON_YEARS
    limit = t + horizon
    out: list[int] = []
    MAX_JUMP = 6 * 3600                       # extra paranoia against double transitions
    while len(out) < count and t < limit:
        w = _wall(t, tz)
        sec_of_day = w.hour * 3600 + w.minute * 60 + w.second
        if not s.day_matches(w.date()):
            t = _advance(t, min(86400 - sec_of_day, MAX_JUMP), tz)
        elif w.hour not in s.hours:
            t = _advance(t, 3600 - w.minute * 60 - w.second, tz)
        elif w.minute not in s.minutes:
            t = _advance(t, 60 - w.second, tz)
        elif w.second not in s.seconds:
            later = [x for x in s.seconds if x > w.second]
            t = _advance(t, (min(later) if later else 60) - w.second, tz)
        else:
            out.append(t)
            limit = t + horizon
            t += 1
    return out


def next_times(expr: str, tz: str | ZoneInfo = "UTC", from_utc: datetime | None = None,
               count: int = 1) -> list[datetime]:
    """Next `count` fire times strictly after from_utc, as aware UTC datetimes."""
    s = parse(expr)
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    if from_utc is None:
        from_utc = datetime.now(UTC)
    if from_utc.tzinfo is None:
        from_utc = from_utc.replace(tzinfo=UTC)
    after = from_utc.timestamp()
    fn = _interval_fires if s.interval else _fixed_fires
    return [datetime.fromtimestamp(u, UTC) for u in fn(s, zone, after, count)]


def fmt(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    dt = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tz", default="UTC")
    ap.add_argument("--from", dest="from_", default=None)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("expr")
    a = ap.parse_args(argv)
    try:
        zone = ZoneInfo(a.tz)
    except Exception as e:  # noqa: BLE001
        print(f"error: unknown time zone {a.tz!r}: {e}", file=sys.stderr)
        return 2
    try:
        start = parse_rfc3339(a.from_) if a.from_ else datetime.now(UTC)
    except ValueError as e:
        print(f"error: bad --from: {e}", file=sys.stderr)
        return 2
    try:
        res = next_times(a.expr, zone, start, a.count)
    except CronError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for dt in res:
        print(fmt(dt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
