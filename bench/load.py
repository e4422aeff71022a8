"""Load with a hostile client: many well-behaved clients and one that holds uploads open.

Starts a real ``paramdelta serve`` (the embedded default: SQLite + a blob folder) on
127.0.0.1, publishes a few seed versions, measures each operation once idle (one client,
nothing else running), then runs the load:

* ``clients`` well-behaved clients (threads), started together, each doing ``rounds``
  operations from a fixed mix: push (``deltaformat.client.push``, its own version with a
  push token of its namespace), pull (``RegistryClient.resolve`` + ``fetch`` into a fresh
  cache, then ``deltaformat.verify`` and a byte comparison of manifest.json with what was
  pushed), search (``deltaformat.client.search``) and page views (``/`` and a delta's page);
* one hostile client holding ``hostile`` uploads open the whole time: each sent its PATCH
  (or monolithic POST) headers announcing 1 MiB more than it sends, a first KiB of body
  (``--hostile-bytes``), then trickles one byte every half second or stalls; it never
  finishes them;
* a monitor asking ``/healthz`` every 0.2 s.

The benchmark runs the scenario three times, each on a fresh server: without the hostile
client (for comparison), as above, then with each held upload sending 4 MiB less 1 KiB
before it stalls (just under the 4 MiB the server gathers before writing to disk), to
show what held uploads cost in server memory.

Reported: latency per operation (p50/p90/p99/max and p99 relative to the idle single-client
median of the same operation, same run), errors of the well-behaved clients (an exception,
a wrong byte, or any 5xx/429 the server's access log shows: the client retries those
silently, so they are counted from the log), whether the held uploads were still held when
the load ended, the server's peak RSS (VmHWM in /proc/PID/status). Traffic goes to
127.0.0.1 only; the run is bounded in operations and in time (``deadline``).

    python -m bench.load [--clients 64] [--rounds 5] [--hostile 8] [--no-write]

Writes its section of BENCHMARKS.md between ``<!-- load:begin -->`` and ``<!-- load:end -->``
and touches nothing else there. tests/test_load.py runs the same scenario smaller and
asserts on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import select
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

import deltaformat
from deltaformat import client
from deltaformat.cache import Cache
from deltaformat.client import RegistryClient
from paramdelta_dev.report import write_section
from paramdelta_dev.serve import RegistryServer
from registry.uploads import FLUSH_BYTES, GATHERED_CAP_BYTES

REPO = Path(__file__).resolve().parents[1]

OPS = ("push", "pull", "search", "page")
MIX = ("push", "pull", "search", "page", "pull")  # a client's rounds: this, rotated by its number
NAMESPACES = 8  # the clients' repositories spread over this many namespaces, one push token each
TRANSFER_WORKERS = 2  # parallel transfers per push/pull (the client's default is 8: 64 x 8 threads is too many here)
HELD_BYTES = 1 << 20  # what each held upload announces beyond what it sends
HOSTILE_NAMESPACES = tuple(f"hostile{k}" for k in range(6))  # the hostile client's tokens, one per namespace
TRICKLE_SECONDS = 0.5
HEALTH_EVERY = 0.2
IDLE_REPEATS = 3  # runs of each operation on the quiet server, before the load
ANYIO_THREADS = 40  # anyio's default worker-thread limit (what the held uploads are counted against)


# -- models and artifacts ---------------------------------------------------------------


@dataclass
class Models:
    """A base and a post-trained model (bf16 safetensors); artifacts are extracted from them on demand."""

    base: Path
    post: Path
    root: Path

    @classmethod
    def make(cls, root: Path, *, tensors: int, rows: int, cols: int, seed: int = 0) -> Models:
        import torch
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(seed)
        base = {f"layers.{i}.weight": (torch.randn(rows, cols, generator=g) * 0.02).to(torch.bfloat16) for i in range(tensors)}
        post = {k: (v.float() + torch.randn(v.shape, generator=g) * 2e-4).to(torch.bfloat16) for k, v in base.items()}
        for folder, state in ((root / "base", base), (root / "post", post)):
            folder.mkdir(parents=True, exist_ok=True)
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return cls(root / "base", root / "post", root)

    def artifact(self, name: str, version: str) -> Path:
        """An artifact whose manifest names ``name:version`` (a registry may insist that it matches the push)."""
        out = self.root / "artifacts" / name.replace("/", "__") / version
        deltaformat.extract(self.base, self.post, out, name=name, version=version,
                            description=f"load test delta {name}", quiet=True)
        return out


# -- the hostile client -----------------------------------------------------------------


class HeldUploads:
    """Uploads whose request headers were sent but whose body never ends: it trickles or stalls.

    Every fourth is a monolithic POST ?digest= (no session: the server holds a temp file);
    the others PATCH a session started normally. Even-numbered ones trickle a byte every
    TRICKLE_SECONDS, odd ones stall after their first KiB. ``repos`` ((name, push token)
    pairs) take them in turn: spread over several tokens, they stay under any per-token
    session quota while outnumbering the server's worker threads (anyio's default: 40).
    """

    def __init__(self, url: str, repos: list[tuple[str, str]], count: int, first_bytes: int = 1024):
        self.url, self.repos, self.count, self.first_bytes = url, repos, count, first_bytes
        self.port = urlsplit(url).port
        self.sockets: list[socket.socket] = []
        self.opened_at = 0.0
        self._stop = threading.Event()
        self._trickler: threading.Thread | None = None

    def open(self) -> HeldUploads:
        for k in range(self.count):
            self.sockets.append(self._hold(self._request_line(k)))
        self.opened_at = time.monotonic()
        self._trickler = threading.Thread(target=self._trickle, name="hostile-trickle", daemon=True)
        self._trickler.start()
        return self

    def _request_line(self, k: int) -> tuple[str, str]:
        """The request to hold open, and the token it carries."""
        name, token = self.repos[k % len(self.repos)]
        if k % 4 == 3:  # the digest names bytes it will never get
            return f"POST /v2/{name}/blobs/uploads/?digest=sha256:{'0' * 64} HTTP/1.1", token
        resp = httpx.post(f"{self.url}/v2/{name}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if resp.status_code != 202:
            raise RuntimeError(f"hostile client could not start upload {k}: {resp.status_code} {resp.text[:200]}")
        return f"PATCH {urlsplit(resp.headers['location']).path} HTTP/1.1", token

    def _hold(self, request: tuple[str, str]) -> socket.socket:
        request_line, token = request
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        announced = self.first_bytes + HELD_BYTES  # always more than it sends: the body never ends
        head = (f"{request_line}\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n")
        sock.sendall(head.encode() + b"\x00" * self.first_bytes)
        return sock

    def _trickle(self) -> None:
        while not self._stop.wait(TRICKLE_SECONDS):
            for sock in self.sockets[::2]:
                try:
                    sock.send(b"\x00")
                except OSError:
                    pass  # the server cut it: it is no longer held, which held() reports

    def held(self) -> list[bool]:
        """For each upload: True while the server has neither answered it nor closed it (nothing to read yet)."""
        readable = set(select.select(self.sockets, [], [], 0)[0])
        return [sock not in readable for sock in self.sockets]

    def close(self) -> float:
        """Let go of every upload; returns how long they were held."""
        self._stop.set()
        if self._trickler is not None:
            self._trickler.join()
        for sock in self.sockets:
            sock.close()
        return time.monotonic() - self.opened_at


# -- the well-behaved clients -----------------------------------------------------------


@dataclass
class Target:
    """The server and what the clients need to talk to it."""

    url: str
    pid: int
    tokens: dict[str, str]  # namespace -> push token
    models: Models
    scratch: Path

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass
class Published:
    name: str
    version: str
    manifest_bytes: bytes


class Client:
    """One well-behaved client: its operations, each timed and checked."""

    def __init__(self, target: Target, number: int, seeds: list[Published], artifacts: dict[str, Path]):
        self.t, self.n, self.seeds = target, number, seeds
        self.artifacts = artifacts  # "name:version" -> folder, extracted before the load (not timed)
        self.pushed: list[Published] = []
        self.pulls = 0
        self.namespace = f"load{number % NAMESPACES}"

    def push_ref(self, round_no: int) -> tuple[str, str]:
        return f"{self.namespace}/c{self.n}", f"1.{round_no}"

    def push(self, round_no: int) -> None:
        name, version = self.push_ref(round_no)
        folder = self.artifacts[f"{name}:{version}"]
        client.push(folder, f"{self.t.host}/{name}:{version}", token=self.t.tokens[self.namespace], quiet=True,
                    workers=TRANSFER_WORKERS)
        self.pushed.append(Published(name, version, (folder / "manifest.json").read_bytes()))

    def pull(self, round_no: int) -> None:
        want = self.pushed[-1] if self.pushed else self.seeds[(self.n + round_no) % len(self.seeds)]
        cache_dir = Path(tempfile.mkdtemp(prefix=f"pull-c{self.n}-", dir=self.t.scratch))
        try:  # a fresh cache: every blob comes over the wire
            with RegistryClient(self.t.url, cache=Cache(cache_dir), workers=TRANSFER_WORKERS) as c:
                digest, oci = c.resolve(want.name, want.version)
                art = c.fetch(want.name, digest, oci, quiet=True)
            deltaformat.verify(art, quiet=True)  # every blob's digest, every decoded stream
            if art.manifest_bytes != want.manifest_bytes:
                raise AssertionError(f"pulled {want.name}:{want.version} is not the manifest.json that was pushed")
            self.pulls += 1
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)

    def search(self, round_no: int) -> None:
        found = client.search("load test", registry=self.t.url).items
        if not found:
            raise AssertionError("search for 'load test' found nothing (the seeds match it)")

    def page(self, round_no: int) -> None:
        seed = self.seeds[(self.n + round_no) % len(self.seeds)]
        with httpx.Client(timeout=30) as http:
            home = http.get(self.t.url + "/", headers={"Accept": "text/html"})
            if home.status_code != 200:
                raise AssertionError(f"GET /: {home.status_code}")
            page = http.get(f"{self.t.url}/deltas/{seed.name}", headers={"Accept": "text/html"})
            if page.status_code != 200 or seed.name not in page.text:
                raise AssertionError(f"GET /deltas/{seed.name}: {page.status_code}, or the page does not name it")


def timed(latencies: dict[str, list[float]], errors: list[str], label: str, op, *args) -> None:  # noqa: ANN001
    start = time.perf_counter()
    try:
        op(*args)
    except Exception as exc:  # noqa: BLE001  (every failure of a well-behaved client is reported, one line each)
        errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return
    latencies[label.split()[0]].append(time.perf_counter() - start)


# -- the run ----------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    rounds: int
    hostile: int
    idle: dict[str, float]  # median seconds of each operation, one client, nothing else running
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    http_failures: list[str] = field(default_factory=list)  # 5xx and 429 lines of the access log during the load
    pulls_verified: int = 0
    held_at_start: list[bool] = field(default_factory=list)
    held_at_end: list[bool] = field(default_factory=list)
    held_seconds: float = 0.0
    healthz_after: int = 0
    finished: bool = False
    wall_seconds: float = 0.0
    rss_before: int = 0
    rss_peak: int = 0

    def pct(self, op: str, q: float) -> float:
        xs = sorted(self.latencies.get(op, []))
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    def table(self, calm: LoadResult | None = None) -> list[str]:
        """Latency per operation; with ``calm`` (the same load without the hostile client), its p50/p99 beside."""
        head = "| operation | count | idle (1 client) ms | p50 ms | p90 ms | p99 ms | max ms | p99 / idle |"
        rows = [head + (" p50 / p99 ms without the hostile client |" if calm else ""),
                "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if calm else "")]
        for op in (*OPS, "healthz"):
            n, idle = len(self.latencies.get(op, [])), self.idle.get(op, float("nan"))
            ms = [1000 * self.pct(op, q) for q in (0.5, 0.9, 0.99, 1.0)]
            row = (f"| {op} | {n} | {1000 * idle:.1f} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} "
                   f"| {self.pct(op, 0.99) / idle:.1f}x |")
            if calm:
                row += f" {1000 * calm.pct(op, 0.5):.1f} / {1000 * calm.pct(op, 0.99):.1f} |"
            rows.append(row)
        return rows


def vm_kib(pid: int, field_name: str) -> int:
    """A VmXXX line of /proc/PID/status, in bytes (VmHWM: the peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field_name)


