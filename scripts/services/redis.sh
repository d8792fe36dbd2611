# Throwaway Redis servers for the tests: one single server and a 3-master
# local Redis Cluster. Sourced by scripts/test.sh (see scripts/lib.sh for the
# contract); usable by hand:
#
#   bash -c 'source scripts/lib.sh; WORKDIR=$(mktemp -d); source scripts/services/redis.sh;
#            start_redis; env | grep TICKWHEEL_TEST_REDIS; read; run_cleanups'
#
# Exports TICKWHEEL_TEST_REDIS_URL (the single server) and
# TICKWHEEL_TEST_REDIS_CLUSTER_URLS (the cluster's masters, comma-separated).
# Nothing is persisted (`--save ''`, no AOF): the data dies with the run.

# A free loopback port whose cluster bus port (port + 10000) is free too.
redis_cluster_port() {
  python3 - <<'EOF'
import socket
for _ in range(200):
    a = socket.socket()
    a.bind(("127.0.0.1", 0))
    port = a.getsockname()[1]
    if port + 10000 > 65535:
        a.close()
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 10000))
    except OSError:
        a.close()
        b.close()
        continue
    a.close()
    b.close()
    print(port)
    break
else:
    raise SystemExit("no free port pair for a cluster node")
EOF
}

# Starts one daemonized redis-server on 127.0.0.1:$1 in directory $2; extra
# arguments go to redis-server.
redis_start_server() {
  local port=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save '' --appendonly no "$@"
  on_exit "redis-cli -p $port shutdown nosave >/dev/null 2>&1 || { [[ -f $dir/redis.pid ]] && kill \$(cat $dir/redis.pid); }"
  if ! wait_until 20 redis-cli -p "$port" ping; then
    cat "$dir/redis.log" >&2
    return 1
  fi
}

redis_cluster_ok() {
  local port
  for port in "$@"; do
    redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
  done
}

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
  fi
  local single
  single=$(free_port)
  redis_start_server "$single" "$WORKDIR/redis-single"
  export TICKWHEEL_TEST_REDIS_URL="redis://127.0.0.1:$single/"

  local ports=() port i urls=()
  for i in 1 2 3; do
    # Each port is bound by its server before the next is picked.
    port=$(redis_cluster_port)
    redis_start_server "$port" "$WORKDIR/redis-cluster-$i" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
    ports+=("$port")
    urls+=("redis://127.0.0.1:$port/")
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$WORKDIR/redis-cluster-create.log" 2>&1 || {
    cat "$WORKDIR/redis-cluster-create.log" >&2
    return 1
  }
  wait_until 30 redis_cluster_ok "${ports[@]}"
  TICKWHEEL_TEST_REDIS_CLUSTER_URLS=$(
    IFS=,
    echo "${urls[*]}"
  )
  export TICKWHEEL_TEST_REDIS_CLUSTER_URLS
  echo "redis: single $TICKWHEEL_TEST_REDIS_URL; cluster $TICKWHEEL_TEST_REDIS_CLUSTER_URLS"
}
