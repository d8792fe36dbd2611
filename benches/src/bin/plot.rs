//! Tables and plots for the comparison run of `scripts/bench.sh`.
//!
//! ```text
//! plot record --results DIR --id ID --group G --engine E --store S \
//!     --nodes K --tasks N --seconds S --exit RC --wall-s W --timeout-s T \
//!     --log FILE [--lateness FILE]
//! plot criterion --results DIR [--criterion target/criterion]
//! plot render --results DIR
//! ```
//!
//! `record` files one loadgen run: `DIR/runs/ID.json` holds the labels the
//! script ran it with (`store` is `memory`, `postgres` or `redis`, never a
//! URL), its status (`ok`; `error` when loadgen's last JSON line carries an
//! `error` field, as when a peer gave up during setup; `timeout` when
//! `timeout` killed it (exit 124); `failed` otherwise), loadgen's last JSON line as `result`, and the end of its log
//! when it did not succeed. The lateness samples (milliseconds, one per line)
//! can be millions of lines, so they are not kept: `DIR/lateness/ID.csv`
//! gets about 150 quantiles of them, log-spaced towards the tail, plus the
//! maximum; the plots need no more.
//!
//! `criterion` copies the medians of the `next_after/*` benchmarks of the
//! last `cargo bench --bench schedule` into `DIR/raw/schedule.json`.
//!
//! `render` reads `DIR/machine.txt` (`key: value` lines), `DIR/runs/*.json`,
//! `DIR/lateness/*.csv` and the raw-limit outputs in `DIR/raw/`
//! (`pg_raw.json`, `redis-*.csv` from `redis-benchmark --csv`,
//! `httpload.jsonl`, `schedule.json`) and writes `DIR/comparison.md` (one
//! table per comparison), `DIR/lateness.svg` (lateness percentiles per
//! engine, one panel per store and node count) and `DIR/throughput.svg`
//! (fires per second and p99 lateness against the number of tasks). Missing
//! inputs leave their rows or curves out; failed runs stay in the tables with
//! what went wrong.
//!
//! The SVGs are drawn by plotters without a font backend: text goes into the
//! file as `<text>` elements for the viewer to render, so no system font is
//! needed to produce them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::{Value, json};

/// Engines in the order the tables and legends show them.
const ENGINES: [&str; 4] = ["tickwheel", "tokio-cron-scheduler", "apalis", "delayqueue"];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "render".into());
    let flags = Flags::parse(args)?;
    match mode.as_str() {
        "record" => record(&flags),
        "criterion" => criterion(&flags),
        "render" => render(&flags.path("results")?),
        other => bail!("unknown mode {other:?}: expected `record`, `criterion` or `render`"),
    }
}

/// `--name value` pairs.
#[derive(Debug)]
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Self> {
        let mut map = BTreeMap::new();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("expected --flag, got {flag:?}"))?;
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Result<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("--{name} is required"))
    }

    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn num(&self, name: &str) -> Result<f64> {
        let v = self.get(name)?;
        v.parse().with_context(|| format!("--{name} {v:?}"))
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        self.get(name).map(PathBuf::from)
    }
}

// ---------------------------------------------------------------- record