_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.1" (5\d\d|429)\b')


def http_failures(log_text: str) -> list[str]:
    """Access-log lines answering 5xx or 429 (the client retries those without telling its caller)."""
    return [" ".join(m.groups()) for m in _ACCESS.finditer(log_text)]


def publish_seeds(t: Target, count: int) -> list[Published]:
    seeds = []
    for k in range(count):
        name, version = f"seed/model-{k}", "1.0"
        folder = t.models.artifact(name, version)
        client.push(folder, f"{t.host}/{name}:{version}", token=t.tokens["seed"], quiet=True)
        seeds.append(Published(name, version, (folder / "manifest.json").read_bytes()))
    return seeds


def idle_baseline(t: Target, seeds: list[Published], repeats: int = IDLE_REPEATS) -> dict[str, float]:
    """Each operation alone, ``repeats`` times: the latency a single client sees on a quiet server."""
    probe = Client(t, 0, seeds, {})
    probe.namespace = "idle"
    samples: dict[str, list[float]] = {op: [] for op in (*OPS, "healthz")}
    errors: list[str] = []
    for r in range(repeats):
        name, version = probe.push_ref(r)
        probe.artifacts[f"{name}:{version}"] = t.models.artifact(name, version)
        for op in OPS:
            timed(samples, errors, f"{op} idle", getattr(probe, op), r)
        timed(samples, errors, "healthz idle", lambda: httpx.get(t.url + "/healthz", timeout=10).raise_for_status())
    if errors:
        raise RuntimeError(f"the idle baseline failed: {errors[0]}")
    return {op: statistics.median(xs) for op, xs in samples.items()}


