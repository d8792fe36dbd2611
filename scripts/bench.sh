#!/usr/bin/env bash
# The comparison run (issue 8): tickwheel against the schedulers people use
# today and against the raw limits of the machine and the stores, in one run
# on one machine, then the tables and plots of benches/README.md.
#
#   scripts/bench.sh                  the full run: about 20 minutes on the
#                                     2-core VM, build included
#   BENCH_QUICK=1 scripts/bench.sh    everything shrunk (a few minutes), to
#                                     check the script, not to quote
#
# What it does, in order (every step's output goes to benches/results/):
#   1. builds loadgen, pg_raw, httpload, plot and the `schedule` bench once,
#      in release;
#   2. starts a throwaway PostgreSQL and Redis (scripts/services/), stopped on
#      exit;
#   3. loadgen for each engine (tickwheel, tokio-cron-scheduler, apalis) ×
#      store (memory, postgres) × nodes (1, 3) on the same workload, plus a
#      bare tokio DelayQueue (memory, 1 node), with lateness samples;
#   4. the task-count sweep on the memory store, 1 node: each engine at
#      growing task counts until a run fails, times out or loses more than
#      half its occurrences;
#   5. raw limits: tickwheel on PostgreSQL (3 nodes) then `pg_raw claims`;
#      tickwheel on Redis (3 nodes) then `redis-benchmark`; `httpload` (REST
#      adapter vs bare axum); criterion `schedule` (next_after: tickwheel vs
#      croner vs cron) with a short measurement;
#   6. `plot render`: comparison.md, lateness.svg, throughput.svg, and the
#      tables spliced into benches/README.md between the bench markers.
#
# A run that fails or times out is recorded as such and the script goes on.
# Logs and the raw lateness samples stay in target/bench-logs/ (not
# committed); benches/results/ keeps the JSON of every run, ~150 lateness
# quantiles per run, and the generated tables and plots.
#
# Knobs (environment; the defaults are the full run's):
#   BENCH_TASKS=1000 BENCH_SECONDS=20    the engine comparison's workload
#   BENCH_ENGINES="tickwheel tokio-cron-scheduler apalis"
#   BENCH_SWEEP="10000 100000 1000000"   sweep sizes (the BENCH_TASKS run is
#                                        the first point)
#   BENCH_SWEEP_SECONDS=10               window per sweep run (5 from 1M up)
#   BENCH_SLACK=60                       a run's timeout = its window + this
#                                        (+ 1 s per 20k tasks); setup may
#                                        take half of it (--max-setup-s)
#   BENCH_LIMIT_TASKS=10000 BENCH_LIMIT_SECONDS=10   the store limit runs
#   BENCH_HTTP_SECONDS=3 BENCH_REDIS_REQUESTS=200000
#   BENCH_CRITERION="--warm-up-time 1 --measurement-time 2"
#   LOADGEN=path                         another loadgen binary (testing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
COMMAND="$({ env | grep -E '^(BENCH_[A-Z_]+|LOADGEN)=' || true; } | sort | sed -E "s/=(.*)/='\1'/" | tr '\n' ' ')scripts/bench.sh"

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  : "${BENCH_TASKS:=200}" "${BENCH_SECONDS:=3}" "${BENCH_SWEEP:=2000 20000}"
  : "${BENCH_SWEEP_SECONDS:=3}" "${BENCH_SLACK:=30}" "${BENCH_LIMIT_TASKS:=2000}"
  : "${BENCH_LIMIT_SECONDS:=3}" "${BENCH_HTTP_SECONDS:=1}" "${BENCH_REDIS_REQUESTS:=20000}"
  : "${BENCH_CRITERION:=--warm-up-time 0.2 --measurement-time 0.3}"
fi
TASKS="${BENCH_TASKS:-1000}"
WINDOW="${BENCH_SECONDS:-20}"
read -r -a ENGINES <<<"${BENCH_ENGINES:-tickwheel tokio-cron-scheduler apalis}"
read -r -a SWEEP <<<"${BENCH_SWEEP:-10000 100000 1000000}"
SWEEP_WINDOW="${BENCH_SWEEP_SECONDS:-10}"
SLACK="${BENCH_SLACK:-60}"
LIMIT_TASKS="${BENCH_LIMIT_TASKS:-10000}"
LIMIT_WINDOW="${BENCH_LIMIT_SECONDS:-10}"
HTTP_SECONDS="${BENCH_HTTP_SECONDS:-3}"
REDIS_REQUESTS="${BENCH_REDIS_REQUESTS:-200000}"
read -r -a CRITERION_ARGS <<<"${BENCH_CRITERION:---warm-up-time 1 --measurement-time 2}"

TARGET="${CARGO_TARGET_DIR:-target}"
RESULTS=benches/results
LOGS="$TARGET/bench-logs"
LOADGEN="${LOADGEN:-$TARGET/release/loadgen}"
PLOT="$TARGET/release/plot"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

