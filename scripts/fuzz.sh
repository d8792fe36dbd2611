#!/usr/bin/env bash
# Long runs of the hostile-input property tests (the toolchain is stable, so
# cargo-fuzz's sanitizer flags are not available; these proptests are the
# fuzzers). Each target runs in rounds of CASES random cases with a fresh
# seed per round until SECONDS have passed; the total case count is printed.
#
#   scripts/fuzz.sh [SECONDS] [CASES]      default 600 s per target, 5000 per round
#
# Targets: the cron parser (`parser_never_panics*` in core) and request
# decoding (`random_bodies_never_get_a_5xx` in tickwheel-http: create, update
# and preview with random JSON). CI runs the same tests with the default 256
# cases as part of `cargo test`. The count printed is per test: the parser
# target holds two tests (any printable text, and cron-like text), so it
# ran twice that many cases; each request-decoding case sends three requests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-600}
cases=${2:-5000}

run_target() {
  local name=$1
  shift
  local start=$SECONDS total=0 rounds=0 log
  log=$(mktemp)
  while ((SECONDS - start < seconds)); do
    if ! PROPTEST_CASES=$cases "$@" >"$log" 2>&1; then
      cat "$log"
      echo "{\"target\":\"$name\",\"failed_after_cases\":$total}"
      return 1
    fi
    total=$((total + cases))
    rounds=$((rounds + 1))
  done
  echo "{\"target\":\"$name\",\"seconds\":$((SECONDS - start)),\"rounds\":$rounds,\"cases_per_test\":$total,\"failures\":0}"
}

cargo build --locked -q --tests -p tickwheel -p tickwheel-http
run_target cron-parser \
  cargo test --locked -q -p tickwheel --lib parser_never_panics &
parser=$!
run_target request-decoding \
  cargo test --locked -q -p tickwheel-http --test random_bodies &
bodies=$!
wait "$parser"
wait "$bodies"
