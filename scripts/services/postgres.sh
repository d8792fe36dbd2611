# Throwaway PostgreSQL for the tests (see the contract in scripts/lib.sh).
# Sourced, never run. Needs scripts/lib.sh sourced and $WORKDIR set (a
# directory the postgres user can traverse: chmod 755).
#
#   start_postgres   initdb into $WORKDIR/postgres, start on 127.0.0.1:<free
#                    port>, export TICKWHEEL_TEST_POSTGRES_URL, stop on exit
#
# By hand, for development:
#   bash -c 'source scripts/lib.sh; WORKDIR=$(mktemp -d); chmod 755 $WORKDIR;
#            source scripts/services/postgres.sh; start_postgres;
#            cargo test -p tickwheel-postgres; run_cleanups'

# The directory holding initdb and pg_ctl (Debian keeps them off PATH).
postgres_bindir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
      echo "$dir"
    fi
  done | sort -V | tail -n 1
}

start_postgres() {
  local bin
  bin="$(postgres_bindir)"
  if [[ -z $bin ]]; then
    apt_install postgresql || return 1
    bin="$(postgres_bindir)"
    if [[ -z $bin ]]; then
      echo "start_postgres: no initdb/pg_ctl under /usr/lib/postgresql after installing" >&2
      return 1
    fi
  fi
  # initdb and the server refuse to run as root: they run as postgres, in a
  # directory postgres owns.
  local as_postgres=()
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    as_postgres=(runuser -u postgres --)
  fi
  local dir="$WORKDIR/postgres"
  mkdir -p "$dir"
  if [[ $(id -u) -eq 0 ]]; then chown postgres: "$dir"; fi
  chmod 700 "$dir"
  local port
  port="$(free_port)"
  "${as_postgres[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  # fsync and synchronous_commit stay on (the defaults): the figures are for
  # a durable store. Room for parallel tests' pools (max_connections), and
  # WAL settings for a write-heavy load: bigger WAL buffers, and checkpoints
  # far enough apart that full-page images do not dominate the WAL.
  local settings=(
    -c listen_addresses=127.0.0.1 -p "$port" -k "$dir"
    -c max_connections=300 -c shared_buffers=256MB -c wal_buffers=64MB
    -c max_wal_size=4GB -c checkpoint_timeout=30min
  )
  "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "${settings[*]}" start >/dev/null || {
    cat "$dir/server.log" >&2
    return 1
  }
  on_exit "${as_postgres[*]} $bin/pg_ctl -D $dir/data -m fast -w stop >/dev/null"
  wait_until 30 "${as_postgres[@]}" "$bin/pg_isready" -h 127.0.0.1 -p "$port" -U postgres || return 1
  export TICKWHEEL_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "postgres ready: $TICKWHEEL_TEST_POSTGRES_URL (data in $dir)"
}
