"""Process helpers shared by the supervisor and the Litestream driver."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in a child between fork and exec: deliver ``sig`` when the spawning thread's process dies.

    Linux ties the signal to the thread that spawned the child, so spawn from a thread that lives as long
    as the child should (agentshards spawns from the thread that runs the supervisor loop).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
