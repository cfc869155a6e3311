"""Process helpers shared by the supervisor and the Litestream driver."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1

# Resolved once, here in the parent. ``die_with_parent`` runs between fork and exec in a child of a
# multi-threaded process, where only async-signal-safe work is sound: ``dlopen``/``dlsym`` there can deadlock
# on a loader lock another thread held at the fork.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in a child between fork and exec: deliver ``sig`` when the spawning thread's process dies.

    Linux ties the signal to the thread that spawned the child, so spawn from a thread that lives as long
    as the child should (agentshards spawns from the thread that runs the supervisor loop). No library is
    loaded or looked up here: ``prctl`` was resolved at import.
    """
    _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


_spawner: ThreadPoolExecutor | None = None


def popen_from_long_lived_thread(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``Popen`` with ``die_with_parent``, run on one thread that lives as long as the process.

    A Litestream restart can be triggered from any thread (a replicated step's confirm, a fleet tick, a
    user's thread pool); spawned from a thread that then exits, the child would get its parent-death
    signal at once (measured: Litestream shut down right after a restart made by a short-lived thread).
    """
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentshards-spawner")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, preexec_fn=die_with_parent, **kwargs)

    return _spawner.submit(spawn).result()
