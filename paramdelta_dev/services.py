"""Real backing services for integration tests: PostgreSQL 15, Ceph S3, Chromium.

The heavy lifting is in ``scripts/services/{pg,s3}-{up,down}.sh`` (also usable by
hand); this module picks free ports, runs them, and gives back handles::

    pg = start_postgres(tmp_path)      # PostgresService(.url, .port, .stop())
    s3 = start_s3(tmp_path)            # S3Service(.endpoint_url, .access_key, ...)
    s3.make_bucket("artifacts")
    ...
    s3.stop(); pg.stop()               # idempotent; also run at interpreter exit

The system packages come from ``scripts/install-system-deps.sh``. When they are
missing the start functions raise RuntimeError naming what is missing; whether
to skip is the caller's decision.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paramdelta_dev.ports import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "scripts" / "services"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL_HINT = "run scripts/install-system-deps.sh"

S3_ACCESS_KEY = "testkey"
S3_SECRET_KEY = "testsecret"
# RGW's zonegroup is "default", but it accepts SigV4 for any region name; with
# us-east-1 boto3 sends no LocationConstraint on CreateBucket, which RGW wants.
S3_REGION = "us-east-1"

# Flags for headless Chromium on these machines: as root it needs --no-sandbox,
# and without the background-networking flags it keeps dialling Google's hosts
# through a closed network. Add a fresh --user-data-dir per run.
CHROMIUM_HEADLESS_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# Unix socket paths are capped at 107 bytes; Ceph's admin sockets and
# PostgreSQL's socket live under the state folder, so keep that short.
_MAX_STATE_PATH = 60


# --------------------------------------------------------------------------- #
# shared plumbing


def _missing_executables(names: list[str]) -> list[str]:
    missing = []
    for name in names:
        if os.path.isabs(name):
            if not os.access(name, os.X_OK):
                missing.append(name)
        elif shutil.which(name) is None:
            missing.append(name)
    return missing


def _require(what: str, names: list[str]) -> None:
    missing = _missing_executables(names)
    if missing:
        raise RuntimeError(
            f"{what} cannot start: missing executable(s) {', '.join(missing)} ({INSTALL_HINT})"
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _script_env(extra: dict[str, str]) -> dict[str, str]:
    # The `ceph` CLI is a /usr/bin/python3 script: a venv's PYTHONPATH or
    # PYTHONHOME leaking into it can break its imports.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def _run_script(
    script: str, env: dict[str, str], log_dir: Path, timeout: float, *, output: bool = True
) -> str:
    """Run ``scripts/services/<script>``; return its last stdout line (required
    when ``output``, else may be empty).

    stdout/stderr go to files, not pipes: the Ceph daemons daemonize from the
    script, and a daemon that kept an inherited pipe open would make a
    pipe-reading caller wait for it forever. Raises RuntimeError on failure.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = script.removesuffix(".sh")
    out_path, err_path = log_dir / f"{stem}.stdout", log_dir / f"{stem}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            ["bash", str(SCRIPTS_DIR / script)],
            env=_script_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # own process group, so a timeout kills it all
        )
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout or Ctrl-C: don't leave the script running
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise RuntimeError(
                    f"{script} did not finish within {timeout:.0f}s; stderr:\n{_tail(err_path)}"
                ) from exc
            raise
    if rc != 0:
        raise RuntimeError(
            f"{script} failed with exit code {rc}; stderr:\n{_tail(err_path)}"
        )
    lines = [ln for ln in out_path.read_text().splitlines() if ln.strip()]
    if not lines and not output:
        return ""
    if not lines:
        raise RuntimeError(f"{script} printed nothing on stdout; stderr:\n{_tail(err_path)}")
    return lines[-1].strip()


def _state_dir(workdir: Path, name: str, max_len: int = _MAX_STATE_PATH) -> tuple[Path, bool]:
    """Pick ``workdir/name``, or a fresh folder in /tmp if that path is too long
    for unix sockets. Returns (path, is_private_tmp)."""
    path = (Path(workdir) / name).resolve()
    if len(str(path)) <= max_len:
        return path, False
    return Path(tempfile.mkdtemp(prefix=f"paramdelta-{name}-", dir="/tmp")), True


