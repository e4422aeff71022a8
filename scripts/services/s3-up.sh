#!/bin/bash
# Start a real S3 endpoint on loopback: a single-node Ceph cluster (1 mon,
# 1 in-memory OSD, RADOS Gateway) with cephx disabled. For tests and local dev.
#
# Environment (all optional):
#   C            state folder, WIPED on start        (default /tmp/paramdelta-ceph-s3)
#   RGW_PORT     S3 (HTTP) port                       (default 7480)
#   MON_PORT_V2  monitor msgr2 port                   (default 3300)
#   MON_PORT_V1  monitor legacy msgr1 port            (default 6789)
#   S3_UP_TIMEOUT seconds to wait for each step       (default 120)
# Credentials: access key "testkey", secret "testsecret".
# Progress goes to stderr; the last line on stdout is the endpoint URL.
# Exits 0 only once the gateway answers HTTP; on failure stops whatever it
# started (via s3-down.sh) and exits non-zero. Stop with: C=... s3-down.sh
# Needs: ceph-mon ceph-osd radosgw ceph-common curl (scripts/install-system-deps.sh)
set -euo pipefail

C=${C:-/tmp/paramdelta-ceph-s3}
RGW_PORT=${RGW_PORT:-7480}
MON_PORT_V2=${MON_PORT_V2:-3300}
MON_PORT_V1=${MON_PORT_V1:-6789}
STEP_TIMEOUT=${S3_UP_TIMEOUT:-120}
ACCESS_KEY=testkey
SECRET_KEY=testsecret
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "s3-up: $*" >&2; }

for b in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph curl timeout; do
    command -v "$b" >/dev/null 2>&1 || { log "missing executable '$b' (run scripts/install-system-deps.sh)"; exit 1; }
done

# Refuse "/" and other short paths: the folder is wiped below.
case "$C" in
    /|//*|"") log "refusing state folder '$C'"; exit 1 ;;
esac
C=$(realpath -m "$C")
# Unix sockets (the admin sockets under $C/run) are limited to 107 bytes.
if [ "${#C}" -gt 80 ]; then log "state folder path too long for admin sockets: $C"; exit 1; fi

# Stop an older instance that used this same folder before wiping it
# (and before the port check: it may hold the very ports we want).
if [ -d "$C/run" ]; then C="$C" "$HERE/s3-down.sh" >/dev/null 2>&1 || true; fi

# A busy port would make us talk to someone else's daemon (e.g. a developer's
# instance on the defaults): the gateway poll below would then succeed falsely.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$RGW_PORT" "$MON_PORT_V2" "$MON_PORT_V1"; do
    if port_busy "$p"; then log "port $p on 127.0.0.1 is already in use"; exit 1; fi
done

rm -rf "$C"
mkdir -p "$C"/{mon,osd0,rgw,run,log}

started=0
on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$started" -eq 1 ]; then
        log "startup failed (exit $rc); stopping what was started. Logs: $C/log"
        for f in "$C"/log/*.log; do
            [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
        done
        C="$C" "$HERE/s3-down.sh" >&2 || true
    fi
}
trap on_exit EXIT

FSID=$(cat /proc/sys/kernel/random/uuid)
# The 'ms ... mode = crc' lines are required with auth = none: without them
# radosgw loops on "get_initial_auth_request returned -13" for 300 s.
# memstore keeps objects in RAM: fast, nothing to clean up, lost on stop.
# mon data avail crit = 0: a nearly full /tmp must not make the mon shut down.
# paxos propose interval 0.1 (default 1 s): every mon write (crush edits, each
# pool radosgw-admin creates) waits one interval; this cuts startup ~15 s -> ~3 s.
# osd crush update on start = false: we place osd.0 ourselves below, so the
# CRUSH map doesn't depend on the machine's hostname.
cat > "$C/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
ms service mode = crc
ms cluster mode = crc
ms mon service mode = crc
ms mon cluster mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
osd crush update on start = false
paxos propose interval = 0.1
client mount timeout = $STEP_TIMEOUT
run dir = $C/run
admin socket = $C/run/\$name.asok
log file = $C/log/\$name.log
pid file = $C/run/\$name.pid
[mon.a]
mon data = $C/mon
[osd.0]
osd data = $C/osd0
osd objectstore = memstore
memstore device bytes = 2147483648
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $C/rgw
EOF
CC=(-c "$C/ceph.conf")
T=(timeout --foreground "$STEP_TIMEOUT")  # --foreground: stay in our process group, so killing the group reaches it

log "state in $C, mon v2:$MON_PORT_V2/v1:$MON_PORT_V1, rgw $RGW_PORT"
"${T[@]}" monmaptool --create --addv a "[v2:127.0.0.1:$MON_PORT_V2,v1:127.0.0.1:$MON_PORT_V1]" \
    --fsid "$FSID" --enable-all-features --set-min-mon-release pacific "$C/monmap" >/dev/null
"${T[@]}" ceph-mon "${CC[@]}" --mkfs -i a --monmap "$C/monmap"
started=1
"${T[@]}" ceph-mon "${CC[@]}" -i a                     # daemonizes; pid in $C/run/mon.a.pid
"${T[@]}" ceph "${CC[@]}" osd create >/dev/null        # -> id 0
"${T[@]}" ceph-osd "${CC[@]}" -i 0 --mkfs 2>/dev/null
"${T[@]}" ceph "${CC[@]}" osd crush add-bucket localhost host >/dev/null
"${T[@]}" ceph "${CC[@]}" osd crush move localhost root=default >/dev/null
"${T[@]}" ceph "${CC[@]}" osd crush add osd.0 1.0 host=localhost >/dev/null
"${T[@]}" ceph-osd "${CC[@]}" -i 0 2>/dev/null         # daemonizes; pid in $C/run/osd.0.pid
"${T[@]}" radosgw "${CC[@]}" -n client.rgw.a           # daemonizes; pid in $C/run/client.rgw.a.pid
"${T[@]}" radosgw-admin "${CC[@]}" user create --uid=test --display-name=test \
    --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null

# Any HTTP status (curl prints 000 when nothing answered) means beast is serving.
URL="http://127.0.0.1:$RGW_PORT"
deadline=$((SECONDS + STEP_TIMEOUT))
while :; do
    code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$URL/" || true)
    [ "$code" != "000" ] && [ -n "$code" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then log "gateway did not answer on $URL"; exit 1; fi
    pid=$(cat "$C/run/client.rgw.a.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then log "radosgw exited"; exit 1; fi
    sleep 0.5
done
log "rgw up on $URL ($ACCESS_KEY/$SECRET_KEY) after ${SECONDS}s"
echo "$URL"
