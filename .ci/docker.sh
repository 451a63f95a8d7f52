#!/usr/bin/env bash
# CI room: make a Docker engine answer for the Docker tests, and stop only what we started.
#   bash .ci/docker.sh start   install what the Docker tests need (Debian's docker.io, docker-compose,
#                              busybox-static, docker-registry), start dockerd (overlay2, else vfs)
#                              unless an engine answers, wait for it, build the offline image
#   bash .ci/docker.sh stop    stop the dockerd this script started (nothing else)
set -euo pipefail
cd "$(dirname "$0")/.."
# in the checkout (gitignored), not a fixed /tmp path: nobody else can plant files there, and a pid
# file from an earlier boot cannot name someone else's dockerd
STATE=${TOOLKIT_CI_STATE:-$PWD/.toolkit/ci-docker}
LOG=$STATE/dockerd.log
PIDFILE=$STATE/dockerd.pid
mkdir -p "$STATE"
chmod 700 "$STATE"

answers() { command -v docker >/dev/null && timeout 3 docker info >/dev/null 2>&1; }

apt_install() {
  # wait for the dpkg lock (apt-daily on a fresh VM) instead of failing at once
  local lock=(-o DPkg::Lock::Timeout=300)
  for try in 1 2 3; do
    apt-get "${lock[@]}" update -qq && break
    [ "$try" = 3 ] && return 1
    sleep 5
  done
  DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq "$@" >/dev/null
}

install_packages() {
  local missing=()
  # an engine that answers already (docker-ce, Docker Desktop) is kept: only what the tests need besides
  if ! answers && ! command -v dockerd >/dev/null; then missing+=(docker.io); fi
  # the compose test runs the docker-compose binary (Debian's 1.29) even where the v2 plugin exists
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  # a static busybox gives the offline image its shell and a few debugging tools
  command -v busybox >/dev/null || missing+=(busybox-static)
  # a registry on 127.0.0.1, so the test of pulling a missing image pulls for real (no Docker Hub here)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "docker.sh: installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

wait_for_engine() {  # SECONDS [PID]: true once an engine answers; false at the deadline or when PID dies
  local end=$((SECONDS + $1)) pid=${2:-}
  while [ $SECONDS -lt $end ]; do
    if answers; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.5
  done
  return 1
}

start_dockerd() {
  local driver=$1
  echo "docker.sh: starting dockerd (storage driver $driver), log in $LOG"
  dockerd --storage-driver "$driver" >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  if wait_for_engine 120 "$(cat "$PIDFILE")"; then return 0; fi
  stop_dockerd
  return 1
}

stop_dockerd() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  # only ever signal our dockerd
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill -TERM "$pid"
    # dockerd stops its containers and its containerd child itself; wait for it
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start)
    install_packages
    if answers; then
      echo "docker.sh: a Docker engine already answers; using it"
    elif pidof dockerd >/dev/null && wait_for_engine 30; then
      # installing docker.io on a systemd host starts its own service: use that one, not a second daemon
      echo "docker.sh: the system's dockerd answers; using it"
    else
      start_dockerd overlay2 || start_dockerd vfs || {
        echo "docker.sh: dockerd did not start; last lines of $LOG:" >&2; tail -n 30 "$LOG" >&2; exit 1; }
    fi
    docker info --format 'docker.sh: engine {{.ServerVersion}}, storage driver {{.Driver}}'
    make -s venv
    .venv/bin/toolkit image build
    ;;
  stop)
    stop_dockerd
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