fn record(flags: &Flags) -> Result<()> {
    let results = flags.path("results")?;
    let id = flags.get("id")?;
    let log = std::fs::read_to_string(flags.get("log")?).unwrap_or_default();
    let result: Option<Value> = log
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok());
    let exit = flags.num("exit")? as i64;
    let timeout_s = flags.num("timeout-s")?;
    let status = match (exit, &result) {
        (124, _) => "timeout",
        (_, Some(r)) if r.get("error").is_some() => "error",
        (0, Some(_)) => "ok",
        _ => "failed",
    };
    let field = |k: &str| result.as_ref().and_then(|r| r[k].as_f64());
    let share = match (field("fired"), field("expected")) {
        (Some(f), Some(e)) if e > 0.0 => Some((100.0 * f / e).floor()),
        _ => None,
    };
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    let mut run = json!({
        "id": id,
        "group": flags.get("group")?,
        "engine": flags.get("engine")?,
        "store": flags.get("store")?,
        "nodes": flags.num("nodes")?,
        "tasks": flags.num("tasks")?,
        "seconds": flags.num("seconds")?,
        "status": status,
        "exit": exit,
        "wall_s": flags.num("wall-s")?,
        "timeout_s": timeout_s,
        "result": result,
    });
    if status != "ok" {
        // The cause: the first error or panic line (a backtrace may follow
        // it), else the end of the log.
        let cause = log
            .lines()
            .find(|l| l.contains("panicked") || l.contains("Error") || l.contains("error"));
        let mut tail: Vec<&str> = tail.into_iter().rev().collect();
        if let Some(cause) = cause {
            tail.push(cause);
        }
        run["log_tail"] = json!(tail.join("\n"));
    }
    write(
        &results.join("runs").join(format!("{id}.json")),
        &run.to_string(),
    )?;

    // A run that failed before writing samples leaves no file: no curve.
    if let Some(samples) = flags.opt("lateness")
        && let Ok(text) = std::fs::read_to_string(samples)
    {
        let mut v: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if !v.is_empty() {
            v.sort_by(f64::total_cmp);
            let path = results.join("lateness").join(format!("{id}.csv"));
            write(&path, &quantiles_csv(&v))?;
        }
    }
    // bench.sh reads the share to decide whether a larger size is worth it.
    match share {
        Some(pct) => println!("recorded {id}: {status}, fired {pct:.0}% of expected"),
        None => println!("recorded {id}: {status}"),
    }
    Ok(())
}

/// About 150 quantiles of sorted samples at tail ranks 1/(1-p) spread
/// evenly on a log scale from 1 (p = 0) to n (the maximum).
fn quantiles_csv(sorted: &[f64]) -> String {
    let n = sorted.len();
    let mut out = format!("# samples={n}\npercentile,lateness_ms\n");
    let steps = 150;
    let top = (n as f64).log10();
    let mut last = usize::MAX;
    for i in 0..=steps {
        let rank = 10f64.powf(top * i as f64 / steps as f64);
        let p = 1.0 - 1.0 / rank;
        let idx = if i == steps {
            n - 1
        } else {
            ((p * (n - 1) as f64).round() as usize).min(n - 1)
        };
        if idx == last {
            continue;
        }
        last = idx;
        let pct = if i == steps { 100.0 } else { p * 100.0 };
        let _ = writeln!(out, "{pct:.6},{:.4}", sorted[idx]);
    }
    out
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// ------------------------------------------------------------- criterion

fn criterion(flags: &Flags) -> Result<()> {
    let results = flags.path("results")?;
    let root = PathBuf::from(flags.opt("criterion").unwrap_or("target/criterion"));
    let mut found = Vec::new();
    // Criterion names a group's directory after its id with `/` replaced
    // (`next_after/monthly` → `next_after_monthly`).
    let mut stack: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("next_after"))
        .map(|e| e.path())
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    found.push(path);
                } else {
                    stack.push(path);
                }
            }
        }
    }
    let mut rows = Vec::new();
    for dir in found {
        let read = |name: &str| -> Result<Value> {
            Ok(serde_json::from_str(&std::fs::read_to_string(
                dir.join(name),
            )?)?)
        };
        let (Ok(bench), Ok(estimates)) = (read("benchmark.json"), read("estimates.json")) else {
            continue;
        };
        rows.push(json!({
            "group": bench["group_id"],
            "library": bench["function_id"],
            "expression": bench["value_str"],
            "median_ns": estimates["median"]["point_estimate"],
        }));
    }
    if rows.is_empty() {
        bail!("no next_after results under {}", root.display());
    }
    write(
        &results.join("raw").join("schedule.json"),
        &Value::Array(rows).to_string(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- render

/// One loadgen run as `record` filed it.
#[derive(Debug)]
struct Run {
    group: String,
    engine: String,
    store: String,
    nodes: u64,
    tasks: u64,
    status: String,
    timeout_s: f64,
    result: Value,
    log_tail: String,
    /// (percentile, lateness ms) from `lateness/ID.csv`, and the sample count.
    quantiles: Option<(Vec<(f64, f64)>, f64)>,
}

impl Run {
    fn num(&self, field: &str) -> Option<f64> {
        self.result.get(field).and_then(Value::as_f64)
    }

    fn late(&self, field: &str) -> Option<f64> {
        self.result
            .get("lateness_ms")
            .and_then(|l| l.get(field))
            .and_then(Value::as_f64)
    }

    fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// What to say about a run whose numbers are missing or partial.
    fn note(&self) -> String {
        let first_line = |s: &str| s.lines().next().unwrap_or("").trim().to_owned();
        match self.status.as_str() {
            "ok" => String::new(),
            "timeout" => format!("timed out after {} s", self.timeout_s),
            "error" => {
                let e = &self.result["error"];
                let text = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
                format!("error: {}", first_line(&text))
            }
            _ => {
                let line = self
                    .log_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                format!("failed: {}", first_line(line))
            }
        }
        .replace('|', "\\|")
    }
}

fn load_runs(results: &Path) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let Ok(entries) = std::fs::read_dir(results.join("runs")) else {
        return Ok(runs);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let id = s("id");
        let quantiles = read_quantiles(&results.join("lateness").join(format!("{id}.csv")));
        runs.push(Run {
            group: s("group"),
            engine: s("engine"),
            store: s("store"),
            nodes: n("nodes") as u64,
            tasks: n("tasks") as u64,
            status: s("status"),
            timeout_s: n("timeout_s"),
            result: v["result"].clone(),
            log_tail: s("log_tail"),
            quantiles,
        });
    }
    runs.sort_by_key(|r| (engine_rank(&r.engine), r.store.clone(), r.nodes, r.tasks));
    Ok(runs)
}

fn read_quantiles(path: &Path) -> Option<(Vec<(f64, f64)>, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut samples = 0.0;
    let mut points = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("# samples=") {
            samples = n.trim().parse().ok()?;
            continue;
        }
        let Some((p, ms)) = line.split_once(',') else {
            continue;
        };
        if let (Ok(p), Ok(ms)) = (p.parse(), ms.parse()) {
            points.push((p, ms));
        }
    }
    (!points.is_empty()).then_some((points, samples))
}

