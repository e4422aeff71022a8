#!/bin/bash
# Stop the Ceph S3 instance started by s3-up.sh with the same C.
# Order matters: gateway first, then the OSD, then the mon (an OSD or gateway
# without its mon hangs in reconnect loops instead of exiting promptly).
# Each daemon is found by its pid file and only signalled if its command line
# names our ceph.conf, so a stale pid file can't hit an unrelated process.
# Idempotent: missing pid files or dead daemons are fine. The state folder is
# left in place (logs); s3-up.sh wipes it on the next start.
set -euo pipefail

C=${C:-/tmp/paramdelta-ceph-s3}
C=$(realpath -m "$C")
WAIT=${S3_DOWN_TIMEOUT:-20}

ours() {  # ours PID: true if PID is alive and was started with our config
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$C/ceph.conf"
}

stop_daemon() {  # stop_daemon NAME
    local pidfile="$C/run/$1.pid" pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || ! ours "$pid"; then rm -f "$pidfile"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    # Wait for exit: these are not our children, so 'wait' can't be used.
    for ((i = 0; i < WAIT * 10; i++)); do
        ours "$pid" || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    echo "s3-down: $1 (pid $pid) ignored SIGTERM for ${WAIT}s; killing" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do ours "$pid" || break; sleep 0.1; done
    rm -f "$pidfile"
}

stop_daemon client.rgw.a
stop_daemon osd.0
stop_daemon mon.a
