"""``Fleet``: launch many agents from a Python script, each in a worker process, and wait for them.

    fleet = agentshards.Fleet(data_dir="./fleet", replica="s3://my-bucket/fleets/research")
    fleet.launch("myproject.agents:researcher", {"agent-001": {"topic": "sqlite"}})
    results = fleet.wait()        # agent_id -> result, or the exception that ended it

One supervisor owns a data dir (a lock file beside the shards says which process), runs one Litestream
for every shard in it, starts workers with ``python -m agentshards._fleet.worker`` and restarts the agents of a
worker that died; every agent resumes from its journal, so a restart never repeats a completed step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base.config import RunConfig, SupervisorConfig, litestream_owned
from .._base.errors import (
    AgentFailed,
    AgentShardsError,
    BudgetExceeded,
    InvalidInputs,
    ReplicationError,
    ShardError,
)
from .._core import codec as _codec
from .._core.journal import Journal, Run
from .._core.locks import HeldLock, lock_data_dir
from .._core.shard import open_shard, validate_agent_id
from .run import _check_inputs, code_fingerprint, start_replication
from .supervisor import BUDGET_EXCEEDED, SUCCEEDED, AgentState, Supervisor

if TYPE_CHECKING:
    from .._replication.lease import Lease
from .._core.target import AgentFn, target_of

log = logging.getLogger("agentshards")


class Fleet:
    """A fleet of agents under one supervisor, one data dir and (optionally) one replica."""

    def __init__(self, data_dir: str | os.PathLike[str], replica: str | None = None, *, agents_per_worker: int = 50,
                 concurrency: int = 16, max_restarts: int = 5, app_dir: str | os.PathLike[str] | None = None,
                 config: SupervisorConfig | None = None, run_config: RunConfig | None = None,
                 take_over: bool = False, lease_ttl_s: float = 30.0, env: Mapping[str, str] | None = None,
                 archive_finished: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.replica = replica
        self.app_dir = Path(app_dir or os.getcwd()).resolve()
        self.config = config or SupervisorConfig(agents_per_worker=agents_per_worker, concurrency=concurrency,
                                                 max_restarts=max_restarts)
        self.run_config = run_config or RunConfig()
        if replica is not None:
            self.run_config = litestream_owned(self.run_config)  # Litestream owns the shards' checkpoints
        self._env = dict(os.environ if env is None else env)  # read once, here at the edge
        self._lock: HeldLock | None = None  # the data-dir lock, held from the first launch to close()
        self._replication: Any = None
        self._supervisor: Supervisor | None = None
        self._fingerprints: dict[str, str | None] = {}
        self._inputs_json: dict[str, str] = {}  # agent -> canonical inputs, published in its manifest entry
        # set by recover: manifest entries already in the replica (not written again when unchanged) and
        # the files its restore has just verified (not examined again before they open)
        self._manifest_known: dict[str, tuple[str, str, str | None]] = {}
        self._verified: set[str] = set()
        self._lease: Lease | None = None
        self._watchdog: threading.Thread | None = None
        self._finals: ThreadPoolExecutor | None = None  # _on_final's work, off the supervisor loop
        self._final_futures: list[Future[None]] = []
        self._watchdog_stop = threading.Event()
        self.take_over, self.lease_ttl_s = take_over, lease_ttl_s
        self.archive_finished = archive_finished
        if archive_finished and replica is None:
            raise InvalidInputs("archive_finished needs a replica", hint="pass replica='s3://bucket/prefix'")

    # -- public ------------------------------------------------------------------------------------------

    def launch(self, target: AgentFn | str, agents: Mapping[str, Mapping[str, Any]]) -> None:
        """Check everything (target importable, ids, inputs, data dir owner, replica) before any agent starts."""
        with _on_path(self.app_dir):
            name, func = target_of(target)
        checked = {}
        for agent_id, inputs in agents.items():
            validate_agent_id(agent_id)
            if self._supervisor is not None and agent_id in self._supervisor.agents:
                raise InvalidInputs(f"agent {agent_id} was already launched in this fleet", agent_id=agent_id,
                                    hint="agent ids must be unique within a fleet")
            if not isinstance(inputs, Mapping):
                raise InvalidInputs(f"inputs must be a mapping, not {type(inputs).__name__}", agent_id=agent_id,
                                    hint="{agent_id: {input: value}}")
            input_json = _check_inputs(func, name, agent_id, dict(inputs))
            self._inputs_json[agent_id] = input_json
            checked[agent_id] = (dict(inputs), _codec.digest(input_json))
        supervisor = self._begin()
        if name not in self._fingerprints:  # hashing the module source once per target, not per launch
            self._fingerprints[name] = code_fingerprint(func)
        def prepare(agent_id: str) -> None:
            # the file exists before Litestream sees it
            open_shard(self.data_dir, agent_id, self.run_config.shard, verified=agent_id in self._verified).close()
            if self._replication is not None:
                self._replication.litestream.register(agent_id)
                entry = (name, checked[agent_id][1], self._fingerprints.get(name))
                if self._manifest_known.pop(agent_id, None) != entry:  # a fresh node can find it from now on
                    self._publish(agent_id, "running", name, checked[agent_id][1], "", 0)

        with ThreadPoolExecutor(max_workers=8) as pool:  # per agent: a file check, a socket call, a PUT
            list(pool.map(prepare, checked))
        for agent_id, (inputs, _digest) in checked.items():
            supervisor.add(agent_id, name, inputs)

    def _begin(self) -> Supervisor:
        """Once per fleet: the data-dir lock, then the prefix lease, then Litestream; undone on failure."""
        if self._supervisor is not None:
            return self._supervisor
        self._lock = lock_data_dir(self.data_dir, "run a fleet")
        try:
            if self.replica is not None:
                from .._replication.lease import Lease
                from .._replication.objectstore import store_for
                from .._replication.replica import parse_replica

                target = parse_replica(self.replica, self._env)
                store = store_for(target, self._env)
                store.check()
                self._lease = Lease(store, target, self.lease_ttl_s)
                self._lease.acquire(take_over=self.take_over)
                self._replication = start_replication(self.data_dir, self.replica, self.run_config, self._env)
        except BaseException:
            self.close()
            raise
        self._supervisor = Supervisor(self.data_dir, self.app_dir, self.config, self._env, self.run_config.shard,
                                      on_final=self._on_final, on_tick=self._on_tick)
        return self._supervisor

    def wait(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Run the fleet to the end; return ``agent_id -> result`` (or the exception that ended the agent)."""
        supervisor = self._require()
        if self._replication is not None and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, args=(self._replication,), daemon=True,
                                              name="agentshards-watchdog")
            self._watchdog.start()
        try:
            started = time.monotonic()
            supervisor.run(timeout_s)
            ran = time.monotonic()
            self._drain_finals()
            log.info("fleet: %d agents final after %.1fs; their finalisation ended %.1fs later", len(supervisor.agents),
                     ran - started, time.monotonic() - ran)
        finally:
            self.close()
        return {agent_id: self._outcome(state) for agent_id, state in supervisor.agents.items()}

    def status(self) -> dict[str, AgentState]:
        return dict(self._require().agents)

    def worker_pids(self) -> list[int]:
        return self._require().worker_pids()

    def close(self) -> None:
        """Stop workers (SIGTERM, bounded wait, SIGKILL), stop Litestream after its final sync, release the
        prefix lease and the data-dir lock."""
        if self._supervisor is not None:
            self._supervisor.stop()
        if self._finals is not None:  # they need Litestream and the store: finish them before those stop
            self._finals.shutdown(wait=True)
            self._finals = None
        if self._watchdog is not None:
            self._watchdog_stop.set()
            self._watchdog.join()
            self._watchdog = None
        if self._replication is not None:
            self._replication.litestream.stop()
            self._replication = None
        if self._lease is not None:
            with contextlib.suppress(Exception):
                self._lease.release()
            self._lease = None
        self._release_lock()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _require(self) -> Supervisor:
        if self._supervisor is None:
            raise AgentShardsError("nothing launched yet", hint="call fleet.launch(target, {agent_id: inputs})")
        return self._supervisor

    def _outcome(self, state: AgentState) -> Any:
        if state.status == SUCCEEDED:
            return state.result
        error = state.error or {}
        if state.status == BUDGET_EXCEEDED:
            return BudgetExceeded(str(error.get("message", state.reason)), agent_id=state.agent_id)
        return AgentFailed(str(state.reason), error_type=str(error.get("type", "?")),
                           error_message=str(error.get("message", "")), agent_id=state.agent_id)

    def _on_tick(self) -> None:
        """Renew the prefix lease when due (losing it stops the fleet); keep Litestream running and moving."""
        if self._lease is not None and self._lease.due():
            self._lease.renew()  # LeaseError ends wait(): close() stops workers and replication
        if self._replication is not None:
            self._replication.litestream.ensure_running()
        pending = []
        for future in self._final_futures:  # a failed finalisation ends wait(), as it did when run inline
            if not future.done():
                pending.append(future)
            elif future.exception() is not None:
                future.result()
        self._final_futures = pending

    def _watch(self, replication: Any) -> None:
        """The stall watchdog, in its own thread: asking an overloaded Litestream how far it got can take
        seconds (measured at 1,000 shards), and the supervisor loop must keep noticing dead workers."""
        while not self._watchdog_stop.wait(1.0):
            try:
                replication.restart_if_stalled()
            except Exception:  # never let the watchdog die silently; the next round tries again
                log.exception("the litestream watchdog for %s failed", self.data_dir)

    def _on_final(self, state: AgentState) -> None:
        """Hand the finished agent to a small thread pool: its sync, manifest PUT and unregister take ~20 ms,
        which, run inline in the supervisor loop, added ~20 s to a 1,000-agent recovery (measured)."""
        if self._replication is None:
            return
        if self._finals is None:
            self._finals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agentshards-final")
        self._final_futures.append(self._finals.submit(self._finalize, state))

    def _drain_finals(self) -> None:
        """Wait for every finalisation; raise the first that failed."""
        if self._finals is not None:
            self._finals.shutdown(wait=True)
            self._finals = None
        futures, self._final_futures = self._final_futures, []
        for future in futures:
            future.result()

    def _finalize(self, state: AgentState) -> None:
        """Push the finished agent's shard to the replica, publish its manifest entry, and stop replicating
        it once the replica holds all of it (Litestream LISTs every registered shard's replica once per
        compaction and retention interval even when nothing changed: a finished agent would cost that
        forever)."""
        synced = False
        with contextlib.suppress(AgentShardsError, OSError):
            result = self._replication.litestream.sync(state.agent_id)
            synced = result.replicated_txid >= result.txid
        journal = Journal(open_shard(self.data_dir, state.agent_id, self.run_config.shard, create=False),
                          state.agent_id)
        try:
            runs = journal.runs()
            run = runs[-1] if runs else None
            steps = len(journal.steps(run.id)) if run else 0
        finally:
            journal.close()
        self._publish(state.agent_id, state.status, state.target, run.input_digest if run else "",
                      run.id if run else "", steps)
        if self.archive_finished:
            from .._replication.archive import archive_owned

            archive_owned(state.agent_id, self.data_dir, self._replication.target, env=self._env,
                          litestream=self._replication.litestream)
        elif synced:  # otherwise it stays registered: Litestream keeps trying until the replica has it all
            with contextlib.suppress(AgentShardsError, OSError):
                self._replication.litestream.unregister(state.agent_id)

    def _publish(self, agent_id: str, status: str, target: str, digest: str, run_id: str, steps: int) -> None:
        from .._replication.manifest import ManifestEntry

        self._replication.publish(ManifestEntry(
            agent_id=agent_id, status=status, target=target, input_digest=digest, run_id=run_id,
            code_fingerprint=self._fingerprints.get(target), steps=steps, updated_at=time.time(),
            inputs_json=self._inputs_json.get(agent_id)))

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


