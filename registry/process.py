"""Which process holds an upload or made a temp file, and whether that process is known to be gone.

An upload session's lease and a monolithic upload's temp file carry the tag of the
process that took or made them: ``<host>-<pid>-<start>``, the start being the
process's start time in clock ticks since boot (Linux /proc), so that a pid reused
by a later process (a restarted container's server is pid 1 again) does not pass
for the old one. Another process on the same host can then tell that a holder died
(``kill -9``, a crash) and take over at once instead of waiting for the lease to
lapse; gc can remove a dead process's temp files without waiting out a grace period.

Elsewhere (another host, no /proc) nothing is known to be gone: leases lapse by time
and files age out, as before.
"""

from __future__ import annotations

import functools
import os
import re
import socket


@functools.cache
def tag() -> str:
    """This process's tag (computed once: the host name and start time do not change)."""
    return f"{_host()}-{os.getpid()}-{_start_time(os.getpid()) or 0}"


def gone(process_tag: str) -> bool:
    """Whether the process that ``process_tag`` names ran on this host and runs no more."""
    host, sep, rest = process_tag.rpartition("-")
    host, sep2, pid = host.rpartition("-")
    if not (sep and sep2) or host != _host() or not pid.isdigit() or rest in ("", "0"):
        return False
    started = _start_time(int(pid))
    return started is None or str(started) != rest


@functools.cache
def _host() -> str:
    # Letters, digits and dashes only: the tag goes into file names, and its fields are split at the last dashes.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _start_time(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None when there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # the command name, in parentheses, may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
