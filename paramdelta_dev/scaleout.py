"""The scale-out deployment for tests and benchmarks: one real PostgreSQL, one real Ceph S3 bucket,
and ``paramdelta serve`` replicas sharing them (tests get them from the ``scale_backends`` and
``cluster`` fixtures in tests/conftest.py; bench/registry_scale.py starts its own).

Replicas run as subprocesses on loopback; the cluster the fixtures start has two:

    A  anonymous pull off, blob GETs redirect (307) to presigned URLs signed for a
       recording HTTP forwarder in front of the gateway (PARAMDELTA_S3_PUBLIC_ENDPOINT_URL),
       so tests see exactly what reached "storage"; JSON logs
    B  anonymous pull on, PARAMDELTA_S3_REDIRECT=0: blobs are streamed by the registry

Both use 5 MiB multipart parts, so a few MiB of test data crosses part boundaries.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE
from deltaformat.manifest import parse_manifest
from deltaformat.oci import build_oci_manifest
from paramdelta_dev.serve import ServeProcess
from paramdelta_dev.services import PostgresService, S3Service, start_postgres, start_s3

BUCKET = "paramdelta-scaleout"
PART_BYTES = 5 << 20


@dataclass
class Backends:
    pg: PostgresService
    s3: S3Service
    bucket: str
    workdir: Path

    @property
    def database_url(self) -> str:
        return self.pg.url

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a replica (or a `paramdelta gc`) on these services."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAMDELTA_", "AWS_"))}
        env.update({
            "PARAMDELTA_DATA": str(self.workdir / "unused-data"),
            "PARAMDELTA_DATABASE_URL": self.pg.url,
            "PARAMDELTA_BLOB_STORE": f"s3://{self.bucket}/registry",
            "PARAMDELTA_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "PARAMDELTA_S3_PART_BYTES": str(PART_BYTES),
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": self.s3.region,
        })
        env.update(extra)
        return env

    def settings(self, **overrides: object):  # noqa: ANN201 - registry.settings.Settings
        from registry.settings import Settings

        values = dict(data=self.workdir / "unused-data", database_url=self.pg.url, blob_store=f"s3://{self.bucket}/registry",
                      s3_endpoint_url=self.s3.endpoint_url, s3_part_bytes=PART_BYTES)
        values.update(overrides)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", self.s3.access_key)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", self.s3.secret_key)
        os.environ.setdefault("AWS_DEFAULT_REGION", self.s3.region)
        return Settings(**values)

    def token(self, namespace: str, scope: str) -> str:
        from registry.auth import create_token
        from registry.db import Database

        db = Database(self.pg.url)
        try:
            return create_token(db, namespace, scope)
        finally:
            db.dispose()


class Replica(ServeProcess):
    """``paramdelta serve`` on the shared PostgreSQL and bucket, in a subprocess."""

    probe = "/readyz"  # database and storage both answer

    def __init__(self, backends: Backends, name: str, *args: str, **env: str):
        super().__init__(f"replica {name}", backends.workdir / f"replica-{name}.log", args, backends.env(**env))
        self.backends = backends


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class RecordingProxy:
    """A plain HTTP forwarder in front of the S3 endpoint (the "public" storage host): it passes requests
    through unchanged, Host header included, so presigned signatures still verify, and records them."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> RecordingProxy:
        up = urlsplit(self.upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                record = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                proxy.seen.append(record)
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    conn.request(self.command, self.path, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    body = resp.read() if self.command != "HEAD" else b""
                    record.status = resp.status
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    length = resp.getheader("content-length") if self.command == "HEAD" else str(len(body))
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    if body:
                        self.wfile.write(body)
                finally:
                    conn.close()

            do_GET = do_HEAD = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Cluster:
    backends: Backends
    a: Replica  # redirects to the recording proxy, anonymous pull off, JSON logs
    b: Replica  # streams blobs itself, anonymous pull on
    proxy: RecordingProxy


def start_backends(workdir: Path) -> Backends:
    """PostgreSQL and Ceph S3 under ``workdir``, with the bucket made (stopped again if either fails to start)."""
    pg = start_postgres(workdir)
    try:
        s3 = start_s3(workdir)
    except BaseException:
        pg.stop()
        raise
    s3.make_bucket(BUCKET)
    return Backends(pg, s3, BUCKET, workdir)


def start_cluster(backends: Backends) -> Cluster:
    """Replicas A and B (see the module docstring) and the recording proxy, on ``backends``."""
    proxy = RecordingProxy(backends.s3.endpoint_url).start()
    a = Replica(backends, "a", "--no-anonymous-pull", PARAMDELTA_S3_PUBLIC_ENDPOINT_URL=proxy.url, PARAMDELTA_LOG_FORMAT="json")
    b = Replica(backends, "b", PARAMDELTA_S3_REDIRECT="0")
    a.launch()  # together on an empty database: one creates the schema, the other waits on the migration lock
    b.launch()
    try:
        a.wait_ready()
        b.wait_ready()
    except BaseException:
        a.stop()
        b.stop()
        proxy.stop()
        raise
    return Cluster(backends, a, b, proxy)


def variant(artifact: Path, out: Path, description: str) -> tuple[bytes, bytes]:
    """(manifest.json, OCI manifest) of a copy of ``artifact`` whose manifest.json (the config blob) is unique."""
    shutil.copytree(artifact, out)
    doc = json.loads((out / MANIFEST_FILE).read_bytes())
    doc["description"] = description
    doc["name"] = doc["version"] = None  # names no repository: pushed to several (the registry checks a stated name)
    config = json.dumps(doc, indent=2).encode()
    (out / MANIFEST_FILE).write_bytes(config)
    (out / DIGEST_FILE).write_text(sha256(config) + "\n")
    return config, build_oci_manifest(parse_manifest(config), config)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
