"""Sharded safetensors writer with a header planned up front.

All shapes and dtypes of the output are known before any value is computed, so each
shard's header is written first and every chunk is then written at its final offset
(``os.pwrite``) by whichever thread computed it: no shard is ever held in memory.
The files follow the safetensors format exactly and load with safetensors/transformers.

Each shard's sha256 is taken as it is written, for apply's record of the output:
chunks arrive in file order (apply's single consuming thread writes them in plan order),
so a running hash per shard, fed on one background thread, covers every byte without
reading the output back. A shard written out of order is hashed by reading it at close.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deltaformat.dtypes import ITEMSIZE
from deltaformat.fsutil import start_writeback
from deltaformat.models import INDEX_FILE, SINGLE_FILE
from deltaformat.rawbits import UINT_FOR_ITEMSIZE

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
HASH_BACKLOG = 8  # chunks queued for the hashing thread at most (bounds the memory they hold)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str) -> int:
    """Parse "5GB", "500MiB" or a byte count."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"invalid size {size!r}: use a byte count or a number with KB, MB, GB, KiB, MiB or GiB")
    return int(float(m[1]) * _UNITS[(m[2] or "b").lower()])


@dataclass(frozen=True)
class Slot:
    file: Path
    offset: int  # absolute offset of the tensor's first byte
    itemsize: int


@dataclass(frozen=True)
class ShardPlan:
    """One output shard, planned from the shapes alone: its name, header bytes and tensor offsets."""

    name: str
    head: bytes  # the 8-byte header length, then the JSON header padded to 8 bytes
    offsets: dict[str, int]  # tensor name -> absolute offset of its first byte in the file
    size: int  # the file's size in bytes


def plan_shards(tensors: list[tuple[str, str, list[int]]], shard_size: int) -> list[ShardPlan]:
    """Group ``tensors`` (name, dtype, shape), in order, into shards of at most ``shard_size``
    tensor bytes (a bigger tensor gets a shard of its own) and lay out each shard's header."""
    groups: list[list[tuple[str, str, list[int]]]] = [[]]
    used = 0
    for name, dtype, shape in tensors:
        nbytes = ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))
        if groups[-1] and used + nbytes > shard_size:
            groups.append([])
            used = 0
        groups[-1].append((name, dtype, shape))
        used += nbytes
    n = len(groups)
    names = [SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return [_plan_shard(name, group) for name, group in zip(names, groups)]


def _plan_shard(name: str, group: list[tuple[str, str, list[int]]]) -> ShardPlan:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor, dtype, shape in group:
        nbytes = ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))
        header[tensor] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    start = 8 + len(raw)
    offsets = {tensor: start + header[tensor]["data_offsets"][0] for tensor, _, _ in group}
    return ShardPlan(name, struct.pack("<Q", len(raw)) + raw, offsets, start + offset)


def index_text(shards: list[ShardPlan]) -> str | None:
    """The safetensors index (model.safetensors.index.json) of several shards; None for one."""
    if len(shards) < 2:
        return None
    index = {"metadata": {"total_size": sum(s.size for s in shards)},
             "weight_map": {t: s.name for s in shards for t in s.offsets}}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


class ShardedWriter:
    """Plans shards for ``tensors`` (name, dtype, shape) and accepts chunks in any order."""

    def __init__(self, folder: Path, tensors: list[tuple[str, str, list[int]]], shard_size: int):
        self.folder = folder
        self.plan = plan_shards(tensors, shard_size)
        self.files = [folder / shard.name for shard in self.plan]
        self.slots: dict[str, Slot] = {}
        self._fds: dict[Path, int] = {}
        self._sha = {p: hashlib.sha256() for p in self.files}
        self._hashed_to = dict.fromkeys(self.files, 0)  # bytes fed to each running hash, from the start
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="paramdelta-hash")  # one thread: FIFO order
        self._backlog = threading.BoundedSemaphore(HASH_BACKLOG)
        self.digests: dict[str, tuple[str, int]] = {}  # file name -> (sha256 digest, size), after close
        itemsizes = {name: ITEMSIZE[dtype] for name, dtype, _ in tensors}
        for path, shard in zip(self.files, self.plan):
            self._write_header(path, shard, itemsizes)

    def _write_header(self, path: Path, shard: ShardPlan, itemsizes: dict[str, int]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        self._fds[path] = fd
        os.pwrite(fd, shard.head, 0)
        os.ftruncate(fd, shard.size)
        self._sha[path].update(shard.head)
        self._hashed_to[path] = len(shard.head)
        for name, offset in shard.offsets.items():
            self.slots[name] = Slot(path, offset, itemsizes[name])

    def write(self, name: str, start: int, bits: np.ndarray) -> None:
        """Write elements starting at element ``start`` of tensor ``name``.

        ``bits`` is hashed on another thread afterwards: the caller must not change it.
        """
        slot = self.slots[name]
        data = np.ascontiguousarray(bits).data.cast("B")
        fd, pos, done = self._fds[slot.file], slot.offset + start * slot.itemsize, 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], pos + done)
        start_writeback(fd, pos, done)
        if pos == self._hashed_to[slot.file]:
            self._hashed_to[slot.file] += len(data)
            self._backlog.acquire()
            self._hasher.submit(self._hash_piece, slot.file, data)

    def _hash_piece(self, path: Path, data: memoryview) -> None:
        try:
            self._sha[path].update(data)  # hashlib releases the GIL on big buffers
        finally:
            self._backlog.release()

    def read(self, name: str, start: int, count: int) -> np.ndarray:
        """Read back ``count`` elements of tensor ``name`` from ``start``, as written (raw bits)."""
        slot = self.slots[name]
        out = np.empty(count, dtype=UINT_FOR_ITEMSIZE[slot.itemsize])
        buf = out.data.cast("B")
        pos, done = slot.offset + start * slot.itemsize, 0
        fd = os.open(slot.file, os.O_RDONLY)
        try:
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], pos + done)
                if n == 0:
                    raise OSError(f"{slot.file}: ends before tensor {name!r} does")
                done += n
        finally:
            os.close(fd)
        return out

    def close(self) -> None:
        """Flush and close every shard, then write the index when there are several."""
        for fd in self._fds.values():
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        self._hasher.shutdown(wait=True)
        for path in self.files:
            size = path.stat().st_size
            sha = self._sha[path] if self._hashed_to[path] == size else _hash_file(path)
            self.digests[path.name] = ("sha256:" + sha.hexdigest(), size)
        index = index_text(self.plan)
        if index is not None:
            (self.folder / INDEX_FILE).write_text(index)

    def abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._hasher.shutdown(wait=True, cancel_futures=True)


def planned_bytes(tensors: list[tuple[str, str, list[int]]]) -> int:
    """The output's tensor bytes (what the shards hold besides their small headers)."""
    return sum(ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64)) for _, dtype, shape in tensors)


def _hash_file(path: Path) -> hashlib._Hash:
    with open(path, "rb") as f:
        if sys.version_info >= (3, 11):
            return hashlib.file_digest(f, "sha256")
        h = hashlib.sha256()  # Python 3.10 has no file_digest
        while chunk := f.read(1 << 20):
            h.update(chunk)
        return h
