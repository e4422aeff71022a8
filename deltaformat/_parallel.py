"""Run chunk jobs on every core with a bounded number in flight (bounded memory)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    env = os.environ.get("PARAMDELTA_WORKERS")
    return max(1, int(env)) if env else max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, inflight: int | None = None) -> Iterator[R]:
    """Like ``map(fn, items)`` on a thread pool, yielding results in input order.

    At most ``inflight`` jobs exist at once, so memory is bounded by that many chunks.
    zstd, numpy, torch and hashlib release the GIL, so threads use every core.
    """
    workers = workers or default_workers()
    inflight = inflight or 2 * workers
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="paramdelta") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= inflight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
