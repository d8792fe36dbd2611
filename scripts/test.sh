#!/usr/bin/env bash
# The test command: everything CI checks, in the order CI checks it.
#
#   scripts/test.sh            fmt, clippy, docs, then the whole test suite
#
# It is written to grow: services the tests need (PostgreSQL, Redis) get a
# start_* function below that installs the server with apt-get when it is
# missing, starts it on a free loopback port in a throwaway directory,
# exports its URL for the tests, and registers its shutdown with the EXIT
# trap, so nothing is left running whatever happens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

use_workdir test

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

# tokio-cron-scheduler (a peer in the benchmark harness, with its own
# PostgreSQL storage) generates code with protoc at build time.
command -v protoc >/dev/null || apt_install protobuf-compiler

step "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# Throwaway servers for the storage backends: each scripts/services/NAME.sh
# defines start_NAME (see scripts/lib.sh for the contract).
for service in postgres redis; do
  if [[ -f scripts/services/$service.sh ]]; then
    # shellcheck source=/dev/null
    source "scripts/services/$service.sh"
    step "start $service"
    "start_$service"
  fi
done

step "cargo test --workspace"
cargo test --workspace --locked

# Short chaos runs on both stores (see scripts/chaos.sh), when both started.
if [[ -n ${TICKWHEEL_TEST_POSTGRES_URL:-} && -n ${TICKWHEEL_TEST_REDIS_URL:-} ]]; then
  # shellcheck source=scripts/chaos.sh
  source scripts/chaos.sh
  run_chaos
fi
