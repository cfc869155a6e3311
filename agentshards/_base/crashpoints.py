"""Test-only kill hooks: SIGKILL this process the k-th time it reaches a named point.

The plan comes from ``AGENTSHARDS_TEST_CRASH=point@k`` read once at the edge (``run_agent``); with no
plan every ``reached`` call is a dictionary lookup and nothing else. Points:

- ``after_intent``   an LLM attempt row is committed, the request has not gone out;
- ``after_response`` the response arrived, the step is not yet recorded;
- ``after_commit``   the step is recorded;
- ``archive_*``      after each stage of archiving a finished agent (see ``agentshards._replication.archive``);
- ``restore_moved_aside``  a restore with overwrite moved the old files aside, the new one is not in place.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

POINTS = ("after_intent", "after_response", "after_commit")
ARCHIVE_POINTS = ("archive_vacuumed", "archive_uploaded", "archive_verified", "archive_published",
                  "archive_replica_deleted")
RESTORE_POINTS = ("restore_moved_aside",)


@dataclass(frozen=True)
class CrashPlan:
    point: str | None = None
    hit: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> CrashPlan:
        if not spec:
            return cls()
        point, _, hit = spec.partition("@")
        if point not in POINTS + ARCHIVE_POINTS + RESTORE_POINTS or not hit.isdigit() or int(hit) < 1:
            raise ValueError(f"AGENTSHARDS_TEST_CRASH={spec!r}: expected one of {POINTS} followed by @N (N >= 1)")
        return cls(point, int(hit))


class CrashCounter:
    def __init__(self, plan: CrashPlan) -> None:
        self._plan = plan
        self._count = 0
        self._lock = threading.Lock()

    def reached(self, point: str) -> None:
        if self._plan.point != point:
            return
        with self._lock:
            self._count += 1
            if self._count == self._plan.hit:
                os.kill(os.getpid(), signal.SIGKILL)
