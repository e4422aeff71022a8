"""Codec benchmark on a synthetic bf16 fine-tune stand-in.

Stand-in: base = bf16(N(0, 0.02)), post = bf16(base + N(0, 0.02 * rel)); optionally a
share ``unchanged`` of the elements keeps post == base (a short real fine-tune leaves
most elements unchanged). The exact fp32 Δ = fp32(post) - fp32(base) is split into
chunks of 2^22 elements, as the writer does, and each codec codes every chunk.

Reported per codec: bytes per parameter, the ratio to the raw bf16 post (2 B/param),
the ratio of the Δ's order-0 entropy bound (whole tensor, bits/8 per element) to the
achieved size (100 % = at the bound; above 100 % means context or per-chunk statistics
beat it), and encode/decode throughput in MB/s of bf16 model bytes (2 bytes per
element) with 1 and with 2 threads (chunks spread over a thread pool; the best of a
few repeats), plus the 1-thread rate per second of CPU time, which other load on a
shared machine disturbs less than wall-clock time.

Usage: python -m bench.codec_bench [--numel N] [--rel 0.003,0.009,0.03] [--unchanged 0.6]
``run_codec_bench(numel, rel)`` returns the rows as dicts for other harnesses.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zstandard

from deltaformat.codec import get_codec
from deltaformat.codec.base import Codec

CHUNK = 1 << 22
DEFAULT_NUMEL = 1 << 24  # 16.7 M elements


class PlainZstd1(Codec):
    """Reference only (not registered): zstd level 1 over the raw little-endian bytes."""

    id = "plain-zstd-1"

    def encode(self, bits: np.ndarray) -> bytes:
        return zstandard.ZstdCompressor(level=1).compress(np.ascontiguousarray(bits).data)

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=numel * itemsize)
        return np.frombuffer(raw, dtype=f"<u{itemsize}")


def make_standin(numel: int, rel: float, unchanged: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(Δ as uint32 fp32 bits, post as uint16 bf16 bits) of the stand-in."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(numel, generator=g) * 0.02).to(torch.bfloat16)
    post = (base.float() + torch.randn(numel, generator=g) * (0.02 * rel)).to(torch.bfloat16)
    if unchanged > 0:
        keep = torch.rand(numel, generator=g) < unchanged
        post = torch.where(keep, base, post)
    delta = post.float() - base.float()
    return delta.numpy().view(np.uint32).copy(), post.view(torch.int16).numpy().view(np.uint16).copy()


def order0_bits(values: np.ndarray) -> float:
    """Order-0 (empirical) entropy in bits per element."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _chunks(bits: np.ndarray) -> list[np.ndarray]:
    return [bits[i : i + CHUNK] for i in range(0, bits.size, CHUNK)]


def _timed(fn, items, threads: int, repeats: int) -> tuple[float, float, list]:
    """Best wall time, best process CPU time (all threads) and the results."""
    best, best_cpu, out = float("inf"), float("inf"), None
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            out = list(pool.map(fn, items)) if threads > 1 else [fn(x) for x in items]
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu, out


def gil_blocked_share(fn, reps: int = 5) -> float:
    """Share of ``fn``'s run time during which another Python thread could not run.

    A probe thread sleeps 0.2 ms in a loop and sums the wake-ups that came more than
    1 ms late while ``fn`` runs repeatedly. Code that holds the GIL (pure Python, or C
    that keeps it) blocks the probe for its whole duration (share near 1); numpy and
    zstd calls that release it leave only the Python glue and OS scheduling noise. A
    check that does not need an idle second core, unlike the 2-thread throughput.
    """
    import threading

    stop, late = threading.Event(), []

    def probe():
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.0002)
            late.append(time.perf_counter() - t - 0.0002)

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    th = threading.Thread(target=probe)
    th.start()
    try:
        time.sleep(0.02)
        late.clear()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        dur = time.perf_counter() - t
    finally:
        stop.set()
        th.join()
        sys.setswitchinterval(old)
    return float(sum(x for x in late if x > 0.001) / dur)


