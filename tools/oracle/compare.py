#!/usr/bin/env python3
"""Cross-check a `next` CLI against oracle.py.

CLI contract of the program under test:
    next [--tz ZONE] [--from RFC3339] [--count N] 'EXPR'
prints N lines `YYYY-MM-DDTHH:MM:SSZ`; invalid expression -> stderr, exit 2.

Usage:
    python3 compare.py                       # build the example, then test the binary
    python3 compare.py --no-build            # use <repo>/target/release/examples/next as is
    python3 compare.py --target-dir /tmp/oracle-target   # build/use a private target dir
    python3 compare.py --cmd 'python3 oracle.py'   # any command (shlex-split), e.g. self-check
    python3 compare.py --random 1000 --seed 7 --show 10 --jobs 2
    python3 compare.py --only dst|dialect|invalid|ambiguous|random   (repeatable)

Exit status: 0 if no disagreement (ambiguous cases are informational only).
"""
from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402

UTC = timezone.utc
MAIN = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN = os.path.join(MAIN, "target/release/examples/next")


@dataclass
class Case:
    group: str
    expr: str
    tz: str
    frm: str
    count: int
    note: str = ""


# --------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------

def fmt_ts(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


transitions = oracle.transitions


DST_ZONES = {
    "America/New_York": [(2006, 2007), (2024, 2025)],
    "Europe/London": [(1996, 1996), (2024, 2025)],
    "Australia/Lord_Howe": [(2024, 2025)],
    "Asia/Kathmandu": [(1986, 1986)],
    "America/Sao_Paulo": [(2017, 2019)],
    "Pacific/Apia": [(2011, 2011), (2020, 2021)],
    "Pacific/Chatham": [(2024, 2025)],
    "America/St_Johns": [(2024, 2025)],
    "Europe/Dublin": [(2024, 2025)],
    "Africa/Casablanca": [(2019, 2019), (2024, 2026)],
    "Asia/Gaza": [(2024, 2025)],
    # extras: 2h shift, midnight transitions, abolished DST, 2-step changes
    "Antarctica/Troll": [(2024, 2024)],
    "America/Havana": [(2024, 2024)],
    "Asia/Beirut": [(2024, 2024)],
    "America/Santiago": [(2024, 2024)],
    "Asia/Tehran": [(2022, 2022)],
    "Europe/Moscow": [(2010, 2011), (2014, 2014)],
    "America/Godthab": [(2023, 2023)],
    "Pacific/Kiritimati": [(1994, 1995)],
    "Australia/Sydney": [(2024, 2024)],
}

# (expr, [(hours before transition, count), ...])
DST_EXPRS = [
    ("30 2 * * *", [(40, 4), (2, 3)]),
    ("0 1 * * *", [(40, 4), (2, 3)]),
    ("30 1 * * *", [(40, 4), (2, 3)]),
    ("0,30 2 * * *", [(40, 6), (2, 4)]),
    ("15 2 * * *", [(40, 4), (2, 3)]),
    ("0 0 * * *", [(40, 4), (2, 3)]),
    ("45 2 * * *", [(40, 4)]),
    ("0 3 * * *", [(40, 4)]),
    ("59 23 * * *", [(40, 4)]),
    ("*/15 * * * *", [(3, 24), (40, 200)]),
    ("0 * * * *", [(4, 10), (40, 50)]),
    ("30 * * * *", [(4, 10), (40, 50)]),
    ("* 2 * * *", [(40, 130)]),
    ("* 0 * * *", [(40, 130)]),
    ("@hourly", [(4, 10)]),
    ("@daily", [(40, 4)]),
    ("0 30 2 * * *", [(40, 4), (2, 3)]),
    ("*/20 * 1 * * *", [(40, 400)]),
    ("0 0,30 0-3 * * *", [(40, 12)]),
]

DIALECT_EXPRS = [
    "* * * * *", "*/15 * * * *", "0 * * * *", "5,35 * * * *", "1-5 * * * *", "10-50/5 * * * *",
    "45/5 * * * *", "0 9-17 * * *", "0 9-17/2 * * *", "0 0 1,15 * *", "0 0 * jan *", "0 0 1 JAN-MAR *",
    "0 0 1 jan,jul *", "0 0 1 */3 *", "0 0 1 2/3 *", "0 0 * * MON-FRI", "0 0 * * mon-fri", "0 0 * * sun",
    "0 0 * * 0", "0 0 * * 7", "0 0 * * 5-7", "0 0 * * 0-7", "0 0 * * */2", "0 0 * * 1-5/2",
    "0 0 */2 * MON", "0 0 1,15 * MON", "0 0 13 * FRI", "0 0 */2 * *", "0 0 1-7 * MON", "0 0 1-7 * */7",
    "0 0 L * *", "0 0 LW * *", "0 0 1W * *", "0 0 15W * *", "0 0 31W * *", "0 0 30W * *", "0 0 29W 2 *",
    "0 0 * * 5L", "0 0 * * FRI#L", "0 0 * * FRI#2", "0 0 * * 1#1", "0 0 * * 0#5", "0 0 * * 7#1",
    "0 0 * * 1L", "0 0 L * FRI", "0 0 15W * MON", "0 0 ? * MON", "0 0 1 * ?", "0 0 29 2 *",
    "0 0 29 2 MON", "0 0 31 * *", "0 12 * * SAT,SUN", "@yearly", "@annually", "@monthly", "@weekly",
    "@daily", "@midnight", "@hourly", "0 0 0 * * *", "*/10 * * * * *", "30 */5 * * * *", "15,45 0 12 * * *",
    "0 0 12 L * *", "0 0 12 * * FRI#3", "59 59 23 31 12 *", "0 0 0 29 2 *", "*/20 * 1 * * *",
    "0 30 2 * * *", "0-10/5 0 * * * *", "0 0 29 2 */7", "0 0 L 2 */7", "0 0 29 2 1#5", "0 0 31 * SUN#5",
]
DIALECT_FROMS = ["2024-01-01T00:00:00Z", "2023-06-15T13:37:11Z", "2025-12-31T23:59:59Z", "2000-02-28T12:00:00Z"]

INVALID_EXPRS = [
    "0 0 30 2 *", "0 0 31 4 *", "60 * * * *", "* * * * MOM", "*/0 * * * *", "5-1 * * * *", "",
    "* * * * * * *", "@reboot", "0 0 31 2,4 *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 * 13 *",
    "0 0 * 0 *", "0 0 * * 8", "* * * *", "1,,2 * * * *", "a * * * *", "0 0 * * FRI#6", "0 0 * * FRI#0",
    "0 0 32W * *", "-1 * * * *", "*/x * * * *", "60 * * * * *", "@every 5m", "0 0 30 2 * *",
]

# Not pinned down by the spec: report what each side does, no verdict.
AMBIGUOUS_EXPRS = [
    "0 0 * * MON-SUN",      # SUN=0 as range end
    "0 0 * * 1/2",          # N/step in dow: up to 6 or 7(=Sun)?
    "0 0 * * 5/1",
    "*/100 * * * *",        # step larger than range
    "0 0 1,L * *",          # L inside a list
    "0 0 * * 1,5L",
    "0 0 L-3 * *",
    "0 0 ? * *",            # '?' counts as '*' (unrestricted)?
    "0 0 1 * ?",
    "@DAILY",               # macro case
    "0 0 1W * SUN",         # both restricted -> OR
    "0 0 1W * */7",         # AND of weekday-only dom with Sundays: never fires?
    "0 0 L 2 */7",
    "0 0 * * L",
    "0 0 lw * *",
    "0 0 * * fri#l",
    "? * * * *",
    "0 0 * * 7-7",
]


def dst_cases() -> list[Case]:
    out = []
    for tz, spans in DST_ZONES.items():
        trs = [t for (a, b) in spans for t in transitions(tz, a, b)]
        for tr in trs:
            for expr, plans in DST_EXPRS:
                for back_h, count in plans:
                    out.append(Case("dst", expr, tz, fmt_ts(tr - back_h * 3600), count,
                                    note=f"transition {fmt_ts(tr)}"))
    return out


def dialect_cases() -> list[Case]:
    out = []
    for expr in DIALECT_EXPRS:
        for frm in DIALECT_FROMS:
            out.append(Case("dialect", expr, "UTC", frm, 10))
        out.append(Case("dialect", expr, "America/New_York", "2024-03-09T12:00:00Z", 10))
    return out


def invalid_cases() -> list[Case]:
    return [Case("invalid", e, "UTC", "2024-01-01T00:00:00Z", 3) for e in INVALID_EXPRS]


def ambiguous_cases() -> list[Case]:
    return [Case("ambiguous", e, "UTC", "2024-01-01T00:00:00Z", 8) for e in AMBIGUOUS_EXPRS]


# ---- random -----------------------------------------------------------------
MONTH_N = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DOW_N = "SUN MON TUE WED THU FRI SAT".split()


def _rand_case(rng, s):
    if rng.random() < 0.5:
        return s.lower() if rng.random() < 0.5 else s
    return s


def rand_field(rng, lo, hi, names=None, star_bias=0.3, dow=False):
    def val(v):
        if names and rng.random() < 0.4:
            return _rand_case(rng, names[v - (1 if not dow else 0)] if not dow else names[v % 7])
        return str(v)

    def item():
        r = rng.random()
        if r < 0.35:
            return val(rng.randint(lo, hi))
        if r < 0.6:
            a = rng.randint(lo, hi - 1)
            b = rng.randint(a + 1, hi)
            if dow and b == 7 and names and rng.random() < 0.5:
                return f"{val(a)}-7"
            return f"{val(a)}-{val(b) if not (dow and b == 7) else '7'}"
        if r < 0.8:
            a = rng.randint(lo, hi - 1)
            b = rng.randint(a + 1, hi)
            s = rng.randint(1, max(1, (b - a)))
            return f"{val(a)}-{val(b) if not (dow and b == 7) else '7'}/{s}"
        if dow:   # no bare N/step in dow (ambiguous end 6 vs 7)
            return val(rng.randint(lo, 6))
        a = rng.randint(lo, hi)
        s = rng.randint(1, max(1, hi - lo))
        return f"{a}/{s}"

    r = rng.random()
    if r < star_bias:
        return "*"
    if r < star_bias + 0.15:
        return f"*/{rng.randint(1, max(1, (hi - lo + 1) // 2))}"
    n = 1 if rng.random() < 0.6 else rng.randint(2, 3)
    return ",".join(item() for _ in range(n))


def rand_expr(rng) -> str:
    if rng.random() < 0.04:
        return rng.choice(list(oracle.MACROS))
    interval = rng.random() < 0.5
    six = rng.random() < 0.2
    if interval:
        mi = rng.choice(["*", f"*/{rng.randint(1, 30)}", "*/15", "*/5"])
        hr = rng.choice(["*", rand_field(rng, 0, 23, star_bias=0.5)])
        if not six and rng.random() < 0.3:
            mi, hr = rand_field(rng, 0, 59, star_bias=0.0), rng.choice(["*", f"*/{rng.randint(1, 12)}"])
    else:
        mi = rand_field(rng, 0, 59, star_bias=0.0)
        hr = rand_field(rng, 0, 23, star_bias=0.0)
        if rng.random() < 0.5:   # keep fixed jobs mostly near DST-relevant hours
            mi = rng.choice(["0", "30", "15", "45", "0,30", "59", "0-59/10"])
            hr = rng.choice(["0", "1", "2", "3", "1,2", "1-3", "23", "0,12", "2-4/2"])
    # day fields
    r = rng.random()
    if r < 0.55:
        dom = "*"
    elif r < 0.62:
        dom = rng.choice(["L", "LW", f"{rng.randint(1, 31)}W"])
    else:
        dom = rand_field(rng, 1, 31, star_bias=0.3)
    r = rng.random()
    if r < 0.55:
        dow = "*"
    elif r < 0.65:
        d = rng.randint(0, 7)
        dn = _rand_case(rng, DOW_N[d % 7]) if rng.random() < 0.5 else str(d)
        dow = rng.choice([f"{d}L", f"{dn}#L", f"{dn}#{rng.randint(1, 5)}"])
    else:
        dow = rand_field(rng, 0, 7, DOW_N, star_bias=0.3, dow=True)
    mon = "*" if rng.random() < 0.7 else rand_field(rng, 1, 12, MONTH_N, star_bias=0.2)
    fields = [mi, hr, dom, mon, dow]
    if six:
        sec = (rng.choice(["*", "*/10", "*/20", f"*/{rng.randint(1, 30)}"]) if interval
               else rng.choice(["0", "30", "0,30", "15", rand_field(rng, 0, 59, star_bias=0.0)]))
        fields.insert(0, sec)
    return " ".join(fields)


def random_cases(n: int, seed: int, zones: list[str]) -> list[Case]:
    rng = random.Random(seed)
    out = []
    lo = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp())
    hi = int(datetime(2035, 12, 31, tzinfo=UTC).timestamp())
    trans_cache: dict[str, list[int]] = {}
    for _ in range(n):
        expr = rand_expr(rng)
        tz = rng.choice(zones) if rng.random() < 0.9 else "UTC"
        frm = rng.randint(lo, hi)
        if rng.random() < 0.5:      # aim near a DST transition of that zone
            if tz not in trans_cache:
                trans_cache[tz] = transitions(tz, 1990, 2035)
            if trans_cache[tz]:
                frm = rng.choice(trans_cache[tz]) - rng.randint(0, 48 * 3600)
        six = len(expr.split()) == 6
        is_interval = (not expr.startswith("@") and oracle.parse(expr).interval) if _valid(expr) else False
        count = rng.randint(1, 8)
        if is_interval and rng.random() < 0.3:
            count = rng.randint(20, 150 if not six else 60)
        out.append(Case("random", expr, tz, fmt_ts(frm), count))
    return out