class _Stopper:
    """Idempotent, thread-safe stop with an atexit safety net (stays registered
    after an explicit stop, as a no-op: unregistering from inside an atexit run
    is not something to rely on)."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False
        atexit.register(self)

    @property
    def stopped(self) -> bool:
        return self._done

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


# --------------------------------------------------------------------------- #
# PostgreSQL


def _bring_up(service: str, env: dict[str, str], log_dir: Path, timeout: float, down_timeout: float,
              private_dir: Path | None) -> tuple[str, float, _Stopper]:
    """Run scripts/services/<service>-up.sh; return (its last line, seconds taken, a stopper).

    The stopper runs <service>-down.sh and removes ``private_dir``; it also runs when the
    up-script fails (the script cleans up after itself; this covers a killed one).
    """

    def down() -> None:
        try:
            _run_script(f"{service}-down.sh", env, log_dir, timeout=down_timeout, output=False)
        finally:
            if private_dir is not None:
                shutil.rmtree(private_dir, ignore_errors=True)

    started = time.monotonic()
    try:
        url = _run_script(f"{service}-up.sh", env, log_dir, timeout)
    except BaseException:
        try:
            down()
        except Exception:
            pass
        raise
    return url, time.monotonic() - started, _Stopper(down)


@dataclass
class PostgresService:
    """A running scratch PostgreSQL 15 cluster (trust auth, user ``postgres``)."""

    url: str  # postgresql+psycopg2://postgres@127.0.0.1:PORT/paramdelta
    port: int
    data_dir: Path
    database: str = "paramdelta"
    user: str = "postgres"
    host: str = "127.0.0.1"
    startup_seconds: float = 0.0
    _stopper: _Stopper | None = field(default=None, repr=False, compare=False)

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "socket"

    @property
    def stopped(self) -> bool:
        return self._stopper is not None and self._stopper.stopped

    def stop(self) -> None:
        """Stop the server (fast shutdown). Safe to call more than once."""
        if self._stopper is not None:
            self._stopper()


def _postgres_can_reach(path: Path) -> bool:
    """As root the server runs as ``postgres``, which needs search permission on
    every parent folder (pytest's /tmp/pytest-of-root is 0700)."""
    if os.geteuid() != 0:
        return True
    return (
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        == 0
    )


def start_postgres(workdir: Path, *, timeout: float = 120.0) -> PostgresService:
    """Start a scratch PostgreSQL 15 on a free 127.0.0.1 port, with database
    ``paramdelta``. Data goes to ``workdir/pg`` (or a private /tmp folder when
    the ``postgres`` user can't reach ``workdir`` or the path is too long)."""
    needed = [str(PG_BIN / "initdb"), str(PG_BIN / "pg_ctl"), str(PG_BIN / "psql")]
    if os.geteuid() == 0:
        needed.append("runuser")
    _require("PostgreSQL", needed)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir, private = _state_dir(workdir, "pg")
    if not private and not _postgres_can_reach(workdir):
        data_dir, private = Path(tempfile.mkdtemp(prefix="paramdelta-pg-", dir="/tmp")), True
    log_dir = workdir / "pg-logs"
    port = free_ports(1)[0]
    env = {"PGDATA_DIR": str(data_dir), "PG_PORT": str(port), "PG_BIN": str(PG_BIN)}

    url, seconds, stopper = _bring_up("pg", env, log_dir, timeout, 60, data_dir if private else None)
    return PostgresService(url=url, port=port, data_dir=data_dir, startup_seconds=seconds, _stopper=stopper)


# --------------------------------------------------------------------------- #
# S3 (Ceph RADOS Gateway)


@dataclass
class S3Service:
    """A running single-node Ceph cluster with a RADOS Gateway (S3) on loopback."""

    endpoint_url: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str
    state_dir: Path
    rgw_port: int
    mon_ports: tuple[int, int]  # (msgr2, msgr1)
    startup_seconds: float = 0.0
    _stopper: _Stopper | None = field(default=None, repr=False, compare=False)

    @property
    def stopped(self) -> bool:
        return self._stopper is not None and self._stopper.stopped

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this endpoint: SigV4, path-style addressing
        (no DNS for bucket subdomains here). Extra kwargs go to botocore Config."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            **config,
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=cfg,
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 chars, S3 naming rules) and return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop gateway, OSD, then mon (all data is lost). Safe to call twice."""
        if self._stopper is not None:
            self._stopper()


def start_s3(workdir: Path, *, timeout: float = 180.0) -> S3Service:
    """Start Ceph (mon + memstore OSD + radosgw) on free loopback ports with
    state in ``workdir/ceph`` (wiped). Returns once the gateway answers HTTP."""
    _require(
        "Ceph S3",
        ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph", "curl"],
    )
    try:
        import boto3  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("Ceph S3 helpers need boto3 (pip install boto3)") from exc

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir, private = _state_dir(workdir, "ceph")
    log_dir = workdir / "ceph-logs"
    rgw_port, mon_v2, mon_v1 = free_ports(3)
    env = {
        "C": str(state_dir),
        "RGW_PORT": str(rgw_port),
        "MON_PORT_V2": str(mon_v2),
        "MON_PORT_V1": str(mon_v1),
        "S3_UP_TIMEOUT": str(int(min(timeout, 120))),
    }

    url, seconds, stopper = _bring_up("s3", env, log_dir, timeout, 120, state_dir if private else None)
    return S3Service(
        endpoint_url=url,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        region=S3_REGION,
        state_dir=state_dir,
        rgw_port=rgw_port,
        mon_ports=(mon_v2, mon_v1),
        startup_seconds=seconds,
        _stopper=stopper,
    )


# --------------------------------------------------------------------------- #
# Chromium


def chromium_path() -> str | None:
    """Path of a headless-capable Chromium, or None. ``$CHROMIUM`` wins if set."""
    env = os.environ.get("CHROMIUM")
    if env and os.access(env, os.X_OK):
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """Like chromium_path(), but raise RuntimeError when there is none."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(
            f"Chromium not found (Debian package 'chromium'; {INSTALL_HINT})"
        )
    return path