use_workdir bench

step() { printf '\n==> [%02d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# ------------------------------------------------------------------ build
# tokio-cron-scheduler's PostgreSQL storage runs protoc at build time.
command -v protoc >/dev/null || apt_install protobuf-compiler
step "build (release): loadgen pg_raw httpload plot, bench schedule"
cargo build --release --locked -q -p tickwheel-benches --bins
cargo bench --locked -q -p tickwheel-benches --bench schedule --no-run

rm -rf "$RESULTS/runs" "$RESULTS/lateness" "$RESULTS/raw" "$LOGS"
mkdir -p "$RESULTS/runs" "$RESULTS/lateness" "$RESULTS/raw" "$LOGS"

machine() { printf '%s: %s\n' "$1" "$2" >>"$RESULTS/machine.txt"; }
: >"$RESULTS/machine.txt"
machine command "$COMMAND"
machine "started (UTC)" "$(date -u '+%Y-%m-%d %H:%M')"
machine "git commit" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' ':!benches/README.md' || echo ' (with local changes)')"
machine "CPUs (nproc)" "$(nproc)"
machine "CPU model" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
machine memory "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
machine kernel "$(uname -sr)"
machine rustc "$(rustc -V)"
machine "load average at start" "$(cut -d ' ' -f 1-3 /proc/loadavg)"

# --------------------------------------------------------------- services
PG_URL=""
REDIS_URL=""
# shellcheck source=scripts/services/postgres.sh
source scripts/services/postgres.sh
# shellcheck source=scripts/services/redis.sh
source scripts/services/redis.sh
step "start postgres"
if start_postgres; then
  PG_URL="$TICKWHEEL_TEST_POSTGRES_URL"
  machine postgresql "$("$(postgres_bindir)/postgres" --version) (fsync on; scripts/services/postgres.sh)"
else
  echo "PostgreSQL did not start: its runs are recorded as failed" >&2
fi
step "start redis"
if start_redis; then
  REDIS_URL="$TICKWHEEL_TEST_REDIS_URL"
  machine redis "$(redis-server --version | cut -d ' ' -f 3) (no persistence; scripts/services/redis.sh)"
else
  echo "Redis did not start: its runs are recorded as failed" >&2
fi

# ---------------------------------------------------------------- helpers

# loadgen bounds its setup with --max-setup-s where it has the option.
MAX_SETUP=0
if grep -q -- '--max-setup-s' benches/src/bin/loadgen.rs; then MAX_SETUP=1; fi

# run_loadgen GROUP ENGINE STORE NODES TASKS WINDOW [samples]
# Runs loadgen under `timeout`, files the outcome with `plot record`, and
# returns non-zero when the run did not succeed; FIRED_PCT is then the share
# of expected occurrences that fired (0 when the run failed).
FIRED_PCT=0
run_loadgen() {
  local group=$1 engine=$2 store=$3 nodes=$4 tasks=$5 window=$6 samples=${7:-}
  local id="$group-$engine-$store-${nodes}n-$tasks"
  local limit=$((window + SLACK + tasks / 20000))
  local log="$LOGS/$id.log" url="" extra=() rc=0 started=$SECONDS
  if [[ $MAX_SETUP == 1 ]]; then
    # A peer that cannot even create its jobs says so before the timeout.
    extra+=(--max-setup-s $((SLACK / 2 + tasks / 20000)))
  fi
  case $store in
    memory) url=memory ;;
    postgres) url=$PG_URL ;;
    redis) url=$REDIS_URL ;;
  esac
  if [[ -n $samples ]]; then
    extra+=(--lateness-out "$LOGS/$id.lateness")
  fi
  step "$id (timeout ${limit}s)"
  if [[ -z $url ]]; then
    echo "$store is not running" >"$log"
    rc=1
  else
    timeout -k 10 "$limit" "$LOADGEN" --engine "$engine" --store "$url" --nodes "$nodes" \
      --tasks "$tasks" --seconds "$window" "${extra[@]}" >"$log" 2>&1 || rc=$?
  fi
  # Killed after the grace period: still a timeout.
  if [[ $rc -eq 137 ]] && ((SECONDS - started >= limit)); then rc=124; fi
  tail -n 1 "$log"
  local outcome
  outcome=$("$PLOT" record --results "$RESULTS" --id "$id" --group "$group" --engine "$engine" \
    --store "$store" --nodes "$nodes" --tasks "$tasks" --seconds "$window" --exit "$rc" \
    --wall-s $((SECONDS - started)) --timeout-s "$limit" --log "$log" \
    --lateness "$LOGS/$id.lateness")
  echo "$outcome"
  FIRED_PCT=0
  if [[ $outcome =~ fired\ ([0-9]+)% ]]; then FIRED_PCT=${BASH_REMATCH[1]}; fi
  [[ $outcome == *": ok"* ]]
}

