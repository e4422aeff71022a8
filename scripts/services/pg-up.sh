#!/bin/bash
# Start a scratch PostgreSQL 15 cluster for tests and local dev.
#
# Environment (all optional):
#   PGDATA_DIR  cluster folder; an old cluster there is stopped and WIPED
#               (default /tmp/paramdelta-pg)
#   PG_PORT     TCP port on 127.0.0.1 (default: a free port picked here)
#   PG_BIN      PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
# Listens on 127.0.0.1 only, unix socket in $PGDATA_DIR/socket (private, so it
# can't clash with a system cluster's /var/run/postgresql), trust auth for
# local and loopback connections, superuser "postgres", database "paramdelta".
# Durability is switched off (fsync etc.): the data is throwaway.
# Progress goes to stderr; the last line on stdout is the SQLAlchemy URL.
# Stop with: PGDATA_DIR=... pg-down.sh
set -euo pipefail

PGDATA_DIR=${PGDATA_DIR:-/tmp/paramdelta-pg}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DB=paramdelta
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "pg-up: $*" >&2; }

for b in initdb pg_ctl psql; do
    [ -x "$PG_BIN/$b" ] || { log "missing $PG_BIN/$b (install Debian package postgresql-15; scripts/install-system-deps.sh)"; exit 1; }
done

# PostgreSQL refuses to run as root, so as root we drop to the postgres user.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { log "no 'postgres' user (install Debian package postgresql-15)"; exit 1; }
    command -v runuser >/dev/null 2>&1 || { log "missing runuser (util-linux)"; exit 1; }
    AS_PG=(runuser -u postgres --)
else
    AS_PG=()   # not root: run the cluster as ourselves
fi

case "$PGDATA_DIR" in /|"") log "refusing data folder '$PGDATA_DIR'"; exit 1 ;; esac
PGDATA_DIR=$(realpath -m "$PGDATA_DIR")
SOCK="$PGDATA_DIR/socket"
# Unix socket paths are limited to 107 bytes (".s.PGSQL.NNNNN" is appended).
if [ "${#SOCK}" -gt 90 ]; then log "data folder path too long for the unix socket: $PGDATA_DIR"; exit 1; fi

# Only wipe a folder that is empty or clearly an old cluster of ours.
if [ -e "$PGDATA_DIR" ]; then
    if [ -f "$PGDATA_DIR/PG_VERSION" ]; then
        PGDATA_DIR="$PGDATA_DIR" PG_BIN="$PG_BIN" "$HERE/pg-down.sh" >/dev/null 2>&1 || true
        rm -rf "$PGDATA_DIR"
    elif [ -n "$(ls -A "$PGDATA_DIR" 2>/dev/null)" ]; then
        log "$PGDATA_DIR exists, is not empty and holds no cluster; refusing to wipe it"; exit 1
    fi
fi
mkdir -p "$PGDATA_DIR"
chmod 700 "$PGDATA_DIR"    # initdb demands 0700 (or 0750)
if [ "${#AS_PG[@]}" -gt 0 ]; then
    chown postgres:postgres "$PGDATA_DIR"
    # Every folder above must be searchable by postgres (pytest's tmp folders are 0700 root).
    if ! "${AS_PG[@]}" test -w "$PGDATA_DIR"; then
        log "user postgres cannot reach $PGDATA_DIR (a parent folder is not searchable by others)"
        rmdir "$PGDATA_DIR" 2>/dev/null || true; exit 1
    fi
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${PG_PORT:-}" ]; then
    # Random start in 20000-39999, first port nobody listens on.
    for ((i = 0; i < 200; i++)); do
        PG_PORT=$((20000 + (RANDOM * 32768 + RANDOM) % 20000))
        port_busy "$PG_PORT" || break
    done
elif port_busy "$PG_PORT"; then
    log "port $PG_PORT on 127.0.0.1 is already in use"; exit 1
fi

started=0
on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        log "startup failed (exit $rc)"
        [ -f "$PGDATA_DIR/postgres.log" ] && tail -n 20 "$PGDATA_DIR/postgres.log" >&2
        if [ "$started" -eq 1 ]; then
            PGDATA_DIR="$PGDATA_DIR" PG_BIN="$PG_BIN" "$HERE/pg-down.sh" >&2 || true
        fi
    fi
}
trap on_exit EXIT

# C locale and UTF8: the machine's locale may be unset or not generated.
# --no-sync: throwaway data, skip the fsyncs that make initdb slow.
out=$("${AS_PG[@]}" "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust \
    -E UTF8 --locale=C --no-sync 2>&1) || { echo "$out" >&2; exit 1; }
"${AS_PG[@]}" mkdir -m 700 "$SOCK"

# Settings go into postgresql.conf (not pg_ctl -o) so a manual pg_ctl restart
# keeps them. --auth=trust above already covers local, 127.0.0.1/32 and ::1.
"${AS_PG[@]}" tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- paramdelta scratch cluster (scripts/services/pg-up.sh) ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

started=1
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/postgres.log" -w -t 60 start >/dev/null
"${AS_PG[@]}" "$PG_BIN/psql" -X -q -h "$SOCK" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null

log "postgres up on 127.0.0.1:$PG_PORT, data in $PGDATA_DIR"
echo "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/$DB"
