"""A loopback TCP proxy in front of an S3 server that counts HTTP requests and injects faults.

Faults, each switchable at any moment:

* ``outage()``: connection refused, and every open connection dropped (an S3 server "offline").
* ``errors(rate, only=...)``: that fraction of requests (with ``only``: of the requests whose request line,
  e.g. ``PUT /bucket/prefix/archive/a1.db``, contains it) answered ``503 SlowDown`` / ``500 InternalError``
  by the proxy itself (the request never reaches the server) and the connection closed.
* ``hang()``: every open connection and every new one becomes a black hole: bytes are read and
  dropped, nothing ever comes back. ``resume()`` serves new connections again but the hung ones stay
  hung, as a half-dead TCP connection does.

Used by the replication tests, scripts/bench_replication.py, bench_fleet.py (request counts) and
scripts/chaos.py (faults).
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import threading

_ERRORS = (
    (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
)


class _Conn:
    """One proxied client connection: its two sockets and whether it is a black hole."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client, self.upstream = client, upstream
        self.hung = upstream is None

    def close(self) -> None:
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream> (see the module docstring for the faults)."""

    def __init__(self, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream = upstream_port
        self.requests = 0
        self.request_lines: collections.deque[str] = collections.deque(maxlen=100_000)  # "GET /bucket?list-type=2"
        self.injected = 0          # requests answered with an injected 5xx
        self.error_rate = 0.0
        self.error_only: str | None = None
        self._hanging = False
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.resume()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults ------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Accept and forward again; no injected errors. Connections that were hung stay hung."""
        self.error_rate, self.error_only = 0.0, None
        self._hanging = False
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
            conn.close()

    def errors(self, rate: float, *, only: str | None = None) -> None:
        """Answer ``rate`` of the requests from now on with an injected 503/500; with ``only``, just those
        whose request line contains it (one kind of request fails, the rest of the traffic flows)."""
        self.error_rate, self.error_only = rate, only

    def hang(self) -> None:
        """Every open connection and each new one stops answering, for good."""
        self._hanging = True
        with self._lock:
            for conn in self._conns:
                conn.hung = True

    @property
    def hung_connections(self) -> int:
        with self._lock:
            return sum(conn.hung for conn in self._conns)

    def close(self) -> None:
        self.outage()

    # -- plumbing ----------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = None
            if not self._hanging:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream))
                except OSError:
                    client.close()
                    continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._from_client, args=(conn,), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._from_server, args=(conn,), daemon=True).start()

    def _from_client(self, conn: _Conn) -> None:
        """Forward requests, parsing just enough HTTP/1.1 (head, Content-Length) to see each one start."""
        head, body_left, passthrough = b"", 0, False
        try:
            while data := conn.client.recv(65536):
                if conn.hung or conn.upstream is None:
                    continue  # a black hole reads and drops
                out = bytearray()
                while data:
                    if passthrough:
                        out += data
                        break
                    if body_left:
                        out += data[:body_left]
                        data, body_left = data[body_left:], max(0, body_left - len(data))
                        continue
                    head += data
                    data = b""
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    request, data, head = head[:end + 4], head[end + 4:], b""
                    line = request.split(b"\r\n", 1)[0].decode("latin-1").rsplit(" ", 1)[0]
                    with self._lock:
                        self.requests += 1
                        self.request_lines.append(line)
                        fail = (self.error_rate > 0 and (self.error_only is None or self.error_only in line)
                                and self._rng.random() < self.error_rate)
                        self.injected += fail
                    if fail:
                        if out:
                            conn.upstream.sendall(out)
                        self._inject_error(conn)
                        return
                    out += request
                    body_left, passthrough = _body_length(request)
                if out:
                    conn.upstream.sendall(out)
        except OSError:
            pass
        finally:
            self._finish(conn)

    def _from_server(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        try:
            while data := conn.upstream.recv(65536):
                if not conn.hung:
                    conn.client.sendall(data)
        except OSError:
            pass
        finally:
            self._finish(conn)

    def _inject_error(self, conn: _Conn) -> None:
        status, reason, code, message = self._rng.choice(_ERRORS)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>fault-proxy</RequestId></Error>").encode()
        conn.client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    def _finish(self, conn: _Conn) -> None:
        """Either direction ending closes the connection: no descriptor outlives it."""
        conn.close()
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
            else:
                return
        # the other direction's thread is woken by the shutdown above; closing here is safe after it
        for s in (conn.client, conn.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def _body_length(head: bytes) -> tuple[int, bool]:
    """(Content-Length, passthrough): a chunked body is not parsed, the rest of the connection is forwarded."""
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip() or 0)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked
