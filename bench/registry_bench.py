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
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bench.registry_perf.artifact import ensure_artifact, load_art
from bench.registry_perf.config import BENCHMARKS, CONCURRENCY, NS, ROOT, WORK, MiB
from bench.registry_perf.latency import manifest_load
from bench.registry_perf.report import med, observations, report
from bench.registry_perf.transfers import (
    cli_time,
    client_ctor_seconds,
    floor_download,
    floor_upload,
    measured,
    one_ssl_context,
    registry_pull,
    registry_push,
    timed_preflight,
)
from paramdelta_dev.machine import describe
from paramdelta_dev.ports import free_port
from paramdelta_dev.renamed import renamed
from paramdelta_dev.report import write_section
from paramdelta_dev.serve import HttpProcess, ServeProcess, clean_env

SECTION = "registry"  # its marked section of BENCHMARKS.md
PACKAGES = ("httpx", "httpcore", "h11", "httptools", "uvicorn", "starlette", "fastapi", "SQLAlchemy", "torch")


def machine_info() -> dict:
    """paramdelta_dev.machine's description under the keys results JSON files have always used."""
    m = describe(PACKAGES, folder=WORK)
    return {"cpu": m["cpu"], "cores": m["cores"], "usable_cores": m["usable_cores"], "memory": f"{m['ram_gib']:.0f} GiB",
            "kernel": m["kernel"], "python": m["python"], "fs": m["fs"],
            "packages": {p: ("-" if v == "absent" else v) for p, v in m["packages"].items()}, "loadavg_start": m["load_start"]}


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
    py = sys.executable
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
            servers[name] = HttpProcess(name, run_dir / f"{name}.log", clean_env(), port, probe="/oci-manifest.json", cwd=ROOT,
                                        command=[py, "-m", "bench.registry_perf.floors", name, str(run_dir / "static"), str(port), str(sink)])
        port = free_port()
        servers["registry"] = ServeProcess("registry", run_dir / "registry.log", ("--data", str(run_dir / "registry-data")),
                                           clean_env(), port)
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
            cli_push = cli_time(["push", str(renamed(art.folder, f"{NS}/cli", "1.0")), f"{reg.host}/{NS}/cli:1.0", "--token", token, "-q"],
                                env)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller artifact, fewer repeats (about 1 minute)")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", metavar="FILE", help="only render a results JSON into BENCHMARKS.md")
    a = ap.parse_args(argv)
    r = json.loads(Path(a.from_json).read_text()) if a.from_json else run(a.quick)
    text = report(r)
    print(text)
    if not a.no_write:
        write_section(BENCHMARKS, SECTION, text)
        print(f"wrote the registry section of {BENCHMARKS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