fn engine_rank(engine: &str) -> usize {
    ENGINES
        .iter()
        .position(|e| *e == engine)
        .unwrap_or(ENGINES.len())
}

fn engine_color(engine: &str) -> RGBColor {
    match engine {
        "tickwheel" => RGBColor(0x1f, 0x77, 0xb4),
        "tokio-cron-scheduler" => RGBColor(0xff, 0x7f, 0x0e),
        "apalis" => RGBColor(0x2c, 0xa0, 0x2c),
        "delayqueue" => RGBColor(0x55, 0x55, 0x55),
        _ => RGBColor(0x94, 0x67, 0xbd),
    }
}

fn render(results: &Path) -> Result<()> {
    let runs = load_runs(results)?;
    let machine = std::fs::read_to_string(results.join("machine.txt")).unwrap_or_default();
    let md = comparison_md(results, &runs, &machine);
    write(&results.join("comparison.md"), &md)?;
    lateness_svg(&results.join("lateness.svg"), &runs)?;
    throughput_svg(&results.join("throughput.svg"), &runs)?;
    println!(
        "wrote {0}/comparison.md, {0}/lateness.svg, {0}/throughput.svg ({1} runs)",
        results.display(),
        runs.len()
    );
    Ok(())
}

// ---------------------------------------------------------------- tables

