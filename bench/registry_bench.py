"""The registry benchmark: push/pull throughput against static-file floors, pre-flight vs pull,
manifest GET latency under 32 concurrent clients. Real server processes on loopback.

One command; it writes its tables into BENCHMARKS.md between ``<!-- registry:begin -->``
and ``<!-- registry:end -->`` (other sections are left alone; the file is created when
absent) and the raw numbers into .bench/registry/results[-quick].json::

    python -m bench.registry_bench            # full run (about 2-3 minutes on 2 shared cores)
    python -m bench.registry_bench --quick    # smaller artifact, fewer repeats (under 1 minute)

What runs, all on 127.0.0.1 with free ports, each server its own process:

* ``paramdelta serve --data DIR --port P``: the registry on its embedded default
  (SQLite + filesystem blobs), started exactly as a user starts it.
* Two floors serving the artifact's blob files (hard links under the run folder) and
  accepting uploads:
    - ``asgi``: uvicorn (same version, same HTTP parser and event loop as the registry:
      httptools when installed, which uvicorn picks by default, else h11) with
      Starlette ``StaticFiles`` for GET, and a minimal PUT handler (raw ASGI: hash
      every body chunk with sha256, write it to a file, fsync and rename it into place in
      a worker thread, answer 201 with the digest);
    - ``threaded``: the standard library's ``http.server`` (``ThreadingHTTPServer`` +
      ``SimpleHTTPRequestHandler``, which is what ``python -m http.server`` runs, made
      HTTP/1.1 for keep-alive) with the same PUT handler (hash, write, fsync, rename).
  The floors do the least a server must do to serve or durably accept the same bytes
  (the registry also fsyncs each blob before it commits it). The ratio the target
  (>= 0.8) is judged on is against the FASTER of the two floors, per repeat.
* The artifact: extracted with ``deltaformat.extract`` from two random bf16
  safetensors folders in a Llama layout (base N(0, 0.02); post = bf16(base + N(0,
  0.006))), generated once under .bench/registry/ (git-ignored) and reused. Its blobs
  are ~4-6 MB each (one per 4 Mi-element chunk), so every blob goes up in one request
  (the client chunks only blobs over 32 MiB).

Measured:

1. Push: ``deltaformat.client.push`` (what ``paramdelta push`` calls) of the artifact into
   a repository that holds none of its blobs (a new repository name per repeat: the
   registry has none of them, so every byte is uploaded, verified, fsynced and
   committed). Floor: the same blob files PUT to each floor from 8 threads (the
   client's TRANSFER_WORKERS), one request per blob, through one httpx.Client.
   Pull: ``deltaformat.client.pull`` into an empty cache (a new PARAMDELTA_CACHE per
   repeat) and an output folder. Floor: the same blobs GET from each floor from 8
   threads, streamed to a file while hashing it, digest checked, renamed into place
   (what any verifying downloader does, and what the client does).
   MiB/s = artifact bytes (blobs + manifest.json) / wall time, each side's httpx.Client
   made inside the timing. Repeats interleave the three servers in a rotating order;
   ratios are taken within a repeat, medians reported. Also the CPU seconds per GiB of
   the serving process (/proc) and of this process (the client), which other jobs on
   the machine disturb less than wall time; and (full run) one ``paramdelta push`` and
   ``paramdelta pull`` through the CLI, a new process each, imports included.
2. Pre-flight: ``deltaformat.client.preflight(ref, base)`` (what ``paramdelta apply
   NS/NAME:V --base B`` runs before any blob: GET manifest.json from /api/v1, read the
   base's safetensors headers, compare names/shapes/dtypes), on the right base and on a
   wrong one (refused with IncompatibleBaseError), against the full pull time. And the
   same pre-flight (and a pull) with every httpx.Client the client makes sharing one SSL
   context (``one_ssl_context``: a proposed client fix, applied from outside), interleaved.
3. Manifest GETs: 32 concurrent clients (httpx.AsyncClient each with its own keep-alive
   connection, one asyncio loop in this process) loop GETs for a fixed time after a
   warm-up: the OCI manifest by tag (/v2/NS/NAME/manifests/V, what pull resolves) and
   manifest.json (/api/v1/deltas/NS/NAME/versions/V/manifest, what pre-flight fetches);
   and, as the ceiling of the load generator + server stack, the same OCI manifest
   bytes as a static file from the ``asgi`` floor. Every answer's status and body
   digest are checked; anything else counts as an error. Latency is measured in the
   client, so it includes the client's own event-loop queueing.

Timings are warm page cache. The machine is shared and noisy: compare ratios, not
absolute MiB/s, across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from paramdelta_dev.llama import llama_config, llama_shapes
from paramdelta_dev.ports import free_port
from paramdelta_dev.report import write_section

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "registry"
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "registry"  # its marked section of BENCHMARKS.md
MiB = 1 << 20
WORKERS = 8  # deltaformat.client.TRANSFER_WORKERS; the floors use the same
CONCURRENCY = 32
NS = "bench"

# Artifact shapes: a Llama layout; (layers, vocab).
FULL_MODEL = dict(layers=6, vocab=32000, hidden=1024, ffn=2816)
QUICK_MODEL = dict(layers=2, vocab=16000, hidden=1024, ffn=2816)
REL = 0.3  # post = base + N(0, 0.02 * REL)


# ---------------------------------------------------------------------------------------
# floors (run as child processes of this script: --floor asgi|threaded DIR PORT SINK)
# ---------------------------------------------------------------------------------------


def _sink_commit(tmp: Path, sink: Path, hexdigest: str, f) -> None:  # noqa: ANN001
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, sink / hexdigest)


def floor_asgi(directory: str, port: int, sink: str) -> None:
    import anyio.to_thread
    import uvicorn
    from starlette.staticfiles import StaticFiles

    static = StaticFiles(directory=directory)
    sink_dir = Path(sink)

    async def app(scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["method"] != "PUT":
            return await static(scope, receive, send)
        sha, tmp = hashlib.sha256(), sink_dir / f".{uuid.uuid4().hex}"
        f = open(tmp, "wb")
        while True:
            msg = await receive()
            body = msg.get("body", b"")
            sha.update(body)
            f.write(body)
            if not msg.get("more_body"):
                break
        digest = sha.hexdigest()
        await anyio.to_thread.run_sync(_sink_commit, tmp, sink_dir, digest, f)
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"docker-content-digest", b"sha256:" + digest.encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", timeout_keep_alive=30, server_header=False)


def floor_threaded(directory: str, port: int, sink: str) -> None:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    sink_dir = Path(sink)

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the other servers

        def do_PUT(self) -> None:  # noqa: N802
            left = int(self.headers["Content-Length"])
            sha, tmp = hashlib.sha256(), sink_dir / f".{uuid.uuid4().hex}"
            f = open(tmp, "wb")
            while left:
                data = self.rfile.read(min(left, MiB))
                if not data:
                    break
                sha.update(data)
                f.write(data)
                left -= len(data)
            digest = sha.hexdigest()
            _sink_commit(tmp, sink_dir, digest, f)
            self.send_response(201)
            self.send_header("Docker-Content-Digest", "sha256:" + digest)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=directory)).serve_forever()


# ---------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------


class Server:
    """A child process answering HTTP on 127.0.0.1:port; its output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, probe: str = "/", env: dict | None = None):
        self.name, self.cmd, self.port, self.log, self.probe = name, cmd, port, log, probe
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Server:
        import httpx

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            try:
                httpx.get(self.url + self.probe, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout}s: see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# the artifact
