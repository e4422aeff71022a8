"""Outputs that appear whole or not at all.

Every folder paramdelta writes (an artifact, a model, a pulled artifact) is built in a
hidden temporary folder beside the target and renamed into place on success. An error,
Ctrl-C or SIGTERM removes the temporary folder, so no half-written output survives; one
left by a kill -9 is removed by the next run that writes beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

from deltaformat.errors import OutputExistsError, from_os_error

TEMP_MARK = ".paramdelta-building"  # inside a temporary folder until it is renamed into place
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` when the block succeeds.

    The temporary folder is flock-ed while it is built: a folder that a killed run left
    (kill -9 runs no cleanup) is recognised by its free lock and removed by the next
    run writing beside it. A failed file operation comes out as a ParamDeltaError
    naming ``target`` (a full disk: "no space left on device writing <target>").
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists; pass --force to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(target.parent)
        tmp, lock = _locked_temp(target)
    except OSError as exc:
        raise from_os_error(exc, target) from None
    try:
        with _sigterm_as_interrupt():
            yield tmp
        (tmp / TEMP_MARK).unlink()
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(trash)
            tmp.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise from_os_error(exc, target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _locked_temp(target: Path) -> tuple[Path, int]:
    """A new hidden folder beside ``target``, locked, with the mark that says a run of ours owns it."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # before the mark exists: a marked folder with a free lock is abandoned
    (tmp / TEMP_MARK).write_text(f"pid {os.getpid()}\n")
    return tmp, fd


def remove_abandoned(parent: Path) -> list[Path]:
    """Remove temporary folders of ours in ``parent`` whose run died (their lock is free); return them.

    Only folders named like ours *and* holding our mark are touched, and only when no
    live process holds their lock (the kernel drops a dead process's locks).
    """
    removed = []
    for entry in parent.iterdir():
        if _TEMP_NAME.match(entry.name) and _remove_if_abandoned(entry):
            removed.append(entry)
    return removed


def _remove_if_abandoned(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # gone meanwhile, a symlink, or not a folder: not ours to touch
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its run is alive
        try:
            os.stat(TEMP_MARK, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False  # not ours, or finished and renamed just now
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while an output is being built (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> NoReturn:  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none; looked up on first use."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import ctypes.util

        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+length)`` of ``fd`` to disk, without waiting.

    Why: an output is fsynced before it is renamed into place; started as each chunk is
    written, the disk writes overlap the computing instead of all waiting for that fsync
    (at 1 GB the closing fsync fell from 0.24 s to 0.001 s and apply took 0.4 s less).
    The pages stay cached for whoever loads the model next. A no-op where the call does
    not exist; its errors are left to the fsync, which reports them.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
