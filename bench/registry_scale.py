"""Scale-out pull benchmark: blobs from object storage via 307 redirects vs proxied through the registry.

Starts a scratch PostgreSQL 15 and a single-node Ceph RADOS Gateway (paramdelta_dev.services),
four ``paramdelta serve`` replicas on them (two with PARAMDELTA_S3_REDIRECT=1, two with 0),
uploads BLOBS blobs of BLOB_MIB MiB, then for each mode:

* 1 client pulling the blobs one after another, three times over (single-stream throughput);
* 32 concurrent clients, alternating between the mode's two replicas, each pulling
  PULLS_PER_CLIENT random blobs: aggregate throughput, latency p50/p99 per blob pull
  (request sent to last byte received), errors (any failure or digest mismatch; must be 0),
  and the CPU seconds the two replicas spent per GiB served.

Clients follow redirects the way deltaformat.client does (by hand, never sending the
Authorization header to another origin) and verify every blob's sha256.
Writes its section of BENCHMARKS.md between ``<!-- scaleout:begin -->`` and
``<!-- scaleout:end -->`` and touches nothing else there.

    python -m bench.registry_scale [--blob-mib 16] [--blobs 8] [--clients 32] [--pulls 4] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from paramdelta_dev.report import write_section
from paramdelta_dev.scaleout import Backends, Replica
from paramdelta_dev.services import start_postgres, start_s3

REPO = Path(__file__).resolve().parents[1]

MiB = 1 << 20
SECTION = "scaleout"  # its marked section of BENCHMARKS.md
NAME = "bench/scale"
REPLICAS = 2  # per mode


@dataclass
class Result:
    mode: str
    clients: int
    pulls: int
    bytes: int
    seconds: float
    latencies: list[float]
    errors: int
    replica_cpu: float

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")

    @property
    def cpu_per_gib(self) -> float:
        return self.replica_cpu / (self.bytes / (1 << 30)) if self.bytes else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pull(http: httpx.Client, base: str, digest: str, size: int) -> int:
    """GET a blob, following redirects by hand (no Authorization beyond the registry), verify it; returns bytes."""
    url = httpx.URL(f"{base}/v2/{NAME}/blobs/{digest}")
    for _ in range(5):
        with http.stream("GET", url) as resp:
            if resp.status_code in (301, 302, 303, 307, 308):
                assert resp.headers["docker-content-digest"] == digest
                url = resp.url.join(resp.headers["location"])
                continue
            resp.raise_for_status()
            h, n = hashlib.sha256(), 0
            for chunk in resp.iter_bytes(MiB):
                h.update(chunk)
                n += len(chunk)
            if n != size or "sha256:" + h.hexdigest() != digest:
                raise ValueError(f"blob {digest}: got {n} bytes, digest {h.hexdigest()}")
            return n
    raise ValueError("too many redirects")


def run(mode: str, replicas: list[Replica], blobs: list[tuple[str, int]], clients: int, pulls_each: int, seed: int) -> Result:
    latencies: list[float] = []
    errors, total = [0], [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        base = replicas[i % len(replicas)].url
        with httpx.Client(timeout=httpx.Timeout(120.0), follow_redirects=False) as http:
            for _ in range(pulls_each):
                digest, size = blobs[rnd.randrange(len(blobs))] if clients > 1 else blobs[_ % len(blobs)]
                t0 = time.perf_counter()
                try:
                    n = pull(http, base, digest, size)
                except Exception as exc:  # noqa: BLE001 - counted
                    with lock:
                        errors[0] += 1
                    print(f"  error: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    total[0] += n

    cpu0 = sum(cpu_seconds(r.proc.pid) for r in replicas)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - t0
    cpu = sum(cpu_seconds(r.proc.pid) for r in replicas) - cpu0
    return Result(mode, clients, len(latencies) + errors[0], total[0], elapsed, latencies, errors[0], cpu)


def upload(replica: Replica, token: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = httpx.post(f"{replica.url}/v2/{NAME}/blobs/uploads/", params={"digest": digest}, content=data,
                      headers={"Authorization": f"Bearer {token}"}, timeout=300)
    resp.raise_for_status()
    return digest


def section(results: list[Result], args: argparse.Namespace, startup: dict[str, float]) -> str:
    rows = "\n".join(
        f"| {r.mode} | {r.clients} | {r.pulls} | {r.bytes / MiB:,.0f} | {r.seconds:.1f} | {r.mib_s:,.0f} | "
        f"{r.pct(0.5) * 1000:,.0f} | {r.pct(0.99) * 1000:,.0f} | {r.errors} | {r.cpu_per_gib:.2f} |" for r in results)
    by = {(r.mode, r.clients): r for r in results}
    redirect, proxied = by.get(("redirect", args.clients)), by.get(("proxied", args.clients))
    ratio = f"{redirect.mib_s / proxied.mib_s:.2f}×" if redirect and proxied else "n/a"
    one_r, one_p = by.get(("redirect", 1)), by.get(("proxied", 1))
    single = (f"A single client pulls at {one_r.mib_s:,.0f} MiB/s via redirect and {one_p.mib_s:,.0f} MiB/s proxied: a redirected "
              "pull is two requests (the 307, then storage), and on one host with no network between them nothing "
              "repays that extra round trip." if one_r and one_p else "")
    cpu_ratio = (f"{proxied.cpu_per_gib / redirect.cpu_per_gib:.0f}×" if redirect and proxied and redirect.cpu_per_gib > 0
                 else "n/a")
    return f"""## Scale-out registry: pulls from object storage via redirect vs proxied (`python -m bench.registry_scale`)

