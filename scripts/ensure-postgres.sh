#!/usr/bin/env bash
# Makes a throwaway PostgreSQL server answer on a Unix socket in $CRM_PG_DIR (default
# /tmp/crm-postgres) for the tests and benchmarks that need one, with an empty database
# "crm_test": DSN postgresql://postgres@/crm_test?host=$CRM_PG_DIR (what tox passes to the tests
# as CRM_TEST_PG_DSN).
#
# Idempotent and fast when done: a server already answering is left alone. Otherwise installs
# Debian's postgresql package if no PostgreSQL binaries are found (needs root), creates the
# cluster with initdb (trust authentication, socket only, no TCP port) and starts it as the
# `postgres` user. Outside CI a machine that cannot have PostgreSQL only gets a warning, and the
# PostgreSQL tests skip saying why; under CI=true that is an error.
set -euo pipefail
DIR="${CRM_PG_DIR:-/tmp/crm-postgres}"
DB=crm_test
PORT=5432

SETUP_NAME=ensure-postgres
SETUP_WITHOUT="PostgreSQL: its tests will be skipped"
# shellcheck source=setup-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup-lib.sh"

bindir() {
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; fi
}

as_owner() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

answering() {
  [ -n "$BIN" ] && "$BIN/pg_isready" -q -h "$DIR" -p "$PORT" -d postgres -U postgres
}

ensure_db() {
  local psql=("$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -Atq)
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    "${psql[@]}" -c "CREATE DATABASE $DB" >/dev/null
  fi
}

BIN="$(bindir)"
if answering; then
  ensure_db
  exit 0
fi

if [ -z "$BIN" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    give_up "no PostgreSQL found and cannot install it here (needs root and apt-get: apt-get install -y postgresql)"
  fi
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
    || give_up "apt-get install postgresql failed"
  BIN="$(bindir)"
  [ -n "$BIN" ] || give_up "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
chmod 755 "$DIR"
if [ ! -s "$DIR/data/PG_VERSION" ]; then
  rm -rf "$DIR/data"
  say "creating a throwaway cluster in $DIR/data"
  as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
fi
# No TCP port: the socket in $DIR is private to this machine and cannot clash with another server.
as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start \
  -o "-c listen_addresses='' -c unix_socket_directories='$DIR' -p $PORT -c max_connections=300" >/dev/null \
  || { tail -n 20 "$DIR/server.log" >&2 || true; give_up "PostgreSQL did not start (log: $DIR/server.log)"; }
ensure_db
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on socket $DIR (database $DB)"