def _valid(expr):
    try:
        oracle.parse(expr)
        return True
    except oracle.CronError:
        return False


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def run_oracle(c: Case):
    try:
        res = oracle.next_times(c.expr, c.tz, oracle.parse_rfc3339(c.frm), c.count)
        return ("ok", [oracle.fmt(d) for d in res])
    except oracle.CronError as e:
        return ("err", str(e))


def run_cmd(cmd: list[str], c: Case, timeout: float):
    argv = cmd + ["--tz", c.tz, "--from", c.frm, "--count", str(c.count)]
    argv += (["--", c.expr] if os.environ.get("COMPARE_DASHDASH") else [c.expr])
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ("timeout", None, "", time.monotonic() - t0)
    dt = time.monotonic() - t0
    if p.returncode == 0:
        return ("ok", [ln.strip() for ln in p.stdout.splitlines() if ln.strip()], p.stderr, dt)
    return ("err", p.returncode, (p.stderr.strip() or p.stdout.strip())[:300], dt)


def _matches_wall(s, w: datetime) -> bool:
    return (s.day_matches(w.date()) and w.hour in s.hours and w.minute in s.minutes
            and w.second in s.seconds)


def explain_diff(c: Case, exp: list[str], got: list[str]) -> str:
    """'tzdata?' if some instant printed by the tested side is only explainable
    with a different UTC offset than the system tzdata has at that instant;
    'semantics' otherwise (all its instants are consistent with our tzdata)."""
    try:
        s = oracle.parse(c.expr)
    except oracle.CronError:
        return "semantics"
    zone = ZoneInfo(c.tz)
    bad_ts = []
    for g in got:
        if g in exp:
            continue
        try:
            ts = int(oracle.parse_rfc3339(g).timestamp())
        except ValueError:
            return "garbage output"
        w = oracle._wall(ts, zone)
        if _matches_wall(s, w):
            continue                                   # fine per our offsets
        if not s.interval:
            # gap transition instant whose skipped wall times include a match?
            prev = oracle._wall(ts - 1, zone)
            step = timedelta(seconds=1 if s.six_fields else 60)
            g_ = prev + timedelta(seconds=1)
            if not s.six_fields and g_.second:
                g_ += timedelta(seconds=60 - g_.second)
            hit = False
            while g_ < w and not hit:                  # wall times skipped by a forward jump
                hit = _matches_wall(s, g_)
                g_ += step
            if hit:
                continue
        bad_ts.append(ts)
    if not bad_ts:
        return "semantics"
    for ts in bad_ts:
        w = oracle._wall(ts, zone)
        shifts = [k * 900 for k in range(-12, 13) if k] + [86400, -86400]
        if any(_matches_wall(s, w + timedelta(seconds=d)) for d in shifts):
            return "tzdata?"
    return "semantics (instant matches no plausible offset)"