# raw NAME OUTPUT TIMEOUT COMMAND...: stdout to benches/results/raw/OUTPUT;
# on failure the end of the log goes to raw/NAME.error.
raw() {
  local name=$1 output=$2 limit=$3 rc=0
  shift 3
  step "$name: $*"
  timeout -k 10 "$limit" "$@" >"$RESULTS/raw/$output" 2>"$LOGS/$name.stderr" || rc=$?
  tail -n 4 "$RESULTS/raw/$output"
  if [[ $rc -ne 0 ]]; then
    { echo "exit $rc"; tail -n 5 "$LOGS/$name.stderr"; } >>"$RESULTS/raw/$name.error"
    echo "$name failed (exit $rc): $(tail -n 1 "$LOGS/$name.stderr")" >&2
    return 1
  fi
}

# -------------------------------------------------- engines × stores × nodes
for store in memory postgres; do
  for nodes in 1 3; do
    for engine in "${ENGINES[@]}"; do
      run_loadgen matrix "$engine" "$store" "$nodes" "$TASKS" "$WINDOW" samples || true
    done
  done
done
run_loadgen matrix delayqueue memory 1 "$TASKS" "$WINDOW" samples || true

# -------------------------------------------------------- task-count sweep
for engine in "${ENGINES[@]}" delayqueue; do
  for tasks in "${SWEEP[@]}"; do
    window=$SWEEP_WINDOW
    if ((tasks >= 1000000 && window > 5)); then window=5; fi
    # Past a failure, or once more than half the occurrences were lost, a
    # larger size would only cost time.
    if ! run_loadgen sweep "$engine" memory 1 "$tasks" "$window" || ((FIRED_PCT < 50)); then
      echo "$engine: no larger sweep sizes after this one"
      break
    fi
  done
done

# -------------------------------------------------------------- raw limits
run_loadgen limit tickwheel postgres 3 "$LIMIT_TASKS" "$LIMIT_WINDOW" || true
if [[ -n $PG_URL ]]; then
  # Three claims per task: about as many as the engine run above made.
  raw pg_raw pg_raw.json 120 "$TARGET/release/pg_raw" claims --store "$PG_URL" \
    --tasks "$LIMIT_TASKS" --seconds 3 || true
fi

run_loadgen limit tickwheel redis 3 "$LIMIT_TASKS" "$LIMIT_WINDOW" || true
if [[ -n $REDIS_URL ]]; then
  port=${REDIS_URL#redis://127.0.0.1:}
  port=${port%/}
  sha=$(redis-cli -p "$port" script load "return redis.call('HGET', KEYS[1], 'f')")
  bench=(redis-benchmark -p "$port" --csv -n "$REDIS_REQUESTS")
  raw redis redis-set.csv 120 "${bench[@]}" -t set || true
  raw redis redis-set-p16.csv 120 "${bench[@]}" -P 16 -t set || true
  raw redis redis-evalsha.csv 120 "${bench[@]}" evalsha "$sha" 1 bench:h || true
  raw redis redis-evalsha-p16.csv 120 "${bench[@]}" -P 16 evalsha "$sha" 1 bench:h || true
fi

raw httpload httpload.jsonl 120 "$TARGET/release/httpload" --seconds "$HTTP_SECONDS" || true

rm -rf "$TARGET"/criterion/next_after*
step "criterion: schedule next_after ${CRITERION_ARGS[*]}"
if cargo bench --locked -q -p tickwheel-benches --bench schedule -- next_after \
  "${CRITERION_ARGS[@]}" >"$LOGS/criterion.log" 2>&1; then
  "$PLOT" criterion --results "$RESULTS" --criterion "$TARGET/criterion" ||
    echo "no criterion results" >>"$RESULTS/raw/schedule.error"
else
  tail -n 5 "$LOGS/criterion.log" >>"$RESULTS/raw/schedule.error"
fi

# ---------------------------------------------------------- tables, plots
machine "load average at end" "$(cut -d ' ' -f 1-3 /proc/loadavg)"
machine "duration" "$((SECONDS / 60)) min $((SECONDS % 60)) s"
step "plot"
"$PLOT" render --results "$RESULTS"

# The README shows the tables between its bench markers.
readme=benches/README.md
if grep -q '<!-- bench:begin -->' "$readme"; then
  awk -v table="$RESULTS/comparison.md" '
    /<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
    /<!-- bench:end -->/ { skip = 0 }
    !skip { print }
  ' "$readme" >"$WORKDIR/README.md"
  cat "$WORKDIR/README.md" >"$readme"
fi
step "done: $RESULTS/comparison.md, lateness.svg, throughput.svg; $readme updated"
