"""Run chunk jobs on every core with a bounded number in flight (bounded memory)."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import numpy as np

from deltaformat import environment

T = TypeVar("T")
R = TypeVar("R")


_local = threading.local()


def scratch(key: str, nbytes: int) -> np.ndarray:
    """This thread's reused byte buffer named ``key``, at least ``nbytes`` long.

    For arrays a chunk job needs only while it runs: a new chunk-sized array each time
    costs page faults and zeroing (reading 8 MB chunks into new arrays took 2-5x the CPU
    of reading into one reused buffer here). Valid until this thread asks for ``key`` again.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < nbytes:
        buf = bufs[key] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes]


@cache
def libc() -> ctypes.CDLL | None:
    """glibc, for its allocator's controls (``mallopt``, ``malloc_trim``); None where the C library
    is another (macOS, musl, Windows): callers then leave the allocator as it is.

    The process's own symbols (``CDLL(None)``) include libc's on Linux, without looking for
    its file (``ctypes.util.find_library`` runs ldconfig or a compiler to do that).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None)
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") else None


def release_free_memory() -> None:
    """Give the pages of freed heap memory back to the system (glibc's ``malloc_trim(0)``; about 2 ms).

    Buffers up to glibc's moving mmap threshold (32 MiB at most) come from its heaps, and
    freeing them keeps their pages in the process: memory freed below a live allocation is
    never returned by itself. Call it after big temporary buffers were freed, where the
    process goes on allocating something else (the lazy loader's next tensors) and its
    peak resident size is what matters.
    """
    lib = libc()
    if lib is not None:
        lib.malloc_trim(0)


def default_workers() -> int:
    env = environment.workers()
    if env is not None:
        return env
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, inflight: int | None = None) -> Iterator[R]:
    """Like ``map(fn, items)`` on a thread pool, yielding results in input order.

    At most ``inflight`` jobs exist at once, so memory is bounded by that many chunks.
    zstd, numpy and hashlib release the GIL, so threads use every core.
    ``items`` is consumed lazily, in the caller's thread, between results: it may
    depend on results already yielded.
    """
    workers = workers or default_workers()
    inflight = inflight or 2 * workers
    if workers == 1:
        for item in items:
            yield fn(item)
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
