"""Manifest GET latency under concurrent clients."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field


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
