# Shared shell helpers for scripts/test.sh and the service scripts in
# scripts/services/. Sourced, never run.
#
# Contract for a service script scripts/services/NAME.sh: it defines
# start_NAME, which installs the server with `apt_install` when missing,
# starts it on a free loopback port in a directory under $WORKDIR, waits
# until it answers, exports the URL(s) the tests read, and registers its
# shutdown with `on_exit`.

# Registered shutdowns, run in reverse order by `run_cleanups`.
CLEANUP=()
on_exit() { CLEANUP+=("$1"); }
run_cleanups() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP[i]}" || true
  done
  CLEANUP=()
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Install Debian packages without prompts and without letting their
# maintainer scripts start system services (we start our own, throwaway).
APT_UPDATED=0
apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "apt_install: need root to install $*" >&2
    return 1
  fi
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [[ -e $policy ]] && had_policy=1
  if [[ $had_policy -eq 0 ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
  fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  local status=$?
  [[ $had_policy -eq 0 ]] && rm -f "$policy"
  return $status
}

# Wait until `cmd...` succeeds, up to $1 seconds.
wait_until() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${seconds}s waiting for: $*" >&2
      return 1
    fi
    sleep 0.1
  done
}

# A throwaway working directory in $WORKDIR (traversable by the postgres
# user) and the traps that tidy up: on exit the registered shutdowns run
# (newest first) and the directory goes; a signal ends the run as a failure
# (the EXIT trap then cleans up), never as the status of whatever step was
# running. $1 names the directory.
use_workdir() {
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/tickwheel-$1.XXXXXX")"
  chmod 755 "$WORKDIR"
  trap _cleanup_workdir EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

_cleanup_workdir() {
  local status=$?
  trap - EXIT
  run_cleanups
  rm -rf "$WORKDIR"
  exit "$status"
}