def do_case(args):
    c, cmd, timeout = args
    o = run_oracle(c)
    r = run_cmd(cmd, c, timeout)
    res = {"case": c, "oracle": o, "tested": r}
    if c.group == "ambiguous":
        res["verdict"] = "info"
        return res
    if r[0] == "timeout":
        res["verdict"] = "timeout"
    elif o[0] == "err" and r[0] == "err":
        res["verdict"] = "agree" if r[1] == 2 else "agree-but-exit-code"
    elif o[0] == "err":
        res["verdict"] = "tested-accepts-invalid"
    elif r[0] == "err":
        res["verdict"] = "tested-rejects-valid"
    elif o[1] == r[1]:
        res["verdict"] = "agree"
    else:
        res["verdict"] = "diff"
        res["label"] = explain_diff(c, o[1], r[1])
    return res


def probe_zones(cmd, zones, timeout, jobs):
    """Zones the tested side rejects (so random cases don't drown in them)."""
    cases = [Case("probe", "0 0 * * *", z, "2024-01-01T00:00:00Z", 1) for z in zones]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        rs = list(ex.map(run_cmd, [cmd] * len(cases), cases, [timeout] * len(cases), chunksize=8))
    return sorted(z for z, r in zip(zones, rs) if r[0] != "ok")


