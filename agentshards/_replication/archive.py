"""Archive: a finished agent's shard becomes one verified object in the replica, and leaves the node.

The stages run in an order where a crash at any point loses nothing: the local shard is removed last,
only after the archived copy was read back and matched, and every stage can simply be run again.

1. ``VACUUM INTO`` a temporary file (a compact, self-contained copy), fsync it, sha256 it, check it
   (integrity_check, schema, agent id);
2. upload it to ``<prefix>/archive/<agent_id>.db`` with metadata (agent id, status, steps, cost,
   finished time, sha256) and an S3 SHA-256 checksum (multipart ETags are not MD5s);
3. read it back and compare the sha256;
4. mark the manifest entry ``archived`` (with the key and the sha256);
5. stop replicating it and delete its live replica objects;
6. remove the local files (the shard, its -wal/-shm, Litestream's state for it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._base.config import ShardConfig
from .._base.crashpoints import CrashCounter, CrashPlan
from .._base.errors import ReplicationError, ShardError, ShardExists
from .._core.journal import FINAL, Journal
from .._core.locks import lock_agent, lock_data_dir
from .._core.replace import aside_dir, remove_shard_files, replace_shard
from .._core.shard import open_shard, shard_path, validate_agent_id
from .manifest import ManifestEntry, delete_manifest, list_manifests, read_manifest, write_manifest
from .objectstore import ObjectNotFound, ObjectStore, store_for
from .replica import ReplicaTarget, parse_replica
from .restore import verify_restored
from .states import ARCHIVED

if TYPE_CHECKING:
    from .litestream import Litestream


@dataclass(frozen=True)
class ArchiveEntry:
    agent_id: str
    key: str
    sha256: str
    size: int
    status: str
    steps: int
    cost_usd: float
    finished_at: float | None
    archived_at: float


def _target(replica: str | ReplicaTarget, env: Mapping[str, str], *,
            read_only: bool = False) -> tuple[ReplicaTarget, ObjectStore]:
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store = store_for(target, env)
    if read_only:
        store.check_readable()
    else:
        store.check()
    return target, store


def archive_agent(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                  env: Mapping[str, str] | None = None, litestream: Litestream | None = None,
                  crash_plan: str | None = None) -> ArchiveEntry:
    """Archive one finished agent (see the module docstring for the stages and their crash safety).

    DataDirLocked while a fleet (or a run_agent with a replica) owns the data dir: its Litestream would go
    on replicating the shard this removes. A fleet archives its own agents with ``archive_owned``.
    """
    agent_id = validate_agent_id(agent_id)
    with lock_data_dir(data_dir, f"archive agent {agent_id}", agent_id=agent_id):
        return archive_owned(agent_id, data_dir, replica, env=env, litestream=litestream, crash_plan=crash_plan)


def archive_owned(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                  env: Mapping[str, str] | None = None, litestream: Litestream | None = None,
                  crash_plan: str | None = None) -> ArchiveEntry:
    """``archive_agent`` for the owner of the data dir (the caller holds its lock, and runs ``litestream``)."""
    env = os.environ if env is None else env
    agent_id = validate_agent_id(agent_id)
    target, store = _target(replica, env)
    crash = CrashCounter(CrashPlan.parse(crash_plan))
    data = Path(data_dir)
    copy = data / ".archive" / f"{agent_id}.db"
    with lock_agent(data, agent_id, "archive it"):
        try:
            return _archive(agent_id, data, target, store, copy, litestream, crash)
        except BaseException:
            copy.unlink(missing_ok=True)  # the compact copy is only worth keeping in the archive
            raise


def _archive(agent_id: str, data: Path, target: ReplicaTarget, store: ObjectStore, copy: Path,
             litestream: Litestream | None, crash: CrashCounter) -> ArchiveEntry:
    journal = Journal(open_shard(data, agent_id, ShardConfig(), create=False), agent_id)
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.unlink(missing_ok=True)  # a leftover from an interrupted archive
    try:
        runs = journal.runs()
        if not runs or runs[-1].status not in FINAL:
            state = runs[-1].status if runs else "no run"
            raise ShardError(f"is not finished ({state}); only finished agents are archived", agent_id=agent_id,
                             hint="wait for it to finish, or cancel it first")
        run = runs[-1]
        steps, spend = len(journal.steps(run.id)), journal.spend()
        journal._conn.execute("VACUUM INTO ?", (str(copy),))
    finally:
        journal.close()
    with open(copy, "rb+") as f:
        os.fsync(f.fileno())
    blob = copy.read_bytes()
    digest = hashlib.sha256(blob)
    verify_restored(copy, agent_id)
    crash.reached("archive_vacuumed")

    key = target.archive_key(agent_id)
    archived_at = time.time()
    metadata = {"agent-id": agent_id, "status": run.status, "steps": str(steps),
                "cost-usd": f"{spend.spent_usd:.10f}", "finished-at": str(run.finished_at or ""),
                "sha256": digest.hexdigest(), "archived-at": str(archived_at)}
    store.put(key, blob, metadata=metadata, sha256=digest.digest())
    crash.reached("archive_uploaded")

    back, meta = store.get_with_metadata(key)
    if hashlib.sha256(back).hexdigest() != digest.hexdigest() or meta.get("sha256") != digest.hexdigest():
        raise ReplicationError(f"the archived object {key} does not match the local shard", agent_id=agent_id,
                               hint="nothing was removed locally; run the archive again")
    crash.reached("archive_verified")

    previous = read_manifest(store, target, agent_id)
    write_manifest(store, target, ManifestEntry(
        agent_id=agent_id, status=ARCHIVED, target=run.target, input_digest=run.input_digest, run_id=run.id,
        code_fingerprint=previous.code_fingerprint if previous else None, steps=steps, updated_at=archived_at,
        archive_key=key, archive_sha256=digest.hexdigest(), cost_usd=spend.spent_usd))
    crash.reached("archive_published")

    if litestream is not None and agent_id in litestream.registered:
        litestream.unregister(agent_id)
    for replica_key in store.list(target.agent_key(agent_id) + "/"):
        store.delete(replica_key)
    crash.reached("archive_replica_deleted")

    remove_local(data, agent_id)
    copy.unlink(missing_ok=True)
    return ArchiveEntry(agent_id, key, digest.hexdigest(), len(blob), run.status, steps, spend.spent_usd,
                        run.finished_at, archived_at)


def remove_local(data: Path, agent_id: str) -> None:
    """The shard and everything this package keeps beside it for the agent (not its lock file: see _core.locks)."""
    path = shard_path(data, agent_id)
    remove_shard_files(path)
    shutil.rmtree(data / f".{path.name}-litestream", ignore_errors=True)
    shutil.rmtree(aside_dir(path), ignore_errors=True)
    remove_shard_files(_fetch_temp(data, agent_id))
    (data / ".archive" / f"{agent_id}.db").unlink(missing_ok=True)
    (data / ".fleet" / "results" / f"{agent_id}.json").unlink(missing_ok=True)


def _fetch_temp(data: Path, agent_id: str) -> Path:
    """Where a fetch writes before its checks: a dot-file, so no scan of the data dir takes it for a shard."""
    return data / f".fetch-{agent_id}.db"


def list_archives(replica: str | ReplicaTarget, *, env: Mapping[str, str] | None = None) -> list[ManifestEntry]:
    target, store = _target(replica, os.environ if env is None else env, read_only=True)
    return [e for e in list_manifests(store, target) if e.status == ARCHIVED]


def fetch_archive(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                  env: Mapping[str, str] | None = None) -> Path:
    """Bring an archived shard back (verified: sha256, integrity, schema, id) for inspection or a new run.

    DataDirLocked while a fleet (or a run_agent with a replica) owns the data dir.
    """
    env = os.environ if env is None else env
    agent_id = validate_agent_id(agent_id)
    target, store = _target(replica, env, read_only=True)  # the replica is only read
    with lock_data_dir(data_dir, f"fetch agent {agent_id}", agent_id=agent_id), \
            lock_agent(data_dir, agent_id, "fetch it"):
        return _fetch(agent_id, Path(data_dir), target, store)


def _fetch(agent_id: str, data: Path, target: ReplicaTarget, store: ObjectStore) -> Path:
    final = shard_path(data, agent_id)
    tmp = _fetch_temp(data, agent_id)
    remove_shard_files(tmp)  # left by a fetch that was killed
    if final.exists():
        raise ShardExists(f"a local shard already exists at {final}", agent_id=agent_id,
                          hint="fetch into another --data-dir")
    try:
        blob, meta = store.get_with_metadata(target.archive_key(agent_id))
    except ObjectNotFound:
        raise ReplicationError(f"no archive for agent {agent_id}", agent_id=agent_id,
                               hint="`agentshards archives` lists them") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ShardError("the archived object does not match its recorded sha256", agent_id=agent_id,
                         hint="the archive is damaged or was tampered with; nothing was written")
    try:
        tmp.write_bytes(blob)
        verify_restored(tmp, agent_id)
        replace_shard(tmp, final)  # an orphaned -wal/-shm beside the final path goes aside, never into it
    finally:
        remove_shard_files(tmp)
    return final


def expire_archives(replica: str | ReplicaTarget, older_than_days: float, *, env: Mapping[str, str] | None = None,
                    now: float | None = None, dry_run: bool = False) -> list[str]:
    """Delete archives (object and manifest entry) archived more than ``older_than_days`` ago; ``dry_run``
    names them and deletes nothing."""
    target, store = _target(replica, os.environ if env is None else env, read_only=dry_run)
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    expired = []
    for entry in list_manifests(store, target):
        if entry.status == ARCHIVED and entry.updated_at < cutoff:
            if not dry_run:
                store.delete(target.archive_key(entry.agent_id))
                delete_manifest(store, target, entry.agent_id)
            expired.append(entry.agent_id)
    return expired


def delete_agent(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget | None = None, *,
                 env: Mapping[str, str] | None = None) -> list[str]:
    """Remove an agent everywhere: local shard, live replica, manifest entry, archive. Returns what went.

    DataDirLocked while a fleet (or a run_agent with a replica) owns the data dir, AgentLocked while the
    agent runs.
    """
    env = os.environ if env is None else env
    agent_id = validate_agent_id(agent_id)
    if not Path(data_dir).is_dir():  # nothing local, nothing to lock: only the replica's copies go
        return _delete(agent_id, Path(data_dir), replica, env)
    with lock_data_dir(data_dir, f"delete agent {agent_id}", agent_id=agent_id), \
            lock_agent(data_dir, agent_id, "delete it"):
        return _delete(agent_id, Path(data_dir), replica, env)


def _delete(agent_id: str, data: Path, replica: str | ReplicaTarget | None, env: Mapping[str, str]) -> list[str]:
    removed = []
    if shard_path(data, agent_id).exists():
        remove_local(data, agent_id)
        removed.append("local shard")
    if replica is not None:
        target, store = _target(replica, env)
        removed += delete_replica_copies(agent_id, target, store)
        if read_manifest(store, target, agent_id) is not None:
            delete_manifest(store, target, agent_id)
            removed.append("manifest")
    return removed


def delete_replica_copies(agent_id: str, target: ReplicaTarget, store: ObjectStore) -> list[str]:
    """Delete the agent's replica (every generation: they sit under its prefix) and its archive; the entry
    is the caller's to delete last, so a failure half-way still lists the agent. Returns what went."""
    removed = []
    keys = store.list(target.agent_key(agent_id) + "/")
    store.delete_many(keys)
    if keys:
        removed.append("replica")
    if store.list(target.archive_key(agent_id)):
        store.delete(target.archive_key(agent_id))
        removed.append("archive")
    return removed
