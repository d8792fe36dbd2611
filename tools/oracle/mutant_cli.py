#!/usr/bin/env python3
"""Deliberately wrong variants of oracle.py, used only to check that
compare.py detects and labels disagreements.   MUT=<name> python3 mutant_cli.py ...
  fold1    ambiguous wall times of fixed jobs fire at the SECOND instant
  skipgap  nonexistent wall times of fixed jobs never fire
  tzshift  Africa/Casablanca treated as fixed +01:00 (simulates other tzdata)
"""
import os
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import oracle

MUT = os.environ.get("MUT", "")
_orig = oracle.resolve_fixed


def resolve(local, tz):
    if MUT == "fold1":
        c = [int(local.replace(tzinfo=tz, fold=f).timestamp()) for f in (0, 1)]
        c = [u for u in c if oracle._wall(u, tz) == local]
        if c:
            return max(c)
    if MUT == "skipgap":
        u = int(local.replace(tzinfo=tz).timestamp())
        if oracle._wall(u, tz) != local:
            return -10**12          # never > after
    return _orig(local, tz)


oracle.resolve_fixed = resolve
if MUT == "tzshift" and "Africa/Casablanca" in sys.argv:
    sys.argv[sys.argv.index("Africa/Casablanca")] = "Etc/GMT-1"
sys.exit(oracle.main(sys.argv[1:]))
