"""The lease deadline a fleet's supervisor hands its workers: 16 bytes in ``.fleet/lease-deadline``.

The supervisor's lease keeper fences the node by killing the workers' zygote, which it cannot do while the
supervisor process itself is paused (SIGSTOP, a frozen VM): its workers would go on committing steps and
sending LLM requests after another node may have taken the prefix over. So the supervisor writes the lease's
deadline here after each renewal, and each worker reads it before every commit and LLM request
(``_core.fence``) and stops writing once its own clock passes it.

The deadline is a CLOCK_MONOTONIC reading, which is system-wide on Linux, so it means the same in a worker
as in the supervisor. The file holds it twice (little-endian doubles): a reader that sees two different
values caught a write half done and reads again. Workers map the file once; a check is a memory read.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from pathlib import Path

from .._base.errors import Fenced

FENCE_FILE = "lease-deadline"
_FORMAT = struct.Struct("<dd")


def fence_path(fleet_dir: Path) -> Path:
    return fleet_dir / FENCE_FILE


class DeadlineWriter:
    """The supervisor's side: ``write(deadline)`` is a LeaseKeeper renewal listener (one pwrite, no fsync:
    the workers read the page cache, and after a reboot no worker is left to read it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._lock = threading.Lock()
        self.write(-1.0)  # fenced until the lease's first deadline is written: never a stale file's value

    def write(self, deadline: float) -> None:
        with self._lock:
            if self._fd >= 0:
                os.pwrite(self._fd, _FORMAT.pack(deadline, deadline), 0)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class DeadlineFence:
    """A worker's side: the check ``_core.fence`` runs; raises ``Fenced`` once this machine's monotonic
    clock passes the supervisor's last written deadline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), _FORMAT.size, prot=mmap.PROT_READ)

    def deadline(self) -> float:
        while True:
            first, second = _FORMAT.unpack_from(self._map, 0)
            if first == second:
                return float(first)

    def __call__(self, agent_id: str | None = None) -> None:
        deadline = self.deadline()
        now = time.monotonic()
        if now >= deadline:
            raise Fenced(f"the fleet's lease deadline passed {now - deadline:.1f}s ago and its supervisor did not "
                         "renew it (paused or cut off from the replica): this worker stops writing",
                         agent_id=agent_id,
                         hint="nothing more was recorded; the agent resumes from its journal where the fleet runs "
                              "next (this node once its supervisor runs again, or a node that took the prefix over)")