# ---------------------------------------------------------------------------------------


def save_model(folder: Path, tensors: dict, cfg: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))


def ensure_artifact(quick: bool) -> tuple[Path, Path, Path, float]:
    """(base, wrong base, artifact) folders, made once and reused; and the seconds spent making them."""
    import torch

    import deltaformat

    shape = QUICK_MODEL if quick else FULL_MODEL
    key = f"L{shape['layers']}-V{shape['vocab']}-H{shape['hidden']}-rel{REL}"
    root = WORK / key
    base, post, wrong, art = root / "base", root / "post", root / "wrong-base", root / "artifact"
    if (art / "manifest.json.sha256").exists() and (wrong / "config.json").exists():
        return base, wrong, art, 0.0
    t0 = time.perf_counter()
    print(f"making the synthetic models and artifact under {root} (once) ...", file=sys.stderr)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["hidden"],
           "intermediate_size": shape["ffn"], "num_hidden_layers": shape["layers"], "vocab_size": shape["vocab"],
           "torch_dtype": "bfloat16"}
    g_base, g_post = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    b_sd, p_sd = {}, {}
    layout = llama_config(hidden=shape["hidden"], intermediate=shape["ffn"], layers=shape["layers"], vocab=shape["vocab"],
                          heads=shape["hidden"] // 64)
    for name, s in llama_shapes(layout):
        if len(s) == 1:
            b = torch.ones(s)
            p = b + torch.randn(s, generator=g_post) * 0.01
        else:
            b = torch.randn(s, generator=g_base) * 0.02
            p = b + torch.randn(s, generator=g_post) * (0.02 * REL)
        b_sd[name], p_sd[name] = b.to(torch.bfloat16), p.to(torch.bfloat16)
    save_model(base, b_sd, cfg)
    save_model(post, p_sd, cfg)
    # A base the delta does not fit: one layer fewer, and a different vocabulary size.
    wrong_sd = {n: t[:-8].clone() if n.endswith(("embed_tokens.weight", "lm_head.weight")) else t
                for n, t in b_sd.items() if f"layers.{shape['layers'] - 1}." not in n}
    save_model(wrong, wrong_sd, {**cfg, "num_hidden_layers": shape["layers"] - 1, "vocab_size": shape["vocab"] - 8})
    del b_sd, p_sd, wrong_sd
    deltaformat.extract(base, post, art, name=f"{NS}/synthetic", version="1.0", force=True, quiet=True,
                        description="synthetic bf16 stand-in for the registry benchmark")
    shutil.rmtree(post)  # only base (for pre-flight) and the artifact are needed from now on
    return base, wrong, art, time.perf_counter() - t0


@dataclass
class Blob:
    digest: str
    size: int
    path: Path

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass
class Art:
    folder: Path
    blobs: list[Blob]  # manifest.json first, then the layers: exactly what push uploads
    oci_bytes: bytes
    manifest_bytes: bytes
    params: int

    @property
    def total(self) -> int:
        return sum(b.size for b in self.blobs)


def load_art(folder: Path) -> Art:
    from deltaformat.artifact import MANIFEST_FILE, blob_path, open_artifact
    from deltaformat.oci import build_oci_manifest, parse_oci_manifest, sha256_digest

    a = open_artifact(folder)
    oci = build_oci_manifest(a.manifest, a.manifest_bytes)
    blobs = [Blob(sha256_digest(a.manifest_bytes), len(a.manifest_bytes), folder / MANIFEST_FILE)]
    blobs += [Blob(d.digest, d.size, blob_path(a.blob_dir, d.digest)) for d in parse_oci_manifest(oci).layers]
    return Art(folder, blobs, oci, a.manifest_bytes, a.manifest.summary()["post_parameters"])


# ---------------------------------------------------------------------------------------
# transfers
# ---------------------------------------------------------------------------------------


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


def registry_push(reg: Server, art: Art, repo: str, token: str) -> float:
    from deltaformat import client

    t0 = time.perf_counter()
    r = client.push(art.folder, f"{reg.host}/{repo}:1.0", token=token, quiet=True)
    dt = time.perf_counter() - t0
    if r.uploaded_bytes != art.total or r.skipped:
        raise RuntimeError(f"push of {repo} uploaded {r.uploaded_bytes} of {art.total} bytes ({r.skipped} skipped)")
    return dt


def registry_pull(reg: Server, repo: str, cache: Path, out: Path) -> float:
    from deltaformat import client

    os.environ["PARAMDELTA_CACHE"] = str(cache)
    t0 = time.perf_counter()
    client.pull(f"{reg.host}/{repo}:1.0", out, quiet=True)
    return time.perf_counter() - t0


def timed_preflight(reg: Server, repo: str, base: Path, expect_ok: bool) -> float:
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


def measured(server: Server, fn) -> tuple[float, tuple[float, float]]:  # noqa: ANN001
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


# ---------------------------------------------------------------------------------------
# manifest GETs under concurrency
# ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    def row(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "rps": self.requests / self.seconds if self.seconds else 0.0,
                "p50_ms": self.pct(0.50), "p90_ms": self.pct(0.90), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0)}


