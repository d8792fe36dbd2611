#!/usr/bin/env python3
"""Print criterion medians as a Markdown table.

    python3 benches/scripts/medians.py [FILTER]

Reads target/criterion/**/new/estimates.json (written by `cargo bench`) and
prints one row per benchmark whose id contains FILTER: the median of the
sample means and its confidence interval. Run from the workspace root.
"""
import json
import pathlib
import sys


def fmt(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def main() -> None:
    needle = sys.argv[1] if len(sys.argv) > 1 else ""
    root = pathlib.Path("target/criterion")
    rows = []
    for path in sorted(root.glob("**/new/estimates.json")):
        bench = json.loads((path.parent / "benchmark.json").read_text())
        name = bench["full_id"]
        if needle not in name:
            continue
        median = json.loads(path.read_text())["median"]
        ci = median["confidence_interval"]
        rows.append((name, median["point_estimate"], ci["lower_bound"], ci["upper_bound"]))
    print("| benchmark | median | 95% CI |")
    print("|---|---|---|")
    for name, point, lo, hi in rows:
        print(f"| `{name}` | {fmt(point)} | {fmt(lo)} – {fmt(hi)} |")


if __name__ == "__main__":
    main()
