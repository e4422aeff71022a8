"""paramdelta mount: the ParamΔ model as a read-only folder whose tensor bytes are computed on read.

The folder holds exactly what ``apply --out`` would write (config.json, the carried
tokenizer and chat-template files, the safetensors shards and their index, paramdelta.json),
byte for byte: the shard layout, headers and index come from the shapes alone
(``writer.plan_shards``), and each tensor's bytes from the lazy loader (``deltaformat.lazy``),
chunk by chunk, as apply computes them. Anything that reads model folders
(``from_pretrained``, vLLM, safetensors' mmap) then uses the delta with no merged copy on disk.

``deltaformat.folder.ModelFolder`` is the folder as files and byte ranges (no FUSE; the tests read it
directly too); ``mount`` serves it through libfuse with mfusepy, a maintained ctypes binding (no
compiler, no async framework; libfuse 3 on Linux, and macFUSE or FUSE-T on macOS, which is
what macOS would need). Chunks are computed on one worker thread per core, ahead of the
readers in file order from the moment a file of the folder is opened, and kept in a bounded cache.
Each computed chunk is handed to the kernel's page cache at once (``POSIX_FADV_WILLNEED``
on the mounted file: the kernel reads the chunk's pages from the cache while they are
there), and files are opened with ``keep_cache``: a reader's page faults and reads then
find the pages in the kernel, whatever order it reads in, and do not come back to Python.

Verification is apply's: on the original base with one artifact at alpha 1 a tensor is
proven equal to the post model (all its chunks hashed) before any of its bytes are served,
and a mismatch there is an I/O error naming the tensor. paramdelta.json records the sha256
of every file, so its bytes need every shard hashed: the first read of it (or a stat, when
whether the output is exact is still open) computes the whole model once.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import queue
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from deltaformat.errors import FileSystemError, ParamDeltaError

if TYPE_CHECKING:
    from deltaformat.artifact import Artifact
    from deltaformat.folder import ModelFolder

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_CACHE = "512MiB"
MAX_THREADS = 16  # FUSE request threads (concurrent readers); they copy out of the cache, the folder's workers compute
FOREVER_S = 86400.0  # how long the kernel may keep names and attributes: the folder never changes while mounted
BUSY_WAIT_S = 5.0  # how long `umount` retries a mount that is busy
APPLY_HINT = "use `paramdelta apply --out DIR` to write the model instead"


# -- FUSE ------------------------------------------------------------------------------------


def load_fuse() -> ModuleType:
    """mfusepy over libfuse 3 (libfuse 2 where only it is found); a clear error where FUSE cannot run."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy would take libfuse 2 first where both exist
    try:
        mfusepy = importlib.import_module("mfusepy")  # typed as a module: mfusepy ships no type information
    except ImportError:
        raise FileSystemError(f"mounting needs mfusepy: pip install 'paramdelta[mount]'; or {APPLY_HINT}") from None
    except OSError as exc:  # mfusepy loads libfuse on import
        raise FileSystemError(f"FUSE is not available here ({exc}): install fuse3 (Debian/Ubuntu: apt-get install fuse3; "
                              f"macOS: macFUSE or FUSE-T); or {APPLY_HINT}") from None
    if sys.platform.startswith("linux") and not os.path.exists("/dev/fuse"):
        raise FileSystemError(f"FUSE is not available here (no /dev/fuse; in a container, pass --device /dev/fuse "
                              f"--cap-add SYS_ADMIN); or {APPLY_HINT}")
    return mfusepy


