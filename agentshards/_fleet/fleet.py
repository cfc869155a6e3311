"""``Fleet``: launch many agents from a Python script, each in a worker process, and wait for them.

    fleet = agentshards.Fleet(data_dir="./fleet", replica="s3://my-bucket/fleets/research")
    fleet.launch("myproject.agents:researcher", {"agent-001": {"topic": "sqlite"}})
    results = fleet.wait()        # agent_id -> result, or the exception that ended it

One supervisor owns a data dir (a lock file beside the shards says which process), runs one Litestream
for every shard in it, runs agents in workers forked from a preloaded zygote (``zygote.py``) and restarts the
agents of a worker that died; every agent resumes from its journal, so a restart never repeats a completed step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base.config import RunConfig, SupervisorConfig, litestream_owned
from .._base.errors import (
    AgentFailed,
    AgentOwned,
    AgentShardsError,
    BudgetExceeded,
    InvalidInputs,
    InvalidTarget,
    NoReplica,
    OwnershipLost,
    ReplicationError,
)
from .._core import codec as _codec
from .._core.journal import Journal, Run
from .._core.locks import HeldLock, lock_data_dir
from .._core.shard import open_shard, shard_path, validate_agent_id
from .._core.target import AgentFn, target_of
from .._replication.states import (
    BUDGET_EXCEEDED,
    CANCELLED,
    ENDED,
    GAVE_UP,
    RUNNING,
    SUCCEEDED,
    UNSYNCED,
    is_unfinished,
    published,
)
from .run import _check_inputs, check_replica, code_fingerprint, record_cancel, start_replication
from .supervisor import FINAL_STATES, AgentState, Supervisor
from .worker_links import WorkerLinks, run_spec

if TYPE_CHECKING:
    from .claims import Claims

log = logging.getLogger("agentshards")


class Fleet:
    """A fleet of agents under one supervisor, one data dir and (optionally) one replica."""

    def __init__(self, data_dir: str | os.PathLike[str], replica: str | None = None, *, agents_per_worker: int = 50,
                 concurrency: int = 16, max_restarts: int = 5, app_dir: str | os.PathLike[str] | None = None,
                 config: SupervisorConfig | None = None, run_config: RunConfig | None = None,
                 take_over: bool = False, lease_ttl_s: float = 30.0, env: Mapping[str, str] | None = None,
                 archive_finished: bool = False, node_id: str | None = None) -> None:
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
        # set by recover: the files its restore has just verified (not examined again before they open)
        self._verified: set[str] = set()
        self._claims: Claims | None = None  # this node's lease and the agents it owns (with a replica)
        self._claim_races_expected = False  # set by Node: losing a claim race is routine there
        self.node_id = node_id
        self._links: WorkerLinks | None = None  # the workers' confirmation socket and lease fence
        self._watchdog: threading.Thread | None = None
        self._deleting: set[str] = set()  # agents an operator deletes: let go of, never published
        self._finals: ThreadPoolExecutor | None = None  # _on_final's work, off the supervisor loop
        # agents whose launch or finalisation failed: that error is their outcome in wait()'s results
        self._failed: dict[str, AgentShardsError] = {}
        self._watchdog_stop = threading.Event()
        self.take_over, self.lease_ttl_s = take_over, lease_ttl_s
        self.archive_finished = archive_finished
        if archive_finished and replica is None:
            raise InvalidInputs("archive_finished needs a replica", hint="pass replica='s3://bucket/prefix'")

    # -- public ------------------------------------------------------------------------------------------

    def launch(self, target: AgentFn | str, agents: Mapping[str, Mapping[str, Any]], *, new_run: bool = False,
               again: bool = False) -> None:
        """Check everything (target importable, ids, inputs, data dir owner, replica) before any agent starts.

        ``new_run``: each agent starts a fresh run even if it has one (kept in its journal). The run is opened
        here, once, so a worker that crashes and restarts resumes it instead of starting yet another.

        ``again``: an agent that ended in this fleet may be launched once more (a node claiming it back for an
        operator's retry); otherwise an id is launched once per fleet.

        Then each agent is prepared on its own (its shard, its manifest entry, its registration with
        Litestream): an agent whose preparation fails is not started, and that error is its outcome in
        ``wait()``'s results; the others run.
        """
        with _on_path(self.app_dir):
            name, func = target_of(target)
        checked = {}
        for agent_id, inputs in agents.items():
            validate_agent_id(agent_id)
            if (self._supervisor is not None and agent_id in self._supervisor.agents
                    and not (again and self._supervisor.agents[agent_id].status in FINAL_STATES)):
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
        phases: list[dict[str, float]] = []  # per agent brought up: seconds per step, for the log line below

        def prepare(agent_id: str) -> AgentShardsError | None:
            # claimed (the manifest lists it, owned by this node) before the file is touched; the file exists
            # before Litestream sees it; the agent runs only once its generation holds a snapshot
            took: dict[str, float] = {}
            try:
                if self._claims is not None and not self._claims.ownership.holds(agent_id):
                    started = time.monotonic()
                    before, _ = self._claims.claim(agent_id, self._fields(agent_id, name, checked[agent_id][1]))
                    claimed = time.monotonic()
                    self._claims.bring_up(self.data_dir, agent_id, before, self._replication.target,
                                          self._replication.store, self.run_config.litestream, self._env)
                    took.update(claim=claimed - started, restore=time.monotonic() - claimed)
                conn = open_shard(self.data_dir, agent_id, self.run_config.shard, verified=agent_id in self._verified)
                if new_run:
                    journal = Journal(conn, agent_id)
                    journal.begin_run(name, self._inputs_json[agent_id], checked[agent_id][1], new_run=True)
                conn.close()
                if self._claims is not None:
                    self._claims.go_live(agent_id, self._replication, took)
                    phases.append(took)
            except AgentShardsError as exc:
                return exc
            except OSError as exc:
                return AgentShardsError(f"could not be launched: {exc}", agent_id=agent_id,
                                        hint=f"check the data dir {self.data_dir} and litestream.log in it")
            return None

        # Per agent: a file check, PUTs, a restore, Litestream's confirmation: waits, not CPU. 32 at a time brought
        # 90 agents up over three nodes in 13.6 s where 8 took 28.6 s (scripts/bench_nodes.py, docs/performance.md).
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            prepared = dict(zip(checked, pool.map(prepare, checked), strict=True))
        if phases:
            steps = {step: [p[step] for p in phases if step in p] for step in
                     ("claim", "restore", "register", "first_sync", "live_write")}
            log.info("launch: %d agents brought up in %.1fs; per agent, mean/max seconds: %s", len(phases),
                     time.monotonic() - began, ", ".join(f"{step} {sum(v) / len(v):.2f}/{max(v):.2f}"
                                                         for step, v in steps.items() if v))
        for agent_id, (inputs, _digest) in checked.items():
            error = prepared[agent_id]
            if error is None:
                self._failed.pop(agent_id, None)
                supervisor.add(agent_id, name, inputs)
            else:
                # a node that lost a race for an agent (another node claimed it first) is not an error
                quiet = self._claim_races_expected and isinstance(error, AgentOwned)
                (log.info if quiet else log.error)("agent %s: not launched: %s", agent_id, error)
                self._failed[agent_id] = error

    def _fields(self, agent_id: str, target: str, digest: str) -> dict[str, Any]:
        """The manifest fields a launch writes when it claims an agent."""
        return {"status": RUNNING, "target": target, "input_digest": digest, "run_id": "", "steps": 0,
                "code_fingerprint": self._fingerprints.get(target), "updated_at": time.time(),
                "inputs_json": self._inputs_json.get(agent_id)}

    def _begin(self, extra: Mapping[str, object] | None = None) -> Supervisor:
        """Once per fleet: the data-dir lock, then this node's lease, then Litestream; undone on failure."""
        if self._supervisor is not None:
            return self._supervisor
        self._lock = lock_data_dir(self.data_dir, "run a fleet")
        try:
            if self.replica is not None:
                from .claims import Claims

                target, store = check_replica(self.replica, self._env)  # once, for the lease and for Litestream
                self._claims = Claims.open(self.data_dir, target, store, ttl_s=self.lease_ttl_s,
                                           take_over=self.take_over, node_id=self.node_id, extra=extra)
                self.node_id = self._claims.node
                self._replication = start_replication(self.data_dir, self.replica, self.run_config, self._env,
                                                      checked=(target, store))
                self._claims.keeper.add_fence(self._replication.halt)  # Litestream first: it is what writes to S3
        except BaseException:
            self.close()
            raise
        self._supervisor = Supervisor(self.data_dir, self.app_dir, self.config, self._env, self.run_config.shard,
                                      on_final=self._on_final, on_tick=self._on_tick,
                                      on_worker_lost=self._on_worker_lost,
                                      worker_spec={"run": run_spec(self.run_config)})
        if self._claims is not None:
            self._claims.keeper.add_fence(self._supervisor.halt)
            self._links = WorkerLinks(self._supervisor.fleet_dir, self._replication, self._claims.keeper, self._runs)
            self._supervisor.worker_spec.update(self._links.spec)
        return self._supervisor

    def _runs(self, agent_id: str) -> bool:
        """Whether this supervisor runs the agent now: only then does it confirm the agent's steps."""
        state = self._supervisor.agents.get(agent_id) if self._supervisor is not None else None
        return state is not None and state.status == RUNNING

    def wait(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Run the fleet to the end; return ``agent_id -> result``, or the exception that ended the agent or
        its launch or its finalisation (one agent's failure never ends the others)."""
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
        outcomes = {agent_id: self._outcome(state) for agent_id, state in supervisor.agents.items()}
        return {**outcomes, **self._failed}

    def status(self) -> dict[str, AgentState]:
        return dict(self._require().agents)

    def cancel(self, agent_id: str, reason: str, *, delete: bool = False) -> bool:
        """End an agent of this fleet as ``cancelled`` (``Supervisor.cancel``); its run is recorded as cancelled,
        synced and published. ``delete``: its local shard is removed instead and it is handed back, for the
        operator's command to delete the rest (``requests.py``). False when it is not here or has ended."""
        supervisor = self._require()
        if delete:
            self._deleting.add(agent_id)
        if supervisor.cancel(agent_id, reason):
            return True
        state = supervisor.agents.get(agent_id)
        held = self._claims is not None and self._claims.ownership.holds(agent_id)
        if delete and held:
            self._on_final(state or AgentState(agent_id, "", {}))  # ended, still held (its sync not confirmed)
            return True
        if state is not None and state.status == GAVE_UP and held:  # its run is open: cancelled, not given up
            state.status, state.reason = CANCELLED, reason
            self._on_final(state)
            return True
        return False

    def worker_pids(self) -> list[int]:
        return self._require().worker_pids()

    def close(self) -> None:
        """Stop workers (SIGTERM, bounded wait, SIGKILL); hand back every agent still owned whose final sync
        is confirmed; stop Litestream; delete this node's lease; release the data-dir lock."""
        if self._supervisor is not None:
            self._supervisor.stop()
        if self._finals is not None:  # they need Litestream and the store: finish them before those stop
            self._finals.shutdown(wait=True)
            self._finals = None
        if self._links is not None:
            self._links.close()
            self._links = None
        if self._watchdog is not None:
            self._watchdog_stop.set()
            self._watchdog.join()
            self._watchdog = None
        if self._replication is not None and self._claims is not None:
            self._hand_back(self._claims.ownership.held())
        if self._replication is not None:
            self._replication.litestream.stop()
            self._replication = None
        if self._claims is not None:
            with contextlib.suppress(Exception):
                self._claims.release()
            self._claims = None
        self._release_lock()

    def _hand_back(self, agent_ids: list[str]) -> None:
        """Release the agents this node still owns, each only once the replica is confirmed to hold all of
        it: another node may claim it at once and resumes where this one stopped. One whose sync is not
        confirmed stays owned: it is claimed once this node's lease is gone."""
        if not agent_ids or self._replication.halted is not None or self._claims is None:
            return
        claims, replication = self._claims, self._replication

        def one(agent_id: str) -> None:
            try:
                if replication.sync_final(agent_id):
                    claims.ownership.release(agent_id)
                    log.info("agent %s: handed back (its replica holds all of it)", agent_id)
            except Exception as exc:  # never let one agent's failure spare the others their hand-back
                log.warning("agent %s: not handed back: %s", agent_id, exc)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, agent_ids))

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
        """Keep Litestream running and moving (this node's lease is kept by its own threads, which halt the
        supervisor and Litestream when it lapses: the next tick raises the LeaseError and ends wait())."""
        if self._replication is not None:
            self._replication.litestream.ensure_running()

    def _watch(self, replication: Any) -> None:
        """The stall watchdog, in its own thread: asking an overloaded Litestream how far it got can take
        seconds (measured at 1,000 shards), and the supervisor loop must keep noticing dead workers."""
        published = None
        while not self._watchdog_stop.wait(1.0):
            try:
                replication.restart_if_stalled()
                if replication.last_status is not None and replication.last_status is not published:
                    published = replication.last_status
                    publish_replication(self.data_dir, *published)
            except Exception:  # never let the watchdog die silently; the next round tries again
                log.exception("the litestream watchdog for %s failed", self.data_dir)

    def _on_worker_lost(self, agent_ids: list[str]) -> dict[str, str]:
        """Before a dead worker's agents restart: keep any commit it left torn (``Replication.adopt_torn_commit``),
        or else keep the agent from restarting here. Without a replica there is nothing to do: the next
        worker is the shard's only opener, and SQLite keeps the commit by itself."""
        if self._replication is None:
            return {}
        refused = {}
        for agent_id in agent_ids:
            try:
                self._replication.adopt_torn_commit(agent_id, self.run_config.shard)
            except Exception as exc:  # whatever it is, it is this agent's: the supervisor loop goes on
                log.error("agent %s: %s", agent_id, exc)
                refused[agent_id] = str(exc) if isinstance(exc, AgentShardsError) else f"{type(exc).__name__}: {exc}"
        return refused

    def _on_final(self, state: AgentState) -> None:
        """Hand the finished agent to a small thread pool: its sync, manifest PUT and unregister take ~20 ms,
        which, run inline in the supervisor loop, added ~20 s to a 1,000-agent recovery (measured)."""
        if self._replication is None:
            if state.status == CANCELLED:
                self._record_cancel(state.agent_id, state.reason or "cancelled")
            return
        if self._finals is None:
            self._finals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agentshards-final")
        self._finals.submit(self._finalize, state)

    def _drain_finals(self) -> None:
        """Wait for every finalisation (each records its own failure: see ``_finalize``)."""
        if self._finals is not None:
            self._finals.shutdown(wait=True)
            self._finals = None

    def _finalize(self, state: AgentState) -> None:
        """Push the agent's shard to the replica, publish its state, and stop replicating it once the
        replica holds all of it (Litestream LISTs every registered shard's replica once per compaction and
        retention interval even when nothing changed: a finished agent would cost that forever).

        The state comes from the journal (``states.published``): an ending only with a confirmed sync
        (else ``unsynced``), an open run as ``gave_up`` or ``running``. A failure here (an S3 5xx, a full
        disk) becomes this agent's outcome; it never ends the fleet.
        """
        if self._replication.halted is not None:  # fenced: this node no longer writes to the prefix
            return
        agent_id = state.agent_id
        if agent_id in self._deleting:
            self._let_go_deleted(agent_id)
            return
        if state.status == CANCELLED:
            try:
                self._record_cancel(agent_id, state.reason or "cancelled")
            except Exception as exc:  # whatever it is, it is this agent's: the fleet goes on
                self._finalisation_failed(state, "recording its cancel", exc, "its run is still open; cancel it "
                                          "again (`agentshards cancel --fleet`)")
                return
        synced = self._replication.sync_final(agent_id)
        try:
            journal = Journal(open_shard(self.data_dir, agent_id, self.run_config.shard, create=False), agent_id)
            try:
                runs = journal.runs()
                run = runs[-1] if runs else None
                steps = len(journal.steps(run.id)) if run else 0
            finally:
                journal.close()
            status = published(run.status if run else None, synced=synced, gave_up=state.status == GAVE_UP)
            if run is None and state.status == CANCELLED:
                status = CANCELLED  # cancelled before it ever ran
            # handed back once the replica holds all of it: finished agents are nobody's, a gave_up one waits
            # for an operator; an unconfirmed one stays this node's until the sync (or this node) ends
            self._publish(agent_id, status, state.target, run.input_digest if run else "", run.id if run else "",
                          steps, release=synced)
        except OwnershipLost as exc:  # another node runs it now: nothing more is written for it here
            with contextlib.suppress(AgentShardsError, OSError):
                self._replication.litestream.unregister(agent_id)
            self._failed[agent_id] = exc
            log.error("%s", exc)
            return
        except Exception as exc:  # whatever it is, it is this agent's: the fleet goes on
            self._finalisation_failed(state, "publishing its state", exc, "its manifest entry still reads as "
                                      "unfinished, so a recovery or a new launch of it publishes its end")
            return
        if status == UNSYNCED:
            log.warning("agent %s: its run ended (%s) but the replica was not confirmed to hold the end; published "
                        "as %s, so a recovery takes it", agent_id, run.status if run else "?", UNSYNCED)
        if self.archive_finished and run is not None and run.status in ENDED:
            from .._replication.archive import archive_owned

            try:
                archive_owned(agent_id, self.data_dir, self._replication.target, env=self._env,
                              litestream=self._replication.litestream)
            except Exception as exc:  # whatever it is, it is this agent's: the fleet goes on
                self._finalisation_failed(state, "archiving it", exc, "nothing was removed locally; archive it "
                                          f"again with `agentshards archive {agent_id}`")
        elif synced:  # otherwise it stays registered: Litestream keeps trying until the replica has it all
            with contextlib.suppress(AgentShardsError, OSError):
                self._replication.litestream.unregister(agent_id)

    def _record_cancel(self, agent_id: str, reason: str) -> None:
        """Record the operator's cancel in the journal (its worker is gone), as ``cancel_agent`` does offline."""
        journal = Journal(open_shard(self.data_dir, agent_id, self.run_config.shard, create=False), agent_id)
        try:
            record_cancel(journal, reason)
        finally:
            journal.close()

    def _let_go_deleted(self, agent_id: str) -> None:
        """An agent an operator deletes: stop replicating it, remove its local files and hand it back (the
        entry keeps the delete request, so no node claims it); the operator's command deletes the rest."""
        from .._replication.archive import remove_local

        try:
            with contextlib.suppress(AgentShardsError, OSError):
                self._replication.litestream.unregister(agent_id)
            remove_local(self.data_dir, agent_id)
            assert self._claims is not None  # only nodes with a replica are asked to delete
            self._claims.ownership.release(agent_id)
            log.info("agent %s: deleted here and handed back for its deletion everywhere", agent_id)
        except Exception as exc:  # whatever it is, it is this agent's: the fleet goes on
            self._finalisation_failed(AgentState(agent_id, "", {}, status=CANCELLED), "deleting it", exc,
                                      "run `agentshards delete --fleet` again")
        finally:
            self._deleting.discard(agent_id)

    def _finalisation_failed(self, state: AgentState, stage: str, exc: Exception, hint: str) -> None:
        detail = exc.message if isinstance(exc, AgentShardsError) else f"{type(exc).__name__}: {exc}"
        error = ReplicationError(f"its run is over here ({state.status}), but {stage} failed: {detail}",
                                 agent_id=state.agent_id, hint=hint)
        error.__cause__ = exc
        log.error("%s", error)
        self._failed[state.agent_id] = error  # one key per agent, set by the one thread finalising it

    def _publish(self, agent_id: str, status: str, target: str, digest: str, run_id: str, steps: int, *,
                 release: bool = False) -> None:
        """Write the agent's entry (conditionally: OwnershipLost when another node claimed it meanwhile)."""
        assert self._claims is not None
        fields: dict[str, Any] = {"status": status, "target": target, "input_digest": digest, "run_id": run_id,
                                  "steps": steps, "code_fingerprint": self._fingerprints.get(target)}
        if release:  # the agent's end, published: an operator's cancel or retry of it is settled by it
            fields.update(request=None, request_reason=None)
        if self._inputs_json.get(agent_id) is not None:
            fields["inputs_json"] = self._inputs_json[agent_id]
        self._replication.publish_with(agent_id, status, lambda: (
            self._claims.ownership.release(agent_id, **fields) if release
            else self._claims.ownership.update(agent_id, **fields)))

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


def publish_replication(data_dir: Path, at: float, statuses: list[Any]) -> None:
    """Every shard's replication lag as the watchdog last saw it, in ``.fleet/replication.json``: `status`
    and the dashboard show it (only while this node holds the data dir) without a control socket."""
    from .._base.atomic import write_json_atomic

    payload = {"pid": os.getpid(), "updated_at": at,
               "agents": {s.agent_id: {"state": s.state, "lag_s": round(s.lag_s, 3), "last_sync_at": s.last_sync_at}
                          for s in statuses}}
    write_json_atomic(data_dir / ".fleet" / "replication.json", payload)


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
            env: Mapping[str, str] | None = None, allow_targets: Sequence[str] = ()) -> dict[str, Any]:
    """Node-loss recovery on a fresh machine: be a node, claim every unfinished agent the manifest lists,
    restore those this data dir did not run last (verified, in parallel), and run them under a supervisor to
    the end. An agent a live node owns is refused (``AgentOwned``) unless ``take_over``.

    Unfinished is what ``states.UNFINISHED`` lists (``queued``, ``running``, ``unsynced``, ``gave_up``); archived and
    finished agents are not restored. An agent whose code changed since its manifest entry is logged, and
    non-determinism detection guards its replay. Returns ``agent_id -> result or exception``: an agent that
    cannot be restored, read or launched gets its error there and the others go on.
    The targets come from the bucket, so only those under ``app_dir`` or matching ``allow_targets`` are
    imported (TargetPolicy); any other agent is not started and gets an InvalidTarget as its outcome.
    """
    import json

    from .._core.target_policy import TargetPolicy, resolve_stored
    from .._replication.manifest import list_manifests
    from .._replication.restore import restore_agents

    fleet = Fleet(data_dir, replica, app_dir=app_dir, config=config, take_over=take_over, lease_ttl_s=lease_ttl_s,
                  env=env)
    policy = TargetPolicy.of(fleet.app_dir, allow_targets)
    fleet._begin()
    failed: dict[str, AgentShardsError] = {}  # agents that cannot be recovered: their outcome; the rest go on

    def fail(agent_id: str, error: Exception) -> None:
        if not isinstance(error, AgentShardsError):  # botocore's, OSError: one error root for callers
            error = ReplicationError(f"could not be recovered: {type(error).__name__}: {error}", agent_id=agent_id,
                                     hint="the other agents were recovered; run recover again for this one")
        log.error("recover: agent %s: %s", agent_id, error)
        failed[agent_id] = error

    try:
        replication, claims = fleet._replication, fleet._claims
        assert claims is not None
        entries = [e for e in list_manifests(replication.store, replication.target) if is_unfinished(e.status)]
        started, cpu, children = time.monotonic(), time.process_time(), _children_cpu_s()
        for agent_id, error in claims.claim_all(entries).items():  # owned by a live node, or claimed meanwhile
            fail(agent_id, error)
        entries = [e for e in entries if e.agent_id not in failed]
        befores = {e.agent_id: claims.before.get(e.agent_id) for e in entries}
        wanted = [a for a, before in befores.items() if claims.needs_restore(fleet.data_dir, a, before)]
        restored = restore_agents(wanted, fleet.data_dir, replication.target, env=fleet._env, overwrite=True,
                                  litestream=replication.litestream.config,
                                  generations={a: before.entry.live for a, before in befores.items() if before})
        restored_at = time.monotonic()
        log.info("recover: %d agents claimed, %d restored and verified in %.1fs (CPU: %.1fs here, %.1fs in child "
                 "processes)", len(entries), len(wanted), restored_at - started, time.process_time() - cpu,
                 _children_cpu_s() - children)
        on_disk = []  # agents with a shard here (restored or already local)
        for entry in entries:
            outcome: Path | Exception | None = restored.get(entry.agent_id)
            if outcome is None:
                if shard_path(fleet.data_dir, entry.agent_id).exists():
                    log.info("agent %s: using the local shard already in %s", entry.agent_id, fleet.data_dir)
                    on_disk.append(entry.agent_id)
            elif isinstance(outcome, NoReplica):
                pass  # killed before Litestream's first upload: nothing of it survived the node
            elif isinstance(outcome, Exception):
                fail(entry.agent_id, outcome)
                continue
            else:
                fleet._verified.add(entry.agent_id)
                on_disk.append(entry.agent_id)

        def last_run(agent_id: str) -> tuple[str, Run | Exception | None]:
            try:
                journal = Journal(open_shard(fleet.data_dir, agent_id, fleet.run_config.shard, create=False,
                                             verified=agent_id in fleet._verified), agent_id)
                try:
                    runs = journal.runs()
                    return agent_id, runs[-1] if runs else None
                finally:
                    journal.close()
            except (AgentShardsError, OSError) as exc:
                return agent_id, exc

        with ThreadPoolExecutor(max_workers=8) as pool:  # opening a restored file makes its WAL: I/O, GIL free
            last_runs = dict(pool.map(last_run, on_disk))
        batches: dict[str, dict[str, Any]] = {}  # target -> {agent: inputs}: one launch per target, not per agent
        for entry in (e for e in entries if e.agent_id not in failed):
            run = last_runs.get(entry.agent_id)
            if isinstance(run, Exception):
                fail(entry.agent_id, run)
                continue
            if run is None:  # its replica holds no run yet: start it from the beginning, from its manifest
                if entry.inputs_json is None:
                    fail(entry.agent_id, ReplicationError(
                        f"agent {entry.agent_id} has no replicated run and its manifest entry has no inputs",
                        agent_id=entry.agent_id, hint="launch it again by hand (manifest from an older version)"))
                    continue
                log.warning("agent %s: nothing of its run reached the replica before the node was lost; starting "
                            "it from the beginning", entry.agent_id)
                target, input_json = entry.target, entry.inputs_json
            else:
                target, input_json = run.target, run.input_json
            if target not in fleet._fingerprints:  # the fleet's cache: launch below reuses it
                try:
                    fleet._fingerprints[target] = code_fingerprint(resolve_stored(target, policy, entry.agent_id))
                except InvalidTarget as exc:
                    fail(entry.agent_id, exc)
                    continue
            now = fleet._fingerprints[target]
            if entry.code_fingerprint and now and now != entry.code_fingerprint:
                log.warning("agent %s: the code of %s changed since it last ran; replay relies on non-determinism "
                            "detection", entry.agent_id, target)
            batches.setdefault(target, {})[entry.agent_id] = json.loads(input_json)
        for target, agents in batches.items():
            _launch_each(fleet, target, agents, fail)
        log.info("recover: %d agents registered with Litestream and queued in %.1fs more", len(entries),
                 time.monotonic() - restored_at)
        if fleet._supervisor is None or not fleet._supervisor.agents:
            fleet.close()
            return {**failed, **fleet._failed}
        return {**failed, **fleet.wait(timeout_s)}
    except BaseException:
        fleet.close()
        raise


def _launch_each(fleet: Fleet, target: str, agents: dict[str, Any], fail: Callable[[str, Exception], None]) -> None:
    """Launch one target's agents; an agent the launch refuses (its inputs, say) fails alone.

    ``launch`` checks every agent before it starts any, so after a refusal naming one agent the others
    are launched again without it; a refusal of the target itself fails all of them.
    """
    agents = dict(agents)
    while agents:
        try:
            fleet.launch(target, agents)
            return
        except AgentShardsError as exc:
            if exc.agent_id not in agents:
                for agent_id in agents:
                    fail(agent_id, exc)
                return
            fail(exc.agent_id, exc)
            del agents[exc.agent_id]
