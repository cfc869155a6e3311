"""``agentshards dashboard``: a local web page over a data dir, for people who would rather look than read.

The page is one static file (``dashboard.html``: its own CSS, JavaScript and SVG drawing, nothing from a
CDN) that polls two JSON endpoints. Everything is read through read-only connections and kept in memory:
serving the page, however often it refreshes, writes nothing to the data dir.

At a thousand agents, opening every shard on every refresh would cost a second or more, so each agent's
summary is cached against its files' (size, mtime) signature and re-read only when a file changed: a
refresh of an idle fleet is a ``stat`` per file. The server binds 127.0.0.1 only: the page shows prompts'
previews and spend, which are not for the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .._base.errors import AgentShardsError
from .._fleet.views import AgentSummary, agent_summary, agent_timeline, live_states, shard_ids

_ROW_FIELDS = tuple(f.name for f in fields(AgentSummary) if f.name != "ledger")

SERIES_POINTS = 120
"""Points in the spend-over-time chart: enough to show a shape, few enough to draw at once."""


@dataclass
class _Cached:
    signature: tuple[int, ...]
    summary: AgentSummary | None
    error: str | None


class FleetView:
    """The data dir as the page sees it: per-agent summaries, cached by file signature, plus live state."""

    def __init__(self, data_dir: Path, *, threads: int = 8) -> None:
        self.data_dir = data_dir
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dashboard")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def snapshot(self) -> dict[str, Any]:
        """Every agent's row, counts by state, totals, and cumulative spend/saved over time."""
        ids = shard_ids(self.data_dir)
        stale = [i for i in ids if self._is_stale(i)]
        for agent_id, cached in zip(stale, self._pool.map(self._read, stale), strict=True):
            with self._lock:
                self._cache[agent_id] = cached
        with self._lock:
            for gone in set(self._cache) - set(ids):
                del self._cache[gone]
            cached_now = {i: self._cache[i] for i in ids}
        live = live_states(self.data_dir)
        agents: list[dict[str, Any]] = []
        errors: list[dict[str, str | None]] = []
        states: dict[str, int] = {}
        for agent_id in ids:
            entry = cached_now[agent_id]
            if entry.summary is None:
                errors.append({"agent_id": agent_id, "error": entry.error})
                continue
            row = {name: getattr(entry.summary, name) for name in _ROW_FIELDS}
            state = live.get(agent_id)
            if state is not None:
                row.update(status=state.status, restarts=state.restarts, reason=state.reason or row["reason"])
            states[row["status"]] = states.get(row["status"], 0) + 1
            agents.append(row)
        return {"data_dir": str(self.data_dir), "generated_at": time.time(), "agents": agents, "errors": errors,
                "states": states, "totals": _totals(agents), "series": self._series(ids, cached_now)}

    def _is_stale(self, agent_id: str) -> bool:
        with self._lock:
            cached = self._cache.get(agent_id)
        return cached is None or cached.signature != self._signature(agent_id)

    def _signature(self, agent_id: str) -> tuple[int, ...]:
        parts: list[int] = []
        base = os.path.join(self.data_dir, agent_id)
        for suffix in (".db", ".db-wal"):
            try:
                st = os.stat(base + suffix)
                parts += [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                parts += [-1, -1]
        return tuple(parts)

    def _read(self, agent_id: str) -> _Cached:
        signature = self._signature(agent_id)  # taken before the read: a write during it marks it stale again
        try:
            return _Cached(signature, agent_summary(self.data_dir, agent_id), None)
        except AgentShardsError as exc:
            return _Cached(signature, None, str(exc))

    def _series(self, ids: list[str], cached: dict[str, _Cached]) -> list[dict[str, float]]:
        events = sorted(e for i in ids if (s := cached[i].summary) is not None for e in s.ledger)
        if not events:
            return []
        start, end = events[0][0], events[-1][0]
        step = max((end - start) / (SERIES_POINTS - 1), 1e-9)
        points: list[dict[str, float]] = []
        spent = saved = 0.0
        bucket = 0
        for at, event, cost in events:
            index = int((at - start) / step)
            while bucket < index:
                points.append({"t": start + bucket * step, "spent": spent, "saved": saved})
                bucket += 1
            if event == "call":
                spent += cost
            else:
                saved += cost
        points.append({"t": end, "spent": spent, "saved": saved})
        return [{k: round(v, 10) for k, v in p.items()} for p in points]


def _totals(agents: list[dict[str, Any]]) -> dict[str, float | int]:
    return {"agents": len(agents), "spent_usd": round(sum(a["spent_usd"] for a in agents), 10),
            "saved_usd": round(sum(a["saved_usd"] for a in agents), 10),
            "llm_calls": sum(a["llm_calls"] for a in agents), "restarts": sum(a["restarts"] for a in agents)}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = urlparse(self.path).path
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