def _operations(folder: ModelFolder, fuse: ModuleType, on_ready: Callable[[], None], own_threads: set[int]) -> object:
    """The read-only filesystem: directories and the folder's files; every write is EROFS.
    Requests from ``own_threads`` (this process's, by thread id) are the page cache being filled."""
    now = time.time_ns()
    owner = {"st_uid": os.getuid(), "st_gid": os.getgid(), "st_atime": now, "st_mtime": now, "st_ctime": now}
    entries = set(folder.files) | folder.dirs

    def by_us() -> bool:
        """A request this process caused (the page cache being filled), not a reader's."""
        pid: int = fuse.fuse_get_context()[2]  # FUSE passes the calling thread's id
        return pid in own_threads

    def served(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ParamDeltaError as exc:  # a reader sees EIO; the reason goes to the mount's log, one line
            print(f"paramdelta mount: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            raise fuse.FuseOSError(errno.EIO) from None

    # mfusepy ships no type information, and the base class is an attribute of a module object: Any to mypy. The methods' argument
    # types are mfusepy's (raw_fi: ``fi`` is libfuse's fuse_file_info, a ctypes structure).
    class ReadOnlyModel(fuse.Operations):  # type: ignore[misc,name-defined]
        use_ns = True

        def init_with_config(self, conn: ctypes.Structure | None, config: ctypes.Structure | None) -> None:
            if config is not None:  # libfuse 3: nothing changes while mounted, so the kernel need not ask again
                config.attr_timeout = config.entry_timeout = config.negative_timeout = FOREVER_S
            on_ready()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            rel = path.lstrip("/")
            if rel == "" or rel in folder.dirs:
                return {**owner, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if rel not in folder.files:
                raise fuse.FuseOSError(errno.ENOENT)
            return {**owner, "st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": served(folder.size, rel)}

        def readdir(self, path: str, fh: int) -> list[str]:
            rel = path.lstrip("/")
            parent = PurePosixPath(rel) if rel else PurePosixPath(".")
            return [".", "..", *sorted(PurePosixPath(e).name for e in entries if PurePosixPath(e).parent == parent)]

        def open(self, path: str, fi: ctypes.Structure) -> int:
            if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
                raise fuse.FuseOSError(errno.EROFS)
            rel = path.lstrip("/")
            if rel not in folder.files:
                raise fuse.FuseOSError(errno.ENOENT)
            fi.keep_cache = 1  # the bytes never change while mounted: pages read once stay in the kernel's cache
            if not by_us():
                folder.open(rel)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes | memoryview | ctypes.Array[ctypes.c_char]:
            parts = served(folder.read_parts, path.lstrip("/"), offset, size, not by_us())
            if len(parts) == 1 and isinstance(parts[0], memoryview) and not parts[0].readonly:
                # A slice of one cached chunk: mfusepy copies it into libfuse's buffer straight from the chunk.
                return (ctypes.c_char * len(parts[0])).from_buffer(parts[0])
            return parts[0] if len(parts) == 1 else b"".join(parts)

        def statfs(self, path: str) -> dict[str, int]:
            blocks = sum(s.size for s in folder.shards) // 4096
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": 0, "f_bavail": 0,
                    "f_files": len(entries), "f_ffree": 0, "f_namemax": 255}

    return ReadOnlyModel()


def mount(artifacts: Sequence[str | os.PathLike[str] | Artifact], base: str | os.PathLike[str], mountpoint: str | os.PathLike[str], *,
          alphas: Sequence[float] | None = None, cache_size: int | str = DEFAULT_CACHE, shard_size: int | str = "5GB",
          quiet: bool = False) -> None:
    """Serve base + Σ alphas[i] * Δ[i] at ``mountpoint`` until it is unmounted (``paramdelta umount``,
    Ctrl-C or SIGTERM: libfuse unmounts before this returns)."""
    fuse = load_fuse()
    point = Path(mountpoint)
    if not point.is_dir():
        raise FileSystemError(f"{point}: no such folder to mount on")
    if os.path.ismount(point):
        raise FileSystemError(f"{point}: something is mounted there already (`paramdelta umount {point}`)")
    from deltaformat.folder import ModelFolder
    from deltaformat.lazy import open_model  # the format library only when mounting

    with open_model(artifacts, base, alphas=alphas, framework="np", quiet=quiet) as lazy:  # chunks are raw bits: no torch
        folder = ModelFolder(lazy, shard_size, cache_size)

        mounted = threading.Event()
        filler = _PageCacheFiller(point) if hasattr(os, "posix_fadvise") else None

        def ready() -> None:
            mounted.set()
            folder.on_computed = filler
            # A reader starts after the mount is up (a new process: Python, torch and transformers
            # imported, seconds): the workers compute the first shard meanwhile, as far as the cache
            # holds, and its first reads find the chunks computed and in the kernel's page cache.
            folder.compute_ahead()
            # On its own thread: until this returns, the kernel holds every request to the mount.
            threading.Thread(target=_widen_read_ahead, args=(point,), daemon=True).start()
            if not quiet:
                print(f"mount: the ParamΔ model is at {point} ({len(folder.files)} files, computed on read; cache "
                      f"{folder.cache.max_bytes:,} bytes); unmount with `paramdelta umount {point}` or Ctrl-C",
                      file=sys.stderr, flush=True)

        try:
            _reuse_big_buffers()
            own = {os.getpid(), *([filler.thread_id] if filler else [])}
            fuse.FUSE(_operations(folder, fuse, ready, own), str(point), foreground=True, nothreads=False, ro=True, raw_fi=True,
                      fsname="paramdelta", subtype="paramdelta", default_permissions=True, max_threads=MAX_THREADS)
        except RuntimeError as exc:  # libfuse's status: also non-zero when a signal ended the loop
            if not mounted.is_set() or os.path.ismount(point):
                raise FileSystemError(f"{point}: FUSE failed (libfuse status {exc}); or {APPLY_HINT}") from None
        finally:
            folder.on_computed = None
            folder.close()
            if filler is not None:
                filler.close()
        # Unmounted (umount, Ctrl-C or SIGTERM): libfuse has taken the mount down before returning.


class _PageCacheFiller:
    """Hands computed chunks to the kernel's page cache, on a thread of its own.

    ``POSIX_FADV_WILLNEED`` on the chunk's range of the mounted file makes the kernel read
    those pages now (FUSE reads this process serves from the cache, where the chunk just
    went), asynchronously. A random reader (mmap'd pages here and there) then pays for a
    chunk once, not once per 128 KiB read-around, and a reader running behind the workers
    finds its pages without a round trip to Python. The call may wait for the kernel's
    queue of reads, so it is not made on a worker or a FUSE thread. Files are open only
    while there is work, so that an unmount is not refused as busy because of them.
    """

    def __init__(self, point: Path):
        self._point = point
        self._queue: queue.SimpleQueue[tuple[str, int, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="paramdelta-page-cache", daemon=True)
        self._thread.start()
        native_id = self._thread.native_id  # set by start(), which waits for the thread to run
        assert native_id is not None
        self.thread_id = native_id  # what FUSE reports as the pid of the reads it causes

    def __call__(self, rel: str, start: int, end: int) -> None:
        self._queue.put((rel, start, end))

    def _run(self) -> None:
        fds: dict[str, int] = {}
        step = 0
        try:
            while (item := self._queue.get()) is not None:
                rel, start, end = item
                step = step or _widen_read_ahead(self._point)  # once mounted: a read led here
                try:
                    if rel not in fds:
                        fds[rel] = os.open(self._point / rel, os.O_RDONLY)
                    for at in range(start, end, step):  # the kernel reads at most its read-ahead size per call
                        os.posix_fadvise(fds[rel], at, min(step, end - at), os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass  # only an optimisation: a reader's read computes what is missing
                if self._queue.empty():
                    _close_all(fds)
        finally:
            _close_all(fds)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)  # a request to a mount being taken down fails once libfuse has closed it


READ_AHEAD_KIB = 1024  # FUSE's largest read request (256 pages)


def _widen_read_ahead(point: Path) -> int:
    """The mount's read-ahead size in bytes, raised to READ_AHEAD_KIB where this process may.

    The kernel reads ahead at most 128 KiB at a time by default, and a FUSE server cannot
    ask for more at mount time; the mount's own backing device (``/sys/class/bdi/MAJ:MIN``,
    gone when unmounted) takes a larger value from root. Then a reader's page faults and
    the page-cache filler each move 1 MiB per request instead of 128 KiB: 8x fewer round
    trips to Python. Without the permission the default stays, and everything still works.
    """
    dev = os.stat(point).st_dev
    setting = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        if int(setting.read_text()) < READ_AHEAD_KIB:
            setting.write_text(str(READ_AHEAD_KIB))
    except OSError:
        pass
    try:
        return int(setting.read_text()) << 10
    except (OSError, ValueError):
        return 128 << 10


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _reuse_big_buffers() -> None:
    """glibc: buffers up to 32 MiB (any chunk) come from the heap and are reused, at a fixed threshold.

    glibc's default threshold starts at 128 KiB and moves; a fixed 1 MiB (every chunk in
    its own mapping, given back when freed) kept the peak lowest but had every chunk's
    pages faulted in and zeroed anew: measured 0.76 s of system time on top of 1.3 s of
    computing a 297 MiB model (341,000 page faults against 48,000). Computing only on the
    folder's few workers bounds what their heaps keep: about 50 MiB more at the peak than
    with 1 MiB, for a 128 MiB cache.
    """
    from deltaformat._parallel import libc  # numpy with it: only when mounting, not for the CLI's parser

    lib = libc()
    if lib is not None and hasattr(lib, "mallopt"):
        lib.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (a fixed value also stops its adjustment)


def mount_in_background(argv: list[str], mountpoint: str | os.PathLike[str], log: Path, timeout: float = 120.0) -> int:
    """Run ``paramdelta mount ARGV --foreground`` detached (its output in ``log``); return its pid once
    ``mountpoint`` is mounted, or raise with its last message if it stopped first.

    A new process rather than libfuse's fork: forking a Python process whose libraries may
    have started threads (torch's, OpenMP's) is not safe.
    """
    load_fuse()  # the same clear error here, before anything starts
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deltaformat.cli", "mount", *argv, "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise FileSystemError(f"mount stopped before {mountpoint} was mounted: {lines[-1]}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise FileSystemError(f"{mountpoint} was not mounted after {timeout:.0f} s; see {log}")
        time.sleep(0.05)
    return proc.pid


def unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Unmount a paramdelta mount (the serving process then exits)."""
    point = os.fspath(mountpoint)
    if not os.path.ismount(point):
        raise FileSystemError(f"{point}: nothing is mounted there")
    helper = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [helper, "-u", point] if helper else ["umount", point]
    deadline = time.monotonic() + BUSY_WAIT_S
    while (done := subprocess.run(cmd, capture_output=True, text=True)).returncode != 0:
        # The mount's own page-cache filler holds files open while chunks are being computed
        # ahead; it closes them as soon as its queue is empty: busy is retried for a moment.
        if "busy" not in (done.stderr + done.stdout).lower() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"{cmd[0]} exited with {done.returncode}"
        raise FileSystemError(f"{point}: could not unmount ({reason}); a process may still be reading it")


# -- the CLI verbs (argument handling only; deltaformat/cli.py calls these) ----------------------