def run_load(t: Target, *, clients: int, rounds: int, hostile: int, log_text, deadline: float = 240.0,
             seeds: int = 4, hostile_bytes: int = 1024) -> LoadResult:  # noqa: ANN001  (log_text: () -> the server's log)
    """The whole scenario against a running server; see the module docstring."""
    seed_versions = publish_seeds(t, seeds)
    result = LoadResult(clients, rounds, hostile, idle_baseline(t, seed_versions))
    result.latencies = {op: [] for op in (*OPS, "healthz")}
    crowd = [Client(t, n, seed_versions, {}) for n in range(clients)]
    for c in crowd:  # extracted up front: the load times the registry, not extract
        for r, op in enumerate(_rounds(c.n, rounds)):
            if op == "push":
                name, version = c.push_ref(r)
                c.artifacts[f"{name}:{version}"] = t.models.artifact(name, version)
    log_mark = len(log_text())
    result.rss_before = vm_kib(t.pid, "VmRSS")

    held = HeldUploads(t.url, [(f"{ns}/uploads", t.tokens[ns]) for ns in HOSTILE_NAMESPACES], hostile, hostile_bytes).open()
    try:
        result.held_at_start = held.held()
        _crowd_run(t, crowd, rounds, result, deadline)
        result.held_at_end = held.held()
        result.healthz_after = httpx.get(t.url + "/healthz", timeout=30).status_code  # while still held
    finally:
        result.held_seconds = held.close()
    result.pulls_verified = sum(c.pulls for c in crowd)
    result.http_failures = http_failures(log_text()[log_mark:])
    result.rss_peak = vm_kib(t.pid, "VmHWM")
    return result


