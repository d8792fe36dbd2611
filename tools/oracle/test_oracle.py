#!/usr/bin/env python3
"""Self-tests for oracle.py.

1. Hand-computed expectations (asserts).
2. Cross-check of oracle.next_times against a second, independently written
   *streaming* definition of the semantics (walk UTC minute by minute,
   look at the wall clock, decide fire / no fire) around every DST transition
   of several zones.

Run:  python3 test_oracle.py        (exit status 0 = all good)
"""
import random
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import oracle
from oracle import CronError, next_times, parse

UTC = timezone.utc
failures = 0
passed = 0


def z(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def check(expr, tz, frm, expected, count=None):
    global failures, passed
    count = count or len(expected)
    got = [oracle.fmt(d) for d in next_times(expr, tz, z(frm), count)]
    if got != expected:
        failures += 1
        print(f"FAIL {expr!r} tz={tz} from={frm}\n  expected {expected}\n  got      {got}")
    else:
        passed += 1


def check_invalid(expr):
    global failures, passed
    try:
        parse(expr)
    except CronError:
        passed += 1
        return
    failures += 1
    print(f"FAIL expected rejection of {expr!r}")


# ---------------------------------------------------------------- hand cases
NY = "America/New_York"
# spring forward 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z)
check("30 2 * * *", NY, "2024-03-09T12:00:00Z", ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"])
check("0,30 2 * * *", NY, "2024-03-09T12:00:00Z", ["2024-03-10T07:00:00Z", "2024-03-11T06:00:00Z"])
check("0,30 2,3 * * *", NY, "2024-03-10T06:00:00Z",   # 2:00,2:30,3:00 -> one fire at 07:00Z
      ["2024-03-10T07:00:00Z", "2024-03-10T07:30:00Z", "2024-03-11T06:00:00Z"])
check("*/15 * * * *", NY, "2024-03-10T06:40:00Z",
      ["2024-03-10T06:45:00Z", "2024-03-10T07:00:00Z", "2024-03-10T07:15:00Z"])
check("* 2 * * *", NY, "2024-03-09T12:00:00Z", ["2024-03-11T06:00:00Z"])   # no 2:xx on Mar 10
check("0 * * * *", NY, "2024-03-10T05:30:00Z",
      ["2024-03-10T06:00:00Z", "2024-03-10T07:00:00Z", "2024-03-10T08:00:00Z"])
# fall back 2024-11-03 02:00 EDT -> 01:00 EST (06:00Z)
check("30 1 * * *", NY, "2024-11-02T12:00:00Z", ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"])
check("*/30 * * * *", NY, "2024-11-03T04:50:00Z",
      ["2024-11-03T05:00:00Z", "2024-11-03T05:30:00Z", "2024-11-03T06:00:00Z",
       "2024-11-03T06:30:00Z", "2024-11-03T07:00:00Z"])
check("30 * * * *", NY, "2024-11-03T04:00:00Z",
      ["2024-11-03T04:30:00Z", "2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z", "2024-11-03T07:30:00Z"])
check("0 1 * * *", NY, "2024-11-02T12:00:00Z", ["2024-11-03T05:00:00Z", "2024-11-04T06:00:00Z"])
_r = [oracle.fmt(d) for d in next_times("* 1 * * *", NY, z("2024-11-03T04:00:00Z"), 121)]
assert _r[0] == "2024-11-03T05:00:00Z" and _r[59] == "2024-11-03T05:59:00Z"
assert _r[60] == "2024-11-03T06:00:00Z" and _r[119] == "2024-11-03T06:59:00Z"
assert _r[120] == "2024-11-04T06:00:00Z"
passed += 1
# from exactly on a fire time: strictly after
check("30 1 * * *", NY, "2024-11-03T05:30:00Z", ["2024-11-04T06:30:00Z"])
check("*/30 * * * *", NY, "2024-11-03T05:30:00Z", ["2024-11-03T06:00:00Z"])
# 6-field
check("0 30 2 * * *", NY, "2024-03-09T12:00:00Z", ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"])
check("*/20 * 1 * * *", NY, "2024-11-03T05:59:30Z",
      ["2024-11-03T05:59:40Z", "2024-11-03T06:00:00Z", "2024-11-03T06:00:20Z"])

# Lord Howe: +10:30 -> +11 at 2024-10-06 02:00 local (15:30Z on the 5th);
# +11 -> +10:30 at 2024-04-07 02:00 local (15:00Z on the 6th), walls 1:30-2:00 repeat
LH = "Australia/Lord_Howe"
check("15 2 * * *", LH, "2024-10-05T00:00:00Z", ["2024-10-05T15:30:00Z", "2024-10-06T15:15:00Z"])
check("45 1 * * *", LH, "2024-04-06T00:00:00Z", ["2024-04-06T14:45:00Z", "2024-04-07T15:15:00Z"])
check("45 * * * *", LH, "2024-04-06T13:00:00Z",
      ["2024-04-06T13:45:00Z", "2024-04-06T14:45:00Z", "2024-04-06T15:15:00Z", "2024-04-06T16:15:00Z"])
# 2:00 is in the gap -> transition instant 15:30Z, 2:30 exists at +11 = 15:30Z too: one fire
check("0,30 2 * * *", LH, "2024-10-05T12:00:00Z", ["2024-10-05T15:30:00Z", "2024-10-06T15:00:00Z"])

# Kathmandu 1986-01-01 00:00 +05:30 -> 00:15 +05:45 (1985-12-31T18:30Z)
KTM = "Asia/Kathmandu"
check("0 0 * * *", KTM, "1985-12-30T00:00:00Z",
      ["1985-12-30T18:30:00Z", "1985-12-31T18:30:00Z", "1986-01-01T18:15:00Z"])
check("*/15 * * * *", KTM, "1985-12-31T18:00:00Z",
      ["1985-12-31T18:15:00Z", "1985-12-31T18:30:00Z", "1985-12-31T18:45:00Z"])

# Apia: 2011-12-30 does not exist (-10 -> +14 at 2011-12-30T10:00Z)
APIA = "Pacific/Apia"
check("0 0 * * *", APIA, "2011-12-28T00:00:00Z",
      ["2011-12-28T10:00:00Z", "2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"])
check("0 12 * * *", APIA, "2011-12-29T00:00:00Z",      # Dec 29 12:00 -10, Dec 30 gone -> transition, Dec 31 12:00 +14
      ["2011-12-29T22:00:00Z", "2011-12-30T10:00:00Z", "2011-12-30T22:00:00Z"])
check("0 12 * * *", "UTC", "2011-12-29T00:00:00Z", ["2011-12-29T12:00:00Z"])
check("0 12 * * *", APIA, "2011-12-29T00:00:00Z", ["2011-12-29T22:00:00Z", "2011-12-30T10:00:00Z"])
check("0 12 * * *", APIA, "2011-12-29T22:00:00Z", ["2011-12-30T10:00:00Z", "2011-12-30T22:00:00Z"])
check("0 * * * *", APIA, "2011-12-30T08:30:00Z",      # interval: the lost day simply does not fire
      ["2011-12-30T09:00:00Z", "2011-12-30T10:00:00Z", "2011-12-30T11:00:00Z"])

# ------------------------------------------------------------ dialect (UTC)
check("0 0 */2 * MON", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-15T00:00:00Z", "2024-01-29T00:00:00Z", "2024-02-05T00:00:00Z", "2024-02-19T00:00:00Z"])
check("0 0 1,15 * MON", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z", "2024-01-22T00:00:00Z",
       "2024-01-29T00:00:00Z", "2024-02-01T00:00:00Z", "2024-02-05T00:00:00Z"])
check("0 0 13 * fri", "UTC", "2024-09-01T00:00:00Z",      # OR: every Friday and every 13th
      ["2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z", "2024-09-20T00:00:00Z"])
check("0 0 L * *", "UTC", "2024-01-31T00:00:00Z", ["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"])
check("0 0 LW * *", "UTC", "2024-03-01T00:00:00Z",
      ["2024-03-29T00:00:00Z", "2024-04-30T00:00:00Z", "2024-05-31T00:00:00Z", "2024-06-28T00:00:00Z"])
check("0 0 1W * *", "UTC", "2024-05-15T00:00:00Z", ["2024-06-03T00:00:00Z"])      # Jun 1 2024 = Sat
check("0 0 31W * *", "UTC", "2024-03-01T00:00:00Z",                                # Mar 31 = Sun
      ["2024-03-29T00:00:00Z", "2024-05-31T00:00:00Z", "2024-07-31T00:00:00Z"])
check("0 0 15W * *", "UTC", "2024-09-01T00:00:00Z", ["2024-09-16T00:00:00Z", "2024-10-15T00:00:00Z"])
check("0 0 30W * *", "UTC", "2024-02-01T00:00:00Z", ["2024-03-29T00:00:00Z"])      # Feb skipped, Mar 30 Sat
check("0 0 * * 5L", "UTC", "2024-02-01T00:00:00Z", ["2024-02-23T00:00:00Z", "2024-03-29T00:00:00Z"])
check("0 0 * * FRI#L", "UTC", "2024-02-01T00:00:00Z", ["2024-02-23T00:00:00Z", "2024-03-29T00:00:00Z"])
check("0 0 * * FRI#2", "UTC", "2024-02-01T00:00:00Z", ["2024-02-09T00:00:00Z", "2024-03-08T00:00:00Z"])
check("0 0 * * 1#5", "UTC", "2024-01-01T00:00:00Z", ["2024-01-29T00:00:00Z", "2024-04-29T00:00:00Z"])
check("0 0 * * 7", "UTC", "2024-01-01T00:00:00Z", ["2024-01-07T00:00:00Z"])
check("0 0 * * 0", "UTC", "2024-01-01T00:00:00Z", ["2024-01-07T00:00:00Z"])
check("0 0 * * 5-7", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-05T00:00:00Z", "2024-01-06T00:00:00Z", "2024-01-07T00:00:00Z", "2024-01-12T00:00:00Z"])
check("0 9 * * mon-FRI", "UTC", "2024-01-05T10:00:00Z", ["2024-01-08T09:00:00Z"])
check("0 0 1 jan-MAR/2 *", "UTC", "2024-01-01T00:00:00Z", ["2024-03-01T00:00:00Z", "2025-01-01T00:00:00Z"])
check("10-50/20 * * * *", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-01T00:10:00Z", "2024-01-01T00:30:00Z", "2024-01-01T00:50:00Z", "2024-01-01T01:10:00Z"])
check("45/5 * * * *", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-01T00:45:00Z", "2024-01-01T00:50:00Z", "2024-01-01T00:55:00Z", "2024-01-01T01:45:00Z"])
check("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z", ["2028-02-29T00:00:00Z"])
check("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z", ["2104-02-29T00:00:00Z"])
check("0 0 ? * ?", "UTC", "2024-01-01T00:00:00Z", ["2024-01-02T00:00:00Z"])
check("@yearly", "UTC", "2024-01-01T00:00:00Z", ["2025-01-01T00:00:00Z"])
check("@annually", "UTC", "2024-01-01T00:00:00Z", ["2025-01-01T00:00:00Z"])
check("@monthly", "UTC", "2024-01-01T00:00:00Z", ["2024-02-01T00:00:00Z"])
check("@weekly", "UTC", "2024-01-01T00:00:00Z", ["2024-01-07T00:00:00Z"])
check("@daily", "UTC", "2024-01-01T00:00:00Z", ["2024-01-02T00:00:00Z"])
check("@midnight", "UTC", "2024-01-01T00:00:00Z", ["2024-01-02T00:00:00Z"])
check("@hourly", "UTC", "2024-01-01T00:00:00Z", ["2024-01-01T01:00:00Z"])
check("@hourly", NY, "2024-11-03T04:30:00Z",   # interval: both 1:00s fire
      ["2024-11-03T05:00:00Z", "2024-11-03T06:00:00Z", "2024-11-03T07:00:00Z"])
check("@daily", APIA, "2011-12-29T00:00:00Z", ["2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"])
check("*/20 * 1 * * *", "UTC", "2024-01-01T00:00:00Z",
      ["2024-01-01T01:00:00Z", "2024-01-01T01:00:20Z", "2024-01-01T01:00:40Z", "2024-01-01T01:01:00Z"])
check("30 0 0 1 1 *", "UTC", "2024-01-01T00:00:30Z", ["2025-01-01T00:00:30Z"])
check("* * * * *", "UTC", "2024-01-01T00:00:00.5Z", ["2024-01-01T00:01:00Z"])

assert parse("@hourly").interval and not parse("@daily").interval
assert parse("*/5 0 * * *").interval and parse("0 */2 * * *").interval and not parse("5 0 * * *").interval
assert parse("* 0 0 * * *").interval and not parse("0 0 0 * * *").interval
passed += 1

for bad in ["0 0 30 2 *", "0 0 31 4 *", "60 * * * *", "* * * * MOM", "*/0 * * * *", "5-1 * * * *",
            "", "   ", "* * * * * * *", "@reboot", "* * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *",
            "0 0 * * 8", "1,,2 * * * *", "0 0 * * FRI#6", "0 0 * * FRI#0", "0 0 32W * *", "0 0 * * L",
            "-1 * * * *", "0 0 L-2 * *", "a * * * *", "*/x * * * *", "0 0 * JAN-FOO *", "60 * * * * *"]:
    check_invalid(bad)


# ------------------------------------------- streaming reference cross-check
def stream_reference(expr, tz, frm, count, window_hours=120):
    """Second, independent formulation of the semantics (5-field only,
    zones with whole-minute offsets).  Walk UTC minute by minute.
    interval job: fire iff the wall reading matches.
    fixed job:    fire at T iff (wall(T) matches and that wall reading was
                  never shown before, i.e. first pass of an overlap) or
                  (a forward jump skipped wall readings just before T and
                  one of the skipped readings matches)."""
    s = parse(expr)
    zone = ZoneInfo(tz)

    def wall(ts):
        return datetime.fromtimestamp(ts, zone).replace(tzinfo=None)

    def matches(w):
        return (s.day_matches(w.date()) and w.hour in s.hours and w.minute in s.minutes
                and w.second in s.seconds)

    after = int(frm.timestamp())
    t = (after // 60) * 60 - 30 * 3600        # warm-up: learn the max wall seen
    prev = wall(t)
    maxw = prev
    out = []
    end = after + window_hours * 3600
    while t < end and len(out) < count:
        t += 60
        w = wall(t)
        if s.interval:
            fire = matches(w)
        else:
            fire = matches(w) and w > maxw
            g = prev + timedelta(minutes=1)
            while g < w and not fire:          # skipped wall readings
                fire = g > maxw and matches(g)
                g += timedelta(minutes=1)
        if fire and t > after:
            out.append(t)
        maxw = max(maxw, w)
        prev = w
    return [datetime.fromtimestamp(u, UTC) for u in out]


transitions = oracle.transitions


STREAM_EXPRS = ["30 2 * * *", "0 1 * * *", "30 1 * * *", "0,30 2 * * *", "15 2 * * *", "0 0 * * *",
                "*/15 * * * *", "0 * * * *", "30 * * * *", "* 2 * * *", "45 0-3 * * *", "0 23 * * *",
                "*/7 1-3 * * *", "0 0,1,2,3 * * *", "59 1 * * *", "0 3 * * *", "20,40 0-4 * * *"]
STREAM_ZONES = {"America/New_York": (2023, 2025), "Europe/London": (2024, 2025),
                "Australia/Lord_Howe": (2023, 2025), "Asia/Kathmandu": (1985, 1986),
                "America/Sao_Paulo": (2017, 2019), "Pacific/Apia": (2011, 2012),
                "Pacific/Chatham": (2024, 2025), "America/St_Johns": (2024, 2025),
                "Europe/Dublin": (2024, 2025), "Africa/Casablanca": (2019, 2025),
                "Asia/Gaza": (2022, 2025), "Antarctica/Troll": (2024, 2024),
                "America/Havana": (2024, 2024), "Asia/Tehran": (2021, 2022)}
n_stream = 0
for tz, (y0, y1) in STREAM_ZONES.items():
    for tr in transitions(tz, y0, y1):
        for expr in STREAM_EXPRS:
            for back_h in (40, 2):
                frm = datetime.fromtimestamp(tr - back_h * 3600, UTC)
                ref = stream_reference(expr, tz, frm, 6)
                got = next_times(expr, tz, frm, len(ref))
                n_stream += 1
                if ref != got:
                    failures += 1
                    if failures < 15:
                        print(f"STREAM MISMATCH {expr!r} {tz} from {oracle.fmt(frm)}\n"
                              f"  stream {[oracle.fmt(d) for d in ref]}\n  oracle {[oracle.fmt(d) for d in got]}")
                else:
                    passed += 1

print(f"streaming cross-check: {n_stream} cases")
print(f"passed {passed}, failed {failures}")
sys.exit(1 if failures else 0)