/// `1234567` → `1,234,567`.
fn int(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && s != "0" {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds with about three significant digits.
fn ms(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        int(x)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// An axis tick on a log scale: `0.01`, `0.1`, `1`, `10`, `1,000`.
fn tick(x: f64) -> String {
    if x >= 1.0 {
        return int(x);
    }
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        return "—".into();
    }
    let r = a / b;
    if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        format!("{r:.4}×")
    }
}

fn or_dash(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

const RUN_HEADER: &str = "| engine | nodes | tasks | expected | fired | lost | duplicates | fires/s | p50 ms | p99 ms | max ms | CPU s | peak RSS MiB | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn run_row(r: &Run) -> String {
    run_row_as(r, &r.engine)
}

fn run_row_as(r: &Run, label: &str) -> String {
    // Nothing fired: no lateness to show.
    let late = |k: &str| r.late(k).filter(|_| r.num("fired").unwrap_or(0.0) > 0.0);
    let cpu = |x: f64| format!("{x:.2}");
    let rss = |x: f64| format!("{x:.0}");
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        label,
        r.nodes,
        int(r.tasks as f64),
        or_dash(r.num("expected"), int),
        or_dash(r.num("fired"), int),
        or_dash(r.num("lost"), int),
        or_dash(r.num("duplicates"), int),
        or_dash(r.num("fires_per_s"), int),
        or_dash(late("p50"), ms),
        or_dash(late("p99"), ms),
        or_dash(late("max"), ms),
        or_dash(r.num("cpu_s"), cpu),
        or_dash(r.num("rss_mb"), rss),
        r.note(),
    )
}

fn comparison_md(results: &Path, runs: &[Run], machine: &str) -> String {
    let mut md = String::new();
    let field = |key: &str| {
        machine
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    md.push_str(
        "<!-- generated by benches/src/bin/plot.rs from benches/results/; do not edit -->\n\n",
    );
    if let Some(cmd) = field("command") {
        let _ = writeln!(md, "Command: `{cmd}` (from the repository root).\n");
    }
    if !machine.trim().is_empty() {
        md.push_str("| machine | |\n|---|---|\n");
        for line in machine.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.trim() != "command"
            {
                let _ = writeln!(md, "| {} | {} |", k.trim(), v.trim().replace('|', "\\|"));
            }
        }
        md.push('\n');
    }
    md.push_str(
        "Every task fires every second (`* * * * * *`) with a no-op executor; \
         `expected` counts the occurrences due in the window, `lost` = expected − fired, \
         `duplicates` = occurrences started more than once, lateness = start − due time, \
         CPU s = user + system CPU of the loadgen process during the window \
         (the database's own CPU is not in it), peak RSS = the loadgen process's. \
         A dash means the run produced no figure (see note).\n\n",
    );

    let matrix: Vec<&Run> = runs.iter().filter(|r| r.group == "matrix").collect();
    for (store, title) in [
        ("memory", "Engines on the in-memory store"),
        (
            "postgres",
            "Engines on PostgreSQL (each engine's own Postgres storage)",
        ),
    ] {
        let rows: Vec<&&Run> = matrix.iter().filter(|r| r.store == store).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {title}\n");
        md.push_str(RUN_HEADER);
        for r in rows {
            md.push_str(&run_row(r));
        }
        md.push('\n');
    }

    // 1 vs 3 nodes.
    let mut pairs = String::new();
    for store in ["memory", "postgres"] {
        for engine in ENGINES {
            let find = |nodes| {
                matrix
                    .iter()
                    .find(|r| r.store == store && r.engine == engine && r.nodes == nodes)
            };
            let (Some(one), Some(three)) = (find(1), find(3)) else {
                continue;
            };
            let f = |r: &Run, k: &str| or_dash(r.num(k), int);
            let p99 = |r: &Run| {
                or_dash(
                    r.late("p99")
                        .filter(|_| r.num("fired").unwrap_or(0.0) > 0.0),
                    ms,
                )
            };
            let _ = writeln!(
                pairs,
                "| {engine} | {store} | {} / {} | {} / {} | {} / {} | {} / {} | {} |",
                f(one, "fires_per_s"),
                f(three, "fires_per_s"),
                f(one, "lost"),
                f(three, "lost"),
                f(one, "duplicates"),
                f(three, "duplicates"),
                p99(one),
                p99(three),
                {
                    let mut notes = vec![one.note(), three.note()];
                    notes.retain(|n| !n.is_empty());
                    notes.dedup();
                    notes.join("; ")
                }
            );
        }
    }
    if !pairs.is_empty() {
        md.push_str("### 1 node vs 3 nodes (same tasks, same store)\n\n");
        md.push_str(
            "Three instances of the same engine in one process on one store; \
             how each engine shares state between them is in loadgen's docs. \
             Where an engine has no way to share an occurrence, the duplicates \
             column shows what it did.\n\n",
        );
        md.push_str("| engine | store | fires/s (1 / 3) | lost (1 / 3) | duplicates (1 / 3) | p99 ms (1 / 3) | note |\n|---|---|---|---|---|---|---|\n");
        md.push_str(&pairs);
        md.push('\n');
    }

    // Task-count sweep.
    let sweep = sweep_runs(runs);
    if !sweep.is_empty() {
        md.push_str("### Throughput as the number of tasks grows (memory store, 1 node)\n\n");
        md.push_str(
            "Each task fires every second, so the offered rate is the task count per \
             second; the smallest size is the run above. An engine is not run at a \
             larger size once a smaller one failed, timed out or lost more than half \
             its occurrences.\n\n",
        );
        md.push_str(RUN_HEADER);
        for r in &sweep {
            md.push_str(&run_row(r));
        }
        md.push('\n');
    }

    md.push_str(&raw_limits_md(results, runs));
    md
}

