"""How an async agent runs its SQLite work (apsw is synchronous) without stalling its event loop.

Every journal read and write of an async step goes through one of these. Measured with
``scripts/bench_async.py`` on a 2-core VM, 2026-12-02 (synchronous=FULL, 1,000 agents on one loop, one LLM
step each every 5 s): worst loop stall 0.31 s with ``writer`` (p99 41 ms), 2.5 s with ``thread`` (p99
2.1 s), 4.3 s with ``inline`` (p99 3.3 s). One agent alone: +4.1, +4.5 and +2.7 ms per LLM call.

- ``writer`` (the default): one shared writer thread per process. A commit's fsync runs off the loop, and
  only one other thread competes with the loop for the GIL: every socket call of the HTTP client's
  connection pool releases the GIL, and with a pool of busy threads the loop waits to get it back each
  time (a convoy that grew into second-long stalls). Commits of all agents queue behind each other: at
  1,000 agents x one step / 5 s that is 600 commits/s, ~0.2 s of fsync per second at 0.35 ms each.
- ``thread``: ``asyncio.to_thread``, the loop's default thread pool: commits of different agents overlap.
- ``inline``: the call runs on the loop thread itself: no thread hop, but every fsync stalls every agent.

(apsw's own async mode would cost a thread per connection: too many at 1,000 agents.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["thread", "writer", "inline"]
Offload = Callable[..., Awaitable[Any]]

DEFAULT_MODE: Mode = "writer"

_writer: concurrent.futures.ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


async def in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def in_writer(fn: Callable[..., T], /, *args: Any) -> T:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentshards-writer")
    context = contextvars.copy_context()  # as asyncio.to_thread does: log routing reads context variables
    return await asyncio.get_running_loop().run_in_executor(_writer, context.run, fn, *args)


async def inline(fn: Callable[..., T], /, *args: Any) -> T:
    return fn(*args)


MODES: dict[str, Offload] = {"thread": in_thread, "writer": in_writer, "inline": inline}


def offload(mode: str | None = None) -> Offload:
    """The offload function for ``mode`` (default: ``DEFAULT_MODE``)."""
    return MODES[mode or DEFAULT_MODE]
