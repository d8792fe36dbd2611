# The short chaos runs CI makes (issue 7): three example servers on each
# store, one killed with SIGKILL every 10 s, the store server restarted once
# half-way; the harness audits history and side effects and fails on any
# violation. Sourced by scripts/test.sh after the services started.
#
#   run_chaos   needs start_postgres and start_redis to have run

CHAOS_ARGS=(--nodes 3 --tasks 50 --seconds 60 --kill-every 10 --restart-store)

run_chaos() {
  cargo build --locked -q -p tickwheel-benches --bin chaos
  cargo build --locked -q -p tickwheel-http --example server
  local chaos=target/debug/chaos

  # PostgreSQL: pg_ctl restart keeps the data directory and the options.
  local bin as_postgres=()
  bin="$(postgres_bindir)"
  if [[ $(id -u) -eq 0 ]]; then as_postgres=(runuser -u postgres --); fi
  step "chaos (short): PostgreSQL"
  "$chaos" --store "$TICKWHEEL_TEST_POSTGRES_URL" "${CHAOS_ARGS[@]}" \
    --restart-cmd "${as_postgres[*]} $bin/pg_ctl -D $WORKDIR/postgres/data -m fast -w restart >/dev/null"

  # Redis: a server of its own with an fsync'd append-only file, so a
  # restart keeps every acknowledged write (the test servers keep nothing).
  local port dir="$WORKDIR/redis-chaos"
  port=$(free_port)
  local args=(--bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save ''
    --appendonly yes --appendfsync always)
  mkdir -p "$dir"
  redis-server "${args[@]}"
  on_exit "redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true"
  wait_until 20 redis-cli -p "$port" ping
  step "chaos (short): Redis (appendfsync always)"
  "$chaos" --store "redis://127.0.0.1:$port/" "${CHAOS_ARGS[@]}" \
    --restart-cmd "redis-cli -p $port shutdown >/dev/null; redis-server ${args[*]@Q} && until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.1; done"
}
