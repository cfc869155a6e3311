"""Restore: bring agents back from their replicas onto this machine, verified, never half-written.

The newest state is read from the replica's LTX files in this process (``ltx.py``; the ``litestream``
binary for what that module does not read or finds damaged). "No replica" means nothing at all is
stored under the agent's prefix; objects neither reader can restore make the agent not restorable, never
"no replica" and never an older state. Each file is restored into a temporary directory
beside its final path, checked there (full ``PRAGMA integrity_check``, the shard schema, the agent id it
belongs to) and only then renamed into place, so the final path only ever holds a complete, checked
file. A local shard is never overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from .._base.config import LitestreamConfig, ShardConfig
from .._base.crashpoints import CrashCounter, CrashPlan
from .._base.errors import AgentShardsError, NoReplica, ReplicaNotRestorable, ReplicationError, ShardError, ShardExists
from .._core.locks import holds_data_dir, lock_agent, lock_data_dir
from .._core.replace import finish_interrupted_replace, replace_shard
from .._core.schema import check_file
from .._core.shard import shard_path, validate_agent_id
from .._core.sqlite import open_connection, query
from .litestream import find_binary, installed_version, restore, warn_if_newer
from .ltx import (
    DamagedLtx,
    Decoded,
    LtxFile,
    UnknownObjects,
    UnsupportedLtx,
    decode,
    parse_listing,
    restore_plan,
    write_database,
)
from .manifest import ManifestEntry, list_manifests, read_manifest
from .objectstore import ObjectNotFound, ObjectStore, store_for
from .replica import ReplicaTarget, parse_replica

log = logging.getLogger("agentshards")


def restore_agent(agent_id: str, data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                  overwrite: bool = False, env: Mapping[str, str] | None = None,
                  litestream: LitestreamConfig | None = None, check_replica: bool = True,
                  crash_plan: str | None = None, generation: int | None = None) -> Path:
    """Restore ``agent_id``'s shard from ``replica`` into ``data_dir``; return its path.

    Raises NoReplica (a ReplicationError) when nothing at all is stored for the agent, ReplicaNotRestorable
    when something is but neither the LTX reader nor ``litestream restore`` can bring back its newest state,
    ShardExists (a ShardError) when a local shard exists and ``overwrite`` is false, ShardError when the
    restored file fails its checks (nothing is written at the final path). With ``overwrite``, DataDirLocked
    while a fleet (or a run_agent with a replica) owns the data dir, AgentLocked while the agent runs; the
    old files go only once the new one is in place. ``generation``: which one to read; None reads the live
    one the agent's manifest entry names (see ``ownership.py``).
    """
    env = os.environ if env is None else env
    agent_id = validate_agent_id(agent_id)
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store = store_for(target, env)
    if check_replica:  # a missing bucket or bad credentials: a clear error, not a restore failure
        store.check_readable()  # restore only reads the replica: a mistyped one is an error, never created
    config = litestream or LitestreamConfig()
    _check_reader_version(config, env)
    data = Path(data_dir).resolve()
    crash = CrashCounter(CrashPlan.parse(crash_plan))
    if generation is None:
        try:
            entry = read_manifest(store, target, agent_id)
        except Exception as exc:  # the store's own errors (botocore, OSError): one error root for callers
            raise ReplicationError(f"could not read the replica of agent {agent_id}: {exc}", agent_id=agent_id,
                                   hint="check the endpoint, the credentials and the network; nothing was "
                                        "overwritten") from exc
        generation = 0 if entry is None else entry.live
    with _owning(data, overwrite, f"restore agent {agent_id} over its local shard", agent_id):
        return _restore_one(agent_id, data, target, store, config, env, None, overwrite, crash, generation)


def _check_reader_version(config: LitestreamConfig, env: Mapping[str, str]) -> None:
    """The in-process reader runs no binary, so Litestream's version is asked here (once per process) to warn
    when the installed one is newer than the release the reader was verified against."""
    if not config.native_restore:
        return
    try:
        warn_if_newer(installed_version(find_binary(config, env)))
    except ReplicationError:
        return  # no usable binary: nothing newer is installed, and the reader needs none


def _owning(data: Path, overwrite: bool, what: str, agent_id: str | None = None) -> AbstractContextManager[object]:
    """Replacing shards needs the data dir to itself (no Litestream replicating them, no worker running
    them); restoring only new files does not (recover restores into the data dir it owns)."""
    if not overwrite or holds_data_dir(data):  # a fleet restoring into the data dir it owns: held already
        return contextlib.nullcontext()
    return lock_data_dir(data, what, agent_id=agent_id)


def _restore_one(agent_id: str, data: Path, target: ReplicaTarget, store: ObjectStore, config: LitestreamConfig,
                 env: Mapping[str, str], keys: list[str] | None, overwrite: bool,
                 crash: CrashCounter | None = None, generation: int = 0, agent_locked: bool = False) -> Path:
    """Restore into a temp dir beside the final path, verify, rename. ``keys``: the agent's replica keys
    when the caller listed them already (one LIST for a whole fleet), else None. ``agent_locked``: the
    caller holds the agent's lock already (a run_agent bringing its agent up)."""
    data.mkdir(parents=True, exist_ok=True)
    # the agent's lock for the whole restore: a run_agent that created the shard meanwhile, or another
    # restore half-way through its replace, would otherwise have its files moved aside under it
    with contextlib.nullcontext() if agent_locked else lock_agent(data, agent_id, "restore it"):
        return _restore_locked(agent_id, data, target, store, config, env, keys, overwrite, crash, generation)