{REPLICAS} `paramdelta serve` replicas per mode on one PostgreSQL 15 and one single-node Ceph RADOS Gateway
(memstore OSD), all on loopback on this machine ({os.cpu_count()} CPU cores shared with other work: load average
{startup['load']:.1f} when the runs began; Python {platform.python_version()});
{args.blobs} blobs of {args.blob_mib} MiB. *redirect*: blob GETs answer 307 to a presigned URL and the client
fetches from the gateway (PARAMDELTA_S3_REDIRECT=1, the default); *proxied*: the registry streams the bytes
from the gateway itself (PARAMDELTA_S3_REDIRECT=0). Concurrent clients alternate between the {REPLICAS} replicas and
each pulls {args.pulls} random blobs; every blob's sha256 is verified. Latency is one blob pull, request to last
byte. "Registry CPU" is the user+system time the {REPLICAS} replicas spent per GiB served.

| mode | clients | pulls | MiB | seconds | MiB/s | p50 ms | p99 ms | errors | registry CPU s/GiB |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

With {args.clients} clients, redirect gives {ratio} the throughput of proxying, and the registry spends {cpu_ratio}
less CPU per GiB: with redirects the replicas only answer the 307 (digest and size on it), the bytes flow from
object storage. Everything here shares {os.cpu_count()} cores (clients, replicas, gateway), so absolute numbers are
a floor; on separate hosts the proxied mode is further bounded by the replicas' network and CPU.
{single}
Startup: PostgreSQL {startup['pg']:.1f} s, Ceph gateway {startup['s3']:.1f} s, replicas {startup['replicas']:.1f} s.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blob-mib", type=int, default=16)
    ap.add_argument("--blobs", type=int, default=8)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pulls", type=int, default=4, help="pulls per concurrent client")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pd-scale-"))
    t = time.perf_counter()
    pg = start_postgres(work)
    s3 = start_s3(work)
    startup = {"pg": pg.startup_seconds, "s3": s3.startup_seconds}
    replicas: list[Replica] = []
    try:
        s3.make_bucket("bench")
        be = Backends(pg, s3, "bench", work)
        t = time.perf_counter()
        replicas = [Replica(be, f"redirect-{i}", PARAMDELTA_S3_PART_BYTES=str(16 * MiB)) for i in range(REPLICAS)]
        replicas += [Replica(be, f"proxied-{i}", PARAMDELTA_S3_REDIRECT="0", PARAMDELTA_S3_PART_BYTES=str(16 * MiB))
                     for i in range(REPLICAS)]
        for r in replicas:
            r.launch()
        for r in replicas:
            r.wait_ready()
        startup["replicas"] = time.perf_counter() - t
        token = be.token("bench", "push")
        rnd = random.Random(0)
        blobs = []
        for i in range(args.blobs):
            data = rnd.randbytes(args.blob_mib * MiB)
            blobs.append((upload(replicas[i % REPLICAS], token, data), len(data)))
        print(f"uploaded {args.blobs} x {args.blob_mib} MiB", file=sys.stderr)
        modes = {"redirect": replicas[:REPLICAS], "proxied": replicas[REPLICAS:]}
        results = []
        for mode, rs in modes.items():  # warm-up: connections, caches
            run(mode, rs, blobs, 4, 1, seed=99)
        load = os.getloadavg()[0]
        for clients, pulls in ((1, 3 * args.blobs), (args.clients, args.pulls)):
            for mode, rs in modes.items():
                r = run(mode, rs, blobs, clients, pulls, seed=clients)
                print(f"{mode:8s} clients={clients:3d} {r.mib_s:8.0f} MiB/s p50={r.pct(.5) * 1000:6.0f} ms "
                      f"p99={r.pct(.99) * 1000:6.0f} ms errors={r.errors} cpu/GiB={r.cpu_per_gib:.2f}", file=sys.stderr)
                results.append(r)
    finally:
        for r in replicas:
            r.stop()
        s3.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    startup["load"] = load
    text = section(results, args, startup)
    print(text)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", SECTION, text)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
