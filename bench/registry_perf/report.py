"""The registry section of BENCHMARKS.md, and the observations, written from the results."""

from __future__ import annotations

import statistics

from bench.registry_perf.config import CONCURRENCY, TARGET_RATIO, WORKERS, MiB


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
    L += [f"### Push and pull throughput (target: >= {TARGET_RATIO} of the faster floor)", "",
          "| direction | registry MiB/s | floor `asgi` MiB/s | floor `threaded` MiB/s | ratio to `asgi` | ratio to `threaded` "
          "| **ratio to faster floor** |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for d in ("push", "pull"):
        x = t[d]
        L.append(f"| {d} | {x['registry_mibs']:.0f} | {x['asgi_mibs']:.0f} | {x['threaded_mibs']:.0f} | "
                 f"{x['ratio_asgi']:.2f} | {x['ratio_threaded']:.2f} | **{x['ratio_best']:.2f}** "
                 f"({'meets' if x['ratio_best'] >= TARGET_RATIO else 'misses'} {TARGET_RATIO}; per repeat "
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


def observations(r: dict) -> list[str]:
    """What the numbers say, computed from them (the reply and commit message discuss them further)."""
    t, p, ml = r["transfer"], r["preflight"], r["manifest_load"]
    notes = []
    for d in ("push", "pull"):
        x, sc = t[d], t[d]["server_cpu_s_per_gib"]
        faster = "asgi" if x["asgi_s"] <= x["threaded_s"] else "threaded"
        verdict = "misses" if x["ratio_best"] < TARGET_RATIO else \
            "meets" if min(x["ratio_best_all"]) >= TARGET_RATIO else "meets in the median, not in every repeat,"
        notes.append(f"{d}: {x['registry_mibs']:.0f} MiB/s, {x['ratio_best']:.2f} of the faster floor (`{faster}`): {verdict} "
                     f"the {TARGET_RATIO} target (per-repeat ratios {min(x['ratio_best_all']):.2f}-{max(x['ratio_best_all']):.2f}). "
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
