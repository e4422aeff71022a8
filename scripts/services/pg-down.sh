#!/bin/bash
# Stop the scratch PostgreSQL cluster started by pg-up.sh with the same PGDATA_DIR.
# Fast shutdown (aborts open transactions: the data is throwaway). Falls back to
# signalling the postmaster by its pid file if pg_ctl can't do it.
# Idempotent: no cluster or a stopped one is fine. Data is left in place.
set -euo pipefail

PGDATA_DIR=${PGDATA_DIR:-/tmp/paramdelta-pg}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGDATA_DIR=$(realpath -m "$PGDATA_DIR")
PIDFILE="$PGDATA_DIR/postmaster.pid"

[ -f "$PIDFILE" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi

if [ -x "$PG_BIN/pg_ctl" ] && "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1; then
    exit 0
fi

# pg_ctl failed (missing, or the server ignored it): first line of the pid file
# is the postmaster's pid. Only signal it if it really is a postgres process.
pid=$(head -n 1 "$PIDFILE" 2>/dev/null || true)
# A zombie keeps its comm; state Z means it has exited (PID 1 may not reap it).
is_pg() {
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "postgres" ] &&
        ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}
if is_pg; then
    kill -INT "$pid" 2>/dev/null || true      # SIGINT = fast shutdown
    for ((i = 0; i < 100; i++)); do is_pg || exit 0; sleep 0.1; done
    echo "pg-down: postmaster $pid still running after 10s; killing" >&2
    kill -KILL "$pid" 2>/dev/null || true
fi