/// Memory-store, one-node runs by engine and task count: the sweep's, plus
/// the matrix's at its size.
fn sweep_runs(runs: &[Run]) -> Vec<&Run> {
    let mut out: Vec<&Run> = runs.iter().filter(|r| r.group == "sweep").collect();
    for r in runs
        .iter()
        .filter(|r| r.group == "matrix" && r.store == "memory" && r.nodes == 1)
    {
        if !out
            .iter()
            .any(|s| s.engine == r.engine && s.tasks == r.tasks)
        {
            out.push(r);
        }
    }
    if out.iter().all(|r| r.group != "sweep") {
        return Vec::new();
    }
    out.sort_by_key(|r| (engine_rank(&r.engine), r.tasks));
    out
}

fn raw_limits_md(results: &Path, runs: &[Run]) -> String {
    let raw = results.join("raw");
    let read = |name: &str| std::fs::read_to_string(raw.join(name)).ok();
    let mut rows = String::new();
    let mut row = |what: &str, ours: String, limit: String, r: String| {
        let _ = writeln!(rows, "| {what} | {ours} | {limit} | {r} |");
    };
    let mut compared = std::collections::BTreeSet::new();

    // Engine vs a bare DelayQueue firing the same deadlines.
    for r in sweep_runs(runs)
        .into_iter()
        .chain(runs.iter().filter(|r| r.group == "matrix"))
        .filter(|r| r.engine == "tickwheel" && r.store == "memory" && r.nodes == 1)
    {
        let Some(dq) = runs.iter().find(|d| {
            d.engine == "delayqueue" && d.store == "memory" && d.nodes == 1 && d.tasks == r.tasks
        }) else {
            continue;
        };
        if !compared.insert(r.tasks) {
            continue;
        }
        if let (Some(a), Some(b)) = (r.num("fires_per_s"), dq.num("fires_per_s")) {
            row(
                &format!(
                    "fires/s, memory store, 1 node, {} tasks: tickwheel vs bare tokio `DelayQueue`",
                    int(r.tasks as f64)
                ),
                int(a),
                int(b),
                ratio(a, b),
            );
        }
        if let (Some(a), Some(b)) = (r.late("p99"), dq.late("p99")) {
            row(
                &format!(
                    "p99 lateness ms, same {} tasks (lower is better)",
                    int(r.tasks as f64)
                ),
                ms(a),
                ms(b),
                ratio(a, b),
            );
        }
    }

    // PostgreSQL: engine claims vs raw single-statement claims.
    let limit_run = |store: &str| {
        runs.iter()
            .find(|r| r.group == "limit" && r.store == store && r.engine == "tickwheel")
    };
    let pg_raw = read("pg_raw.json").and_then(|t| {
        t.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
    });
    let pg_rate = pg_raw.as_ref().and_then(|v| v["claims_per_s"].as_f64());
    if let Some(r) = limit_run("postgres") {
        let what = format!(
            "PostgreSQL: tickwheel fires/s ({} nodes, {} tasks) vs `pg_raw claims` (single-row UPDATE … RETURNING, one commit each, 48 connections)",
            r.nodes,
            int(r.tasks as f64)
        );
        match (r.num("fires_per_s"), pg_rate) {
            (Some(a), Some(b)) => row(&what, int(a), int(b), ratio(a, b)),
            (a, b) => row(
                &what,
                a.map_or_else(|| r.note(), int),
                or_dash(b, int),
                "—".into(),
            ),
        }
    }

    // Redis: engine vs redis-benchmark.
    let redis = |name: &str| {
        read(&format!("redis-{name}.csv")).and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
                cols.get(1)?.parse::<f64>().ok()
            })
        })
    };
    if let Some(r) = limit_run("redis") {
        let ours = r.num("fires_per_s");
        for (name, label) in [
            ("evalsha", "`EVALSHA` (one HGET), one at a time"),
            ("evalsha-p16", "`EVALSHA`, pipelined 16"),
            ("set", "`SET`, one at a time"),
            ("set-p16", "`SET`, pipelined 16"),
        ] {
            let what = format!(
                "Redis: tickwheel fires/s ({} nodes, {} tasks) vs `redis-benchmark` {label}",
                r.nodes,
                int(r.tasks as f64)
            );
            match (ours, redis(name)) {
                (Some(a), Some(b)) => row(&what, int(a), int(b), ratio(a, b)),
                (a, b) => row(
                    &what,
                    a.map_or_else(|| r.note(), int),
                    or_dash(b, int),
                    "—".into(),
                ),
            }
        }
    }

    // HTTP: API vs bare axum.
    if let Some(text) = read("httpload.jsonl") {
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for scenario in ["get", "create"] {
            let rps = |target: &str| {
                lines
                    .iter()
                    .find(|v| v["scenario"] == scenario && v["target"] == target)
                    .and_then(|v| v["rps"].as_f64())
            };
            if let (Some(a), Some(b)) = (rps("api"), rps("bare")) {
                row(
                    &format!("HTTP `{scenario}` requests/s: REST adapter vs bare axum handler"),
                    int(a),
                    int(b),
                    ratio(a, b),
                );
            }
        }
    }

    let mut md = String::new();
    if !rows.is_empty() {
        md.push_str("### Raw limits (measured in the same run)\n\n");
        md.push_str("| comparison | tickwheel | raw limit | ratio |\n|---|---|---|---|\n");
        md.push_str(&rows);
        md.push('\n');
        md.push_str(
            "The raw rates are the store or the framework alone, with no scheduler: \
             single-statement claims for PostgreSQL (the engine claims in batches, so it \
             can beat them), one command per request for Redis. The store runs offer \
             more occurrences per second than the engine may manage; `lost` > 0 there \
             means it saturated. Their full rows:\n\n",
        );
        md.push_str(RUN_HEADER);
        for store in ["postgres", "redis"] {
            if let Some(r) = limit_run(store) {
                md.push_str(&run_row_as(r, &format!("{} on {store}", r.engine)));
            }
        }
        md.push('\n');
    }

    // Cron next_after.
    if let Some(v) = read("schedule.json").and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        let mut by_case: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut exprs: BTreeMap<String, String> = BTreeMap::new();
        for b in v.as_array().into_iter().flatten() {
            let (Some(group), Some(lib), Some(ns)) = (
                b["group"].as_str(),
                b["library"].as_str(),
                b["median_ns"].as_f64(),
            ) else {
                continue;
            };
            let case = group.trim_start_matches("next_after/").to_owned();
            exprs.insert(case.clone(), b["expression"].as_str().unwrap_or("").into());
            by_case.entry(case).or_default().insert(lib.into(), ns);
        }
        if !by_case.is_empty() {
            md.push_str("### Cron `next_after` (criterion medians, short measurement)\n\n");
            md.push_str("| case | expression | tickwheel | croner | cron | croner / tickwheel | cron / tickwheel |\n|---|---|---|---|---|---|---|\n");
            let ns = |x: f64| {
                if x >= 1000.0 {
                    format!("{:.2} µs", x / 1000.0)
                } else {
                    format!("{x:.1} ns")
                }
            };
            for (case, libs) in &by_case {
                let get = |l: &str| libs.get(l).copied();
                let vs = |l: &str| match (get(l), get("tickwheel")) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => "—".into(),
                };
                let _ = writeln!(
                    md,
                    "| {case} | `{}` | {} | {} | {} | {} | {} |",
                    exprs[case],
                    or_dash(get("tickwheel"), ns),
                    or_dash(get("croner"), ns),
                    or_dash(get("cron"), ns),
                    vs("croner"),
                    vs("cron"),
                );
            }
            md.push('\n');
        }
    }
    for name in ["pg_raw", "redis", "httpload", "schedule"] {
        if let Some(err) = read(&format!("{name}.error")) {
            let _ = writeln!(
                md,
                "`{name}` did not complete: {}\n",
                err.lines().last().unwrap_or("").trim()
            );
        }
    }
    md
}

