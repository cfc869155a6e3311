"""The fleet supervisor: an explicit loop that runs agents in worker processes and restarts the dead.

Each ``tick``: reap exited workers (an agent without a result file was on a worker that died: restart it
with exponential backoff, up to a limit, then give up on it: ``gave_up`` with the reason, its run still
open), start workers for agents that may run (pending, or restarting and due) up to the concurrency cap,
check Litestream's health, and publish the state to ``DATA_DIR/.fleet/status.json`` so ``agentshards
status`` works from another shell. The clock and the sleep are injectable, so the policy is testable
without waiting.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._base.atomic import write_json_atomic
from .._base.config import ShardConfig, SupervisorConfig
from .._base.environ import worker_env
from .._base.errors import AgentShardsError
from .._replication.states import BUDGET_EXCEEDED, CANCELLED, FAILED, GAVE_UP, SUCCEEDED
from .zygote import ForkedWorker, Zygote

log = logging.getLogger("agentshards")

PENDING, RUNNING, RESTARTING = "pending", "running", "restarting"
FINAL_STATES = (SUCCEEDED, FAILED, BUDGET_EXCEEDED, GAVE_UP, CANCELLED)
"""The supervisor is done with these agents; a gave_up agent's run is still open (recover and retry take it)."""


@dataclass
class AgentState:
    agent_id: str
    target: str
    inputs: dict[str, Any]
    status: str = PENDING
    restarts: int = 0
    due_at: float = 0.0
    worker_pid: int | None = None
    reason: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    cancel: str | None = None  # an operator's cancel under way: its reason
    cancel_by: float = 0.0     # when a worker that ignored its SIGTERM gets SIGKILL


