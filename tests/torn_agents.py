"""An agent whose worker is SIGKILLed in the middle of a commit: after the commit's last WAL frame is written
and before SQLite publishes it in the wal-index (importable as ``torn_agents:<name>``).

Importing this module where ``TORN_COMMIT_VFS`` is set (the test sets it in the workers' environment
only) makes a VFS that watches the WAL writes the default for every later connection. Once armed, it
writes the page of the next commit frame and kills its own process: the one moment where the WAL file
holds a commit no other connection sees.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import apsw

import agentshards

_ARMED: list[str] = []  # the WAL path whose next commit is torn


class _TornFile(apsw.VFSFile):
    def __init__(self, name: Any, flags: list[int]) -> None:
        super().__init__("unix", name, flags)
        self._path = name.filename() if isinstance(name, apsw.URIFilename) else str(name or "")
        self._commit_page_next = False

    def xWrite(self, data: bytes, offset: int) -> None:
        super().xWrite(data, offset)
        if not _ARMED or self._path != _ARMED[0]:
            return
        if self._commit_page_next:
            os.kill(os.getpid(), signal.SIGKILL)
        # A frame header is written on its own (24 bytes); bytes 4-8 are non-zero on a commit frame.
        self._commit_page_next = len(data) == 24 and offset >= 32 and data[4:8] != b"\0\0\0\0"


class _TornVFS(apsw.VFS):
    def __init__(self) -> None:
        super().__init__("torn-commit", base="unix", makedefault=True)

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _TornFile(name, flags)


_VFS = _TornVFS() if os.environ.get("TORN_COMMIT_VFS") else None


def note(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def torn_once(agent: agentshards.Agent, marker: str, log: str, wal: str) -> list[str]:
    """Three steps; the first time through, the worker dies inside the commit of the second step."""
    first = agent.step("first", note, log, "first")
    if not Path(marker).exists():
        Path(marker).write_text("armed")
        _ARMED.append(wal)
    second = agent.step("second", note, log, "second")
    third = agent.step("third", note, log, "third")
    return [first, second, third]