// ----------------------------------------------------------------- plots

/// Lateness values below this are drawn at it (log axis).
const FLOOR_MS: f64 = 0.001;

/// Tail rank 1/(1-p) → axis label: 1 → 0%, 10 → 90%, 100 → 99%, …
fn percentile_label(rank: f64) -> String {
    let decade = rank.log10();
    if (decade - decade.round()).abs() > 0.01 {
        return String::new();
    }
    match decade.round() as i32 {
        0 => "0%".into(),
        d => {
            let p = 100.0 - 100.0 / rank;
            format!("{p:.*}%", (d - 2).max(0) as usize)
        }
    }
}

/// A run's lateness curve as (tail rank, ms): the quantiles when recorded,
/// else the percentiles in loadgen's JSON line.
fn lateness_curve(r: &Run) -> Vec<(f64, f64)> {
    if let Some((points, samples)) = &r.quantiles {
        return points
            .iter()
            .map(|&(pct, v)| {
                let rank = if pct >= 100.0 {
                    *samples
                } else {
                    1.0 / (1.0 - pct / 100.0)
                };
                (rank.clamp(1.0, samples.max(1.0)), v.max(FLOOR_MS))
            })
            .collect();
    }
    let fired = r.num("fired").unwrap_or(0.0);
    let mut out = Vec::new();
    for (rank, key) in [(2.0, "p50"), (100.0, "p99"), (1000.0, "p999")] {
        if rank <= fired
            && let Some(v) = r.late(key)
        {
            out.push((rank, v.max(FLOOR_MS)));
        }
    }
    if let Some(v) = r.late("max")
        && fired >= 1.0
    {
        out.push((fired.max(2.0), v.max(FLOOR_MS)));
    }
    out
}