def _rounds(number: int, rounds: int) -> list[str]:
    k = number % len(MIX)
    mix = MIX[k:] + MIX[:k]
    return [mix[r % len(mix)] for r in range(rounds)]


def _crowd_run(t: Target, crowd: list[Client], rounds: int, result: LoadResult, deadline: float) -> None:
    start = threading.Barrier(len(crowd) + 2)  # the clients, the monitor and this thread
    done = threading.Event()

    def work(c: Client) -> None:
        start.wait()
        for r, op in enumerate(_rounds(c.n, rounds)):
            timed(result.latencies, result.errors, f"{op} client {c.n} round {r}", getattr(c, op), r)

    def monitor() -> None:
        start.wait()
        with httpx.Client(timeout=30) as http:
            while not done.wait(HEALTH_EVERY):
                timed(result.latencies, result.errors, "healthz during the load",
                      lambda: http.get(t.url + "/healthz").raise_for_status())

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in crowd]
    watcher = threading.Thread(target=monitor, daemon=True)
    for th in (*threads, watcher):
        th.start()
    t0 = time.monotonic()
    start.wait()
    for th in threads:  # bounded: a client still busy at the deadline is an error, not a hang
        th.join(max(0.0, deadline - (time.monotonic() - t0)))
    result.wall_seconds = time.monotonic() - t0
    done.set()
    watcher.join(10)
    stuck = sum(th.is_alive() for th in threads)
    result.finished = stuck == 0
    if stuck:
        result.errors.append(f"{stuck} client(s) still busy after the {deadline:.0f} s deadline")