def _restore_locked(agent_id: str, data: Path, target: ReplicaTarget, store: ObjectStore, config: LitestreamConfig,
                    env: Mapping[str, str], keys: list[str] | None, overwrite: bool,
                    crash: CrashCounter | None, generation: int = 0) -> Path:
    final = shard_path(data, agent_id)
    finish_interrupted_replace(final)  # a restore killed mid-replace: its old shard comes back first
    if final.exists() and not overwrite:
        raise ShardExists(f"a local shard already exists at {final}", agent_id=agent_id,
                          hint="resume it as it is, or pass overwrite=True (--overwrite) to replace it")
    prefix = f".restore-{agent_id}-"
    for stale in data.glob(prefix + "*"):  # left by a killed restore of this agent (not of "<id>-x")
        if re.fullmatch(r"[a-z0-9_]{8}", stale.name[len(prefix):]):
            shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=data))
    try:
        candidate = workdir / final.name
        if not _fetch(agent_id, target, store, config, env, keys, candidate, generation):
            raise NoReplica(f"no replica for agent {agent_id} at {target.describe()}: nothing is stored under "
                            f"{target.agent_key(agent_id, generation)}/", agent_id=agent_id,
                            hint="check the replica URL; `agentshards fleet` lists what is there")
        verify_restored(candidate, agent_id)
        shutil.rmtree(final.parent / f".{final.name}-litestream", ignore_errors=True)  # the old file's
        replace_shard(candidate, final, crash)
        log.info("restored agent %s from %s", agent_id, target.describe())
        return final
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _fetch(agent_id: str, target: ReplicaTarget, store: ObjectStore, config: LitestreamConfig,
           env: Mapping[str, str], keys: list[str] | None, out: Path, generation: int = 0) -> bool:
    """Write the replica's newest state to ``out``; False only when nothing at all is stored for the agent.

    Read here from the LTX files (no process per agent; see ``ltx.py``). A format or an object this version
    does not read, and a file it finds damaged, go to ``litestream restore`` instead, and so does everything
    with ``native_restore=False``; when that fails too the replica is not restorable (never "no replica":
    starting the agent over would pay for every step again and register a fresh file over its replica).
    """
    if not config.native_restore:
        return _fetch_binary(agent_id, target, store, config, env, keys, out, None, None, generation)
    try:
        return _fetch_native(agent_id, target, store, keys, out, generation)
    except UnknownObjects as exc:
        log.warning("agent %s: %s; restoring it with the litestream binary", agent_id, exc)
        reason, beyond = str(exc), exc.reached
    except UnsupportedLtx as exc:
        log.info("agent %s: %s; restoring it with the litestream binary", agent_id, exc)
        reason, beyond = str(exc), None
    except DamagedLtx as exc:
        log.warning("agent %s: the replica looks damaged (%s); trying the litestream binary", agent_id, exc)
        reason, beyond = f"the replica is damaged: {exc}", None
    except AgentShardsError:
        raise
    except Exception as exc:  # the store's own errors (botocore, OSError): one error root for callers
        raise ReplicationError(f"could not read the replica of agent {agent_id}: {exc}", agent_id=agent_id,
                               hint="check the endpoint, the credentials and the network; nothing was "
                                    "overwritten") from exc
    out.unlink(missing_ok=True)
    return _fetch_binary(agent_id, target, store, config, env, keys, out, reason, beyond, generation)


