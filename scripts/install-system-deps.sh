#!/bin/bash
# Install the Debian packages that the integration tests' backing services need.
# Idempotent: installs only what is missing, and runs 'apt-get update' only when
# something has to be installed (the package lists may be absent or stale on a
# fresh machine, and an update costs time we need not spend on a warm one).
#   ceph-mon ceph-osd radosgw ceph-common  -> real S3 endpoint (scripts/services/s3-up.sh)
#   chromium                               -> headless browser tests
#   docker-compose                         -> validating compose files only (no daemon needed)
#   postgresql                             -> scratch PostgreSQL 15 (scripts/services/pg-up.sh)
#   curl                                   -> s3-up.sh polls the gateway with it
#   fuse3                                  -> libfuse 3 and fusermount3 for `paramdelta mount` (tests/test_mount.py)
#   docker-registry                        -> a stock OCI distribution registry (tests/test_oci_distribution.py)
#   apache2-utils                          -> htpasswd: bcrypt users for the htpasswd-protected docker-registry (tests/test_oci_credentials.py)
#   skopeo                                 -> a docker-style OCI client copying images into the registry (tests/test_registry_oci_content.py)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(ceph-mon ceph-osd radosgw ceph-common chromium docker-compose postgresql curl fuse3 docker-registry apache2-utils skopeo)
PG_BIN=/usr/lib/postgresql/15/bin

# Root or sudo: CI and the dev machines run as root, but don't assume it blindly.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -E); else
        echo "install-system-deps: need root (or sudo) to install packages" >&2; exit 1
    fi
fi

# dpkg-query's status tells "installed" apart from "removed but config left".
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-system-deps: installing ${missing[*]}" >&2
    "${SUDO[@]}" apt-get update -qq
    # policy-rc.d=101 keeps the packages' postinst from starting system-wide
    # daemons (the Debian postgresql cluster, ceph units): tests run their own.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod +x "$policy"
        added_policy=1
    fi
    rc=0
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    if [ "$added_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    if [ "$rc" -ne 0 ]; then
        echo "install-system-deps: apt-get install failed (exit $rc)" >&2; exit "$rc"
    fi
else
    echo "install-system-deps: all packages already installed" >&2
fi

# Verify the binaries the service scripts call, so a broken install fails here
# rather than as a confusing test error later.
need=("$PG_BIN/initdb" "$PG_BIN/pg_ctl")
for b in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph chromium docker-compose curl docker-registry skopeo; do
    need+=("$(command -v "$b" || echo "$b")")
done
bad=0
for b in "${need[@]}"; do
    if [ ! -x "$b" ]; then echo "install-system-deps: missing executable: $b" >&2; bad=1; fi
done
[ "$bad" -eq 0 ] || exit 1
echo "install-system-deps: ok" >&2
