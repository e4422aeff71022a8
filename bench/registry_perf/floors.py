"""The floors: the least a server must do to serve or durably accept the same bytes
(``python -m bench.registry_perf.floors asgi|threaded DIR PORT SINK``, a child process of the benchmark)."""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from pathlib import Path

from bench.registry_perf.config import MiB


def _sink_commit(tmp: Path, sink: Path, hexdigest: str, f) -> None:  # noqa: ANN001
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, sink / hexdigest)


def floor_asgi(directory: str, port: int, sink: str) -> None:
    import anyio.to_thread
    import uvicorn
    from starlette.staticfiles import StaticFiles

    static = StaticFiles(directory=directory)
    sink_dir = Path(sink)

    async def app(scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["method"] != "PUT":
            return await static(scope, receive, send)
        sha, tmp = hashlib.sha256(), sink_dir / f".{uuid.uuid4().hex}"
        f = open(tmp, "wb")
        while True:
            msg = await receive()
            body = msg.get("body", b"")
            sha.update(body)
            f.write(body)
            if not msg.get("more_body"):
                break
        digest = sha.hexdigest()
        await anyio.to_thread.run_sync(_sink_commit, tmp, sink_dir, digest, f)
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"docker-content-digest", b"sha256:" + digest.encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", timeout_keep_alive=30, server_header=False)


def floor_threaded(directory: str, port: int, sink: str) -> None:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    sink_dir = Path(sink)

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the other servers

        def do_PUT(self) -> None:  # noqa: N802
            left = int(self.headers["Content-Length"])
            sha, tmp = hashlib.sha256(), sink_dir / f".{uuid.uuid4().hex}"
            f = open(tmp, "wb")
            while left:
                data = self.rfile.read(min(left, MiB))
                if not data:
                    break
                sha.update(data)
                f.write(data)
                left -= len(data)
            digest = sha.hexdigest()
            _sink_commit(tmp, sink_dir, digest, f)
            self.send_response(201)
            self.send_header("Docker-Content-Digest", "sha256:" + digest)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=directory)).serve_forever()


if __name__ == "__main__":
    kind, directory, port, sink = sys.argv[1:5]
    {"asgi": floor_asgi, "threaded": floor_threaded}[kind](directory, int(port), sink)