def read_outcome(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A worker's result file as ``(outcome, None)``; ``(None, None)`` when there is none (the worker died
    first) and ``(None, why)`` when it cannot be used. Written by this package, but read by the loop that
    keeps every other agent going: a truncated, foreign or hand-edited file must not stop that loop, so
    anything but the shape ``write_result`` produces counts as no result and the agent is restarted."""
    try:
        outcome = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable result file {path.name}: {exc}"
    if not isinstance(outcome, dict) or outcome.get("status") not in FINAL_STATES:
        return None, f"malformed result file {path.name}"
    if outcome["status"] != SUCCEEDED:
        error = outcome.get("error")
        if (not isinstance(error, dict) or not isinstance(error.get("type"), str)
                or not isinstance(error.get("message"), str)):
            return None, f"malformed result file {path.name}: no error type and message"
    return outcome, None


@dataclass
class _Worker:
    proc: ForkedWorker
    agent_ids: list[str]
    spec_path: Path
    stopped_for: str | None = None  # the agent whose cancel stopped this worker


@dataclass
class Supervisor:
    data_dir: Path
    app_dir: Path
    config: SupervisorConfig
    env: Mapping[str, str]
    shard: ShardConfig = field(default_factory=ShardConfig)  # how workers open shards (the fleet's settings)
    on_final: Callable[[AgentState], None] = lambda state: None
    on_tick: Callable[[], None] = lambda: None
    # Called with the agents of a worker that died abnormally, before any of them restarts; returns those
    # that must not restart on this node, with the reason (a commit it cannot make safe, see Fleet).
    on_worker_lost: Callable[[list[str]], dict[str, str]] = lambda agent_ids: {}
    worker_spec: dict[str, Any] = field(default_factory=dict)  # more for every worker (its fence, confirm socket)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    agents: dict[str, AgentState] = field(default_factory=dict)
    _workers: list[_Worker] = field(default_factory=list)
    _serial: int = 0
    _zygote: Zygote | None = None
    _halted: AgentShardsError | None = None

    def halt(self, error: AgentShardsError) -> None:
        """Kill everything now, from any thread, while the loop may be blocked (a lease fence): SIGKILL the
        zygote, whose workers die with it (their parent-death signal is SIGKILL; their pids are never
        signalled from here, where they may already be another process's). The loop raises ``error`` at its
        next tick and starts nothing more; agents resume from their journals wherever they run next."""
        self._halted = error
        if self._zygote is not None:
            self._zygote.kill()

    def _check_halted(self) -> None:
        if self._halted is not None:
            raise self._halted

    @property
    def fleet_dir(self) -> Path:
        return self.data_dir / ".fleet"

    @property
    def results_dir(self) -> Path:
        return self.fleet_dir / "results"

    def add(self, agent_id: str, target: str, inputs: dict[str, Any]) -> None:
        (self.results_dir / f"{agent_id}.json").unlink(missing_ok=True)  # stale from an earlier fleet
        self.agents[agent_id] = AgentState(agent_id, target, inputs)

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def done(self) -> bool:
        return all(a.status in FINAL_STATES for a in self.agents.values())

    def run(self, timeout_s: float | None = None) -> None:
        """Tick until every agent is final (or the timeout passes: then stop and raise TimeoutError)."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        while not self.done():
            self.tick()
            if deadline is not None and self.clock() > deadline:
                self.stop()
                raise TimeoutError(f"fleet not finished within {timeout_s}s")
            self.sleep(self.config.tick_s)
        self.tick()  # publish the final state

    def tick(self) -> None:
        self._check_halted()
        self._enforce_cancels()
        self._reap()
        self._start_due()
        self.on_tick()
        self._publish()

    # -- reaping and restarting -------------------------------------------------------------------------

    def _reap(self) -> None:
        alive = []
        for worker in self._workers:
            code = worker.proc.poll()
            if code is None:
                alive.append(worker)
                continue
            worker.spec_path.unlink(missing_ok=True)
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            refused = self.on_worker_lost(worker.agent_ids) if code != 0 else {}
            for agent_id in worker.agent_ids:
                self._settle(self.agents[agent_id], f"worker {worker.proc.pid} {how}", refused.get(agent_id),
                             worker.stopped_for)
        self._workers = alive

    def _settle(self, state: AgentState, worker_exit: str, refused: str | None = None,
                stopped_for: str | None = None) -> None:
        path = self.results_dir / f"{state.agent_id}.json"
        outcome, problem = read_outcome(path)
        state.worker_pid = None
        if outcome is not None and outcome["status"] == SUCCEEDED:
            self._final(state, SUCCEEDED, result=outcome.get("result"))
        elif outcome is not None and outcome.get("final") is True:
            self._final(state, outcome["status"], error=outcome["error"],
                        reason=f"{outcome['error']['type']}: {outcome['error']['message'][:300]}")
        elif state.cancel is not None:
            path.unlink(missing_ok=True)
            self._cancelled(state, state.cancel)
        else:
            if outcome is not None:
                reason = f"{outcome['error']['type']}: {outcome['error']['message']}"
            else:
                reason = worker_exit if problem is None else f"{worker_exit}; {problem}"
            path.unlink(missing_ok=True)
            if refused is None and stopped_for is not None and outcome is None:
                # stopped with the agent an operator cancelled: not a crash of its own, so no restart counted
                state.status, state.due_at = PENDING, self.clock()
                state.reason = f"its worker was stopped to cancel agent {stopped_for}"
                log.info("agent %s: %s; started again", state.agent_id, state.reason)
                return
            if refused is not None:
                self._final(state, GAVE_UP, reason=f"not restarted here: {refused}; last: {reason}",
                            error={"type": "NotRestarted", "message": refused})
                return
            self._restart(state, reason)

    def _restart(self, state: AgentState, reason: str) -> None:
        if state.restarts >= self.config.max_restarts:
            self._final(state, GAVE_UP, reason=f"gave up after {state.restarts} restarts; last: {reason}",
                        error={"type": "RestartLimit", "message": reason})
            return
        pause = min(self.config.restart_backoff_max_s, self.config.restart_backoff_s * 2 ** state.restarts)
        state.restarts += 1
        state.status, state.reason, state.due_at = RESTARTING, reason, self.clock() + pause
        log.warning("agent %s: %s; restart %d/%d in %.2fs", state.agent_id, reason, state.restarts,
                    self.config.max_restarts, pause)

    def _final(self, state: AgentState, status: str, *, result: Any = None, error: dict[str, Any] | None = None,
               reason: str | None = None) -> None:
        state.status, state.result, state.error, state.reason = status, result, error, reason
        log.info("agent %s: %s%s", state.agent_id, status, f" ({reason})" if reason else "")
        self.on_final(state)

    # -- cancelling ---------------------------------------------------------------------------------------

    def cancel(self, agent_id: str, reason: str) -> bool:
        """End an agent as ``cancelled``: at once when no worker runs it, else once its worker is gone. The
        worker gets SIGTERM (its other agents drain and are restarted) and SIGKILL after ``stop_timeout_s``.
        False when the agent is not here or has ended already (an ending that came first stands)."""
        state = self.agents.get(agent_id)
        if state is None or state.status in FINAL_STATES:
            return False
        if state.cancel is not None:
            return True  # under way
        state.cancel = reason
        worker = next((w for w in self._workers if agent_id in w.agent_ids), None)
        if state.status == RUNNING and worker is not None and worker.proc.poll() is None:
            state.cancel_by = self.clock() + self.config.stop_timeout_s
            worker.stopped_for = agent_id
            worker.proc.send_signal(signal.SIGTERM)
            log.warning("agent %s: cancelling (%s): worker %d stopped", agent_id, reason, worker.proc.pid)
        elif worker is None:
            self._cancelled(state, reason)
        return True  # a worker that already exited is reaped at this tick, and settles it as cancelled

    def _cancelled(self, state: AgentState, reason: str) -> None:
        self._final(state, CANCELLED, reason=reason, error={"type": "Cancelled", "message": reason})

    def _enforce_cancels(self) -> None:
        now = self.clock()
        for worker in self._workers:
            late = [a for a in worker.agent_ids if self.agents[a].cancel is not None and self.agents[a].cancel_by
                    and now >= self.agents[a].cancel_by and self.agents[a].status == RUNNING]
            if late and worker.proc.poll() is None:
                log.warning("agent %s: its worker %d ignored SIGTERM for %.0fs; SIGKILL", late[0], worker.proc.pid,
                            self.config.stop_timeout_s)
                worker.proc.kill()

    # -- starting workers ---------------------------------------------------------------------------------

    def _start_due(self) -> None:
        now = self.clock()
        running = sum(len(w.agent_ids) for w in self._workers)
        room = self.config.concurrency - running
        due = [a for a in self.agents.values()
               if room > 0 and (a.status == PENDING or (a.status == RESTARTING and a.due_at <= now))][:max(room, 0)]
        k = self.config.agents_per_worker
        by_target: dict[str, list[AgentState]] = {}
        for state in due:
            by_target.setdefault(state.target, []).append(state)
        for batch in by_target.values():
            for i in range(0, len(batch), k):
                self._spawn(batch[i:i + k])

    def _spawn(self, batch: list[AgentState]) -> None:
        self._check_halted()
        self._serial += 1
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        spec = {"data_dir": str(self.data_dir), "target": batch[0].target, "app_dir": str(self.app_dir),
                "results_dir": str(self.results_dir), "shard": asdict(self.shard),
                "agents": [{"agent_id": a.agent_id, "inputs": a.inputs} for a in batch], **self.worker_spec}
        fd, name = tempfile.mkstemp(dir=self.fleet_dir, prefix=f"worker-{self._serial}-", suffix=".json")
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
            json.dump(spec, f)
        if self._zygote is None:
            env = worker_env(self.env)  # agent code never needs the bucket: no AWS credential of any kind
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.app_dir), env.get("PYTHONPATH")) if p)
            self._zygote = Zygote(env, self.app_dir, self.fleet_dir / "workers.log")
        try:
            proc = self._zygote.spawn(Path(name))
        except AgentShardsError as exc:  # the zygote died (its workers with it): one fresh start, then give up
            self._check_halted()  # not when a fence killed it: a fenced node starts nothing
            log.warning("worker zygote for %s: %s; starting a new one", self.data_dir, exc)
            proc = self._zygote.spawn(Path(name))
        self._workers.append(_Worker(proc, [a.agent_id for a in batch], Path(name)))
        if self._halted is not None:  # halted while this worker was being forked: it must not run either
            self.halt(self._halted)
            raise self._halted
        for state in batch:
            state.status, state.worker_pid = RUNNING, proc.pid

    # -- stopping and status ------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every worker, a bounded wait, then SIGKILL. Unfinished runs stay open to resume."""
        for worker in self._workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout_s
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            worker.spec_path.unlink(missing_ok=True)
        self._workers = []
        if self._zygote is not None:
            self._zygote.stop()
            self._zygote = None

    def _publish(self) -> None:
        payload = {"pid": os.getpid(), "updated_at": time.time(),
                   "agents": {a.agent_id: {k: v for k, v in asdict(a).items() if k not in ("inputs", "result")}
                              for a in self.agents.values()}}
        write_json_atomic(self.fleet_dir / "status.json", payload)
