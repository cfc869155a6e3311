"""How an async agent runs its SQLite work (apsw is synchronous) without stalling its event loop.

Every journal read and write of an async step goes through one of these. Measured with
``scripts/bench_async.py`` (see docs/agents.md, "Async agents"):

- ``thread`` (the default): ``asyncio.to_thread``, the loop's default thread pool. A commit's fsync runs
  off the loop, and the commits of different agents overlap on the pool's threads.
- ``writer``: one shared writer thread for the whole process. Commits of all agents queue behind each
  other, one fsync at a time.
- ``inline``: the call runs on the loop thread itself. No thread hop, but every fsync stalls every
  agent on the loop.

(apsw's own async mode would cost a thread per connection: too many at 1,000 agents.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["thread", "writer", "inline"]
Offload = Callable[..., Awaitable[Any]]

DEFAULT_MODE: Mode = "thread"

_writer: concurrent.futures.ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


async def in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def in_writer(fn: Callable[..., T], /, *args: Any) -> T:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentshards-writer")
    return await asyncio.get_running_loop().run_in_executor(_writer, fn, *args)


async def inline(fn: Callable[..., T], /, *args: Any) -> T:
    return fn(*args)


MODES: dict[str, Offload] = {"thread": in_thread, "writer": in_writer, "inline": inline}


def offload(mode: str | None = None) -> Offload:
    """The offload function for ``mode`` (default: ``DEFAULT_MODE``)."""
    return MODES[mode or DEFAULT_MODE]