def show(res, full=True):
    c = res["case"]
    o, r = res["oracle"], res["tested"]
    lines = [f"  [{c.group}] expr={c.expr!r} tz={c.tz} from={c.frm} count={c.count}"
             + (f"  ({c.note})" if c.note else "")]
    if o[0] == "err":
        lines.append(f"    oracle: ERROR {o[1]}")
    if r[0] == "err":
        lines.append(f"    tested: ERROR exit={r[1]} {r[2]}")
    elif r[0] == "timeout":
        lines.append("    tested: TIMEOUT")
    if o[0] == "ok" and r[0] == "ok":
        exp, got = o[1], r[1]
        zone = ZoneInfo(c.tz)

        def loc(x):
            try:
                return oracle.parse_rfc3339(x).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S%z")
            except ValueError:
                return "?"
        n = max(len(exp), len(got))
        first = next((i for i in range(n) if (exp[i:i + 1] != got[i:i + 1])), n)
        lo = 0 if full else max(0, first - 2)
        hi = n if full else min(n, first + 4)
        if n > 16 and full:
            lo, hi = max(0, first - 3), min(n, first + 6)
        lines.append(f"    label: {res.get('label', '')}; first difference at line {first + 1} of {n}")
        lines.append(f"    {'':3} {'expected (oracle)':<22} {'local':<26} {'got (tested)':<22} {'local'}")
        for i in range(lo, hi):
            e = exp[i] if i < len(exp) else "-"
            g = got[i] if i < len(got) else "-"
            mark = "   " if e == g else "!! "
            lines.append(f"    {mark}{e:<22} {loc(e) if e != '-' else '':<26} {g:<22} {loc(g) if g != '-' else ''}")
    elif o[0] == "ok":
        lines.append(f"    oracle: {o[1][:4]}{' ...' if len(o[1]) > 4 else ''}")
    elif r[0] == "ok":
        lines.append(f"    tested: {r[1][:4]}{' ...' if len(r[1]) > 4 else ''}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cmd", help="command under test (shlex-split); default: the tickwheel `next` example")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--target-dir", help="cargo --target-dir (e.g. /tmp/oracle-target) so the "
                    "build does not write into <repo>/target")
    ap.add_argument("--random", type=int, default=600, help="number of random cases (default 600)")
    ap.add_argument("--seed", type=int, default=20240310)
    ap.add_argument("--show", type=int, default=5, help="diffs shown in full per category")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--only", action="append",
                    choices=["dst", "dialect", "invalid", "ambiguous", "random"])
    ap.add_argument("--dashdash", action="store_true", help="pass `--` before EXPR")
    a = ap.parse_args()
    if a.dashdash:
        os.environ["COMPARE_DASHDASH"] = "1"

    if a.cmd:
        cmd = shlex.split(a.cmd)
    else:
        if not a.no_build:
            print("building: cargo build --release -p tickwheel --example next  (in the repository root)", flush=True)
            extra = ["--target-dir", a.target_dir] if a.target_dir else []
            b = subprocess.run(["cargo", "build", "--release", "--offline", "-p", "tickwheel",
                                "--example", "next"] + extra, cwd=MAIN)
            if b.returncode != 0:
                print("cargo build failed; nothing to compare", file=sys.stderr)
                return 3
        bin_ = os.path.join(a.target_dir, "release/examples/next") if a.target_dir else BIN
        if not os.path.exists(bin_):
            print(f"{bin_} does not exist; nothing to compare", file=sys.stderr)
            return 3
        cmd = [bin_]

    groups = a.only or ["dst", "dialect", "invalid", "ambiguous", "random"]
    zones = sorted(z for z in available_timezones()
                   if z not in ("Factory", "localtime", "posixrules") and not z.startswith(("posix", "right")))
    cases: list[Case] = []
    unsupported = []
    if "dst" in groups:
        cases += dst_cases()
    if "dialect" in groups:
        cases += dialect_cases()
    if "invalid" in groups:
        cases += invalid_cases()
    if "ambiguous" in groups:
        cases += ambiguous_cases()
    if "random" in groups and a.random:
        unsupported = probe_zones(cmd, zones, a.timeout, a.jobs)
        ok_zones = [z for z in zones if z not in unsupported]
        cases += random_cases(a.random, a.seed, ok_zones)

    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        results = list(ex.map(do_case, [(c, cmd, a.timeout) for c in cases], chunksize=4))
    elapsed = time.monotonic() - t0

    from collections import Counter, defaultdict
    by_verdict = defaultdict(list)
    for r in results:
        by_verdict[r["verdict"]].append(r)
    per_group = defaultdict(Counter)
    for r in results:
        per_group[r["case"].group][r["verdict"]] += 1

    print(f"\ncommand under test: {' '.join(cmd)}")
    print(f"cases run: {len(results)}  ({elapsed:.1f}s)")
    for g in groups:
        if g in per_group:
            print(f"  {g:<10} " + ", ".join(f"{k}={v}" for k, v in sorted(per_group[g].items())))
    if unsupported:
        print(f"zones rejected by the tested side (excluded from random): {len(unsupported)}: "
              f"{', '.join(unsupported[:20])}{' ...' if len(unsupported) > 20 else ''}")
    n_agree = len(by_verdict["agree"])
    print(f"agreements: {n_agree}")
    diffs = by_verdict["diff"]
    labels = Counter(r["label"] for r in diffs)
    print(f"disagreements (both produced times, different): {len(diffs)}"
          + (f"  [{', '.join(f'{k}: {v}' for k, v in labels.items())}]" if diffs else ""))
    if diffs:
        zones_c = Counter(r["case"].tz for r in diffs)
        exprs_c = Counter(r["case"].expr for r in diffs)
        print("  by zone:", ", ".join(f"{k}={v}" for k, v in zones_c.most_common(12)))
        print("  by expr:", ", ".join(f"{k!r}={v}" for k, v in exprs_c.most_common(12)))
        for label in labels:
            sub = [r for r in diffs if r["label"] == label]
            print(f"\n-- first {min(a.show, len(sub))} of {len(sub)} diffs labelled {label!r}:")
            for r in sub[:a.show]:
                print(show(r))
    for verdict, title in [("tested-rejects-valid", "tested side errors, oracle does not"),
                           ("tested-accepts-invalid", "oracle rejects, tested side accepts"),
                           ("agree-but-exit-code", "both reject, but tested exit code != 2"),
                           ("timeout", "tested side timed out")]:
        sub = by_verdict[verdict]
        print(f"\n{title}: {len(sub)}")
        for r in sub[:a.show]:
            print(show(r, full=False))
    info = by_verdict["info"]
    if info:
        print(f"\nambiguous (informational, spec does not decide): {len(info)}")
        for r in info:
            c, o, t = r["case"], r["oracle"], r["tested"]
            os_ = "ERROR" if o[0] == "err" else " ".join(x[:16] for x in o[1][:3])
            ts_ = ("ERROR" if t[0] == "err" else "TIMEOUT" if t[0] == "timeout"
                   else " ".join(x[:16] for x in t[1][:3]))
            same = "same" if (o[0] == t[0] == "ok" and o[1] == t[1]) or (o[0] == t[0] == "err") else "DIFFERENT"
            print(f"  {c.expr!r:<20} {same:<9} oracle: {os_:<52} tested: {ts_}")
    bad = sum(len(by_verdict[v]) for v in
              ["diff", "tested-rejects-valid", "tested-accepts-invalid", "agree-but-exit-code", "timeout"])
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