/// Powers of ten around `lo..hi` (both positive).
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(FLOOR_MS).log10().floor());
    let mut hi = 10f64.powf(hi.max(lo).log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// An engine, its legend label and its (tail rank, ms) points.
type Curve<'a> = (&'a str, String, Vec<(f64, f64)>);

fn lateness_svg(path: &Path, runs: &[Run]) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Lateness (start − due time) per engine, same workload",
        ("sans-serif", 22),
    )?;
    let panels = [
        ("memory", 1),
        ("memory", 3),
        ("postgres", 1),
        ("postgres", 3),
    ];
    for (area, (store, nodes)) in root.split_evenly((2, 2)).iter().zip(panels) {
        let curves: Vec<Curve<'_>> = runs
            .iter()
            .filter(|r| r.group == "matrix" && r.store == store && r.nodes == nodes)
            .map(|r| {
                let label = if r.quantiles.is_some() {
                    r.engine.clone()
                } else {
                    format!("{} (p50, p99, p99.9, max only)", r.engine)
                };
                (r.engine.as_str(), label, lateness_curve(r))
            })
            .filter(|(_, _, c)| !c.is_empty())
            .collect();
        let all = curves.iter().flat_map(|(_, _, c)| c.iter());
        let x_max = all.clone().map(|p| p.0).fold(10.0, f64::max);
        let (y_lo, y_hi) = decades(
            all.clone().map(|p| p.1).fold(f64::INFINITY, f64::min),
            all.map(|p| p.1).fold(1.0, f64::max),
        );
        let x_hi = x_max * 1.1;
        let title = format!(
            "{store}, {nodes} node{}{}",
            if nodes == 1 { "" } else { "s" },
            if curves.is_empty() { " (no data)" } else { "" }
        );
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((1.0..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("lateness (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| tick(*y))
            .draw()?;
        for (engine, label, curve) in &curves {
            let color = engine_color(engine);
            chart
                .draw_series(LineSeries::new(
                    curve.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        if !curves.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

fn throughput_svg(path: &Path, runs: &[Run]) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Memory store, 1 node: every task fires every second",
        ("sans-serif", 22),
    )?;
    let sweep: Vec<&Run> = sweep_runs(runs).into_iter().filter(|r| r.ok()).collect();
    let (x_lo, x_hi) = decades(
        sweep.iter().map(|r| r.tasks as f64).fold(1e3, f64::min),
        sweep.iter().map(|r| r.tasks as f64).fold(1e6, f64::max),
    );
    let panels = root.split_evenly((1, 2));
    type Metric = fn(&Run) -> Option<f64>;
    let metrics: [(&str, Metric); 2] = [
        ("fires per second", |r| r.num("fires_per_s")),
        ("p99 lateness (ms)", |r| r.late("p99")),
    ];
    for (i, (area, (label, metric))) in panels.iter().zip(metrics).enumerate() {
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
        for engine in ENGINES {
            let pts: Vec<(f64, f64)> = sweep
                .iter()
                .filter(|r| r.engine == engine)
                // A run that fired nothing has no rate or lateness to draw
                // on a log axis; the table says what happened.
                .filter(|r| r.num("fired").is_some_and(|n| n > 0.0))
                .filter_map(|r| Some((r.tasks as f64, metric(r)?.max(FLOOR_MS))))
                .collect();
            if !pts.is_empty() {
                series.push((engine, pts));
            }
        }
        let ys = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
        let (mut y_lo, mut y_hi) = decades(
            ys.clone().fold(f64::INFINITY, f64::min),
            ys.fold(1.0, f64::max),
        );
        if i == 0 {
            // Room for the offered-rate line.
            y_lo = y_lo.min(x_lo);
            y_hi = y_hi.max(x_hi);
        } else {
            // Room for the legend above the curves.
            y_hi *= 10.0;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(label, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("tasks")
            .y_desc(label)
            .x_label_formatter(&|x| int(*x))
            .y_label_formatter(&|y| tick(*y))
            .draw()?;
        if i == 0 {
            let grey = RGBColor(0xbb, 0xbb, 0xbb);
            chart
                .draw_series(LineSeries::new([(x_lo, x_lo), (x_hi, x_hi)], grey))?
                .label("offered (tasks/s)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        for (engine, pts) in &series {
            let color = engine_color(engine);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(*engine)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(1_234_567.4), "1,234,567");
        assert_eq!(int(-12_345.0), "-12,345");
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
        assert_eq!(percentile_label(3.0), "");
    }

    #[test]
    fn quantiles_end_at_the_maximum() {
        let v: Vec<f64> = (1..=10_000).map(f64::from).collect();
        let csv = quantiles_csv(&v);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "# samples=10000");
        assert_eq!(lines[2], "0.000000,1.0000");
        assert_eq!(*lines.last().unwrap(), "100.000000,10000.0000");
        assert!(lines.len() < 160);
    }
}