@contextlib.contextmanager
def _on_path(app_dir: Path) -> Any:
    """The target is checked as a worker will import it: with the app dir on sys.path."""
    import sys

    added = str(app_dir) not in sys.path
    if added:
        sys.path.insert(0, str(app_dir))
    try:
        yield
    finally:
        if added:
            sys.path.remove(str(app_dir))


def read_agents_file(path: str) -> dict[str, dict[str, Any]]:
    """A JSONL file, one agent per line: ``{"agent_id": "...", "inputs": {...}}``; every bad line is an error."""
    import json

    agents: dict[str, dict[str, Any]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InvalidInputs(f"cannot read {path}: {exc}", hint="pass a readable JSONL file") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            agent_id, inputs = row["agent_id"], row.get("inputs", {})
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputs(f"{path}:{number}: not an agent line ({exc})",
                                hint='each line: {"agent_id": "a1", "inputs": {...}}') from exc
        if agent_id in agents:
            raise InvalidInputs(f"{path}:{number}: agent {agent_id!r} appears twice", hint="agent ids are unique")
        agents[validate_agent_id(agent_id)] = inputs
    if not agents:
        raise InvalidInputs(f"{path} lists no agents",
                            hint='one JSON object per line: {"agent_id": ..., "inputs": ...}')
    return agents


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def recover(data_dir: str | os.PathLike[str], replica: str, *, take_over: bool = False,
            app_dir: str | os.PathLike[str] | None = None, config: SupervisorConfig | None = None,
            lease_ttl_s: float = 30.0, timeout_s: float | None = None,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Node-loss recovery on a fresh machine: take the prefix lease, restore every unfinished agent the
    manifest lists (verified, in parallel), and run them under a supervisor to the end.

    Archived and finished agents are not restored. An agent whose code changed since its manifest entry is
    logged, and non-determinism detection guards its replay. Returns ``agent_id -> result or exception``.
    """
    import json

    from .._core.target import resolve
    from .._replication.manifest import list_manifests
    from .._replication.restore import restore_agents

    fleet = Fleet(data_dir, replica, app_dir=app_dir, config=config, take_over=take_over, lease_ttl_s=lease_ttl_s,
                  env=env)
    fleet._begin()
    try:
        replication = fleet._replication
        entries = [e for e in list_manifests(replication.store, replication.target) if e.status == "running"]
        started, cpu, children = time.monotonic(), time.process_time(), _children_cpu_s()
        restored = restore_agents([e.agent_id for e in entries], fleet.data_dir, replication.target, env=fleet._env,
                                  litestream=replication.litestream.config)
        restored_at = time.monotonic()
        log.info("recover: %d agents restored and verified in %.1fs (CPU: %.1fs here, %.1fs in child processes)",
                 len(entries), restored_at - started, time.process_time() - cpu, _children_cpu_s() - children)
        on_disk = []  # agents with a shard here (restored or already local)
        for entry in entries:
            outcome: Path | Exception | None = restored[entry.agent_id]
            if isinstance(outcome, ShardError) and "already exists" in str(outcome):
                log.info("agent %s: using the local shard already in %s", entry.agent_id, fleet.data_dir)
                on_disk.append(entry.agent_id)
            elif isinstance(outcome, ReplicationError) and "no replica" in str(outcome):
                pass  # killed before Litestream's first upload: nothing of it survived the node
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                fleet._verified.add(entry.agent_id)
                on_disk.append(entry.agent_id)
            fleet._manifest_known[entry.agent_id] = (entry.target, entry.input_digest, entry.code_fingerprint)

        def last_run(agent_id: str) -> tuple[str, Run | None]:
            journal = Journal(open_shard(fleet.data_dir, agent_id, fleet.run_config.shard, create=False,
                                         verified=agent_id in fleet._verified), agent_id)
            try:
                runs = journal.runs()
                return agent_id, runs[-1] if runs else None
            finally:
                journal.close()

        with ThreadPoolExecutor(max_workers=8) as pool:  # opening a restored file makes its WAL: I/O, GIL free
            last_runs = dict(pool.map(last_run, on_disk))
        batches: dict[str, dict[str, Any]] = {}  # target -> {agent: inputs}: one launch per target, not per agent
        for entry in entries:
            run = last_runs.get(entry.agent_id)
            if run is None:  # its replica holds no run yet: start it from the beginning, from its manifest
                if entry.inputs_json is None:
                    raise ReplicationError(
                        f"agent {entry.agent_id} has no replicated run and its manifest entry has no inputs",
                        agent_id=entry.agent_id, hint="launch it again by hand (manifest from an older version)")
                log.warning("agent %s: nothing of its run reached the replica before the node was lost; starting "
                            "it from the beginning", entry.agent_id)
                target, input_json = entry.target, entry.inputs_json
            else:
                target, input_json = run.target, run.input_json
            if target not in fleet._fingerprints:  # the fleet's cache: launch below reuses it
                with _on_path(fleet.app_dir):
                    fleet._fingerprints[target] = code_fingerprint(resolve(target))
            now = fleet._fingerprints[target]
            if entry.code_fingerprint and now and now != entry.code_fingerprint:
                log.warning("agent %s: the code of %s changed since it last ran; replay relies on non-determinism "
                            "detection", entry.agent_id, target)
            batches.setdefault(target, {})[entry.agent_id] = json.loads(input_json)
        for target, agents in batches.items():
            fleet.launch(target, agents)
        log.info("recover: %d agents registered with Litestream and queued in %.1fs more", len(entries),
                 time.monotonic() - restored_at)
        if fleet._supervisor is None or not fleet._supervisor.agents:
            fleet.close()
            return {}
        return fleet.wait(timeout_s)
    except BaseException:
        fleet.close()
        raise