def _fetch_binary(agent_id: str, target: ReplicaTarget, store: ObjectStore, config: LitestreamConfig,
                  env: Mapping[str, str], keys: list[str] | None, out: Path, reason: str | None,
                  beyond: int | None, generation: int = 0) -> bool:
    """``litestream restore``, after the in-process reader gave up for ``reason`` (None: it was not used).

    ``beyond``: when the prefix also holds objects the reader does not know, the highest TXID of the files
    it does. The binary's restore counts only if it gets past that: if it does not, it skipped those
    objects too (0.5.17 does, silently), and they may hold the newest state.
    """
    url = target.litestream_url(agent_id, generation)
    hint = (f"nothing was overwritten and the replica is left as it is: move away objects that are not "
            f"Litestream's, or restore it by hand with a litestream that reads them (`litestream ltx -level all "
            f"{url}` lists what it reads; `litestream restore -txid` restores an earlier point)")
    try:
        summary = restore(find_binary(config, env), url, out, env)
    except ReplicationError as exc:
        if reason is None:
            raise
        raise ReplicaNotRestorable(f"{reason}; the litestream binary could not restore it either: {exc.message}",
                                   agent_id=agent_id, hint=hint) from exc
    if summary is None:
        if reason is None and not _holds_objects(agent_id, target, store, keys, generation):
            return False
        raise ReplicaNotRestorable(f"{reason or 'its replica holds objects'}; the litestream binary finds no "
                                   f"backup in them either", agent_id=agent_id, hint=hint)
    if beyond is not None and (summary.txid is None or summary.txid <= beyond):
        out.unlink(missing_ok=True)
        restored = "an unknown TXID" if summary.txid is None else f"TXID {summary.txid:x}"
        raise ReplicaNotRestorable(f"{reason}; the litestream binary does not read them either (it restored "
                                   f"{restored}, which the readable files reach too), and they may hold the "
                                   "newest state", agent_id=agent_id, hint=hint)
    if reason is not None:
        log.warning("agent %s: restored by the litestream binary (%s)", agent_id, reason)
    return True


def _holds_objects(agent_id: str, target: ReplicaTarget, store: ObjectStore, keys: list[str] | None,
                   generation: int = 0) -> bool:
    """Whether anything is stored under the generation's replica prefix: what "no replica" has to mean."""
    if keys is not None:
        return bool(target.generation_keys(keys, agent_id, generation))
    try:
        root = target.agent_key(agent_id, generation) + "/"
        return bool(target.generation_keys(store.list(root), agent_id, generation))
    except Exception as exc:  # botocore / OSError: one error root for callers
        raise ReplicationError(f"could not list the replica of agent {agent_id}: {exc}", agent_id=agent_id,
                               hint="check the endpoint, the credentials and the network") from exc


_FETCHES = threading.BoundedSemaphore(48)
"""GETs of LTX files in flight in this process, over every restore: a take-over restores 32 agents at a time, 4
files each, and the S3 client keeps 64 connections (more are opened and thrown away)."""


def _fetch_native(agent_id: str, target: ReplicaTarget, store: ObjectStore, keys: list[str] | None,
                  out: Path, generation: int = 0) -> bool:
    root = target.agent_key(agent_id, generation) + "/"
    if keys is not None:
        keys = target.generation_keys(keys, agent_id, generation)
    for attempt in range(3):
        if keys is None:
            keys = target.generation_keys(store.list(root), agent_id, generation)
        if not keys:
            return False
        plan = restore_plan(parse_listing(keys, root))
        try:
            # the plan's files (a snapshot, then the changes since) fetched 4 at a time, applied in order: a
            # restore costs a LIST and about one round trip instead of one per file (a take-over restores
            # hundreds of agents on a busy store: 7.4 s each, one GET after the other, measured)
            def fetch(f: LtxFile) -> Decoded:
                with _FETCHES:
                    data = store.get(f.key)
                return decode(data, f)

            with open(out, "wb") as fh, ThreadPoolExecutor(max_workers=4) as pool:
                write_database(pool.map(fetch, plan), fh.fileno())
                os.fsync(fh.fileno())
            return True
        except ObjectNotFound as exc:  # compacted away between the LIST and the GET: plan again
            log.info("agent %s: %s went away during the restore (attempt %d); listing again", agent_id, exc,
                     attempt + 1)
            keys = None
    raise ReplicationError(f"the replica of agent {agent_id} kept changing during the restore", agent_id=agent_id,
                           hint="is another node still replicating this agent? `agentshards nodes` lists them")


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