def manifest_load(url: str, expect_digest: str, clients: int, seconds: float, warmup: float) -> LoadResult:
    """``clients`` concurrent keep-alive clients GET ``url`` in a loop; only the window after ``warmup`` counts."""
    import httpx

    res = LoadResult()

    async def one(start: float, stop: float) -> None:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as c:
            while True:
                t = time.perf_counter()
                if t >= stop:
                    return
                try:
                    r = await c.get(url)
                    good = r.status_code == 200 and "sha256:" + hashlib.sha256(r.content).hexdigest() == expect_digest
                except httpx.HTTPError:
                    good = False
                t2 = time.perf_counter()
                if t >= start:
                    res.requests += 1
                    res.errors += not good
                    res.latencies.append(t2 - t)

    async def main() -> None:
        start = time.perf_counter() + warmup
        stop = start + seconds
        await asyncio.gather(*(one(start, stop) for _ in range(clients)))
        res.seconds = seconds

    asyncio.run(main())
    return res


# ---------------------------------------------------------------------------------------
# machine info and report
# ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    fs = "?"
    try:
        fs = subprocess.run(["df", "-T", str(WORK)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    except (OSError, IndexError):
        pass
    versions = {}
    for p in ("httpx", "httpcore", "h11", "httptools", "uvicorn", "starlette", "fastapi", "SQLAlchemy", "torch"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "memory": mem,
            "kernel": platform.release(), "python": platform.python_version(), "fs": fs, "packages": versions,
            "loadavg_start": os.getloadavg()}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(r: dict) -> str:
    m, a = r["machine"], r["artifact"]
    L = ["## Registry: transfer throughput, pre-flight, manifest latency", "",
         f"`python -m bench.registry_bench{' --quick' if r['quick'] else ''}` "
         f"({'quick' if r['quick'] else 'full'} run, {r['when']}, {r['wall_s']:.0f} s; raw numbers in "
         f"`.bench/registry/{r['json_name']}`). Method in the script's docstring.", "",
         f"Machine: {m['cpu']}, {m['usable_cores']} cores usable (shared with other jobs: load average "
         f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end), {m['memory']} RAM, {m['fs']} "
         f"filesystem, Linux {m['kernel']}, Python {m['python']}; "
         + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".", "",
         f"Artifact: synthetic bf16 Llama-layout delta, {a['params'] / 1e6:.0f} M parameters, "
         f"{a['bytes'] / MiB:.1f} MiB in {a['blobs']} blobs (manifest.json {a['manifest_bytes'] / 1024:.0f} KiB, "
         f"largest blob {a['largest'] / MiB:.1f} MiB). All servers on 127.0.0.1, warm page cache, "
         f"{WORKERS} parallel transfers everywhere; {r['repeats']} interleaved repeats, medians.", ""]
    t = r["transfer"]
    L += ["### Push and pull throughput (target: >= 0.8 of the faster floor)", "",
          "| direction | registry MiB/s | floor `asgi` MiB/s | floor `threaded` MiB/s | ratio to `asgi` | ratio to `threaded` "
          "| **ratio to faster floor** |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for d in ("push", "pull"):
        x = t[d]
        L.append(f"| {d} | {x['registry_mibs']:.0f} | {x['asgi_mibs']:.0f} | {x['threaded_mibs']:.0f} | "
                 f"{x['ratio_asgi']:.2f} | {x['ratio_threaded']:.2f} | **{x['ratio_best']:.2f}** "
                 f"({'meets' if x['ratio_best'] >= 0.8 else 'misses'} 0.8; per repeat "
                 f"{', '.join(f'{v:.2f}' for v in x['ratio_best_all'])}) |")
    L += ["", "CPU seconds per GiB moved (median; server = the serving process, client = this process: the "
          "paramdelta client or the floor's client). Less sensitive than MiB/s to other jobs on a shared machine:", "",
          "| direction | registry server | `asgi` server | `threaded` server | paramdelta client | floor client (`asgi`) |",
          "|---|---:|---:|---:|---:|---:|"]
    for d in ("push", "pull"):
        sc, cc = t[d]["server_cpu_s_per_gib"], t[d]["client_cpu_s_per_gib"]
        L.append(f"| {d} | {sc['registry']:.2f} | {sc['asgi']:.2f} | {sc['threaded']:.2f} | {cc['registry']:.2f} | {cc['asgi']:.2f} |")
    L += ["", "Floors: `asgi` = uvicorn + Starlette StaticFiles (GET) + a raw-ASGI PUT that hashes, writes, "
          "fsyncs, renames; `threaded` = stdlib ThreadingHTTPServer/SimpleHTTPRequestHandler (GET) + the same PUT. "
          "The floor clients use the same httpx version and thread count as the paramdelta client and do the same "
          "client-side work (downloads: stream to a file while hashing, check the digest; uploads: read the blob file, "
          "one PUT per blob). Push also pays one request asking which blobs the registry has (`blobs/_present`) and "
          "the manifest PUT; pull also pays the tag resolve, "
          "the OCI manifest and the output folder's hard links.", ""]
    if r.get("cli"):
        c = r["cli"]
        L += [f"Through the CLI (one run each, a new Python process, imports included): `paramdelta push` "
              f"{c['push_s']:.2f} s, `paramdelta pull` {c['pull_s']:.2f} s, against {t['push']['registry_s']:.2f} s and "
              f"{t['pull']['registry_s']:.2f} s for the library calls above; `python -c 'import deltaformat.cli, "
              f"deltaformat.client'` alone takes {c['import_s']:.2f} s"
              + (" (it imports torch)." if c.get("import_loads_torch") else "."), ""]
    p = r["preflight"]
    L += ["### Pre-flight from the manifest alone vs a full pull", "",
          "| what | median time | bytes fetched | vs full pull |", "|---|---:|---:|---:|",
          f"| full pull (`client.pull`, empty cache) | {t['pull']['registry_s'] * 1e3:.0f} ms | {a['bytes'] / MiB:.1f} MiB | 1 |",
          f"| pre-flight, fitting base (`client.preflight`) | {p['ok_s'] * 1e3:.1f} ms | {a['manifest_bytes'] / 1024:.0f} KiB | "
          f"{p['ok_s'] / t['pull']['registry_s']:.4f} ({t['pull']['registry_s'] / p['ok_s']:.0f}x faster) |",
          f"| pre-flight, wrong base (refused) | {p['bad_s'] * 1e3:.1f} ms | {a['manifest_bytes'] / 1024:.0f} KiB | "
          f"{p['bad_s'] / t['pull']['registry_s']:.4f} ({t['pull']['registry_s'] / p['bad_s']:.0f}x faster) |", "",
          f"Pre-flight = a new client, GET manifest.json from `/api/v1/deltas/NS/NAME/versions/V/manifest`, parse it, "
          f"read the base's safetensors headers, compare {p['tensors']} tensors' names, shapes and dtypes "
          f"({r['preflight_repeats']} repeats each).", "",
          "A cheap client fix, measured in the same run (applied from outside by the benchmark; the client code is "
          "unchanged): `httpx.Client()` builds a new SSL context (loading certifi's CA bundle) every time, even for "
          f"http:// registries, which takes {p['client_ctor_s'] * 1e3:.0f} ms here; `deltaformat.client` makes one "
          "client per call. Sharing one context per process (`verify=` a context made once):", "",
          "| call | as it is | one SSL context per process | saved |", "|---|---:|---:|---:|",
          f"| `client.preflight` (fitting base) | {p['ok_s'] * 1e3:.1f} ms | {p['ok_one_ctx_s'] * 1e3:.1f} ms | "
          f"{(p['ok_s'] - p['ok_one_ctx_s']) * 1e3:.0f} ms ({p['ok_s'] / p['ok_one_ctx_s']:.1f}x) |",
          f"| `client.pull` (empty cache; per repeat {', '.join(f'{x * 1e3:.0f}' for x in p['pull_now_all'])} vs "
          f"{', '.join(f'{x * 1e3:.0f}' for x in p['pull_one_ctx_all'])} ms) | {p['pull_now_s'] * 1e3:.0f} ms | "
          f"{p['pull_one_ctx_s'] * 1e3:.0f} ms | {(p['pull_now_s'] - p['pull_one_ctx_s']) * 1e3:.0f} ms |", "",
          "The saving is one context per client made after the first in a process: a library caller, and "
          "`paramdelta apply NS/NAME:V` (pre-flight, then the pull: two clients), gain it; a one-shot "
          "`paramdelta pull` makes one client and gains nothing. On a whole pull it is within this machine's noise.", ""]
    L += [f"### Manifest GET under {CONCURRENCY} concurrent clients", "",
          "| endpoint | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, x in r["manifest_load"].items():
        L.append(f"| {label} | {x['requests']} | {x['errors']} | {x['rps']:.0f} | {x['p50_ms']:.1f} | {x['p90_ms']:.1f} | "
                 f"{x['p99_ms']:.1f} | {x['max_ms']:.1f} |")
    L += ["", f"{CONCURRENCY} httpx.AsyncClient instances (one keep-alive connection each) in one asyncio loop, "
          f"{r['load_seconds']:.0f} s measured after a {r['load_warmup']:.0f} s warm-up per endpoint; every body's digest "
          "checked. The static row is the same OCI manifest bytes from the `asgi` floor: the ceiling of this load "
          "generator and server stack on this machine. Latency is taken in the client and includes its own "
          "event-loop queueing.", ""]
    if r.get("notes"):
        L += ["Observations:", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(L).rstrip() + "\n"


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------


def run(quick: bool) -> dict:
    t_start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    base, wrong, art_dir, made_s = ensure_artifact(quick)
    art = load_art(art_dir)
    repeats = 3 if quick else 5
    pre_repeats = 5 if quick else 9
    load_s, warm_s = (3.0, 1.0) if quick else (8.0, 2.0)

    run_dir = WORK / ("run-quick" if quick else "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "static" / "blobs").mkdir(parents=True)
    for b in art.blobs:  # the floors serve the very same files (hard links)
        os.link(b.path, run_dir / "static" / "blobs" / b.hex)
    (run_dir / "static" / "oci-manifest.json").write_bytes(art.oci_bytes)
    py, me = sys.executable, str(Path(__file__).resolve())
    results: dict = {"quick": quick, "when": time.strftime("%Y-%m-%d %H:%M"), "repeats": repeats,
                     "preflight_repeats": pre_repeats, "load_seconds": load_s, "load_warmup": warm_s,
                     "artifact_made_s": made_s}
    os.environ["PARAMDELTA_QUIET"] = "1"
    for var in ("PARAMDELTA_REGISTRY", "PARAMDELTA_TOKEN", "PARAMDELTA_OFFLINE"):
        os.environ.pop(var, None)

    with ExitStack() as stack:
        servers = {}
        for name in ("asgi", "threaded"):
            sink = run_dir / f"sink-{name}"
            sink.mkdir()
            port = free_port()
            servers[name] = Server(name, [py, me, "--floor", name, str(run_dir / "static"), str(port), str(sink)], port,
                                   run_dir / f"{name}.log", probe="/oci-manifest.json", env=clean_env())
        port = free_port()
        servers["registry"] = Server("registry", [py, "-m", "deltaformat.cli", "serve", "--data", str(run_dir / "registry-data"),
                                                  "--port", str(port)], port, run_dir / "registry.log", probe="/healthz",
                                     env=clean_env())
        for s in servers.values():
            s.start()
            stack.callback(s.stop)
        reg = servers["registry"]
        token = subprocess.run([py, "-m", "deltaformat.cli", "token", "create", NS, "--scope", "push", "--data",
                                str(run_dir / "registry-data")], check=True, capture_output=True, text=True,
                               env=clean_env(), cwd=ROOT).stdout.split()[-1]

        # Warm-up: one of each (connections, imports, page cache, SQLite), not counted.
        registry_push(reg, art, f"{NS}/warmup", token)
        registry_pull(reg, f"{NS}/warmup", run_dir / "cache-warm", run_dir / "out-warm")
        for name in ("asgi", "threaded"):
            floor_upload(servers[name].url, art)
            floor_download(servers[name].url, art, run_dir / f"dl-warm-{name}")

        times: dict[str, dict[str, list[float]]] = {d: {"registry": [], "asgi": [], "threaded": []} for d in ("push", "pull")}
        cpu: dict[str, dict[str, list[tuple[float, float]]]] = {d: {k: [] for k in times[d]} for d in times}
        order = ["registry", "asgi", "threaded"]
        for i in range(repeats):
            print(f"transfer repeat {i + 1}/{repeats} ...", file=sys.stderr)
            rot = order[i % 3:] + order[:i % 3]
            for who in rot:  # push / upload
                if who == "registry":
                    dt, c = measured(reg, lambda i=i: registry_push(reg, art, f"{NS}/push-{i}", token))
                else:
                    dt, c = measured(servers[who], lambda who=who: floor_upload(servers[who].url, art))
                times["push"][who].append(dt)
                cpu["push"][who].append(c)
            for who in reversed(rot):  # pull / download
                cache, out, dl = run_dir / f"cache-{i}", run_dir / f"out-{i}", run_dir / f"dl-{who}-{i}"
                if who == "registry":
                    dt, c = measured(reg, lambda i=i, cache=cache, out=out: registry_pull(reg, f"{NS}/push-{i}", cache, out))
                else:
                    dt, c = measured(servers[who], lambda who=who, dl=dl: floor_download(servers[who].url, art, dl))
                for junk in (cache, out, dl):
                    shutil.rmtree(junk, ignore_errors=True)
                times["pull"][who].append(dt)
                cpu["pull"][who].append(c)

        transfer = {}
        gib = art.total / (1 << 30)
        for d, tt in times.items():
            ratio_a = [tt["asgi"][i] / tt["registry"][i] for i in range(repeats)]
            ratio_t = [tt["threaded"][i] / tt["registry"][i] for i in range(repeats)]
            ratio_best = [min(tt["asgi"][i], tt["threaded"][i]) / tt["registry"][i] for i in range(repeats)]
            transfer[d] = {
                "registry_s": med(tt["registry"]), "asgi_s": med(tt["asgi"]), "threaded_s": med(tt["threaded"]),
                "registry_mibs": art.total / MiB / med(tt["registry"]), "asgi_mibs": art.total / MiB / med(tt["asgi"]),
                "threaded_mibs": art.total / MiB / med(tt["threaded"]),
                "ratio_asgi": med(ratio_a), "ratio_threaded": med(ratio_t), "ratio_best": med(ratio_best),
                "ratio_best_all": ratio_best, "raw_s": tt,
                "server_cpu_s_per_gib": {k: med([c[0] for c in v]) / gib for k, v in cpu[d].items()},
                "client_cpu_s_per_gib": {k: med([c[1] for c in v]) / gib for k, v in cpu[d].items()},
            }
        results["transfer"] = transfer

        # Pre-flight: interleaved fitting / wrong base (the pull times come from above).
        ok_t, bad_t, ok_ctx, pull_now, pull_ctx = [], [], [], [], []
        repo = f"{NS}/push-0"
        timed_preflight(reg, repo, base, True)  # warm the header reads
        for _ in range(pre_repeats):
            ok_t.append(timed_preflight(reg, repo, base, True))
            bad_t.append(timed_preflight(reg, repo, wrong, False))
            with one_ssl_context():
                ok_ctx.append(timed_preflight(reg, repo, base, True))
        # The same cheap client-side fix on a whole pull (interleaved with the client as it is).
        for i in range(repeats):
            for variant, sink in ((False, pull_now), (True, pull_ctx))[:: 1 if i % 2 == 0 else -1]:
                cache, out = run_dir / f"cache-ssl-{i}-{variant}", run_dir / f"out-ssl-{i}-{variant}"
                with one_ssl_context() if variant else ExitStack():
                    sink.append(registry_pull(reg, repo, cache, out))
                shutil.rmtree(cache)
                shutil.rmtree(out)
        from deltaformat.manifest import parse_manifest
        results["preflight"] = {"ok_s": med(ok_t), "bad_s": med(bad_t), "ok_all": ok_t, "bad_all": bad_t,
                                "tensors": len(parse_manifest(art.manifest_bytes).tensors),
                                "ok_one_ctx_s": med(ok_ctx), "ok_one_ctx_all": ok_ctx,
                                "pull_now_s": med(pull_now), "pull_one_ctx_s": med(pull_ctx),
                                "pull_now_all": pull_now, "pull_one_ctx_all": pull_ctx,
                                "client_ctor_s": client_ctor_seconds()}

        # The CLI, once each (full run only): interpreter start and imports included.
        if not quick:
            env = clean_env(PARAMDELTA_CACHE=str(run_dir / "cache-cli"), PARAMDELTA_QUIET="1")
            cli_push = cli_time(["push", str(art.folder), f"{reg.host}/{NS}/cli:1.0", "--token", token, "-q"], env)
            cli_pull = cli_time(["pull", f"{reg.host}/{NS}/cli:1.0", "--out", str(run_dir / "out-cli"), "-q"], env)
            t0 = time.perf_counter()
            torch_loaded = subprocess.run([py, "-c", "import sys, deltaformat.cli, deltaformat.client; print('torch' in sys.modules)"],
                                          check=True, env=env, cwd=ROOT, capture_output=True, text=True).stdout.strip() == "True"
            results["cli"] = {"push_s": cli_push, "pull_s": cli_pull, "import_s": time.perf_counter() - t0,
                              "import_loads_torch": torch_loaded}

        # Manifest GETs under concurrency.
        from deltaformat.oci import sha256_digest
        oci_digest, mj_digest = sha256_digest(art.oci_bytes), sha256_digest(art.manifest_bytes)
        loads = {
            f"registry `/v2/{repo}/manifests/1.0` (OCI manifest by tag)": (f"{reg.url}/v2/{repo}/manifests/1.0", oci_digest),
            f"registry `/api/v1/deltas/{repo}/versions/1.0/manifest` (manifest.json)":
                (f"{reg.url}/api/v1/deltas/{repo}/versions/1.0/manifest", mj_digest),
            "static floor `asgi`, the same OCI manifest bytes": (f"{servers['asgi'].url}/oci-manifest.json", oci_digest),
        }
        results["manifest_load"] = {}
        for label, (url, digest) in loads.items():
            print(f"manifest load: {label} ...", file=sys.stderr)
            results["manifest_load"][label] = manifest_load(url, digest, CONCURRENCY, load_s, warm_s).row()

    # Keep the logs and the registry's database; drop the bytes.
    for junk in ("registry-data/blobs", "sink-asgi", "sink-threaded", "static", "cache-warm", "out-warm", "dl-warm-asgi",
                 "dl-warm-threaded", "cache-cli", "out-cli"):
        shutil.rmtree(run_dir / junk, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()
    sizes = [b.size for b in art.blobs]
    results["machine"] = machine
    results["artifact"] = {"params": art.params, "bytes": art.total, "blobs": len(art.blobs),
                           "manifest_bytes": len(art.manifest_bytes), "largest": max(sizes)}
    results["wall_s"] = time.perf_counter() - t_start - made_s
    results["json_name"] = "results-quick.json" if quick else "results.json"
    results["notes"] = observations(results)
    (WORK / results["json_name"]).write_text(json.dumps(results, indent=1))
    return results


def observations(r: dict) -> list[str]:
    """What the numbers say, computed from them (the reply and commit message discuss them further)."""
    t, p, ml = r["transfer"], r["preflight"], r["manifest_load"]
    notes = []
    for d in ("push", "pull"):
        x, sc = t[d], t[d]["server_cpu_s_per_gib"]
        faster = "asgi" if x["asgi_s"] <= x["threaded_s"] else "threaded"
        verdict = "misses" if x["ratio_best"] < 0.8 else \
            "meets" if min(x["ratio_best_all"]) >= 0.8 else "meets in the median, not in every repeat,"
        notes.append(f"{d}: {x['registry_mibs']:.0f} MiB/s, {x['ratio_best']:.2f} of the faster floor (`{faster}`): {verdict} "
                     f"the 0.8 target (per-repeat ratios {min(x['ratio_best_all']):.2f}-{max(x['ratio_best_all']):.2f}). "
                     f"Server CPU per GiB: registry {sc['registry']:.2f} s, {sc['registry'] / sc['asgi']:.1f}x the `asgi` floor's "
                     f"and {sc['registry'] / sc['threaded']:.1f}x the `threaded` floor's; client CPU per GiB: paramdelta "
                     f"{x['client_cpu_s_per_gib']['registry']:.2f} s, floor client {x['client_cpu_s_per_gib']['asgi']:.2f} s.")
    rows = list(ml.values())
    notes.append(f"Manifest GETs at {CONCURRENCY} concurrent clients: {sum(x['errors'] for x in rows)} errors in "
                 f"{sum(x['requests'] for x in rows)} requests; the registry serves {rows[0]['rps']:.0f} req/s by tag "
                 f"({rows[0]['rps'] / rows[2]['rps']:.2f} of the static ceiling), p50 {rows[0]['p50_ms']:.0f} ms, "
                 f"p99 {rows[0]['p99_ms']:.0f} ms.")
    notes.append(f"Pre-flight answers in {p['ok_s'] * 1e3:.0f} ms ({p['bad_s'] * 1e3:.0f} ms to refuse a wrong base) "
                 f"where the full pull takes {t['pull']['registry_s'] * 1e3:.0f} ms "
                 f"({t['pull']['registry_s'] / p['ok_s']:.0f}x); sharing one SSL context per process takes it to "
                 f"{p['ok_one_ctx_s'] * 1e3:.0f} ms (see above).")
    if r.get("cli"):
        c = r["cli"]
        notes.append(f"The CLI adds a new process's start-up: `paramdelta pull` took {c['pull_s']:.1f} s where the library "
                     f"call takes {t['pull']['registry_s']:.1f} s; importing `deltaformat.cli` + `deltaformat.client` alone "
                     f"takes {c['import_s']:.1f} s and " + ("loads torch, which push/pull/search never use "
                     "(deltaformat/__init__.py imports apply/extract eagerly, and deltaformat/dtypes.py imports torch at "
                     "module level, reached through artifact.py)." if c.get("import_loads_torch") else "does not load torch."))
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller artifact, fewer repeats (about 1 minute)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", metavar="FILE", help="only render a results JSON into BENCHMARKS.md")
    ap.add_argument("--floor", nargs=4, metavar=("KIND", "DIR", "PORT", "SINK"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.floor:
        kind, directory, port, sink = a.floor
        {"asgi": floor_asgi, "threaded": floor_threaded}[kind](directory, int(port), sink)
        return 0
    r = json.loads(Path(a.from_json).read_text()) if a.from_json else run(a.quick)
    text = report(r)
    print(text)
    if not a.no_write:
        write_section(BENCHMARKS, SECTION, text)
        print(f"wrote the registry section of {BENCHMARKS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
