"""A bounded load test on loopback, with a hostile client holding uploads open.

Runs the scenario of ``bench/load.py`` (one implementation for the benchmark and the test)
against a real ``paramdelta serve`` started here: 64 well-behaved clients mixing push,
pull, search and page views while one hostile client holds 48 uploads open (more than the
server's 40 worker threads), their bodies trickling or stalled. It asserts what users rely
on, never a time: no well-behaved request fails (not even one the client retried: the
access log is read for 5xx/429), every pull verifies and is the artifact that was pushed,
the held uploads were really held while the others ran, and /healthz answers meanwhile.
Latencies and the server's peak RSS are printed (``pytest -s``), not asserted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from paramdelta_dev.serve import RegistryServer

REPO = Path(__file__).resolve().parents[1]
CLIENTS, ROUNDS, HELD = 64, 5, 48


def _load_bench():
    return importlib.import_module("bench.load")  # the repository root is on sys.path (pyproject's pytest pythonpath)


def test_64_clients_are_served_while_a_hostile_client_holds_uploads_open(tmp_path: Path, client_env: Path):
    bench = _load_bench()
    server = RegistryServer(tmp_path / "data").start()
    try:
        models = bench.Models.make(tmp_path / "models", tensors=2, rows=64, cols=256)
        (tmp_path / "scratch").mkdir()
        target = bench.make_target(server, models, tmp_path / "scratch")
        result = bench.run_load(target, clients=CLIENTS, rounds=ROUNDS, hostile=HELD, log_text=server.log_text,
                                deadline=120.0)
    finally:
        server.stop()

    print("\n" + "\n".join(result.table()))
    print(f"server RSS {result.rss_before / 2**20:.0f} MiB before, peak {result.rss_peak / 2**20:.0f} MiB; "
          f"load {result.wall_seconds:.1f} s; held at start {sum(result.held_at_start)}/{HELD}, at end {sum(result.held_at_end)}")

    assert all(result.held_at_start), "the hostile uploads were answered before the load began: the scenario tested nothing"
    assert result.finished and result.errors == [], result.errors[:10]
    assert result.http_failures == [], result.http_failures[:10]  # nothing failed, even where the client retried
    pulls = sum(bench._rounds(n, ROUNDS).count("pull") for n in range(CLIENTS))
    assert result.pulls_verified == pulls  # each verified and byte-equal to what was pushed
    assert {op: len(result.latencies[op]) for op in bench.OPS} == {
        op: sum(bench._rounds(n, ROUNDS).count(op) for n in range(CLIENTS)) for op in bench.OPS}
    assert result.latencies["healthz"], "/healthz was never answered during the load"
    assert result.healthz_after == 200  # asked while the uploads were still held