def bench_codec(codec: Codec, delta: np.ndarray, bound_bits: float, repeats: int = 3) -> dict:
    chunks = _chunks(delta)
    numel = delta.size
    model_mb = numel * 2 / 1e6  # bf16 model bytes
    row: dict = {"codec": codec.id}
    for threads in (1, 2):
        t_enc, cpu_enc, blobs = _timed(codec.encode, chunks, threads, repeats)
        jobs = [(b, c.size) for b, c in zip(blobs, chunks)]
        t_dec, cpu_dec, outs = _timed(lambda job: codec.decode(job[0], job[1], 4), jobs, threads, repeats)
        if not all(np.array_equal(o, c) for o, c in zip(outs, chunks)):
            raise AssertionError(f"{codec.id}: round trip is not exact")
        row[f"enc_mb_s_{threads}t"] = model_mb / t_enc
        row[f"dec_mb_s_{threads}t"] = model_mb / t_dec
        if threads == 1:  # per core, from CPU time: robust to other load on a shared machine
            row["enc_mb_s_cpu"] = model_mb / cpu_enc
            row["dec_mb_s_cpu"] = model_mb / cpu_dec
    row["gil_blocked_enc"] = gil_blocked_share(lambda: codec.encode(chunks[0]))
    row["gil_blocked_dec"] = gil_blocked_share(lambda: codec.decode(blobs[0], chunks[0].size, 4))
    size = sum(len(b) for b in blobs)
    row["bytes"] = size
    row["bytes_per_param"] = size / numel
    row["ratio_vs_bf16"] = size / (2 * numel)
    row["pct_of_bound"] = 100 * (bound_bits / 8) / (size / numel)
    return row


def run_codec_bench(numel: int = DEFAULT_NUMEL, rel: float = 0.009, unchanged: float = 0.0, repeats: int = 3) -> list[dict]:
    """Rows (one per codec) for the stand-in of ``numel`` elements at relative Δ ``rel``.

    Each row: codec, rel, unchanged, numel, bytes, bytes_per_param, ratio_vs_bf16
    (compressed size / bf16 post size), bound_bytes_per_param (order-0 entropy of Δ / 8),
    pct_of_bound (bound / achieved * 100), enc_mb_s_1t, dec_mb_s_1t, enc_mb_s_2t,
    dec_mb_s_2t (wall-clock MB/s of bf16 model bytes with 1 and 2 threads),
    enc_mb_s_cpu, dec_mb_s_cpu (1 thread, MB/s per second of CPU time),
    gil_blocked_enc, gil_blocked_dec (see ``gil_blocked_share``: near 0 when the heavy
    parts release the GIL).
    """
    delta, _post = make_standin(numel, rel, unchanged)
    bound = order0_bits(delta)
    rows = []
    for codec in (get_codec("bytegroup-zstd"), get_codec("rank-zstd-v1"), PlainZstd1()):
        row = bench_codec(codec, delta, bound, repeats)
        row.update(rel=rel, unchanged=unchanged, numel=numel, bound_bytes_per_param=bound / 8)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'rel':>6} {'unch':>5} {'codec':<16} {'B/param':>8} {'vs bf16':>8} {'% bound':>8} "
        f"{'enc 1t':>7} {'dec 1t':>7} {'enc 2t':>7} {'dec 2t':>7} {'enc cpu':>7} {'dec cpu':>7}  {'GIL e/d':>9}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['rel']:>6} {r['unchanged']:>5} {r['codec']:<16} {r['bytes_per_param']:>8.4f} {r['ratio_vs_bf16']:>8.3f} "
            f"{r['pct_of_bound']:>7.1f}% {r['enc_mb_s_1t']:>7.0f} {r['dec_mb_s_1t']:>7.0f} "
            f"{r['enc_mb_s_2t']:>7.0f} {r['dec_mb_s_2t']:>7.0f} {r['enc_mb_s_cpu']:>7.0f} {r['dec_mb_s_cpu']:>7.0f}  "
            f"{r['gil_blocked_enc']:>4.2f}/{r['gil_blocked_dec']:<4.2f}"
        )
    lines.append("(throughput in MB/s of bf16 model bytes; GIL e/d: share of encode/decode time another thread was blocked)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=DEFAULT_NUMEL)
    ap.add_argument("--rel", default="0.003,0.009,0.03", help="comma-separated relative Δ scales")
    ap.add_argument("--unchanged", type=float, default=0.0, help="share of elements with post == base")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    for rel in (float(x) for x in args.rel.split(",")):
        new = run_codec_bench(args.numel, rel, args.unchanged, args.repeats)
        table = format_rows(new).split("\n")[:-1]
        print("\n".join(table[1:] if rows else table), flush=True)
        print(f"{'':>13}order-0 bound of Δ: {new[0]['bound_bytes_per_param']:.4f} B/param", flush=True)
        rows += new
    print(format_rows([]).split("\n")[-1])


if __name__ == "__main__":
    main()
