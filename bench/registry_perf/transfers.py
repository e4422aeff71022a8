"""Timed transfers: the paramdelta client against the floors' clients, pre-flight, CPU of each side."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.registry_perf.artifact import Art, Blob
from bench.registry_perf.config import ROOT, WORKERS
from bench.registry_perf.report import med
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import HttpProcess


def _pool_client():
    import httpx

    from deltaformat.client import TIMEOUT

    limits = httpx.Limits(max_connections=WORKERS + 4, max_keepalive_connections=WORKERS + 4)
    return httpx.Client(timeout=TIMEOUT, limits=limits)


def floor_upload(url: str, art: Art) -> float:
    """PUT every blob to a floor from WORKERS threads; returns seconds. Checks each digest the server computed."""
    t0 = time.perf_counter()  # the client is made inside the timing, as client.push makes its own
    with _pool_client() as http:
        def put(b: Blob) -> None:
            data = b.path.read_bytes()
            r = http.put(f"{url}/upload/{b.hex}", content=data, headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 201 or r.headers.get("docker-content-digest") != b.digest:
                raise RuntimeError(f"floor upload of {b.digest}: HTTP {r.status_code} {r.headers.get('docker-content-digest')}")

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(put, art.blobs))
    return time.perf_counter() - t0


def floor_download(url: str, art: Art, out: Path) -> float:
    """GET every blob from a floor from WORKERS threads, streamed to a file and hashed; returns seconds."""
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with _pool_client() as http:
        def get(b: Blob) -> None:
            sha, part = hashlib.sha256(), out / f"{b.hex}.part"
            with http.stream("GET", f"{url}/blobs/{b.hex}") as r, open(part, "wb") as f:
                if r.status_code != 200:
                    raise RuntimeError(f"floor download of {b.digest}: HTTP {r.status_code}")
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    sha.update(chunk)
            if "sha256:" + sha.hexdigest() != b.digest:
                raise RuntimeError(f"floor download of {b.digest}: digest mismatch")
            os.replace(part, out / b.hex)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(get, art.blobs))
    return time.perf_counter() - t0


def registry_push(reg: HttpProcess, art: Art, repo: str, token: str) -> float:
    """Seconds to push the artifact to ``repo``:1.0. The registry takes a manifest.json only at the name it states,
    so what is pushed is a copy named for ``repo`` (made before the timing: the same blobs, hard-linked; only
    manifest.json differs, by the name's length)."""
    from deltaformat import client
    from deltaformat.artifact import MANIFEST_FILE

    folder = renamed(art.folder, repo, "1.0")
    expected = art.total - len(art.manifest_bytes) + (folder / MANIFEST_FILE).stat().st_size
    t0 = time.perf_counter()
    r = client.push(folder, f"{reg.host}/{repo}:1.0", token=token, quiet=True)
    dt = time.perf_counter() - t0
    if r.uploaded_bytes != expected or r.skipped:
        raise RuntimeError(f"push of {repo} uploaded {r.uploaded_bytes} of {expected} bytes ({r.skipped} skipped)")
    return dt


def registry_pull(reg: HttpProcess, repo: str, cache: Path, out: Path) -> float:
    from deltaformat import client

    os.environ["PARAMDELTA_CACHE"] = str(cache)
    t0 = time.perf_counter()
    client.pull(f"{reg.host}/{repo}:1.0", out, quiet=True)
    return time.perf_counter() - t0


def timed_preflight(reg: HttpProcess, repo: str, base: Path, expect_ok: bool) -> float:
    from deltaformat import client
    from deltaformat.errors import IncompatibleBaseError

    t0 = time.perf_counter()
    try:
        client.preflight(f"{reg.host}/{repo}:1.0", base)
        ok = True
    except IncompatibleBaseError:
        ok = False
    dt = time.perf_counter() - t0
    if ok != expect_ok:
        raise RuntimeError(f"pre-flight of {base} answered {'fits' if ok else 'does not fit'}; expected the opposite")
    return dt


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(server: HttpProcess, fn) -> tuple[float, tuple[float, float]]:  # noqa: ANN001
    """(seconds ``fn`` returned, (server CPU seconds, this process's CPU seconds) spent meanwhile)."""
    s0, c0 = process_cpu(server.proc.pid), time.process_time()
    dt = fn()
    return dt, (process_cpu(server.proc.pid) - s0, time.process_time() - c0)


@contextlib.contextmanager
def one_ssl_context():
    """The proposed client fix, applied from outside: every httpx.Client the client makes shares one
    SSL context made once (httpx builds a new one per Client, loading certifi's CA bundle, even for http://)."""
    import httpx

    import deltaformat.client as dc

    ctx = httpx.create_ssl_context()
    real = httpx.Client

    def client(*args, **kwargs):  # noqa: ANN002, ANN003
        kwargs.setdefault("verify", ctx)
        return real(*args, **kwargs)

    dc.httpx = types.SimpleNamespace(**{**vars(httpx), "Client": client})
    try:
        yield
    finally:
        dc.httpx = httpx


def client_ctor_seconds(n: int = 7) -> float:
    """Median time of ``httpx.Client()`` in this (warm) process."""
    import httpx

    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        httpx.Client().close()
        ts.append(time.perf_counter() - t0)
    return med(ts)


def cli_time(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0
