"""apply's output folder computed on read: its files, their sizes and any byte range of them.

What ``paramdelta mount`` serves (``deltaformat.mount`` puts FUSE in front of it; the tests
also read it directly). Tensor bytes come from the lazy loader (``deltaformat.lazy``), chunk
by chunk, as apply computes them; headers, index and carried files from the plan alone.

Chunks are computed on a fixed set of worker threads (one per core), never on the threads
that serve reads: readers' requests go first, and in between the workers compute ahead in
file order, whatever order the reader asks in (from_pretrained reads tensors out of file
order, from several threads). Computing ahead starts when a shard is opened (the first
shard: when any file is), stays within
``cache_bytes`` of chunks nobody has read yet, and within ``cache_bytes`` of the furthest
byte a reader asked for; each chunk is computed ahead at most once per mount.

Memory: the cache (``cache_bytes``) plus, per worker, the chunk being computed and its
buffers; the threads serving reads only copy slices of cached chunks.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from deltaformat._parallel import default_workers
from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import FormatError
from deltaformat.manifest import CHUNK_ELEMENTS, check_carried_content
from deltaformat.models import INDEX_FILE
from deltaformat.sidefiles import PROVENANCE_FILE, config_text, provenance_bytes
from deltaformat.writer import ShardPlan, index_text, parse_size, plan_shards

if TYPE_CHECKING:
    from deltaformat.lazy import LazyModel

PLACEHOLDER_DIGEST = "sha256:" + "0" * 64  # same length as any digest: sizes paramdelta.json before hashing

Key = tuple[str, int]  # (tensor name, chunk index)


@dataclass
class _Fresh:
    """A cached chunk not spent yet, and how many of its bytes were served so far."""

    bits: np.ndarray
    served: int = 0


class ChunkCache:
    """Computed chunks (raw bits), at most ``max_bytes`` in all.

    A chunk is *spent* once as many bytes of it were served as it holds, or once it was
    handed to the kernel's page cache (``spend``): readers then find its pages there.
    Spent chunks are dropped first, least recently used first; then unspent ones, only past
    ``max_bytes + slack``. The slack holds the chunks readers wait for: computing ahead keeps
    within ``max_bytes`` by itself (it reserves room before it starts a chunk), but a chunk a
    reader asked for meanwhile is not in that reservation, and dropping an unspent chunk to make
    room for either would have it computed again (a reader part-way through it, or one
    computed ahead and not read yet).
    """

    def __init__(self, max_bytes: int, slack: int = 0):
        self.max_bytes = max_bytes
        self.slack = slack
        self._fresh: OrderedDict[Key, _Fresh] = OrderedDict()
        self._spent: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._fresh_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Key) -> np.ndarray | None:
        with self._lock:
            fresh = self._fresh.get(key)
            if fresh is not None:
                self._fresh.move_to_end(key)
                return fresh.bits
            spent = self._spent.get(key)
            if spent is not None:
                self._spent.move_to_end(key)
            return spent

    def __contains__(self, key: Key) -> bool:  # no change to the order of use
        return key in self._fresh or key in self._spent

    def put(self, key: Key, bits: np.ndarray) -> bool:
        """Keep ``bits``, dropping others as needed; False (not kept) when bigger than the whole cache."""
        if bits.nbytes > self.max_bytes:
            return False
        with self._lock:
            self._drop(key)
            self._fresh[key] = _Fresh(bits)
            self._bytes += bits.nbytes
            self._fresh_bytes += bits.nbytes
            while self._bytes > self.max_bytes and self._spent:
                self._drop(next(iter(self._spent)))
            while self._bytes > self.max_bytes + self.slack:
                self._drop(next(iter(self._fresh)))
        return True

    def served(self, key: Key, nbytes: int) -> bool:
        """Count ``nbytes`` of chunk ``key`` as served; True when that made it spent."""
        with self._lock:
            entry = self._fresh.get(key)
            if entry is None:
                return False
            entry.served += nbytes
            if entry.served < entry.bits.nbytes:
                return False
            self._spend(key)
            return True

    def spend(self, key: Key) -> None:
        with self._lock:
            if key in self._fresh:
                self._spend(key)

    def _spend(self, key: Key) -> None:
        bits = self._fresh.pop(key).bits
        self._fresh_bytes -= bits.nbytes
        self._spent[key] = bits

    def _drop(self, key: Key) -> None:
        if key in self._fresh:
            bits = self._fresh.pop(key).bits
            self._fresh_bytes -= bits.nbytes
        elif key in self._spent:
            bits = self._spent.pop(key)
        else:
            return
        self._bytes -= bits.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def fresh_bytes(self) -> int:
        """Bytes of chunks not spent yet: what computing ahead may fill, up to ``max_bytes``."""
        return self._fresh_bytes


@dataclass(frozen=True)
class _Span:
    """One tensor's bytes inside a shard file."""

    start: int  # absolute offset in the file
    end: int
    name: str
    itemsize: int

    @property
    def chunk_bytes(self) -> int:
        return CHUNK_ELEMENTS * self.itemsize

    @property
    def chunks(self) -> int:
        return -(-(self.end - self.start) // self.chunk_bytes)  # none for an empty tensor


@dataclass
class _Ahead:
    """Computing ahead in one shard: its chunks in file order and how far readers got."""

    chunks: list[tuple[Key, int, int]]  # (key, first byte, byte count), in file order
    cursor: int = 0  # chunks before it were computed ahead, or found computed
    active: bool = False  # opened by a reader
    high_water: int = 0  # the furthest byte a reader asked for


@dataclass
class _Job:
    """One chunk being computed; the readers waiting for it share the result."""

    done: threading.Event = field(default_factory=threading.Event)
    bits: np.ndarray | None = None
    error: BaseException | None = None

    def result(self) -> np.ndarray:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.bits is not None  # done without an error: the worker set it
        return self.bits


class ModelFolder:
    """apply's output folder, computed on read: its files, their sizes, and any byte range of them.

    ``on_computed(shard, start, end)``, when set, is told of each chunk computed and cached:
    the mount hands its bytes to the kernel's page cache there. ``close()`` stops the workers.
    """

    def __init__(self, lazy: LazyModel, shard_size: int | str, cache_bytes: int | str, workers: int | None = None):
        self.lazy = lazy
        workers = workers or default_workers()
        largest = max((ITEMSIZE[t.dtype] * min(t.numel, CHUNK_ELEMENTS) for t in lazy.plan), default=0)
        self.cache = ChunkCache(parse_size(cache_bytes), slack=workers * largest)  # a chunk per worker, at most
        self.on_computed: Callable[[str, int, int], None] | None = None
        self.shards = plan_shards([(t.name, t.dtype, t.shape) for t in lazy.plan], parse_size(shard_size))
        self._spans = {s.name: self._spans_of(s) for s in self.shards}
        self._starts = {name: [span.start for span in spans] for name, spans in self._spans.items()}
        self.files: dict[str, bytes | ShardPlan | None] = {s.name: s for s in self.shards}
        index = index_text(self.shards)
        if index is not None:
            self.files[INDEX_FILE] = index.encode()
        if lazy.config:
            self.files["config.json"] = config_text(lazy.config).encode()
        self._add_carried_files()
        self.files[PROVENANCE_FILE] = None  # computed when first needed (see _provenance)
        self.dirs = {str(p) for rel in self.files for p in PurePosixPath(rel).parents if str(p) != "."}
        self._tensor_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._provenance_lock = threading.Lock()
        self._provenance_data: bytes | None = None
        # Where each chunk lies (for on_computed), and each shard's chunks in file order (computing ahead).
        self._where: dict[Key, tuple[str, int, int]] = {}
        self._ahead: dict[str, _Ahead] = {}
        for shard in self.shards:
            chunks = []
            for span in self._spans[shard.name]:
                for i in range(span.chunks):
                    first = span.start + i * span.chunk_bytes
                    size = min(span.end - first, span.chunk_bytes)
                    self._where[(span.name, i)] = (shard.name, first, first + size)
                    chunks.append(((span.name, i), first, size))
            self._ahead[shard.name] = _Ahead(chunks)
        # The workers: readers' chunks first (``_wanted``), else the next chunk ahead.
        self._cond = threading.Condition()
        self._jobs: dict[Key, _Job] = {}
        self._wanted: deque[Key] = deque()
        self._ahead_bytes = 0  # chunks being computed ahead, counted against the cache's room
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"paramdelta-chunks-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def _spans_of(self, shard: ShardPlan) -> list[_Span]:
        spans = []
        for name, start in shard.offsets.items():
            dtype, shape = self.lazy.dtype_and_shape(name)
            nbytes = ITEMSIZE[dtype] * math.prod(shape)
            spans.append(_Span(start, start + nbytes, name, ITEMSIZE[dtype]))
        return sorted(spans, key=lambda s: s.start)

    def _add_carried_files(self) -> None:
        """The post model's tokenizer and template files, checked as apply checks them."""
        first = self.lazy.artifacts[0]
        for f in first.manifest.files:
            if f.path in self.files or f.path == PROVENANCE_FILE:
                raise FormatError(f"carried file {f.path!r} collides with a file apply writes")
            data = first.read_carried(f)  # v2 carried files are compressed
            check_carried_content(f.path, data)
            self.files[f.path] = data

    # -- sizes and bytes ---------------------------------------------------------------
    def size(self, rel: str) -> int:
        entry = self.files[rel]
        if isinstance(entry, ShardPlan):
            return entry.size
        if entry is None:
            return len(self._provenance(sized_only=True))
        return len(entry)

    def open(self, rel: str) -> None:
        """A reader opened ``rel``: that shard's chunks start being computed ahead; any other file
        starts the first shard's, as a reader of a model folder (from_pretrained, vLLM) reads
        config.json and the index, builds the model, and only then opens the shards."""
        self.compute_ahead(rel if rel in self._ahead else None)

    def compute_ahead(self, shard: str | None = None) -> None:
        """Start computing ``shard``'s chunks ahead (None: the first shard's), within the cache's room."""
        ahead = self._ahead[shard] if shard is not None else next(iter(self._ahead.values()), None)
        if ahead is not None and not ahead.active:
            with self._cond:
                ahead.active = True
                self._cond.notify_all()

    def read(self, rel: str, offset: int, size: int, reader: bool = True) -> bytes:
        """Bytes [offset, offset+size) of ``rel``. ``reader`` False: a read this process caused
        (filling the page cache), which does not move where computing ahead may go."""
        parts = self.read_parts(rel, offset, size, reader)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def read_parts(self, rel: str, offset: int, size: int, reader: bool = True) -> list[bytes | memoryview]:
        """``read``'s bytes as the pieces that hold them (views of cached chunks: no copy yet)."""
        entry = self.files[rel]
        if isinstance(entry, ShardPlan):
            if reader:
                self._reached(rel, min(offset + size, entry.size))
            return self._read_shard(entry, offset, size)
        data = self._provenance() if entry is None else entry
        return [data[offset : offset + size]]

    def _reached(self, rel: str, end: int) -> None:
        ahead = self._ahead[rel]
        if end > ahead.high_water:
            with self._cond:
                ahead.high_water = max(ahead.high_water, end)
                self._cond.notify_all()

    def _read_shard(self, shard: ShardPlan, offset: int, size: int) -> list[bytes | memoryview]:
        """Bytes [offset, offset+size) of a shard: its header, then slices of computed chunks
        (views, to be copied once into the answer; the tensors found by bisection, not a scan)."""
        end = min(shard.size, offset + size)
        parts: list[bytes | memoryview] = [shard.head[offset:end]] if offset < len(shard.head) else []
        spans = self._spans[shard.name]
        first = max(0, bisect.bisect_right(self._starts[shard.name], offset) - 1)
        for span in spans[first:]:
            if span.start >= end:
                break
            if span.end > offset and span.end > span.start:
                parts += self._tensor_bytes(span, max(offset, span.start) - span.start, min(end, span.end) - span.start)
        return parts or [b""]

    def _tensor_bytes(self, span: _Span, lo: int, hi: int) -> list[memoryview]:
        """Bytes [lo, hi) of one tensor, as views of the chunks that hold them."""
        chunk_bytes = span.chunk_bytes
        parts = []
        spent = False
        for index in range(lo // chunk_bytes, (hi - 1) // chunk_bytes + 1):
            raw = self.chunk(span.name, index).data.cast("B")
            first = index * chunk_bytes
            part = raw[max(lo, first) - first : min(hi, first + len(raw)) - first]
            parts.append(part)
            spent |= self.cache.served((span.name, index), len(part))
        if spent:  # room for computing ahead
            with self._cond:
                self._cond.notify_all()
        return parts

    # -- computing chunks ----------------------------------------------------------------
    def chunk(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index`` of tensor ``name``: from the cache, else computed by a worker before
        any chunk ahead (the whole tensor proven first where apply would prove it)."""
        key = (name, index)
        bits = self.cache.get(key)
        if bits is not None:
            return bits
        with self._cond:
            if self._closed:
                raise ValueError(f"tensor {name!r}: the folder was closed")
            bits = self.cache.get(key)
            if bits is not None:
                return bits
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = _Job()
                self._wanted.append(key)
                self._cond.notify()
        return job.result()

    def _work(self) -> None:
        while True:
            with self._cond:
                task = None
                while not self._closed and (task := self._next_task()) is None:
                    self._cond.wait()
                if self._closed or task is None:
                    return
                key, nbytes = task
                job = self._jobs[key]
            try:
                job.bits = self._load(*key)
            except BaseException as exc:  # handed to the readers waiting; a chunk computed ahead is not tried again ahead
                job.error = exc
            with self._cond:
                self._jobs.pop(key, None)
                self._ahead_bytes -= nbytes
                self._cond.notify_all()
            job.done.set()
            if job.error is None and self.on_computed is not None and key in self.cache:
                self.on_computed(*self._where[key])
                self.cache.spend(key)  # its pages are on their way to the page cache

    def _next_task(self) -> tuple[Key, int] | None:
        """A chunk a reader waits for (no bytes counted ahead), else the next one ahead (called holding ``_cond``)."""
        if self._wanted:
            return self._wanted.popleft(), 0
        return self._next_ahead()

    def _next_ahead(self) -> tuple[Key, int] | None:
        """The next chunk to compute ahead (called holding ``_cond``): the first in file order of an
        opened shard that is not computed, within the cache's room and the reader's reach."""
        room = self.cache.max_bytes - self.cache.fresh_bytes - self._ahead_bytes
        for ahead in self._ahead.values():
            if not ahead.active:
                continue
            while ahead.cursor < len(ahead.chunks):
                key, first, nbytes = ahead.chunks[ahead.cursor]
                if key in self._jobs or key in self.cache or nbytes > self.cache.max_bytes:
                    ahead.cursor += 1  # under way, done, or never kept: nothing to compute ahead
                    continue
                if first >= ahead.high_water + self.cache.max_bytes or nbytes > room:
                    break  # until a reader gets further, or a chunk is read or dropped
                ahead.cursor += 1
                self._jobs[key] = _Job()
                self._ahead_bytes += nbytes
                return key, nbytes
        return None

    def _load(self, name: str, index: int) -> np.ndarray:
        key = (name, index)
        if self.lazy.needs_proof(name):
            with self._tensor_lock(name):
                if self.lazy.needs_proof(name):
                    self._prove(name)
            bits = self.cache.get(key)
            if bits is not None:
                return bits
        bits = self.lazy.chunk_bits(name, index)
        self.cache.put(key, bits)
        return bits

    def close(self) -> None:
        """Stop the workers (chunks under way finish); readers still waiting get an error."""
        with self._cond:
            self._closed = True
            for key in self._wanted:
                self._jobs[key].error = ValueError(f"tensor {key[0]!r}: the folder was closed")
                self._jobs[key].done.set()
            self._wanted.clear()
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join()

    def _prove(self, name: str) -> None:
        """apply's check of one tensor; its chunks enter the cache only once it passed (as many
        as the cache holds), so no reader is ever served a chunk of a tensor that failed it."""
        proven: list[tuple[int, np.ndarray]] = []
        room = self.cache.max_bytes

        def keep(index: int, piece: np.ndarray) -> None:
            nonlocal room
            if piece.nbytes <= room:
                proven.append((index, piece))
                room -= piece.nbytes

        self.lazy.prove(name, keep)
        for index, piece in proven:
            self.cache.put((name, index), piece)

    def _tensor_lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._tensor_locks.setdefault(name, threading.Lock())

    # -- paramdelta.json -------------------------------------------------------------------
    def _provenance(self, sized_only: bool = False) -> bytes:
        """paramdelta.json as apply writes it. Its size is known without hashing once the output
        cannot be exact (digests have one length); else, and for its bytes, every shard is hashed."""
        with self._provenance_lock:
            if self._provenance_data is not None:
                return self._provenance_data
            if sized_only and not self.lazy.exact_possible:
                return self._provenance_record({s.name: PLACEHOLDER_DIGEST for s in self.shards}, False)
            digests = {s.name: self._shard_digest(s) for s in self.shards}
            self._provenance_data = self._provenance_record(digests, self.lazy.verified_exact)
            return self._provenance_data

    def _provenance_record(self, shard_digests: dict[str, str], verified: bool) -> bytes:
        files = {}
        for rel in sorted((r for r in self.files if r != PROVENANCE_FILE), key=PurePosixPath):
            entry = self.files[rel]
            if isinstance(entry, ShardPlan):
                files[rel] = {"sha256": shard_digests[rel], "size": entry.size}
            elif entry is not None:  # None: paramdelta.json, left out above
                files[rel] = {"sha256": "sha256:" + hashlib.sha256(entry).hexdigest(), "size": len(entry)}
        lazy = self.lazy
        return provenance_bytes(lazy.artifacts, lazy.alphas, lazy.base, verified, files)

    def _shard_digest(self, shard: ShardPlan) -> str:
        """The shard's sha256, its chunks in file order (computed ahead on every worker)."""
        self.open(shard.name)
        self._reached(shard.name, shard.size)
        sha = hashlib.sha256(shard.head)
        for span in self._spans[shard.name]:
            for index in range(span.chunks):
                sha.update(self.chunk(span.name, index).data.cast("B"))
                self.cache.spend((span.name, index))  # hashed: room for the next ones
        with self._cond:
            self._cond.notify_all()
        return "sha256:" + sha.hexdigest()
