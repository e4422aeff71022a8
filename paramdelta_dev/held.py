"""A request whose headers reach the server now and whose body is held back: what a hostile or stalled client does."""

from __future__ import annotations

import http.client
import json
import socket
import time
from datetime import timedelta
from typing import Protocol

from sqlalchemy import update

from registry.db import Database, utcnow
from registry.db.models import UploadSession


class _Server(Protocol):
    port: int
    host: str


class HeldRequest:
    """A request on a raw socket whose headers are sent now and whose body is held back until ``send_body``:
    the server has begun the request (auth, its hold on the upload, the writer) and waits for the bytes."""

    def __init__(self, srv: _Server, method: str, path: str, token: str, length: int | None, **headers: str):
        """``length`` None: a body of unannounced length (chunked transfer encoding)."""
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        self.chunked = length is None
        framing = "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {length}"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {srv.host}", f"Authorization: Bearer {token}",
                 "Content-Type: application/octet-stream", framing,
                 *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()), "", ""]
        self.sock.sendall("\r\n".join(lines).encode())

    def send_body(self, body: bytes) -> tuple[int, dict]:
        """Send the body; the server's answer as (status, JSON body or {})."""
        self.sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if self.chunked else body)
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        data = resp.read()
        self.sock.close()
        return resp.status, json.loads(data) if data else {}


class UploadRows:
    """A registry's upload_sessions rows, read and (to stand for time passing) changed in its own database."""

    def __init__(self, database_url: str):
        self.db = Database(database_url, migrate=False)

    def row(self, upload_id: str) -> UploadSession | None:
        with self.db.session() as s:
            return s.get(UploadSession, upload_id)

    def wait_until_held(self, upload_id: str) -> None:
        """Until a request holds the upload's lease: the held request got that far (bounded wait, no timing asserted)."""
        deadline = time.monotonic() + 30
        while (row := self.row(upload_id)) is not None and row.lease is None:
            assert time.monotonic() < deadline, f"no request took upload {upload_id}"
            time.sleep(0.02)

    def lapse_lease(self, upload_id: str) -> None:
        """As if the request holding the upload had stalled past its lease."""
        with self.db.session() as s:
            s.execute(update(UploadSession).where(UploadSession.id == upload_id)
                      .values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    def close(self) -> None:
        self.db.dispose()