def make_target(server, models: Models, scratch: Path) -> Target:  # noqa: ANN001  (a conftest.RegistryServer)
    namespaces = ["seed", "idle", *HOSTILE_NAMESPACES, *(f"load{k}" for k in range(NAMESPACES))]
    return Target(server.url, server.proc.pid, {ns: server.token(ns, "push") for ns in namespaces}, models, scratch)


# -- BENCHMARKS.md ------------------------------------------------------------------------


def report(r: LoadResult, calm: LoadResult | None, heavy: LoadResult | None, heavy_bytes: int, models_note: str,
           load_start: tuple, load_end: tuple, argv: str) -> str:
    lines = [
        "## Registry under load, with a hostile client holding uploads open",
        "",
        f"`python -m bench.load{argv}` ({time.strftime('%Y-%m-%d %H:%M')}; method in the script's docstring). "
        f"One `paramdelta serve` (embedded default: SQLite + blob folder) on 127.0.0.1; {os.cpu_count()} cores shared "
        f"with other work (load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end); Python "
        f"{platform.python_version()}, httpx {httpx.__version__}.",
        "",
        f"{r.clients} well-behaved clients (threads, started together) x {r.rounds} operations each, mixed "
        f"push / pull / search / page view ({models_note}); every pull into a fresh cache, verified "
        "(`deltaformat.verify`) and compared byte for byte with what was pushed. Meanwhile one hostile client "
        f"holds {r.hostile} uploads open over {len(HOSTILE_NAMESPACES)} tokens (PATCH, or every fourth a monolithic POST; "
        f"headers announcing {HELD_BYTES / 2**20:g} MiB more than it sends, a first KiB, then a byte every {TRICKLE_SECONDS:g} s "
        f"or nothing: {'more' if r.hostile > ANYIO_THREADS else 'fewer'} than anyio's {ANYIO_THREADS} worker threads); "
        f"a monitor asks `/healthz` every {HEALTH_EVERY:g} s. "
        f"*idle* = the median of {IDLE_REPEATS} runs of the same operation by one "
        "client on the quiet server, just before the load (same run). The last column is the same load on a fresh "
        "server without the hostile client, run just before.",
        "",
        *r.table(calm),
        "",
        f"- Errors of the well-behaved clients: {len(r.errors)} exceptions, {len(r.http_failures)} 5xx/429 answers "
        f"in the access log; {r.pulls_verified} pulls verified; the load took {r.wall_seconds:.1f} s "
        f"({r.clients * r.rounds / r.wall_seconds:.0f} operations/s; without the hostile client "
        f"{calm.wall_seconds:.1f} s)." if calm else "",
        *(["- p99 with the held uploads / p99 without them (single runs on a shared machine): " + ", ".join(
            f"{op} {r.pct(op, 0.99) / calm.pct(op, 0.99):.2f}" for op in (*OPS, "healthz"))
           + f". The p50s are set by {r.clients} clients and the server sharing the cores, not by the hostile client."] if calm else []),
        f"- Hostile uploads: {sum(r.held_at_start)} of {r.hostile} held when the load began, {sum(r.held_at_end)} still "
        f"held (neither answered nor closed by the server) when it ended, {r.held_seconds:.0f} s in all; `/healthz` "
        f"answered {r.healthz_after} while they were held.",
        f"- Server memory: RSS {r.rss_before / 2**20:.0f} MiB before the load, peak (VmHWM) {r.rss_peak / 2**20:.0f} MiB.",
    ]
    if heavy is not None:
        grew = (heavy.rss_peak - heavy.rss_before) / 2**20
        lines += [
            f"- The same load on a fresh server, each of the {heavy.hostile} held uploads sending "
            f"{heavy_bytes / 2**20:.2f} MiB before it stalls: RSS {heavy.rss_before / 2**20:.0f} MiB before, peak "
            f"{heavy.rss_peak / 2**20:.0f} MiB (+{grew:.0f} MiB, {grew / heavy.hostile:.1f} MiB per held upload, "
            f"against +{(r.rss_peak - r.rss_before) / 2**20:.0f} MiB above); {len(heavy.errors)} exceptions and "
            f"{len(heavy.http_failures)} 5xx/429 for the well-behaved clients, {sum(heavy.held_at_end)} of "
            f"{heavy.hostile} still held at the end. A request gathers up to {FLUSH_BYTES >> 20} MiB of body before writing "
            f"(registry.uploads FLUSH_BYTES), but all requests together at most {GATHERED_CAP_BYTES >> 20} MiB "
            "(GATHERED_CAP_BYTES): past that each writes what it holds, so stalled bodies pin a bounded amount "
            "however many there are.",
        ]
    return "\n".join(lines) + "\n"


