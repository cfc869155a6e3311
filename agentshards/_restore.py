"""Restore: bring agents back from their replicas onto this machine, verified, never half-written.

Each file is restored into a temporary directory beside its final path, checked there (full
``PRAGMA integrity_check``, the shard schema, the agent id it belongs to) and only then renamed into
place, so the final path only ever holds a complete, checked file. A local shard is never overwritten
unless asked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._config import LitestreamConfig, ShardConfig
from ._errors import ReplicationError, ShardError
from ._litestream import find_binary, restore
from ._manifest import ManifestEntry, list_manifests
from ._objectstore import store_for
from ._replica import ReplicaTarget, parse_replica
from ._schema import check_file
from ._shard import shard_path, validate_agent_id
from ._sqlite import open_connection, query

log = logging.getLogger("agentshards")


def restore_agent(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                  overwrite: bool = False, env: Mapping[str, str] | None = None,
                  litestream: LitestreamConfig | None = None, check_replica: bool = True) -> Path:
    """Restore ``agent_id``'s shard from ``replica`` into ``data_dir``; return its path.

    Raises ReplicationError("no replica for agent X") when there is none, ShardError when the restored
    file fails its checks (nothing is written at the final path) or a local shard exists and
    ``overwrite`` is false.
    """
    env = os.environ if env is None else env
    agent_id = validate_agent_id(agent_id)
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    data = Path(data_dir).resolve()
    final = shard_path(data, agent_id)
    if final.exists() and not overwrite:
        raise ShardError(f"a local shard already exists at {final}", agent_id=agent_id,
                         hint="resume it as it is, or pass overwrite=True (--overwrite) to replace it")
    data.mkdir(parents=True, exist_ok=True)
    binary = find_binary(litestream or LitestreamConfig(), env)
    if check_replica:  # a missing bucket or bad credentials: a clear error, not a restore failure
        store_for(target, env).check()
    prefix = f".restore-{agent_id}-"
    for stale in data.glob(prefix + "*"):  # left by a killed restore of this agent (not of "<id>-x")
        if re.fullmatch(r"[a-z0-9_]{8}", stale.name[len(prefix):]):
            shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=data))
    try:
        candidate = workdir / final.name
        if not restore(binary, target.litestream_url(agent_id), candidate, env):
            raise ReplicationError(f"no replica for agent {agent_id} at {target.describe()}", agent_id=agent_id,
                                   hint="check the replica URL; `agentshards fleet` lists what is there")
        verify_restored(candidate, agent_id)
        for suffix in ("-wal", "-shm"):  # a stale WAL beside the new file would be replayed into it
            Path(f"{final}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(final.parent / f".{final.name}-litestream", ignore_errors=True)
        os.replace(candidate, final)
        _fsync_dir(data)
        log.info("restored agent %s from %s", agent_id, target.describe())
        return final
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def verify_restored(path: Path, agent_id: str) -> None:
    """A restored file is untrusted until it passes integrity_check, the schema check and the id check."""
    try:
        conn = open_connection(path, ShardConfig(), readonly=True)
    except Exception as exc:
        raise ShardError(f"restored file cannot be opened: {exc}", agent_id=agent_id,
                         hint="the replica may be damaged or tampered with; nothing was overwritten") from exc
    try:
        problems = [str(r[0]) for r in query(conn, "PRAGMA integrity_check(10)")]
        if problems != ["ok"]:
            raise ShardError(f"restored file failed integrity_check: {'; '.join(problems)[:300]}",
                             agent_id=agent_id, hint="the replica is damaged; nothing was overwritten")
        check_file(conn, where=f"restored file for {agent_id}")
        owner = query(conn, "SELECT value FROM shard_meta WHERE key = 'agent_id'")
        if not owner or owner[0][0] != agent_id:
            raise ShardError(f"restored file belongs to agent {owner[0][0] if owner else None!r}",
                             agent_id=agent_id, hint="the replica prefix holds another agent's file")
    except ShardError:
        raise
    except Exception as exc:
        raise ShardError(f"restored file is not a usable shard: {exc}", agent_id=agent_id,
                         hint="the replica may be damaged or tampered with; nothing was overwritten") from exc
    finally:
        conn.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_fleet(replica: str | ReplicaTarget, *, env: Mapping[str, str] | None = None) -> list[ManifestEntry]:
    """Every agent the replica's manifest knows, with its last published state."""
    env = os.environ if env is None else env
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store = store_for(target, env)
    store.check()
    return list_manifests(store, target)


def restore_agents(agent_ids: list[str], data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                   overwrite: bool = False, env: Mapping[str, str] | None = None,
                   parallelism: int = 8) -> dict[str, Path | Exception]:
    """Restore several agents in parallel; each entry is its path or the error that stopped it.

    The replica is checked once for all of them (building an S3 client per agent costs more than the
    restore itself); each restore is a ``litestream restore`` process plus the checks.
    """
    env = os.environ if env is None else env
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store_for(target, env).check()
    results: dict[str, Path | Exception] = {}

    def one(agent_id: str) -> None:
        try:
            results[agent_id] = restore_agent(agent_id, data_dir, target, overwrite=overwrite, env=env,
                                              check_replica=False)
        except Exception as exc:
            results[agent_id] = exc

    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        list(pool.map(one, agent_ids))
    return results
