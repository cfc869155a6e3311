"""A loopback TCP proxy that counts HTTP requests and can refuse connections (an S3 server "offline").

Used by the replication tests and by scripts/bench_replication.py (which counts idle requests with it).
"""

from __future__ import annotations

import contextlib
import socket
import threading

_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream>; ``outage()`` refuses and drops connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.requests = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.resume()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        if self._listener is not None:  # already accepting
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def outage(self) -> None:
        """Connection refused from now on, and every open connection dropped."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in another thread
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.outage()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:  # HTTP requests = request lines sent by the client (keep-alive carries many)
                    hits = sum(data.count(b"\r\n" + m) for m in _METHODS) + data.startswith(_METHODS)
                    with self._lock:
                        self.requests += hits
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:  # each direction's thread closes its source: no descriptor outlives the connection
                if src in self._conns:
                    self._conns.remove(src)
            src.close()