def scenario(root: Path, a: argparse.Namespace, hostile_bytes: int, hostile: int | None = None) -> tuple[LoadResult, str]:
    """One run on a fresh server (its peak RSS is this run's alone)."""
    root.mkdir(parents=True)
    server = RegistryServer(root / "data").start()
    try:
        models = Models.make(root / "models", tensors=a.tensors, rows=a.rows, cols=a.cols)
        (root / "scratch").mkdir()
        t = make_target(server, models, root / "scratch")
        r = run_load(t, clients=a.clients, rounds=a.rounds, hostile=a.hostile if hostile is None else hostile, log_text=server.log_text,
                     hostile_bytes=hostile_bytes)
    finally:
        server.stop()
    seed = next((root / "models" / "artifacts" / "seed__model-0").glob("*"))
    blobs = [f.stat().st_size for f in (seed / "blobs").rglob("*") if f.is_file()]
    return r, f"artifacts of {len(blobs)} blobs, {sum(blobs) / len(blobs) / 2**20:.2f} MiB each"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hostile", type=int, default=48, help="uploads the hostile client holds open")
    ap.add_argument("--tensors", type=int, default=8, help="tensors in the model (one blob each)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--heavy-bytes", type=int, default=(4 << 20) - 1024,
                    help="what each held upload sends before stalling in the second run (0: no second run)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="load-"))
    os.environ["PARAMDELTA_QUIET"] = "1"
    os.environ.pop("PARAMDELTA_TOKEN", None)
    os.environ["PARAMDELTA_CACHE"] = str(work / "cache")
    try:
        calm = scenario(work / "calm", a, 1024, hostile=0)[0]
        r, note = scenario(work / "light", a, 1024)
        heavy = scenario(work / "heavy", a, a.heavy_bytes)[0] if a.heavy_bytes else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args = "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(r, calm, heavy, a.heavy_bytes, note, load_start, os.getloadavg(), args)
    print(text)
    failures = [e for x in (calm, r, heavy) if x for e in (*x.errors, *x.http_failures)]
    for e in failures[:20]:
        print("error:", e, file=sys.stderr)
    if not a.no_write:
        write_section(a.out, "load", text)
    return 0 if not failures and all(x.finished for x in (calm, r, heavy) if x) else 1


if __name__ == "__main__":
    sys.exit(main())
