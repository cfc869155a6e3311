"""Replacing a shard file with another (a restore with overwrite) so that a crash at any moment leaves one
whole shard in place or set aside: never the old database without its WAL, never a new database beside the
old WAL (SQLite would replay it into the new file).

The old files move, the database first, into ``.<id>.db-replaced/`` beside it; the new file is renamed into
place; only then is the old set deleted. A crash before the rename leaves the old set whole in that folder,
and the next open of the agent (``open_shard``) or the next replace puts it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from .._base.crashpoints import CrashCounter

log = logging.getLogger("agentshards")

_SUFFIXES = ("", "-wal", "-shm")  # the database first: a WAL left without its database is never read


def aside_dir(final: Path) -> Path:
    """Where a replace keeps the old files of ``final`` until the new one is in place."""
    return final.parent / f".{final.name}-replaced"


def finish_interrupted_replace(final: Path) -> None:
    """After a crash during a replace: put the old set back if the new file never arrived, else drop it."""
    aside = aside_dir(final)
    if not aside.is_dir():
        return
    if not final.exists() and (aside / final.name).exists():
        for suffix in reversed(_SUFFIXES):  # the database last: once it is back, its WAL is beside it
            old = aside / f"{final.name}{suffix}"
            if old.exists():
                os.replace(old, f"{final}{suffix}")
        _fsync_dir(final.parent)
        log.warning("%s: a replace was interrupted before the new file arrived; the previous shard is back",
                    final)
    shutil.rmtree(aside, ignore_errors=True)


def replace_shard(new: Path, final: Path, crash: CrashCounter | None = None) -> None:
    """Put ``new`` (a complete, checked file in the same directory) at ``final``, whose old files go aside
    first and are deleted only after the rename."""
    finish_interrupted_replace(final)
    if not any(Path(f"{final}{suffix}").exists() for suffix in _SUFFIXES):  # nothing to replace
        os.replace(new, final)
        _fsync_dir(final.parent)
        return
    aside = aside_dir(final)
    aside.mkdir()
    for suffix in _SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{final}{suffix}", aside / f"{final.name}{suffix}")
    _fsync_dir(aside)
    _fsync_dir(final.parent)
    if crash is not None:
        crash.reached("restore_moved_aside")
    os.replace(new, final)
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def remove_shard_files(path: Path) -> None:
    """Delete a shard's files, the database first: a crash in between leaves a WAL nobody reads, never a
    database without the WAL that holds its latest commits (read as a silent rollback)."""
    for suffix in _SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
