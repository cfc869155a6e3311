"""Live progress for long commands (run, recover, restore --all, archive --all-finished), drawn with rich.

Shown on stderr, only when stderr is a terminal and neither ``--json`` nor ``-q`` is given: a script or a
log file gets the final result and no escape codes. A fleet's progress is read from what its supervisor
already publishes (``.fleet/status.json``) and spend from the shards (read-only, cached per file), so the
display needs no hook in the library and adds no work to the supervisor loop.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from .._replication.states import ENDED, GAVE_UP
from .output import CTX

FINAL = ENDED | {GAVE_UP}
"""States a command's progress counts as done (a gave_up agent is done here; recover takes it later)."""


def live_allowed() -> bool:
    return not CTX.json and not CTX.quiet and sys.stderr.isatty()


class Progress:
    """A one-line live status: counts by state, elapsed, spend so far. A no-op when not on a terminal."""

    def __init__(self, title: str, total: int, read: Callable[[], dict[str, Any]], *, interval_s: float = 0.5) -> None:
        self.title, self.total, self._read, self.interval_s = title, total, read, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._live: Any = None
        self._final: dict[str, Any] | None = None

    def finish(self, states: dict[str, int]) -> None:
        """The outcome the command itself knows (its supervisor may be gone by the time the display closes)."""
        self._final = {**self._safe_read(), "states": states}

    def __enter__(self) -> Progress:
        if live_allowed():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render({}), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.__enter__()
            self._thread = threading.Thread(target=self._loop, name="agentshards-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._live is not None:
            self._live.update(self._render(self._final if self._final is not None else self._safe_read()))
            self._live.__exit__(exc_type, exc, tb)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._live.update(self._render(self._safe_read()))

    def _safe_read(self) -> dict[str, Any]:
        try:
            return self._read()
        except Exception:  # a progress line must never break the command it decorates
            return {}

    def _render(self, view: dict[str, Any]) -> Any:
        from rich.text import Text

        states: Counter[str] = Counter(view.get("states", {}))
        done = sum(n for s, n in states.items() if s in FINAL)
        text = Text(f"{self.title}: ", style="bold")
        text.append(f"{done}/{self.total} done" if self.total else f"{done} done")
        for state in sorted(states):
            style = "green" if state == "succeeded" else "red" if state in ("failed", "gave_up") else "cyan"
            text.append(f"  {state} {states[state]}", style=style)
        text.append(f"  {time.monotonic() - self._started:.0f}s")
        if view.get("spent_usd") is not None:
            text.append(f"  spent ${view['spent_usd']:.4f}")
        if view.get("saved_usd"):
            text.append(f" (saved ${view['saved_usd']:.4f})")
        return text


class FleetProgressSource:
    """Counts from the supervisor's published status; spend from the shards, re-read at a pace that keeps
    the reading itself under ~10 % of the time (at a thousand busy agents a full pass takes a second)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._view: Any = None
        self._spend: tuple[float, float] | None = None
        self._next_spend = 0.0
        self._spend_cost = 0.0

    def __call__(self) -> dict[str, Any]:
        from .._fleet.views import live_states

        states = Counter(state.status for state in live_states(self.data_dir).values())
        now = time.monotonic()
        if now >= self._next_spend:
            from .._fleet.views import FleetView

            if self._view is None:
                self._view = FleetView(self.data_dir, threads=2)
            totals = self._view.snapshot()["totals"]
            self._spend = (totals["spent_usd"], totals["saved_usd"])
            self._spend_cost = time.monotonic() - now
            self._next_spend = time.monotonic() + max(2.0, 10 * self._spend_cost)
        spent, saved = self._spend or (None, None)
        return {"states": dict(states), "spent_usd": spent, "saved_usd": saved}

    def close(self) -> None:
        if self._view is not None:
            self._view.close()


@contextmanager
def fleet_progress(title: str, data_dir: Path, total: int) -> Iterator[Progress]:
    source = FleetProgressSource(data_dir)
    try:
        with Progress(title, total, source) as progress:
            yield progress
    finally:
        source.close()


def outcome_states(results: dict[str, Any]) -> dict[str, int]:
    """Counts of a finished batch: each agent succeeded, or failed with the exception it ended with."""
    failed = sum(1 for value in results.values() if isinstance(value, BaseException))
    return {k: v for k, v in (("succeeded", len(results) - failed), ("failed", failed)) if v}


class Counts:
    """Progress of a loop the CLI drives itself (restores, archives): thread-safe counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.states: Counter[str] = Counter()

    def add(self, state: str) -> None:
        with self._lock:
            self.states[state] += 1

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            return {"states": dict(self.states)}