def list_fleet(replica: str | ReplicaTarget, *, env: Mapping[str, str] | None = None) -> list[ManifestEntry]:
    """Every agent the replica's manifest knows, with its last published state."""
    env = os.environ if env is None else env
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store = store_for(target, env)
    store.check_readable()
    return list_manifests(store, target)


def fleet_entry(replica: str | ReplicaTarget, agent_id: str, *,
                env: Mapping[str, str] | None = None) -> ManifestEntry | None:
    """One agent's manifest entry (its state, owner node and generation), or None when the replica has none."""
    env = os.environ if env is None else env
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    store = store_for(target, env)
    store.check_readable()
    return read_manifest(store, target, validate_agent_id(agent_id))


def restore_agents(agent_ids: list[str], data_dir: str | os.PathLike[str], replica: str | ReplicaTarget, *,
                   overwrite: bool = False, env: Mapping[str, str] | None = None, parallelism: int = 8,
                   litestream: LitestreamConfig | None = None,
                   on_done: Callable[[str, Path | Exception], None] | None = None,
                   generations: Mapping[str, int] | None = None) -> dict[str, Path | Exception]:
    """Restore several agents in parallel; each entry is its path or the error that stopped it.
    ``on_done(agent_id, outcome)`` is called as each one ends (from the pool's threads), e.g. for progress.

    The replica is checked once for all of them and, for more than a few agents, listed once (building an
    S3 client or sending a LIST per agent costs more than a small agent's restore). ``generations``: which
    generation to read per agent; by default the live one each manifest entry names.
    """
    env = os.environ if env is None else env
    target = parse_replica(replica, env) if isinstance(replica, str) else replica
    config = litestream or LitestreamConfig()
    store = store_for(target, env)
    store.check_readable()  # restores only read the replica: a mistyped one is an error, never created
    _check_reader_version(config, env)
    if generations is None:  # the live generation of each: one LIST and GETs for many agents, a GET each for few
        try:
            if len(agent_ids) >= _LIST_ONCE_FROM:
                generations = {e.agent_id: e.live for e in list_manifests(store, target)}
            else:
                entries = {a: read_manifest(store, target, validate_agent_id(a)) for a in agent_ids}
                generations = {a: e.live for a, e in entries.items() if e is not None}
        except AgentShardsError:
            raise
        except Exception as exc:  # botocore / OSError: one error root for callers
            raise ReplicationError(f"could not read the fleet's manifest at {target.describe()}: {exc}",
                                   hint="check the endpoint, the credentials and the network") from exc
    listed: dict[str, list[str]] | None = None
    if config.native_restore and len(agent_ids) >= _LIST_ONCE_FROM:
        root = target.agents_prefix()
        try:
            keys = store.list(root)
        except Exception as exc:  # botocore / OSError: one error root for callers
            raise ReplicationError(f"could not list the fleet at {target.describe()}: {exc}",
                                   hint="check the endpoint, the credentials and the network") from exc
        listed = {}
        for key in keys:
            listed.setdefault(key[len(root):].split("/", 1)[0], []).append(key)
    results: dict[str, Path | Exception] = {}
    data = Path(data_dir).resolve()
    owner = _owning(data, overwrite, "restore agents over their local shards")

    def one(agent_id: str) -> None:
        try:
            agent_id = validate_agent_id(agent_id)
            keys = None if listed is None else listed.get(agent_id, [])
            results[agent_id] = _restore_one(agent_id, data, target, store, config, env, keys, overwrite,
                                             generation=generations.get(agent_id, 0))
        except Exception as exc:
            results[agent_id] = exc
        if on_done is not None:
            on_done(agent_id, results[agent_id])

    with owner, ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        list(pool.map(one, agent_ids))
    return results


_LIST_ONCE_FROM = 8
"""From this many agents, restore_agents lists the whole fleet prefix once instead of once per agent."""
