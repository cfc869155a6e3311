"""Who may change a data dir, and who is running an agent: exclusive ``fcntl.flock`` locks on files of their own.

- The data-dir lock (``agentshards.lock``) is held by the one owner of a data dir: a fleet's supervisor, or
  ``run_agent`` with a replica. The owner runs the data dir's Litestream, so only the owner may stop a
  leftover one; commands that delete, replace or add shards (archive, delete, fetch, restore --overwrite,
  fork, cancel) take it too, and so refuse beside a live owner instead of pulling files from under it.
- An agent lock (``.locks/<agent_id>.lock``) is held for the life of a run of that agent, so a second run of
  the same agent (in any process, or another thread) is refused before it executes anything or pays for
  anything. Fleet workers take agent locks inside the data dir their supervisor holds: the two never collide.

Locks live on files of their own, never on a ``.db``: SQLite uses POSIX locks on its files, and closing any
descriptor of a file drops every POSIX lock the process has on it. ``flock`` locks belong to an open file,
so the kernel releases them when the holder dies (SIGKILL included): a crashed owner never blocks anyone.
Lock files are left in place: removing one that another process has just opened would let two holders
lock two different files under one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import IO

from .._base.errors import AgentLocked, DataDirLocked, ShardError

DATA_DIR_LOCK = "agentshards.lock"
AGENT_LOCKS = ".locks"

_held_here: set[Path] = set()  # the data dirs whose lock this process holds
_held_guard = threading.Lock()


class HeldLock:
    """An exclusive lock this process holds; ``release()`` (or leaving the ``with`` block) lets it go."""

    def __init__(self, path: Path, handle: IO[str] | None, data_dir: Path | None = None) -> None:
        self.path = path
        self._handle = handle
        self._data_dir = data_dir
        if data_dir is not None:
            with _held_guard:
                _held_here.add(data_dir)

    def release(self) -> None:
        if self._handle is None:
            return
        if self._data_dir is not None:
            with _held_guard:
                _held_here.discard(self._data_dir)
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(path: Path, agent_id: str | None) -> IO[str] | str:
    """The open handle, locked and holding our pid; or, when another open file holds it, the holder's pid."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - the caller keeps it for as long as it holds the lock
        writable = True
    except OSError as exc:
        if not path.is_file():
            raise ShardError(f"cannot create the lock file {path}: {exc}", agent_id=agent_id,
                             hint="check free space, permissions and that the filesystem is writable") from exc
        handle = open(path)  # noqa: SIM115 - read-only storage: flock works, the pid is not written
        writable = False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        return holder
    if writable:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def _pid(holder: str) -> int | None:
    return int(holder) if holder.isdigit() else None


def lock_data_dir(data_dir: str | os.PathLike[str], what: str, *, agent_id: str | None = None) -> HeldLock:
    """Become the data dir's owner for ``what`` (the caller's words: "run a fleet", "archive agent a1").

    Raises DataDirLocked naming the holder's pid when another owner (another process, or another owner in
    this one) holds it. Creates the data dir if needed; ShardError when the lock file cannot be created.
    """
    data = Path(data_dir).resolve()
    got = _try_lock(data / DATA_DIR_LOCK, agent_id)
    if isinstance(got, str):
        raise DataDirLocked(f"cannot {what}: {data} is owned by another process (pid {got})", agent_id=agent_id,
                            pid=_pid(got), hint="one owner per data dir (a fleet, or run_agent with a replica): "
                                                "wait for it or stop it, or use another data dir")
    return HeldLock(data / DATA_DIR_LOCK, got, data)


def holds_data_dir(data_dir: str | os.PathLike[str]) -> bool:
    """True when this process holds the data dir's lock (it is the owner)."""
    with _held_guard:
        return Path(data_dir).resolve() in _held_here


def owner_pid(data_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the process that owns the data dir now, or None when nobody does (read-only, as is_owned)."""
    if not is_owned(data_dir):
        return None
    try:
        return _pid((Path(data_dir) / DATA_DIR_LOCK).read_text().strip())
    except OSError:
        return None


def is_owned(data_dir: str | os.PathLike[str]) -> bool:
    """True while some process (this one included) owns the data dir. A read-only probe: it opens the lock
    file read-only, tries a shared lock and lets go, and never creates a file (what `status` and the
    dashboard use to tell a running fleet's published state from a file a stopped one left behind)."""
    try:
        fd = os.open(Path(data_dir) / DATA_DIR_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def lock_agent(data_dir: str | os.PathLike[str], agent_id: str, what: str = "run it") -> HeldLock:
    """Hold ``agent_id``'s lock; AgentLocked naming the holder's pid when a run (or a command) has it."""
    path = Path(data_dir).resolve() / AGENT_LOCKS / f"{agent_id}.lock"
    got = _try_lock(path, agent_id)
    if isinstance(got, str):
        raise AgentLocked(f"cannot {what}: the agent is in use by another process (pid {got})", agent_id=agent_id,
                          pid=_pid(got), hint="it is running there (a run_agent call or a fleet worker); wait for "
                                              "it to finish or stop that process")
    return HeldLock(path, got)
