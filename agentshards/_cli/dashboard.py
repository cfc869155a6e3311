"""``agentshards dashboard``: a local web page over a data dir, for people who would rather look than read.

The page is one static file (``dashboard.html``: its own CSS, JavaScript and SVG drawing, nothing from a
CDN) that polls two JSON endpoints fed by :class:`~agentshards._fleet.views.FleetView` (read-only, cached
per file): serving the page, however often it refreshes, writes nothing to the data dir. The server
binds 127.0.0.1 only: the page shows prompts' previews and spend, which are not for the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .._base.errors import AgentShardsError
from .._fleet.views import FleetView, agent_timeline


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):  # a page elsewhere that rebinds its name to 127.0.0.1
            self._json(403, {"error": "the dashboard answers only http://127.0.0.1 and http://localhost"})
            return
        try:
            if path == "/":
                self._send(200, "text/html; charset=utf-8", self.server.page)
            elif path == "/api/fleet":
                self._json(200, self.server.view.snapshot())
            elif path.startswith("/api/agent/"):
                agent_id = unquote(path[len("/api/agent/"):])
                self._json(200, agent_timeline(self.server.view.data_dir, agent_id))
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
            else:
                self._json(404, {"error": f"no such page: {path}"})
        except AgentShardsError as exc:
            self._json(404 if isinstance(exc, ValueError) else 500, {"error": str(exc)})
        except ConnectionError:  # the tab closed while we answered
            pass
        except Exception as exc:  # one line on the page, never a traceback on the terminal
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _json(self, code: int, payload: object) -> None:
        self._send(code, "application/json", json.dumps(payload).encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a poll per second per open page would drown the terminal


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A tab closed mid-answer is normal for a page that polls; nothing is printed for it."""

    def __init__(self, port: int, view: FleetView) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.view = view
        self.page = resources.files(__package__).joinpath("dashboard.html").read_bytes()


class Dashboard:
    """A running dashboard; ``url`` is where to point a browser. Use as a context manager or call close()."""

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int = 0) -> None:
        path = Path(data_dir)
        if not path.is_dir():
            from .._base.errors import ShardError

            raise ShardError(f"no data dir at {path}", hint="pass the --data-dir a fleet or run_agent wrote to")
        self.view = FleetView(path)
        self.view.snapshot()  # warm the cache before the first page asks: the page is then ready at once
        self._server = _Server(port, self.view)
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.view.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(data_dir: str | os.PathLike[str], port: int, echo: Callable[[str], None]) -> None:
    """Serve until interrupted (the CLI's foreground mode)."""
    with Dashboard(data_dir, port=port) as dashboard:
        echo(f"dashboard for {data_dir} at {dashboard.url} (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
