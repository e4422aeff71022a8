"""A loopback TCP proxy that copies bytes between clients and a server on 127.0.0.1, for fault tests.

Tests put it in front of a real registry to change only the wire: pace what clients send, cut
a connection after so many bytes, see a server's kill and restart as a client would. It is a
byte pump, not HTTP-aware (``counting_proxy`` is the HTTP-level one). Subclasses override the
hooks for what differs; the listener, accept loop and the way connections end are shared.

Directions are ``"up"`` (client to server) and ``"down"`` (server to client).
"""

from __future__ import annotations

import socket
import threading

RECV_BYTES = 16 << 10  # small enough that pacing sleeps in short steps


class LoopbackProxy:
    """Listens on 127.0.0.1 (``host``, ``url``) and connects each client to 127.0.0.1:``upstream_port``.

    The listener outlives the server behind it, so clients see a server restart on the same
    address. Subclasses set their own state before calling ``__init__``: the accept thread
    starts here.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting; connections already open end when either side ends them."""
        self.listener.close()

    # Hooks.

    def next_cut(self) -> tuple[str, int] | None:
        """Called once per accepted connection: ``(direction, n)`` cuts it after ``n`` bytes went that way."""
        return None

    def on_data(self, way: str, data: bytes) -> None:
        """Called with each piece read, before it is passed on: record it, or sleep to pace the wire."""

    def upstream_down(self, conn: socket.socket) -> None:
        """The server refused the connection (it is down): by default the client sees its connection closed."""
        conn.close()

    # The pump.

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            cut = self.next_cut()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                self.upstream_down(conn)
                continue
            both = (conn, upstream)
            for src, dst, way in ((conn, upstream, "up"), (upstream, conn, "down")):
                limit = cut[1] if cut and cut[0] == way else None
                threading.Thread(target=self._pump, args=(src, dst, way, limit, both), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str, limit: int | None,
              both: tuple[socket.socket, socket.socket]) -> None:
        """Copy ``src`` to ``dst`` until EOF (passed on as a half-close), an error or the cut (both sides dropped).

        When the server's side ends, for whatever reason (a reset by a kill included), the
        client's ends too, and both sockets are closed: nothing more can come from the server.
        """
        count = 0
        try:
            while data := src.recv(RECV_BYTES):
                self.on_data(way, data)
                if limit is not None and count + len(data) > limit:
                    dst.sendall(data[: limit - count])
                    _drop(both)  # the cut: both sides see the connection drop
                    return
                dst.sendall(data)
                count += len(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            _drop(both)
        finally:
            if way == "down":
                _drop(both)
                for s in both:
                    s.close()


def _drop(both: tuple[socket.socket, socket.socket]) -> None:
    """Shut both sockets down (not just close them): it wakes the other pump's blocked recv and tells the peer."""
    for s in both:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
